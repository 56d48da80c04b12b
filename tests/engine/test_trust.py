"""A run folder cannot run code of its choosing: every command that loads a run refuses a saved
config naming a `_target_` outside the allow-list (or a resolver interpolation), naming the key,
the value and the file, before anything it names is imported or called; the shipped configs,
release 0.1's runs and plugins trusted on purpose still load."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from medtrain.engine.trust import (
    TRUST_ENV,
    check_run_folder,
    check_targets,
    is_allowed,
    refusals,
    shipped_targets,
)
from medtrain.errors import ConfigError
from medtrain.io import load_checkpoint, save_checkpoint
from tests.conftest import CONF, ROOT, compose_cfg

FIXTURE_RUNS = ROOT / "tests" / "fixtures" / "runs_0.1"
COMMANDS = ("predict", "export", "ensemble", "rerun", "report", "resume", "serve")
PAYLOADS = ("os.system", "builtins.open", "subprocess.run", "import", "nested", "oc.env")
# A module that would leave a mark when imported: a refused target must never be imported.
EVIL_MODULE = """
from pathlib import Path
Path({marker!r}).write_text("imported")


class Net:
    pass
"""
# A plugin model of a user's own (the run's network, under another name).
PLUGIN_MODULE = """
from medtrain.models.cnn import SimpleCNN


class TrustedNet(SimpleCNN):
    pass
"""


def poisoned(config: dict, payload: str, tmp_path: Path) -> tuple[dict, str, str]:
    """`config` with `payload` planted; returns it with the key path and the value the refusal
    must name. Each payload writes `tmp_path/marker` if it is ever imported or called."""
    marker = str(tmp_path / "marker")
    if payload == "os.system":
        config["model"] = {"_target_": "os.system", "_args_": [f"touch {marker}"]}
    elif payload == "builtins.open":
        config["model"] = {"_target_": "builtins.open", "file": marker, "mode": "w"}
    elif payload == "subprocess.run":
        config["model"] = {"_target_": "subprocess.run", "args": ["touch", marker]}
    elif payload == "import":
        module = f"evil_{tmp_path.name}"
        (tmp_path / f"{module}.py").write_text(EVIL_MODULE.format(marker=marker))
        config["model"]["_target_"] = f"{module}.Net"
        return config, "model._target_", f"{module}.Net"
    elif payload == "nested":
        transforms = config["augmentation"]["eval"]["transforms"]
        transforms += [{"_target_": "builtins.open", "file": marker, "mode": "w"}]
        key = f"augmentation.eval.transforms[{len(transforms) - 1}]._target_"
        return config, key, "builtins.open"
    else:
        config["dataset"]["path"] = "${oc.env:MEDTRAIN_TEST_SECRET}"
        return config, "dataset.path", "${oc.env:MEDTRAIN_TEST_SECRET}"
    return config, "model._target_", payload


@pytest.fixture
def poison(finished_runs, tmp_path, monkeypatch):
    """`poison(payload)`: a copy of the finished classification run whose `best.pt` and `last.pt`
    configs carry `payload`; returns the run folder, key path and value."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MEDTRAIN_TEST_SECRET", "s3cret")
    monkeypatch.delenv(TRUST_ENV, raising=False)

    def make(payload: str) -> tuple[Path, str, str]:
        run = tmp_path / "run"
        shutil.copytree(finished_runs["classification"], run)
        (run / "report.html").unlink(missing_ok=True)  # the report command must not write one
        for name in ("best.pt", "last.pt"):
            state = load_checkpoint(run / "checkpoints" / name)
            state["config"], key, value = poisoned(state["config"], payload, tmp_path)
            save_checkpoint(run / "checkpoints" / name, state)
        return run, key, value

    return make


def run_command(command: str, run: Path, tmp_path: Path, clean: Path) -> tuple[int, str]:
    """Run `command` on `run` as its user would; returns the exit status and the error text."""
    if command == "serve":
        from medtrain.commands.serve import main
        from medtrain.inference.predictor import Predictor

        with pytest.raises(ConfigError) as refused:
            Predictor(run)
        status = main([f"run_dir={run}", "port=0"])
        return status, str(refused.value)
    if command == "resume":
        from medtrain.engine.resume import resume

        config = load_checkpoint(clean / "checkpoints" / "last.pt")["config"]
        with pytest.raises(ConfigError) as refused:
            resume(str(run), tmp_path / "new" / "checkpoints", None, None, None, None, None, config)
        return 2, str(refused.value)
    if command == "rerun":  # the saved YAML is the run's own; best.pt carries the payload
        config = load_checkpoint(clean / "checkpoints" / "best.pt")["config"]
        (run / ".hydra").mkdir()
        OmegaConf.save(OmegaConf.create(config), run / ".hydra" / "config.yaml")
    main = __import__(f"medtrain.commands.{command}", fromlist=["main"]).main
    args = {
        "predict": [f"run_dir={run}", f"inputs={tmp_path}", f"output={tmp_path / 'p.csv'}"],
        "export": [f"run_dir={run}", f"output={tmp_path / 'export'}"],
        "ensemble": [f"run_dirs=[{clean},{run}]", f"output={tmp_path / 'ensemble'}"],
        "rerun": [f"run_dir={run}", f"output={tmp_path / 'again'}"],
        "report": [f"run_dir={run}"],
    }[command]
    return main(args), ""


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_a_run_that_names_code(
    command, payload, poison, finished_runs, tmp_path, capsys
):
    """The refusal names the key, the value and the file and says how to trust it; nothing named
    was imported or called, and nothing was written."""
    run, key, value = poison(payload)
    status, raised = run_command(command, run, tmp_path, finished_runs["classification"])
    err = capsys.readouterr().err
    message = raised or err
    assert status == 2
    if command != "resume":
        assert err.startswith("error: ") and err.count("\n") == 1, err
    assert f"{key}={value!r}" in message and "checkpoints" in message
    if payload == "oc.env":
        assert "trust=[oc.env]" in message and "s3cret" not in message
    else:
        assert f"trust=[{value}]" in message and TRUST_ENV in message
    assert not (tmp_path / "marker").exists()
    assert not any(name.startswith("evil_") for name in sys.modules)
    for written in ("p.csv", "export", "ensemble", "again", "new"):
        assert not (tmp_path / written).exists()
    assert not (run / "report.html").exists()


def test_rerun_refuses_hydra_settings_in_the_saved_yaml(finished_runs, tmp_path, capsys):
    """`.hydra/config.yaml` is what a rerun composes: a `hydra:` node (logging handlers are
    factories: `()` names a callable) or a `defaults:` list is refused before the rerun starts."""
    from medtrain.commands.rerun import main

    run = tmp_path / "run"
    shutil.copytree(finished_runs["classification"], run)
    config = load_checkpoint(run / "checkpoints" / "best.pt")["config"]
    marker = tmp_path / "marker"
    handler = {"()": "os.system", "command": f"touch {marker}"}
    config["hydra"] = {"job_logging": {"version": 1, "handlers": {"x": handler}}}
    (run / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(config), run / ".hydra" / "config.yaml")
    assert main([f"run_dir={run}", f"output={tmp_path / 'again'}"]) == 2
    err = capsys.readouterr().err
    assert "hydra=(Hydra's settings)" in err and ".hydra/config.yaml" in err
    assert not marker.exists() and not (tmp_path / "again").exists()


def test_the_report_refuses_a_forged_ensemble_task(tmp_path):
    """An ensemble folder names its task in `ensemble.json`: checked before it is imported."""
    from medtrain.analysis.report import write_report
    from medtrain.io import save_json

    save_json(tmp_path / "metrics.json", {})
    save_json(tmp_path / "ensemble.json", {"task_target": "medtrain.__main__.main"})
    with pytest.raises(ConfigError, match=r"task_target='medtrain.__main__.main'"):
        write_report(tmp_path)
    assert "medtrain.__main__" not in sys.modules


@pytest.mark.parametrize(
    "target",
    [
        "torch.optim.RMSprop",  # torch.optim optimizers
        "torch.optim.lr_scheduler.StepLR",  # its schedulers
        "torch.nn.CrossEntropyLoss",  # torch.nn losses
        "albumentations.CLAHE",  # albumentations transforms
        "monai.networks.nets.UNet",  # MONAI networks and losses
        "monai.losses.GeneralizedDiceLoss",
        "medtrain.models.unet.UNet",  # medtrain's classes of those kinds
        "medtrain.data.seg_folder.SegFolder",
        "medtrain.tasks.regression.RegressionTask",
        "medtrain.losses.CrossEntropy",  # paths of release 0.1
        "medtrain.schedulers.cosine_with_warmup",
        "medtrain.tasks.ClassificationTask",
    ],
)
def test_allowed_targets(target):
    assert is_allowed(target)


@pytest.mark.parametrize(
    "target",
    [
        "os.system",
        "builtins.eval",
        "torch.nn.Linear",  # torch.nn: losses only
        "torch.load",
        "albumentations.from_dict",  # a function of the package, not a transform
        "albumentations.Compose.from_pretrained",
        "monai.losses.PerceptualLoss",  # runs code from torch.hub
        "monai.bundle.run",
        "medtrain.io.save_json",  # medtrain's functions write files
        "medtrain.io.atomic_write",
        "medtrain.engine.build.build",
        "medtrain.engine.build.locate",
        "medtrain.data.transforms.Normalize",  # a medtrain class of another kind
        "medtrain.models.cnn.nn.Module",  # a class medtrain imports, not one it defines
        "medtrain.__main__.main",  # never imported
        "medtrain.build.build",  # an old path of a function
    ],
)
def test_refused_targets(target):
    assert not is_allowed(target)
    assert "medtrain.__main__" not in sys.modules


def test_every_shipped_option_is_allowed():
    """Each option of each config group, composed as training composes it (interpolations not
    resolved, as `.hydra/config.yaml` stores them), names only allowed targets."""
    assert len(shipped_targets()) > 40 and all(is_allowed(t) for t in shipped_targets())
    for group in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"):
        for option in sorted(group.glob("*.yaml")):
            cfg = compose_cfg([f"{group.name}={option.stem}"])
            assert refusals(cfg) == [], f"{group.name}={option.stem}"


def test_the_runs_of_release_0_1_still_load():
    from medtrain.inference.run import load_run

    for run in sorted(p for p in FIXTURE_RUNS.iterdir() if p.is_dir()):
        check_run_folder(run)
        assert load_run(run).model is not None


def test_interpolations_resolvers_and_hydra_keys():
    config = {
        "a": "${x.y}",  # a reference: harmless
        "b": "run_${now:%Y}",  # the clock
        "c": "${a.${oc.env:HOME}}",  # nested in a reference
        "d": "${${name}:x}",  # a resolver named by an interpolation
        "m": {"_target_": "${x}"},  # the name built must be written out
        "defaults": [],
    }
    found = {key: name for key, _, name in refusals(config)}
    assert found == {"c": "oc.env", "d": "", "m._target_": "", "defaults": ""}
    assert [k for k, _, _ in refusals(config, trust=["oc.env"])] == ["defaults", "m._target_", "d"]
    with pytest.raises(ConfigError, match=r"saved\.yaml: refused defaults=.*c='\$\{a\.\$\{oc\."):
        check_targets(config, "saved.yaml")


def test_a_loaded_run_may_not_name_a_url():
    config = {
        "model": {"_target_": "monai.networks.nets.HoVerNet", "pretrained_url": "https://x/y.pt"}
    }
    assert refusals(config) == [("model.pretrained_url", "'https://x/y.pt'", "")]
    assert refusals({"data": {"root": "data/x.csv", "note": "see http notes"}}) == []
    with pytest.raises(ConfigError, match=r"model\.pretrained_url='https://x/y\.pt'"):
        check_targets(config, "best.pt")


def test_trust_names_and_prefixes(monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    assert is_allowed("os.system", ["os."]) and is_allowed("os.system", ["os.system"])
    assert not is_allowed("os.system", ["os"]) and not is_allowed("os.system", ["os.sys"])
    monkeypatch.setenv(TRUST_ENV, " my_pkg. , os.system ")
    assert is_allowed("os.system") and is_allowed("my_pkg.models.Net")
    monkeypatch.setenv(TRUST_ENV, "os system")
    with pytest.raises(ConfigError, match=TRUST_ENV):
        is_allowed("os.system")
    monkeypatch.delenv(TRUST_ENV)
    with pytest.raises(ConfigError, match=r"trust: '\*' is neither"):
        is_allowed("os.system", ["*"])


@pytest.fixture
def plugin_run(finished_runs, tmp_path, monkeypatch):
    """Two copies of the finished classification run whose model is a class of the user's own
    module, `plugin_<test>.TrustedNet` (importing it leaves a mark)."""
    module = f"plugin_{tmp_path.name}"
    marker = tmp_path / "imported"
    text = PLUGIN_MODULE + f"\nfrom pathlib import Path\nPath({str(marker)!r}).touch()\n"
    (tmp_path / f"{module}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(TRUST_ENV, raising=False)
    runs = []
    for name in ("a", "b"):
        run = tmp_path / name
        shutil.copytree(finished_runs["classification"], run)
        for file in ("best.pt", "last.pt"):
            state = load_checkpoint(run / "checkpoints" / file)
            state["config"]["model"]["_target_"] = f"{module}.TrustedNet"
            torch.save(state, run / "checkpoints" / file)
        runs.append(run)
    return module, marker, runs


def test_a_plugin_loads_when_trusted_by_name_prefix_or_environment(
    plugin_run, tmp_path, monkeypatch, capsys
):
    from medtrain.commands.ensemble import main as ensemble
    from medtrain.commands.report import main as report
    from medtrain.inference.predictor import Predictor
    from medtrain.inference.run import load_run

    module, marker, (run, other) = plugin_run
    with pytest.raises(ConfigError, match=rf"trust=\[{module}.TrustedNet\]"):
        load_run(run)
    assert not marker.exists() and module not in sys.modules
    assert type(load_run(run, trust=[f"{module}.TrustedNet"]).model).__name__ == "TrustedNet"
    assert Predictor(run, trust=[f"{module}."]).model is not None
    out = tmp_path / "ensemble"
    trust = f"trust=[{module}.]"
    assert ensemble([f"run_dirs=[{run},{other}]", f"output={out}", "device=cpu", trust]) == 0
    assert (out / "metrics.json").is_file() and (out / "report.html").is_file()
    assert report([f"run_dir={run}"]) == 2  # the report has no trust= key: the variable
    assert "MEDTRAIN_TRUSTED_TARGETS" in capsys.readouterr().err
    monkeypatch.setenv(TRUST_ENV, f"{module}.TrustedNet")
    assert load_run(run).model is not None
    assert report([f"run_dir={run}"]) == 0
    assert "Grad-CAM not available" not in (run / "report.html").read_text()
