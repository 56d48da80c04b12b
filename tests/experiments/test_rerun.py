"""`medtrain rerun`: reruns of classification, segmentation and regression runs reproduce
their metrics bit for bit on the CPU (and within the CUDA tolerance on a GPU); an edited saved config,
a changed environment and bad input are named; the metric, config and environment comparisons on
their own."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from medtrain.commands.rerun import main
from medtrain.engine.provenance import write_provenance
from medtrain.experiments.rerun import (
    compare_metrics,
    config_changes,
    environment_changes,
    metric_tolerance,
)
from tests.conftest import ON_CPU, ROOT, TINY, read_metrics, run_cli, run_main
from tests.tasks.test_regression import TINY_CLINICAL
from tests.tasks.test_segmentation import TINY_SEG

# Smaller still than the shared tiny configs (later overrides win): 7 trainings in this file.
RUNS = {
    "classification": [
        *TINY,
        "dataset.num_train=48",
        "dataset.num_val=24",
        "dataset.num_test=24",
        ON_CPU,
    ],
    "segmentation": [
        *TINY_SEG,
        "dataset.num_train=16",
        "dataset.num_val=2",
        "dataset.num_test=2",
        "dataset.test_image_size=64",
        "task.num_overlays=1",
        "trainer.max_epochs=1",
        ON_CPU,
    ],
    "regression": [
        *TINY_CLINICAL,
        "task=regression",
        "loss=mse",
        "dataset.num_train=48",
        "dataset.num_val=24",
        "dataset.num_test=24",
        "dataset.image_size=16",
        "trainer.max_epochs=1",
        ON_CPU,
    ],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`trained(name)`: a finished run of RUNS[name] made by the train command (so .hydra/ exists),
    once."""
    runs = {}

    def get(name: str) -> Path:
        if name not in runs:
            run = tmp_path_factory.mktemp(name) / "run"
            assert run_main(*RUNS[name], f"hydra.run.dir={run}") == 0
            # Once __main__ writes provenance at the start of every run this file is always there.
            if not (run / "provenance.json").is_file():
                device = json.loads((run / "run_info.json").read_text())["device"]
                write_provenance(run, OmegaConf.load(run / ".hydra" / "config.yaml"), device)
            runs[name] = run
        return runs[name]

    return get


def test_compare_metrics_exact_within_tolerance_missing_and_null():
    a = {"test/auc": 0.91, "test/hd95": None, "best_epoch": 2}
    assert compare_metrics(a, dict(a), 0.0) == []
    assert compare_metrics(a, {**a, "test/auc": 0.91 + 1e-12}, 0.0) == [
        "test/auc 0.91 -> 0.910000000001"
    ]
    assert compare_metrics(a, {**a, "test/auc": 0.91 + 1e-6}, 1e-5) == []
    assert compare_metrics(a, {**a, "test/auc": 0.93}, 1e-5) == ["test/auc 0.91 -> 0.93"]
    assert compare_metrics(a, {**a, "test/hd95": 3.5}, 0.0) == ["test/hd95 null -> 3.5"]
    assert compare_metrics(a, {**a, "best_epoch": 1}, 0.0) == ["best_epoch 2 -> 1"]
    fewer = {k: v for k, v in a.items() if k != "best_epoch"}
    assert compare_metrics(a, fewer, 0.0) == ["best_epoch only in the original (2)"]
    assert compare_metrics(fewer, a, 0.0) == ["best_epoch only in the rerun (2)"]


def test_tolerance_is_cuda_atol_when_either_run_used_cuda():
    assert metric_tolerance(["cpu", "cpu"], 0.0, 1e-4) == 0.0
    assert metric_tolerance(["cpu", "cuda:0"], 0.0, 1e-4) == 1e-4
    assert metric_tolerance(["cuda", None], 0.0, 1e-4) == 1e-4


def test_environment_changes_name_versions_commit_data_and_determinism():
    a = {
        "created": "2026-01-01",
        "command": ["a"],
        "device": "cpu",
        "environment": {"torch": "2.14.1", "packages": {"numpy": "2.4.6", "torch": "2.14.1"}},
        "git": {"commit": "a" * 40, "dirty": False, "branch": "main"},
        "data": {"sha256": "1" * 64, "files": 3},
        "determinism": {"cudnn_benchmark": False},
    }
    b = json.loads(json.dumps(a))
    assert environment_changes(a, b) == []
    b |= {"created": "2026-02-02", "command": ["b"], "device": "cuda:0"}
    b["environment"] = {"torch": "2.15.0", "packages": {"numpy": "2.4.6", "scipy": "1.17.1"}}
    b["git"] = {"commit": "b" * 40, "dirty": True, "branch": "other"}
    b["data"] = {"sha256": "2" * 64, "files": 4}
    del b["determinism"]  # a section that one side lacks is not compared
    assert environment_changes(a, b) == [
        "device cpu -> cuda:0",
        "torch 2.14.1 -> 2.15.0",
        "scipy (absent) -> 1.17.1",
        "git commit aaaaaaaaaaaa -> bbbbbbbbbbbb",
        "git dirty false -> true",
        "data fingerprint 111111111111 -> 222222222222",
    ]


def fake_run(root: Path, yaml: dict, trained_config: dict) -> Path:
    """A run folder with just a saved config and a checkpoint config (no training)."""
    (root / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(yaml), root / ".hydra" / "config.yaml")
    (root / "checkpoints").mkdir()
    torch.save({"config": trained_config}, root / "checkpoints" / "best.pt")
    return root


def test_config_changes_ignore_inferred_keys_and_name_edits(tmp_path):
    yaml = {
        "dataset": {"num_classes": None, "class_names": None, "size": 16},
        "model": {"num_classes": "${dataset.num_classes}", "widths": [8, 16]},
        "optimizer": {"lr": 1e-3},
        "task": {"target_mean": None},
    }
    trained_config = {
        "dataset": {"num_classes": 2, "class_names": ["a", "b"], "size": 16},
        "model": {"num_classes": 2, "widths": [8, 16]},
        "optimizer": {"lr": 1e-3},
        "task": {"target_mean": [3.5]},
    }
    assert config_changes(fake_run(tmp_path / "same", yaml, trained_config)) == []
    edited = json.loads(json.dumps(yaml))
    edited["optimizer"]["lr"] = 1e-2
    edited["model"]["widths"] = [8, 32]
    edited["dataset"]["extra"] = True
    del edited["dataset"]["size"]
    assert config_changes(fake_run(tmp_path / "edited", edited, trained_config)) == [
        "dataset.extra (not in the run) -> true",
        "model.widths.1 16 -> 32",
        "optimizer.lr 0.001 -> 0.01",
        "dataset.size 16 -> (not in the config)",
    ]


@pytest.mark.parametrize("name", ["classification", "segmentation", "regression"])
def test_rerun_reproduces_metrics_exactly_on_the_cpu(name, trained, tmp_path, capsys):
    run = trained(name)
    # Three spellings of where to write: output=, its alias hydra.run.dir=, and the default.
    where = {
        "classification": [f"output={tmp_path / 'again'}"],
        "regression": [f"hydra.run.dir={tmp_path / 'again'}"],
        "segmentation": [],
    }[name]
    assert main([f"run_dir={run}", *where]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    again = tmp_path / "again" if where else next(run.parent.glob("run_rerun_*"))
    metrics = read_metrics(run)
    assert lines[-1] == f"verdict: REPRODUCED ({len(metrics)} metrics identical, tolerance 0)"
    assert not any(line.startswith(("config changed", "metric differs")) for line in lines)
    assert read_metrics(again) == metrics
    report = json.loads((again / "rerun.json").read_text())
    assert report["verdict"] == "REPRODUCED" and report["tolerance"] == 0
    assert report["original"] == str(run) and report["rerun"] == str(again)
    if name == "segmentation":
        shutil.rmtree(again)  # keep the module's run folder for other tests tidy


def test_a_run_reruns_with_its_own_cpu_thread_count(tmp_path, monkeypatch, capsys):
    """A run trained with another CPU thread count than the rerun's process would have (each fold of
    `medtrain cv cv.jobs=2` gets half the cores) reruns with its own: provenance.json records it.
    (Trained with `trainer.resume=auto`, as a requeued job is: the rerun trains from scratch.)"""
    run = tmp_path / "run"
    auto = "trainer.resume=auto"
    threads = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(2)
        assert (
            run_main(*RUNS["classification"], "dataset.image_size=32", auto, f"hydra.run.dir={run}")
            == 0
        )
        assert json.loads((run / "provenance.json").read_text())["determinism"]["cpu_threads"] == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert main([f"run_dir={run}", f"output={tmp_path / 'again'}"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "note: the run computed with 2 CPU thread(s); the rerun too" in out
    assert "note: the run said trainer.resume=auto; the rerun trains from scratch" in out
    again = json.loads((tmp_path / "again" / "provenance.json").read_text())
    assert again["determinism"]["cpu_threads"] == 2
    assert read_metrics(tmp_path / "again") == read_metrics(run)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rerun_of_a_cuda_run_reproduces_within_the_cuda_tolerance(tmp_path):
    """Deterministic kernels, each run in a fresh process (cuBLAS reads its workspace setting when
    a process first uses it)."""
    run = tmp_path / "run"
    overrides = [o for o in RUNS["segmentation"] if o != ON_CPU]
    done = run_cli(
        *overrides, "trainer.device=cuda", "trainer.deterministic=true", f"hydra.run.dir={run}"
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "medtrain",
            "rerun",
            f"run_dir={run}",
            f"output={tmp_path / 'again'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    report = json.loads((tmp_path / "again" / "rerun.json").read_text())
    assert report["verdict"] == "REPRODUCED" and report["tolerance"] == 1e-4


def test_an_edited_saved_config_is_a_mismatch_that_names_the_key(trained, tmp_path, capsys):
    run = tmp_path / "edited"
    shutil.copytree(trained("classification"), run)
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    lr = saved.optimizer.lr
    saved.optimizer.lr = lr * 10
    OmegaConf.save(saved, run / ".hydra" / "config.yaml")
    provenance = json.loads((run / "provenance.json").read_text())
    provenance["environment"]["torch"] = "0.0.1"  # as if trained with another torch
    (run / "provenance.json").write_text(json.dumps(provenance))

    assert main([f"run_dir={run}", f"output={tmp_path / 'again'}"]) == 1
    out = capsys.readouterr().out
    assert f"config changed since the run: optimizer.lr {lr:g} -> {lr * 10:g}" in out
    assert f"environment changed: torch 0.0.1 -> {torch.__version__}" in out
    assert "metric differs: test/" in out  # it still ran, with the edited learning rate
    verdict = out.strip().splitlines()[-1]
    assert verdict.startswith("verdict: MISMATCH: test/")
    assert "; config changed: optimizer.lr" in verdict and "environment changed: torch" in verdict
    report = json.loads((tmp_path / "again" / "rerun.json").read_text())
    assert report["verdict"] == "MISMATCH" and report["config_changes"]


def test_an_edit_of_how_progress_is_shown_is_reported_but_no_mismatch(trained, tmp_path, capsys):
    run = tmp_path / "quiet"
    shutil.copytree(trained("classification"), run)
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    saved.trainer.progress = not saved.trainer.progress
    OmegaConf.save(saved, run / ".hydra" / "config.yaml")
    assert main([f"run_dir={run}", f"output={tmp_path / 'again'}"]) == 0
    out = capsys.readouterr().out
    assert "config changed since the run (no effect on results): trainer.progress" in out
    assert out.strip().splitlines()[-1].startswith("verdict: REPRODUCED")


def test_bad_input_is_one_error_line_and_status_2(tmp_path, capsys):
    missing = tmp_path / "missing"
    done = subprocess.run(
        [sys.executable, "-m", "medtrain", "rerun", f"run_dir={missing}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: run_dir: {missing} is not a folder"]

    run = tmp_path / "run"
    run.mkdir()
    cases = [
        ([f"run_dir={run}"], str(run / ".hydra" / "config.yaml")),
        (["run_dir=" + str(run), "atol=-1"], "atol=-1"),
        (["run_dir=" + str(run), "tolerance=1"], "unknown key 'tolerance'"),
        (["output=x"], "run_dir is required"),
    ]
    for argv, named in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    grid = tmp_path / "grid"  # a grid's folder: its runs are the job folders below it
    for job in ("0", "1", "10", "2"):
        (grid / job / ".hydra").mkdir(parents=True)
        (grid / job / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (grid / "multirun.yaml").write_text("{}")
    assert main([f"run_dir={grid}"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: run_dir: {grid} holds a grid (medtrain -m), not a run: rerun one of its runs, "
        f"run_dir={grid / '0'} (its runs: 0, 1, 2, 10)"
    )
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("seed: 1\n")
    assert main([f"run_dir={run}"]) == 2
    assert str(run / "metrics.json") in capsys.readouterr().err
    (run / "metrics.json").write_text("{}")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("")
    assert main([f"run_dir={run}", f"output={tmp_path / 'taken'}"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_changed_data_are_refused_before_anything_is_trained(tmp_path, capsys):
    """A manifest run whose image changed since: refused at once, naming the fingerprints, with
    no rerun folder made (the rerun used to train in full, then report a MISMATCH)."""
    from medtrain.commands import main as medtrain
    from tests.data.test_manifest import make_cases, write_png

    csv_path = make_cases(tmp_path / "data", [0, 1] * 12)
    run = tmp_path / "run"
    overrides = ["dataset=manifest", f"dataset.path={csv_path}", "dataset.image_size=16"]
    overrides += ["trainer.max_epochs=1", "trainer.progress=false", "trainer.report=false", ON_CPU]
    assert medtrain([*overrides, f"hydra.run.dir={run}"]) == 0
    write_png(tmp_path / "data" / "images" / "case003.png", 200, seed=99)  # an image replaced
    out = tmp_path / "again"
    assert main([f"run_dir={run}", f"output={out}"]) == 2
    err = capsys.readouterr().err
    assert f"the data changed since the run: {csv_path} (data fingerprint " in err
    assert "cannot reproduce the run" in err and not out.exists()


def test_a_run_of_a_relative_data_path_reruns_from_the_same_folder(tmp_path, monkeypatch, capsys):
    """`dataset.path` relative to the folder the run was trained in (as the README's commands
    give it): the rerun reads it from there too. Hydra's default for a saved config moved into
    the rerun's folder, where the path was not found."""
    from medtrain.commands import main as medtrain
    from tests.data.test_manifest import make_cases

    make_cases(tmp_path / "data", [0, 1] * 12)
    monkeypatch.chdir(tmp_path)
    overrides = ["dataset=manifest", "dataset.path=data/cases.csv", "dataset.image_size=16"]
    overrides += ["trainer.max_epochs=1", "trainer.progress=false", "trainer.report=false", ON_CPU]
    assert medtrain([*overrides, "hydra.run.dir=runs/first"]) == 0
    assert main(["run_dir=runs/first", "output=runs/again"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("verdict: REPRODUCED")
    assert Path.cwd() == tmp_path
    assert read_metrics(tmp_path / "runs" / "again") == read_metrics(tmp_path / "runs" / "first")
    # From another folder the path is not found: said before the rerun's process starts.
    monkeypatch.chdir(tmp_path / "runs")
    assert main(["run_dir=first", "output=third"]) == 2
    assert capsys.readouterr().err == (
        f"error: dataset.path=data/cases.csv is not found from {tmp_path / 'runs'}: it is "
        f"relative, and the run started in {tmp_path}, where it is: run the rerun from there\n"
    )
    assert not (tmp_path / "runs" / "third").exists()


def test_what_resumed_sessions_changed_is_named_by_epoch():
    """Sessions of a run's provenance.json that changed what is computed: config values (not
    how progress shows or how fast data are read), processes, the environment (not the kernel
    named by platform); a run of a release before sessions, or continued as it started, has
    none."""
    from medtrain.experiments.rerun import resumed_changes, resumed_values

    provenance = {
        "distributed": {"world_size": 2},
        "resumed": [
            {
                "after_epoch": 2,
                "processes": 2,
                "config_changes": {"trainer.num_workers": [0, 4], "trainer.progress": [1, 0]},
                "environment_changes": {"environment.platform": ["Linux-6.1", "Linux-6.2"]},
            },
            {
                "after_epoch": 3,
                "processes": 1,
                "config_changes": {"trainer.max_epochs": [3, 4]},
                "environment_changes": {
                    "environment.packages.numpy": ["2.4.6", "2.5.0"],
                    "determinism.cpu_threads": [2, 1],
                    "git.commit": ["a" * 40, "b" * 40],
                },
            },
            {"after_epoch": 4, "processes": 2, "config_changes": {"trainer.max_epochs": [4, 5]}},
        ],
    }
    assert resumed_changes(provenance) == [
        "after epoch 3: trainer.max_epochs 3 -> 4, 1 process(es) where the run started with 2, "
        "numpy 2.4.6 -> 2.5.0, determinism.cpu_threads 2 -> 1, git commit aaaaaaaaaaaa -> "
        "bbbbbbbbbbbb",
        "after epoch 4: trainer.max_epochs 4 -> 5",
    ]
    assert resumed_values(provenance) == {
        "trainer.num_workers": 4,
        "trainer.progress": 0,
        "trainer.max_epochs": 5,
    }
    unchanged = {"resumed": [{"after_epoch": 2, "processes": 1, "config_changes": {}}]}
    for record in (None, {}, {"created": "2026-12-05"}, unchanged, {"resumed": "damaged"}):
        assert resumed_changes(record) == [] and resumed_values(record) == {}


def test_a_run_trained_longer_on_resume_is_said_not_to_reproduce_bit_for_bit(tmp_path, capsys):
    """A finished 2-epoch run continued to 3 epochs (allowed, warned about): its rerun trains 3
    epochs in one go, so its metrics differ; the verdict says the run was resumed with another
    trainer.max_epochs, rather than 18 differing metrics with no config or environment change."""
    from medtrain.commands import main as medtrain

    run, again = tmp_path / "run", tmp_path / "again"
    overrides = [*RUNS["classification"], "trainer.max_epochs=2", f"hydra.run.dir={run}"]
    assert medtrain(overrides) == 0
    assert medtrain([*overrides, "trainer.resume=true", "trainer.max_epochs=3"]) == 0
    capsys.readouterr()
    assert main([f"run_dir={run}", f"output={again}"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    said = (
        "the run was resumed with other values (after epoch 2: trainer.max_epochs 2 -> 3): a "
        "rerun from scratch trains it in one go and is not expected to reproduce it bit for bit"
    )
    assert lines[-1].startswith("verdict: MISMATCH: ") and lines[-1].endswith(said)
    assert (
        "note: the run was resumed with other values than it started with (after epoch 2: "
        "trainer.max_epochs 2 -> 3): the rerun trains it from scratch in one go, so it is not "
        "expected to reproduce the run bit for bit"
    ) in lines
    report = json.loads((again / "rerun.json").read_text())
    assert report["resumed_changes"] == ["after epoch 2: trainer.max_epochs 2 -> 3"]
    assert report["config_changes"] == [] and report["environment_changes"] == []
    assert not any(line.startswith("config changed") for line in lines)
    assert read_metrics(again)["epochs_trained"] == read_metrics(run)["epochs_trained"] == 3


def test_a_rerun_stopped_by_sigterm_stops_its_training_and_says_what_is_left(tmp_path):
    """SIGTERM (a batch system's time limit) to `medtrain rerun` ended it alone: its training
    went on as an orphan and wrote a run folder without a verdict. Its training now stops with
    it, and the command says what the folder holds (exit status 130, as Ctrl-C)."""
    import signal
    import time

    run = tmp_path / "run"
    # Ten epochs: the rerun is caught after its first.
    assert run_main(f"hydra.run.dir={run}", *TINY, ON_CPU, "trainer.max_epochs=10") == 0
    out = tmp_path / "again"
    process = subprocess.Popen(
        [sys.executable, "-m", "medtrain", "rerun", f"run_dir={run}", f"output={out}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "history.csv").exists():  # the rerun's first epoch is done
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "interrupted: the rerun's training stopped, and gave no verdict" in err
    assert not (out / "rerun.json").exists() and not (out / "metrics.json").exists()
    leftover = [
        p
        for p in Path("/proc").glob("[0-9]*")
        if str(out) in (p / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
    ]
    assert leftover == []
