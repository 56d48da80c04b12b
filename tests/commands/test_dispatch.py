"""`medtrain [verb] [arguments]`: the verbs, their help, the default verb, and command lines that
leave the process as they found it."""

from __future__ import annotations

import ast
import sys

import pytest

from medtrain.commands import VERBS, main, verb_of
from tests.conftest import ROOT, TINY, run_cli


def test_verbs_are_the_documented_ones():
    assert list(VERBS) == [
        "train",
        "predict",
        "serve",
        "export",
        "sweep",
        "rerun",
        "compare",
        "evaluate",
        "report",
        "measure",
        "check-data",
        "ensemble",
        "cv",
    ]
    for verb, (module, summary) in VERBS.items():
        assert (ROOT / "medtrain" / "commands" / f"{module}.py").is_file(), verb
        assert summary and "\n" not in summary


def test_help_lists_every_verb_with_one_line(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb, (_, summary) in VERBS.items():
        assert any(
            line.split() and line.split()[0] == verb and summary in line
            for line in out.splitlines()
        )


@pytest.mark.parametrize("verb", [v for v in VERBS if v != "train"])
def test_each_verb_has_its_own_help(verb, capsys):
    assert main([verb, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"medtrain {verb}" in out and "=" in out  # its usage line and key=value options


def test_train_help_is_hydras_with_the_groups(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "== medtrain train ==" in out and "model: " in out and "experiment: " in out


def test_the_first_argument_picks_the_verb(capsys):
    assert verb_of(["predict", "run_dir=x"]) == ("predict", ["run_dir=x"])
    assert verb_of(["check-data", "dataset=manifest"]) == ("check-data", ["dataset=manifest"])
    for line in (["model=cnn"], ["-m", "seed=1,2"], ["+x=1"], ["~model.depth"], []):
        assert verb_of(line) == ("train", line)
    with pytest.raises(SystemExit) as exit_:
        verb_of(["predcit", "run_dir=x"])
    assert exit_.value.code == 2 and "did you mean 'predict'?" in capsys.readouterr().err
    assert main(["check_data"]) == 2 and "'check-data'" in capsys.readouterr().err


def test_hydra_flags_may_come_before_train_only(capsys):
    flags = ["--config-dir", "my_conf", "-m"]
    assert verb_of([*flags, "train", "--help"]) == ("train", [*flags, "--help"])
    assert verb_of([*flags, "seed=1,2"]) == ("train", [*flags, "seed=1,2"])
    assert verb_of(["--info", "searchpath"]) == ("train", ["--info", "searchpath"])
    with pytest.raises(SystemExit) as exit_:
        verb_of(["--config-dir", "my_conf", "check-data", "dataset=x"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "put the verb first (medtrain check-data ...)" in err
    assert "hydra.searchpath=[file://FOLDER]" in err


def test_version_and_help_words(capsys):
    from medtrain import __version__

    assert main(["--version"]) == 0 and capsys.readouterr().out == f"medtrain {__version__}\n"
    assert main(["sweep", "help"]) == 0 and "sweep.params" in capsys.readouterr().out
    assert main(["check-data", "--config-dir", "x"]) == 2
    assert "hydra.searchpath" in capsys.readouterr().err
    assert main(["sweep", "--config-dir", "x"]) == 2
    assert "hydra.searchpath" in capsys.readouterr().err


def test_a_yaml_error_in_ones_own_config_folder_is_one_line_naming_the_file(tmp_path, capsys):
    """It was Hydra's 89-line PyYAML traceback (train) or one line naming no file (check-data)."""
    (tmp_path / "my_conf" / "dataset").mkdir(parents=True)
    bad = tmp_path / "my_conf" / "dataset" / "mine.yaml"
    bad.write_text("defaults:\n  - manifest\n  - _self_\npath: cases.csv\nimage_size: [16, 16\n")
    said = (
        f"error: {bad} line 6: not valid YAML (expected ',' or ']', but got '<stream end>', "
        "while parsing a flow sequence on line 5)\n"
    )
    assert main(["--config-dir", str(tmp_path / "my_conf"), "dataset=mine"]) == 2
    assert capsys.readouterr().err == said
    searched = f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]"
    assert main(["check-data", searched, "dataset=mine"]) == 2
    assert capsys.readouterr().err.startswith(said)
    # A key given twice: Hydra's loader refused it with a 73-line traceback.
    bad.write_text("defaults:\n  - manifest\n  - _self_\npath: a.csv\npath: b.csv\n")
    assert main(["--config-dir", str(tmp_path / "my_conf"), "dataset=mine"]) == 2
    assert capsys.readouterr().err == (
        f"error: {bad} line 5: not valid YAML (the key 'path' is given twice (first on line 4))\n"
    )


def test_no_command_module_keeps_state_or_rewrites_argv():
    """Commands take their arguments as a list and keep no module-level lists or dicts that a run
    changes; nothing assigns to sys.argv; nothing outside the command layer imports it."""
    for path in sorted((ROOT / "medtrain").rglob("*.py")):
        tree = ast.parse(path.read_text())
        text = path.read_text()
        assert "sys.argv =" not in text and "sys.argv.append" not in text, path
        assert "sys.argv[" not in text or path.parent.name == "commands", path
        if path.parent.name != "commands" and path.name != "__main__.py":
            imported = [
                n.module
                for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom)
                and n.module
                and n.module.startswith("medtrain.commands")
            ]
            assert not imported, f"{path} imports the command layer"
    for path in sorted((ROOT / "medtrain" / "commands").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(
                getattr(node, "value", None), (ast.List, ast.Set)
            ):
                pytest.fail(f"{path.name}: module-level mutable {ast.unparse(node)[:60]}")


def test_a_saved_config_run_leaves_argv_alone(tmp_path, capsys, monkeypatch):
    """`medtrain --config-path ... --config-name config` adds the run-folder settings to the
    parsed arguments, not to sys.argv; `--cfg job` prints the config and trains nothing."""
    monkeypatch.setattr(sys, "argv", ["medtrain"])
    folder = tmp_path / "saved"
    folder.mkdir()
    from omegaconf import OmegaConf

    from tests.conftest import compose_cfg

    (folder / "config.yaml").write_text(OmegaConf.to_yaml(compose_cfg([*TINY])))
    assert main(["--config-path", str(folder), "--config-name", "config", "--cfg", "job"]) == 0
    assert sys.argv == ["medtrain"] and "num_train: 96" in capsys.readouterr().out
    # A relative --config-path is the current folder's (Hydra alone looks in the package).
    monkeypatch.chdir(tmp_path)
    assert main(["--config-path", "saved", "--config-name", "config", "--cfg", "job"]) == 0
    assert "num_train: 96" in capsys.readouterr().out


def test_python_dash_m_medtrain_without_a_verb_is_train(tmp_path):
    """`python -m medtrain <overrides>` (no verb) composes and runs what `medtrain train
    <overrides>` does: the same job config. (Training through `python -m medtrain` is what the
    CLI tests of tests/engine and tests/experiments do.)"""
    plain = run_cli(*TINY, "--cfg", "job")
    verb = run_cli("train", *TINY, "--cfg", "job")
    assert plain.returncode == 0 and verb.returncode == 0, plain.stderr[-2000:]
    assert plain.stdout == verb.stdout and "num_train: 96" in plain.stdout
