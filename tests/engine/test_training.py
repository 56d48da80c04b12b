"""End-to-end training on synthetic data: every model family, the run-folder contract, predictions
that recompute to the reported metrics, resume = uninterrupted, rerun = original, a sweep."""

import contextlib
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn import metrics as skm

import medtrain.engine.loop
from medtrain.engine.provenance import data_fingerprint
from medtrain.engine.resume import ENDING_FILES
from medtrain.errors import ConfigError
from medtrain.io import load_checkpoint
from tests.conftest import ON_CPU, TINY, compose_cfg, read_metrics, run_main, train_in_process


def read_predictions(run_dir: Path) -> list[dict]:
    with open(run_dir / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("model", ["cnn", "resnet18", "densenet121", "efficientnet_b0", "resnet50"])
def test_each_model_family_trains_end_to_end(tmp_path, model):
    extra = [
        "dataset.num_train=32",
        "dataset.num_val=16",
        "dataset.num_test=16",
        "trainer.max_epochs=1",
    ]
    metrics = train_in_process(tmp_path, [*TINY, f"model={model}", *extra])
    assert 0.0 <= metrics["test/auc"] <= 1.0
    for name in (
        "metrics.json",
        "history.csv",
        "predictions.csv",
        "confusion_matrix.csv",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
    ):
        assert (tmp_path / name).is_file(), name


def test_run_folder_contract_and_metrics_recompute_from_predictions(tmp_path):
    metrics = train_in_process(tmp_path, [*TINY, "trainer.max_epochs=3", "task.threshold=youden"])
    assert read_metrics(tmp_path) == json.loads(json.dumps(metrics))
    rows = read_predictions(tmp_path)
    assert len(rows) == 48 and list(rows[0]) == ["id", "target", "pred", "prob_0", "prob_1"]
    target = np.array([int(r["target"]) for r in rows])
    prob = np.array([float(r["prob_1"]) for r in rows])
    pred = np.array([int(r["pred"]) for r in rows])
    threshold = metrics["threshold"]
    assert np.array_equal(pred, (prob >= threshold).astype(int))
    assert metrics["test/auc"] == pytest.approx(skm.roc_auc_score(target, prob), abs=1e-6)
    assert metrics["test/acc"] == pytest.approx(skm.accuracy_score(target, pred), abs=1e-6)
    assert metrics["test/acc@0.5"] == pytest.approx(
        skm.accuracy_score(target, prob >= 0.5), abs=1e-6
    )
    assert np.allclose(prob + np.array([float(r["prob_0"]) for r in rows]), 1.0)
    with open(tmp_path / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    assert [int(h["epoch"]) for h in history] == [1, 2, 3]
    assert {"train/loss", "val/loss", "val/auc", "val/acc"} <= set(history[0])
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["threshold"] == threshold and best["best_epoch"] == metrics["best_epoch"]
    assert max(float(h["val/auc"]) for h in history) == pytest.approx(best["best_metric"])


@contextlib.contextmanager
def interrupted_at_epoch(epoch: int):
    """Training raises KeyboardInterrupt (Ctrl-C) when `epoch` starts, inside the block."""
    with pytest.MonkeyPatch.context() as patch:
        original = medtrain.engine.loop.train_one_epoch

        def interrupted(*args, **kwargs):
            if args[8] == epoch:  # the epoch argument
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        patch.setattr(medtrain.engine.loop, "train_one_epoch", interrupted)
        yield


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    overrides = [
        *TINY,
        "trainer.max_epochs=3",
        "augmentation=strong",
        "scheduler=onecycle",
        "trainer.ema_decay=0.9",
        ON_CPU,
    ]
    full = train_in_process(tmp_path / "full", overrides)
    last = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    assert last["ema_steps"] == 3 * 6  # the average saved as "model" followed every optimizer step
    assert not torch.equal(last["model"]["head.3.weight"], last["training_model"]["head.3.weight"])

    with interrupted_at_epoch(2), pytest.raises(KeyboardInterrupt):
        train_in_process(tmp_path / "cut", overrides)
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["epoch"] == 2
    resumed = train_in_process(tmp_path / "cut", [*overrides, "trainer.resume=true"])
    assert resumed == full

    def history(run):  # everything but the wall-clock column
        with open(tmp_path / run / "history.csv", newline="") as f:
            return [{k: v for k, v in row.items() if k != "time_s"} for row in csv.DictReader(f)]

    assert len(history("cut")) == 3 and history("cut") == history("full")


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    from medtrain.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.resume=true: no checkpoint"):
        train_in_process(tmp_path, [*TINY, "trainer.resume=true"])


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_resume_from_a_damaged_checkpoint_says_what_to_do(tmp_path, capsys, damage):
    """A last.pt cut short (a copy back from a backup that did not finish) or emptied is one
    error naming the file, not torch's zip reader's traceback; the best.pt of a finished run the
    same, through what reads it for prediction and export."""
    from medtrain.commands import main
    from medtrain.inference.run import load_run

    overrides = [*TINY, "trainer.max_epochs=1", ON_CPU]
    run = tmp_path / "run"
    assert main([*overrides, f"hydra.run.dir={run}"]) == 0
    (run / "metrics.json").unlink()  # as if interrupted
    for name in ("last.pt", "best.pt"):
        checkpoint = run / "checkpoints" / name
        data = checkpoint.read_bytes()
        checkpoint.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    capsys.readouterr()
    assert main([*overrides, "trainer.resume=true", f"hydra.run.dir={run}"]) == 2
    last = run / "checkpoints" / "last.pt"
    what = (
        f"is truncated or damaged ({last.stat().st_size} bytes): torch cannot read it (failed "
        "reading zip archive: failed finding central directory)"
        if damage == "truncated"
        else "is an empty file (0 bytes), not a checkpoint"
    )
    captured = capsys.readouterr()
    assert (
        f"trainer.resume=true: {last} {what}. Restore it from a copy to continue the run, or "
        "delete it to start the run over (train without trainer.resume, or with "
        "trainer.resume=auto)"
    ) in captured.out + captured.err
    assert "Traceback" not in captured.out + captured.err
    best = run / "checkpoints" / "best.pt"
    if damage == "empty":
        with pytest.raises(ConfigError) as caught:
            load_run(run)
        assert str(caught.value) == f"run_dir: {best} is an empty file (0 bytes), not a checkpoint"


def test_resume_auto_starts_a_new_run_then_continues_it(tmp_path):
    """`trainer.resume=auto`, one command for a job's first start and its restarts: a new run
    where the folder has no last.pt, the interrupted run continued (equal to an uninterrupted
    one) where it has; its rerun reproduces it."""
    from medtrain.commands import main
    from medtrain.experiments.rerun import rerun

    overrides = [*TINY, "trainer.max_epochs=3", ON_CPU]
    full = train_in_process(tmp_path / "full", overrides)
    cut = tmp_path / "cut"
    command = [*overrides, "trainer.resume=auto", f"hydra.run.dir={cut}"]
    with interrupted_at_epoch(2):
        assert main(command) == 130  # interrupted
    assert load_checkpoint(cut / "checkpoints" / "last.pt")["epoch"] == 2
    assert main(command) == 0
    assert read_metrics(cut) == read_metrics(tmp_path / "full") == json.loads(json.dumps(full))
    # The checkpoints record what `auto` found; the rerun trains from scratch to the same metrics.
    result = rerun(cut, tmp_path / "again")
    assert result["verdict"] == "REPRODUCED", result["lines"]
    assert result["resumed_changes"] == []  # continued as it started: nothing to say
    # A folder with results but no last.pt is not continued, nor trained over.
    (cut / "checkpoints" / "last.pt").unlink()
    refused = "already holds a run \\(metrics.json\\): train into a new folder \\(it has no"
    with pytest.raises(ConfigError, match=refused):
        train_in_process(cut, [*overrides, "trainer.resume=auto"])


def test_a_finished_run_continued_with_resume_auto_is_tested_again_as_it_was(tmp_path):
    """A grid continued with trainer.resume=auto tests its finished jobs again: their metrics
    and their recorded training time stand (the time was rewritten as the epochs' sum plus the
    test pass)."""
    command = [*TINY, "trainer.max_epochs=1", ON_CPU, "trainer.resume=auto"]
    assert run_main(*command, f"hydra.run.dir={tmp_path}") == 0
    before = json.loads((tmp_path / "run_info.json").read_text())["train_seconds"]
    metrics = read_metrics(tmp_path)
    assert run_main(*command, f"hydra.run.dir={tmp_path}") == 0
    assert json.loads((tmp_path / "run_info.json").read_text())["train_seconds"] == before
    assert read_metrics(tmp_path) == metrics


def test_multiclass_image_folder_run(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(["cyst", "normal", "tumour"]):  # classes differ in mean brightness
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(30):
            pixels = rng.normal(15000 + 15000 * k, 3000, (20, 24)).clip(0, 65535).astype(np.uint16)
            Image.fromarray(pixels).save(tmp_path / "data" / name / f"{i}.png")
    run = tmp_path / "run"
    metrics = train_in_process(
        run,
        [
            "dataset=image_folder",
            f"dataset.path={tmp_path / 'data'}",
            "dataset.image_size=16",
            "dataset.normalize.mode=fixed",
            "trainer.max_epochs=4",
            "trainer.batch_size=16",
            "trainer.progress=false",
            "optimizer.lr=3e-3",
        ],
    )
    assert metrics["test/auc"] > 0.9
    assert {"test/auc_cyst", "test/f1_tumour", "test/sensitivity_normal"} <= set(metrics)
    assert "threshold" not in metrics  # multi-class predictions are the most probable class
    rows = read_predictions(run)
    assert len(rows) == 14 and list(rows[0]) == [
        "id",
        "target",
        "pred",
        "prob_0",
        "prob_1",
        "prob_2",
    ]
    probs = np.array([[float(r[f"prob_{k}"]) for k in range(3)] for r in rows])
    target = np.array([int(r["target"]) for r in rows])
    assert metrics["test/auc"] == pytest.approx(
        skm.roc_auc_score(target, probs, multi_class="ovr"), abs=1e-6
    )
    header = (run / "confusion_matrix.csv").read_text().splitlines()[0]
    assert header == "true,pred_cyst,pred_normal,pred_tumour"


def test_multilabel_run(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 64), ("val", 32), ("test", 32)):
        labels = rng.integers(0, 2, (n, 3)).astype(np.uint8)
        images = rng.integers(0, 60, (n, 16, 16), dtype=np.uint8)
        for k in range(3):  # each label brightens its own third of the image
            images[labels[:, k] == 1, :, k * 5 : (k + 1) * 5] += 150
        arrays |= {f"{split}_images": images, f"{split}_labels": labels}
    np.savez(tmp_path / "ml.npz", **arrays)
    run = tmp_path / "run"
    metrics = train_in_process(
        run,
        [
            "dataset=medmnist",
            f"dataset.path={tmp_path / 'ml.npz'}",
            "loss=bce",
            "trainer.max_epochs=4",
            "trainer.batch_size=16",
            "trainer.progress=false",
            "augmentation=none",
            "task.threshold=youden",
        ],
    )
    assert metrics["test/auc"] > 0.8
    assert {"threshold_0", "threshold_1", "threshold_2"} <= set(
        metrics
    ) and "threshold" not in metrics
    header = read_predictions(run)[0].keys()
    assert {"target_0", "target_2", "pred_1", "prob_2"} <= set(header)


def test_cross_entropy_on_multilabel_data_is_refused(tmp_path):
    from medtrain.errors import ConfigError

    labels = np.zeros((4, 3), dtype=np.uint8)
    np.savez(
        tmp_path / "ml.npz",
        **{
            f"{s}_{k}": (np.zeros((4, 8, 8), np.uint8) if k == "images" else labels)
            for s in ("train", "val", "test")
            for k in ("images", "labels")
        },
    )
    with pytest.raises(ConfigError, match="loss=cross_entropy cannot train multi-label"):
        train_in_process(
            tmp_path / "r", ["dataset=medmnist", f"dataset.path={tmp_path / 'ml.npz'}"]
        )


def test_tensorboard_scalars_are_written(tmp_path):
    train_in_process(tmp_path, [*TINY, "trainer.max_epochs=1", "trainer.tensorboard=true"])
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_gradient_accumulation_steps_and_early_stopping(tmp_path):
    overrides = [
        *TINY,
        "trainer.max_epochs=6",
        "trainer.accumulate_grad_batches=4",
        "trainer.gradient_clip_norm=1.0",
        "optimizer=sgd",
        "scheduler=multistep",
        "trainer.early_stopping_patience=1",
    ]
    metrics = train_in_process(tmp_path, overrides)
    # 96 images / batch 16 = 6 batches; windows of 4 and 2 -> 2 optimizer (and scheduler) steps an epoch.
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["scheduler"]["last_epoch"] == 2 * metrics["epochs_trained"]
    assert last["optimizer"]["state"][0]["momentum_buffer"] is not None
    # Patience 1: training stops right after the first epoch that does not improve.
    assert metrics["epochs_trained"] == min(6, metrics["best_epoch"] + 1)


def test_a_run_trains_again_from_its_saved_config_to_equal_results(tmp_path):
    """`medtrain --config-path <run>/.hydra --config-name config`: the saved config alone trains
    the same run again (in this process; `medtrain rerun` runs it as a process of its own)."""
    first = tmp_path / "first"
    assert run_main(*TINY, "augmentation=strong", ON_CPU, f"hydra.run.dir={first}") == 0
    assert (first / "train.log").is_file() and (first / ".hydra" / "config.yaml").is_file()
    again = tmp_path / "again"
    config = ["--config-path", str(first / ".hydra"), "--config-name", "config"]
    assert run_main(*config, f"hydra.run.dir={again}") == 0
    assert read_metrics(again) == read_metrics(first)
    assert (again / "train.log").is_file()  # the rerun keeps the run-folder contract
    assert (again / "predictions.csv").read_text() == (first / "predictions.csv").read_text()


def test_grid_goes_on_past_a_failed_job_and_says_so(tmp_path, capsys):
    grid = ["-m", *TINY, "trainer.max_epochs=1", "optimizer.lr=-1,1e-2"]
    assert run_main(*grid, f"hydra.sweep.dir={tmp_path}") == 1
    assert "1 job(s) failed (job 0)" in capsys.readouterr().err
    assert (tmp_path / "1" / "metrics.json").is_file() and not (
        tmp_path / "0" / "metrics.json"
    ).exists()
    summary = (tmp_path / "sweep_summary.md").read_text()
    assert "failed" in summary and "optimizer.lr" in summary


def test_weights_that_diverge_in_an_epoch_s_last_step_stop_with_advice(tmp_path):
    """The training loss is checked before each step; weights made NaN by an epoch's last step
    showed first in validation, where scikit-learn raised "Input contains NaN" (a traceback, and
    an empty error in a grid's summary)."""
    from medtrain.errors import TrainingError

    sizes = ["dataset.num_train=40", "dataset.num_val=20", "dataset.num_test=20"]
    with pytest.raises(TrainingError) as err:
        train_in_process(tmp_path, [*sizes, "dataset.image_size=16", ON_CPU, "optimizer.lr=100"])
    assert str(err.value) == (
        "the validation loss became nan after epoch 1 (the weights diverged in its last steps); "
        "lower optimizer.lr or set trainer.gradient_clip_norm"
    )


@pytest.mark.slow
def test_default_experiment_clears_the_auc_bar_in_two_of_its_epochs(tmp_path):
    """`python -m medtrain`, its cosine schedule cut to 2 of the 8 epochs: test AUC >= 0.95
    (measured 0.988; the full run's 0.989, and its timing, are benchmarks/default_run.py's)."""
    overrides = ["trainer.progress=false", "trainer.report=false", "trainer.max_epochs=2"]
    assert train_in_process(tmp_path, overrides)["test/auc"] >= 0.95


def test_bf16_autocast_runs_on_cpu(tmp_path):
    metrics = train_in_process(tmp_path, [*TINY, "trainer.max_epochs=1", "trainer.precision=bf16"])
    assert 0.0 <= metrics["test/auc"] <= 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["32", "bf16", "fp16"])
def test_cuda_training(tmp_path, precision):
    metrics = train_in_process(
        tmp_path, [*TINY, "trainer.device=cuda", f"trainer.precision={precision}"]
    )
    assert metrics["test/auc"] > 0.5


def test_nan_monitor_never_counts_as_improvement():
    from medtrain.engine.loop import is_better

    nan = float("nan")
    assert is_better(nan, None, "max")  # the first epoch always gives a best checkpoint
    assert not is_better(nan, 0.7, "max") and is_better(0.6, nan, "max")
    assert is_better(0.2, 0.3, "min") and not is_better(0.3, 0.2, "min")


def test_resume_from_another_run_folder_copies_its_best_checkpoint(tmp_path):
    first = tmp_path / "first"
    train_in_process(first, [*TINY, "trainer.max_epochs=2"])
    metrics = train_in_process(
        tmp_path / "second", [*TINY, "trainer.max_epochs=3", f"trainer.resume={first}"]
    )
    assert (tmp_path / "second" / "checkpoints" / "best.pt").is_file()
    assert (tmp_path / "second" / "checkpoints" / "last.pt").is_file()
    assert metrics["epochs_trained"] == 3


def test_resume_checks_the_config_against_the_checkpoint(tmp_path):
    from medtrain.errors import ConfigError

    train_in_process(tmp_path, [*TINY, "scheduler=onecycle"])
    with pytest.raises(
        ConfigError, match=r"other values of trainer.max_epochs; .*add: trainer.max_epochs=2"
    ):
        train_in_process(
            tmp_path, [*TINY, "scheduler=onecycle", "trainer.max_epochs=3", "trainer.resume=true"]
        )
    with pytest.raises(
        ConfigError, match=r"other values of optimizer.lr; .*add: optimizer.lr=0.001"
    ):
        train_in_process(
            tmp_path, [*TINY, "scheduler=onecycle", "optimizer.lr=0.01", "trainer.resume=true"]
        )
    # Another model changes many keys, whose values are no help to paste: the overrides are.
    with pytest.raises(
        ConfigError,
        match=r"other values of 9 keys \(model._target_, .*\.\.\.\): repeat the original "
        r"command's overrides \(its run folder's .hydra/overrides.yaml lists them\)",
    ):
        train_in_process(
            tmp_path,
            [
                *TINY,
                "scheduler=onecycle",
                "model=resnet18",
                "optimizer.lr=0.01",
                "trainer.resume=true",
            ],
        )
    # Running longer is fine with a schedule whose length is not fixed: it continues from epoch 2.
    train_in_process(tmp_path / "cos", [*TINY])
    metrics = train_in_process(
        tmp_path / "cos", [*TINY, "trainer.max_epochs=3", "trainer.resume=true"]
    )
    assert metrics["epochs_trained"] == 3


def test_a_checkpoint_without_the_keys_of_later_releases_resumes(tmp_path):
    """A checkpoint whose config predates `trainer.distributed` and `model.batch_norm` resumes:
    a key it lacks is compared with the default it meant."""
    train_in_process(tmp_path, [*TINY, ON_CPU])
    last = tmp_path / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(last)
    del checkpoint["config"]["trainer"]["distributed"], checkpoint["config"]["model"]["batch_norm"]
    del checkpoint["config"]["trainer"]["val_every"], checkpoint["config"]["trainer"]["val_tta"]
    torch.save(checkpoint, last)
    longer = [*TINY, ON_CPU, "trainer.max_epochs=3", "trainer.resume=true"]
    with pytest.raises(ConfigError, match=r"model.batch_norm; .*\(add: ~model.batch_norm\)"):
        train_in_process(tmp_path, [*longer, "model.batch_norm=false"])
    # It validated after every epoch: a plateau schedule and best.pt depend on it.
    with pytest.raises(ConfigError, match=r"trainer.val_every.*\(add: trainer.val_every=1\)"):
        train_in_process(tmp_path, [*longer, "trainer.val_every=2"])
    assert train_in_process(tmp_path, longer)["epochs_trained"] == 3


@pytest.mark.parametrize("loss_mean", ["cases", "batches"])
def test_the_evaluation_loss_is_the_mean_over_cases(tmp_path, loss_mean):
    # 48 test images in batches of 20, 20 and 8: the mean of the batches' means weighed the last
    # 8 as much as 20 (runs before release 0.3, and trainer.loss_mean=batches, report that).
    metrics = train_in_process(
        tmp_path, [*TINY, ON_CPU, "trainer.eval_batch_size=20", f"trainer.loss_mean={loss_mean}"]
    )
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = np.array([-np.log(float(r[f"prob_{int(r['target'])}"])) for r in rows])
    batches = [losses[k : k + 20].mean() for k in range(0, len(losses), 20)]
    expected = losses.mean() if loss_mean == "cases" else np.mean(batches)
    assert abs(losses.mean() - np.mean(batches)) > 1e-4  # the two differ here
    assert metrics["test/loss"] == pytest.approx(expected, rel=1e-5)


def test_a_checkpoint_without_augmentation_seeding_resumes_only_as_it_was_seeded(tmp_path):
    """A run before `augmentation.seeding` seeded each transform alike (`per_transform`): its
    checkpoint continues with that value, and the new default is refused, naming the value."""
    train_in_process(tmp_path, [*TINY, ON_CPU, "augmentation.seeding=per_transform"])
    last = tmp_path / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(last)
    del checkpoint["config"]["augmentation"]["seeding"]
    torch.save(checkpoint, last)
    longer = [*TINY, ON_CPU, "trainer.max_epochs=3", "trainer.resume=true"]
    match = r"augmentation.seeding; .*\(add: augmentation.seeding=per_transform\)"
    with pytest.raises(ConfigError, match=match):
        train_in_process(tmp_path, longer)
    resumed = [*longer, "augmentation.seeding=per_transform"]
    assert train_in_process(tmp_path, resumed)["epochs_trained"] == 3


def test_a_config_error_found_after_the_data_check_leaves_no_folder(tmp_path, capsys):
    """A model that cannot be built is found once the data were read: the run's split and data
    report go with the rest of the refused run, in a new folder and in one of one's own; a data
    error keeps its report, which lists the problems."""
    from medtrain.commands import main

    new = tmp_path / "new"
    assert main([*TINY, ON_CPU, "model.dropout=1.5", f"hydra.run.dir={new}"]) == 2
    assert "dropout probability has to be between 0 and 1" in capsys.readouterr().out
    assert not new.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main([*TINY, ON_CPU, "model.dropout=1.5", f"hydra.run.dir={mine}"]) == 2
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    rows = ["image,target,split"]  # a file that does not decode: the data check's error
    for k, split in enumerate(["train", "train", "val", "val", "test", "test"]):
        (tmp_path / f"{k}.png").write_bytes(b"not a picture" if k == 5 else b"")
        rows.append(f"{k}.png,{k % 2},{split}")
    for k in range(5):
        Image.fromarray(np.full((8, 8), 40 * k, np.uint8)).save(tmp_path / f"{k}.png")
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    kept = tmp_path / "kept"
    data = ["dataset=manifest", f"dataset.path={tmp_path / 'cases.csv'}", "trainer.max_epochs=1"]
    assert main([*data, ON_CPU, f"hydra.run.dir={kept}"]) == 2
    assert "the data check found 1 problem(s)" in capsys.readouterr().out
    assert (kept / "data_report.json").is_file()


def test_a_folder_with_a_split_file_of_ones_own_is_no_run_folder(tmp_path, capsys, monkeypatch):
    """splits.json or data_report.json without the provenance.json a run writes first are no
    earlier attempt's: the run is refused and the folder left as it was (the run replaced them),
    however hydra.run.dir names it (through an interpolation, the refusal removed the folder)."""
    from medtrain.commands import main

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "splits.json").write_text('{"mine": 1}')
    monkeypatch.setenv("MEDTRAIN_RUN", str(folder))
    for named in (str(folder), "${oc.env:MEDTRAIN_RUN}"):
        assert main([*TINY, ON_CPU, f"hydra.run.dir={named}"]) == 2
        said = capsys.readouterr()
        assert (
            f"the folder {folder} (hydra.run.dir) holds splits.json, which this run would replace"
        ) in said.out + said.err
        assert [p.name for p in folder.iterdir()] == ["splits.json"]
        assert (folder / "splits.json").read_text() == '{"mine": 1}'
    # Named by Hydra's own resolver (`${hydra:job.name}` is train), and refused by a bad value.
    mine = tmp_path / "hj" / "train"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    named = f"hydra.run.dir={tmp_path / 'hj'}/${{hydra:job.name}}"
    assert main([*TINY, ON_CPU, named, "optimizer.lr=-1"]) == 2
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    # An earlier attempt's (its provenance.json beside them) may be trained over.
    (folder / "provenance.json").write_text("{}")
    assert main([*TINY, ON_CPU, "trainer.max_epochs=1", f"hydra.run.dir={folder}"]) == 0


def test_a_refused_resume_leaves_the_run_folder_as_it_was(tmp_path, capsys):
    """Resuming with overrides other than the run's is refused before anything is written: the
    run's .hydra/ files (which Hydra rewrites first), provenance, splits and data report stay."""
    from medtrain.commands import main

    run = tmp_path / "run"
    assert main([*TINY, ON_CPU, f"hydra.run.dir={run}"]) == 0
    kept = [".hydra/config.yaml", ".hydra/overrides.yaml", "provenance.json", "splits.json"]
    kept += ["data_report.json", "metrics.json", "train.log"]
    before = {name: (run / name).read_bytes() for name in kept}
    other = [*TINY, ON_CPU, "dataset.num_train=64", "trainer.resume=true", f"hydra.run.dir={run}"]
    assert main(other) == 2
    captured = capsys.readouterr()
    assert "dataset.num_train=96" in captured.out + captured.err
    assert {name: (run / name).read_bytes() for name in kept} == before
    # A new run aimed at it, refused: its log lines were appended to the run's train.log.
    assert main([*TINY, ON_CPU, "optimizer.lr=-1", f"hydra.run.dir={run}"]) == 2
    assert {name: (run / name).read_bytes() for name in kept} == before


def test_a_run_refused_by_a_config_error_leaves_no_folder_behind(tmp_path, monkeypatch, capsys):
    """A refused run's time-stamped folder would hold only the refused config and the log of the
    error the console shows: it goes, with its date folder when that is left empty. A folder that
    `hydra.run.dir` named and that existed before the command stays, as does a new one's
    neighbour."""
    from medtrain.commands import main

    monkeypatch.chdir(tmp_path)
    neighbour = tmp_path / "outputs" / "2020-01-01" / "00-00-00"
    neighbour.mkdir(parents=True)
    assert main([*TINY, ON_CPU, "optimizer.lr=abc"]) == 2
    assert "optimizer.lr='abc': must be a number > 0" in "".join(capsys.readouterr())
    assert [p.relative_to(tmp_path).as_posix() for p in (tmp_path / "outputs").rglob("*")] == [
        "outputs/2020-01-01",
        "outputs/2020-01-01/00-00-00",
    ]
    assert main([*TINY, ON_CPU, "optimizer.lr=abc", "hydra.run.dir=new"]) == 2
    assert not (tmp_path / "new").exists()
    # The folder above a named run folder stays, even left empty (here the working folder).
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    assert main([*TINY, ON_CPU, "optimizer.lr=abc", "hydra.run.dir=run1"]) == 2
    assert (tmp_path / "project").is_dir() and not (tmp_path / "project" / "run1").exists()
    monkeypatch.chdir(tmp_path)
    (neighbour / "notes.txt").write_text("mine")
    assert main([*TINY, ON_CPU, "optimizer.lr=abc", f"hydra.run.dir={neighbour}"]) == 2
    assert sorted(p.name for p in neighbour.iterdir()) == ["notes.txt"]  # as it was
    # Refused by its data after the run recorded its provenance: the folder goes too.
    (tmp_path / "cases.csv").write_text("image,target\nimages/nope.png,1\n")
    data = ["dataset=manifest", f"dataset.path={tmp_path / 'cases.csv'}"]
    assert main([ON_CPU, *data, "trainer.max_epochs=1", "hydra.run.dir=bad_data"]) == 2
    assert "nope.png" in "".join(capsys.readouterr())
    assert not (tmp_path / "bad_data").exists()


def test_a_new_run_in_a_folder_of_someone_s_results_is_refused(tmp_path, capsys):
    """A folder that is no run but holds a predictions.csv (or report.html): a run writes those
    at its end only, so they are someone's, and would be replaced."""
    from medtrain.commands import main

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "predictions.csv").write_text("patient,score\np1,0.3\n")
    assert main([*TINY, ON_CPU, f"hydra.run.dir={folder}"]) == 2
    assert f"the folder {folder} (hydra.run.dir) holds predictions.csv, which this run would" in (
        "".join(capsys.readouterr())
    )
    assert (folder / "predictions.csv").read_text() == "patient,score\np1,0.3\n"


def test_a_run_folder_that_is_holds_or_lies_in_the_data_is_refused(tmp_path, capsys):
    """A run in a seg_folder dataset's own folder wrote its predicted masks over the ground
    truth's masks/ (exit 0); the data are left as they were."""
    from medtrain.commands import main
    from tests.data.test_segmentation import make_folder

    data = make_folder(tmp_path / "seg")
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    seg = ["task=segmentation", "model=unet", "loss=dice_ce", "dataset=seg_folder", ON_CPU]
    seg += [f"dataset.path={data}", "trainer.max_epochs=1"]
    for run, where in ((data, "is"), (tmp_path, "holds"), (data / "runs" / "r1", "is inside")):
        assert main([*seg, f"hydra.run.dir={run}"]) == 2
        said = "".join(capsys.readouterr())
        assert (
            f"the run folder {run} (hydra.run.dir) {where} the data (dataset.path={data})" in said
        )
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before
    assert not (data / "runs").exists()  # the folders Hydra made above the refused run too


def test_a_new_run_in_a_run_folder_is_refused_and_leaves_it_as_it_was(tmp_path, capsys):
    """Training (not resuming) into a folder that holds a run would replace its checkpoints and
    metrics and leave its export describing weights that are gone: refused before anything is
    written."""
    from medtrain.commands import main

    run = tmp_path / "run"
    assert main([*TINY, ON_CPU, f"hydra.run.dir={run}"]) == 0
    kept = [".hydra/config.yaml", ".hydra/overrides.yaml", "provenance.json", "splits.json"]
    kept += ["data_report.json", "metrics.json", "checkpoints/best.pt", "checkpoints/last.pt"]
    before = {name: (run / name).read_bytes() for name in kept}
    capsys.readouterr()
    assert main([*TINY, ON_CPU, "trainer.max_epochs=1", f"hydra.run.dir={run}"]) == 2
    captured = capsys.readouterr()
    assert (
        f"the run folder {run} (hydra.run.dir) already holds a run (metrics.json, "
        "checkpoints/last.pt): train into a new folder, or continue that run with "
        "trainer.resume=true"
    ) in captured.out + captured.err
    assert {name: (run / name).read_bytes() for name in kept} == before
    # Nor may another run's checkpoint be continued there (its checkpoints would be copied over).
    other = tmp_path / "other"
    assert main([*TINY, ON_CPU, f"hydra.run.dir={other}"]) == 0
    continued = [*TINY, ON_CPU, f"trainer.resume={other}", f"hydra.run.dir={run}"]
    assert main(continued) == 2
    assert "already holds a run" in capsys.readouterr().out
    assert {name: (run / name).read_bytes() for name in kept} == before
    # A folder with only best.pt (killed between the first epoch's two saves) may start again.
    (run / "metrics.json").unlink()
    (run / "checkpoints" / "last.pt").unlink()
    for name in ENDING_FILES:  # written at a run's end: such a folder holds none
        (run / name).unlink(missing_ok=True)
    assert main([*TINY, ON_CPU, "trainer.max_epochs=1", f"hydra.run.dir={run}"]) == 0


def test_a_grid_run_again_into_its_sweep_folder_trains_its_jobs_again(tmp_path):
    """A multirun's job folders are Hydra's to name: the same grid again replaces them, as before."""
    from medtrain.commands import main

    grid = ["-m", *TINY, ON_CPU, "trainer.max_epochs=1", "optimizer.lr=1e-3,1e-2"]
    assert main([*grid, f"hydra.sweep.dir={tmp_path}"]) == 0
    assert main([*grid, f"hydra.sweep.dir={tmp_path}"]) == 0


def test_a_grid_job_refused_in_its_earlier_run_s_folder_leaves_its_log(tmp_path, capsys):
    """The same grid again, its jobs refused because their data are gone: each job's run,
    .hydra/ files and train.log stay as they were (the refusal's lines were appended)."""
    from PIL import Image

    from medtrain.commands import main

    data = tmp_path / "scans"
    for k in range(16):
        (data / "ab"[k % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 40 * (k % 2) + k, np.uint8)).save(
            data / "ab"[k % 2] / f"{k}.png"
        )
    grid = tmp_path / "grid"
    argv = ["-m", "dataset=image_folder", f"dataset.path={data}", "dataset.image_size=8"]
    argv += [*TINY[-4:], ON_CPU, f"hydra.sweep.dir={grid}", "optimizer.lr=1e-3,1e-2"]
    assert main(argv) == 0
    logs = {k: (grid / k / "train.log").read_bytes() for k in ("0", "1")}
    import shutil

    shutil.rmtree(data)
    assert main(argv) == 1  # every job refused
    assert "dataset.path" in "".join(capsys.readouterr())
    assert {k: (grid / k / "train.log").read_bytes() for k in ("0", "1")} == logs


def test_another_grid_in_a_grids_folder_is_refused_and_the_folder_kept(
    tmp_path, capsys, monkeypatch
):
    """Another grid given the same hydra.sweep.dir numbers its jobs alike: its first job whose
    folder holds a run of other overrides stops the grid, before it trains, with the first grid's
    runs, their .hydra/ files, multirun.yaml and logs as they were. Run, CV and search folders, and a file, are refused before any job starts. The
    folder is the composed config's: one named through an interpolation is checked too."""
    from medtrain.commands import main

    grid = tmp_path / "grid"
    first = ["-m", *TINY, ON_CPU, "trainer.max_epochs=1", f"hydra.sweep.dir={grid}"]
    assert main([*first, "optimizer.lr=1e-3,1e-2"]) == 0

    def files():
        return {
            p.relative_to(grid): p.read_bytes()
            for p in grid.rglob("*")
            if p.is_file() and p.name != "train.log"
        }

    before, log = files(), (grid / "0" / "train.log").read_text()
    capsys.readouterr()
    assert main([*first, "optimizer.lr=1e-1,1e-2"]) == 2
    said = capsys.readouterr()
    assert (
        f"hydra.sweep.dir={grid}: job folder 0 holds another grid's run (there: "
        "optimizer.lr=0.001; this job: optimizer.lr=0.1), which this grid would replace"
    ) in said.out + said.err
    assert files() == before
    assert (grid / "0" / "train.log").read_text() == log  # the refusal's lines were appended
    # A grid whose first job is the first grid's and whose second is not: refused before its
    # first job trains again (it did, and was stopped at the second).
    assert main([*first, "optimizer.lr=1e-3,1e-1"]) == 2
    assert "job folder 1 holds another grid's run" in "".join(capsys.readouterr())
    assert files() == before and (grid / "0" / "train.log").read_text() == log
    assert main([*first, "optimizer.lr=1e-2,1e-3"]) == 2  # the same grid in another order
    said = capsys.readouterr()
    assert (
        "Job folder 1 holds a run of this job's overrides: the same grid with its swept keys or "
        "values in another order numbers its jobs otherwise; give them in the first grid's order"
    ) in said.out + said.err
    assert files() == before
    monkeypatch.setenv("MEDTRAIN_GRID", str(grid))
    through_env = [*first[:-1], "hydra.sweep.dir=${oc.env:MEDTRAIN_GRID}", "optimizer.lr=1e-1"]
    assert main(through_env) == 2
    said = capsys.readouterr()
    assert f"hydra.sweep.dir={grid}: job folder 0 holds another grid's run" in said.out + said.err
    assert files() == before
    assert main([*first, "optimizer.lr=1e-3,1e-2", "trainer.resume=auto"]) == 0  # the same grid
    # Continued jobs keep the .hydra/ files that describe them when a later, new job is refused
    # (that job put back the files of the last job whose folder held a run).
    longer = ["-m", *TINY, ON_CPU, "trainer.max_epochs=2", f"hydra.sweep.dir={grid}"]
    assert main([*longer, "trainer.resume=auto", "optimizer.lr=1e-3,1e-2,-1"]) == 1
    for job in ("0", "1"):
        assert "max_epochs: 2" in (grid / job / ".hydra" / "config.yaml").read_text()
    # A job of another grid refused by its checkpoint (trainer.resume=auto) leaves the folder's
    # multirun.yaml and the job's .hydra/ as they were, too.
    kept = {p: p.read_bytes() for p in [grid / "multirun.yaml", *(grid / "0" / ".hydra").iterdir()]}
    assert main([*longer, "trainer.resume=auto", "optimizer.lr=1e-1"]) == 1
    assert "trainer.resume: the checkpoint was trained with other values" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in kept} == kept

    for folder, what in [("0", "a run"), ("cv", "a cross-validation"), ("search", "a search")]:
        (tmp_path / folder).mkdir(exist_ok=True)
        marker = {"0": None, "cv": "folds.json", "search": "study.db"}[folder]
        if marker:
            (tmp_path / folder / marker).write_text("{}")
        target = grid / "0" if folder == "0" else tmp_path / folder
        held = sorted(p.name for p in target.iterdir())
        assert main([*first[:-1], f"hydra.sweep.dir={target}", "optimizer.lr=1e-3,1e-2"]) == 2
        assert f"hydra.sweep.dir={target} holds {what}" in capsys.readouterr().err
        assert sorted(p.name for p in target.iterdir()) == held
    (tmp_path / "file").write_text("mine")
    assert main([*first[:-1], f"hydra.sweep.dir={tmp_path / 'file'}", "optimizer.lr=1e-3"]) == 2
    assert "is a file; give the grid a folder" in capsys.readouterr().err


def test_an_interruption_before_any_epoch_finished_says_to_start_again(tmp_path):
    """Nothing saved yet: the advice is the same command without trainer.resume (which would
    find no checkpoint), and that command trains."""
    from medtrain.commands import main

    command = [*TINY, ON_CPU, f"hydra.run.dir={tmp_path}"]
    with interrupted_at_epoch(0):  # the first epoch (epochs count from 0 there)
        assert main(command) == 130
    assert (
        "interrupted; the same command (without trainer.resume) starts it again: no epoch had "
        "finished, so nothing was saved to continue from"
    ) in (tmp_path / "train.log").read_text()
    assert main(command) == 0


def test_a_run_stopped_while_it_writes_its_report_is_said_to_have_finished(tmp_path, monkeypatch):
    """Ctrl-C after metrics.json was written (a CV counts the fold as finished): the advice is
    `medtrain report`, not a resume of a finished run."""
    import medtrain.engine.training
    from medtrain.commands import main

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(medtrain.engine.training, "write_report", stopped)
    command = [*TINY, ON_CPU, "trainer.max_epochs=1", "trainer.report=true"]
    assert main([*command, f"hydra.run.dir={tmp_path}"]) == 130
    last = (tmp_path / "train.log").read_text().splitlines()[-1]
    assert last.endswith(
        "stopped after the run finished (metrics.json is written), while it wrote its last "
        f"files: medtrain report run_dir={tmp_path} writes its report"
    )


def test_an_interrupted_grid_lists_the_interrupted_job(tmp_path):
    """Ctrl-C in a grid's job ends the multirun without Hydra's end of the job: the summary is
    written then, with the job as interrupted (not missing, not failed) and the jobs the grid
    planned as not started. A job killed without a word (kill -9) is interrupted too."""
    from medtrain.commands import main
    from medtrain.experiments.sweep_summary import write_sweep_summary

    grid = ["-m", *TINY, ON_CPU, "optimizer.lr=1e-3,1e-2", f"hydra.sweep.dir={tmp_path}"]
    with interrupted_at_epoch(1):
        assert main(grid) == 130
    rows = list(csv.DictReader((tmp_path / "sweep_summary.csv").open()))
    assert [(r["job"], r["status"]) for r in rows] == [("0", "interrupted"), ("1", "not started")]
    assert rows[0]["error"].startswith("stopped (Ctrl-C or SIGTERM); the same command")
    assert "this hydra.sweep.dir and trainer.resume=auto continues it" in rows[0]["error"]
    assert rows[1]["overrides"] == "optimizer.lr=0.01"
    assert rows[1]["error"].startswith("the grid stopped before this job")
    assert "2 jobs: 1 interrupted, 1 not started" in (tmp_path / "sweep_summary.md").read_text()

    # A job that crashed (an error of no medtrain kind) is failed, with its error, not killed.
    def crashing(cfg, run_dir, callbacks=()):
        raise RuntimeError("boom")

    crashed = tmp_path / "crashed"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(medtrain.engine.training, "train", crashing)
        assert main(["-m", *TINY, ON_CPU, "optimizer.lr=1e-3", f"hydra.sweep.dir={crashed}"]) == 1
    [row] = list(csv.DictReader((crashed / "sweep_summary.csv").open()))
    assert (row["status"], row["error"]) == ("failed", "job 0 failed: RuntimeError: boom")
    log = tmp_path / "0" / "train.log"  # as kill -9 leaves it: no last word
    log.write_text("\n".join(log.read_text().splitlines()[:-1]) + "\n")
    write_sweep_summary(tmp_path, plots=False)
    rows = list(csv.DictReader((tmp_path / "sweep_summary.csv").open()))
    assert rows[0]["status"] == "interrupted"
    assert rows[0]["error"].startswith("ended without a word (killed, e.g. kill -9")


def test_a_run_trained_longer_follows_the_longer_schedule_and_says_so(tmp_path, caplog):
    """Resuming a finished 2-epoch run with `trainer.max_epochs=3`: the cosine schedule is the
    3-epoch one from the checkpoint's step on (the rate its third epoch starts with is a new
    3-epoch run's), with a warning; the export is said to be out of date; the training time
    counts every epoch. Resuming it again with nothing left to train says nothing of the export."""
    run = tmp_path / "run"
    train_in_process(run, [*TINY, ON_CPU])
    (run / "export").mkdir()
    longer = [*TINY, ON_CPU, "trainer.max_epochs=3"]
    with caplog.at_level("WARNING"):
        assert train_in_process(run, [*longer, "trainer.resume=true"])["epochs_trained"] == 3
    assert f"{run}/export was made from this run's checkpoint before it continued" in caplog.text
    assert "the learning-rate schedule follows this run's trainer.max_epochs" in caplog.text
    train_in_process(tmp_path / "new", longer)

    def rows(folder):
        with open(folder / "history.csv", newline="") as f:
            return list(csv.DictReader(f))

    assert rows(run)[2]["train/lr"] == rows(tmp_path / "new")[2]["train/lr"]
    assert float(rows(run)[2]["train/lr"]) > 10 * 0.001 * 0.01  # not where 2 epochs had ended
    info = json.loads((run / "run_info.json").read_text())
    assert info["train_seconds"] >= sum(float(row["time_s"]) for row in rows(run))
    caplog.clear()
    with caplog.at_level("WARNING"):
        train_in_process(run, [*longer, "trainer.resume=true"])
    assert "export was made" not in caplog.text and "learning-rate" not in caplog.text


def test_the_best_epochs_validation_is_reused_for_the_threshold(tmp_path, monkeypatch):
    """`test` takes the validation made during training of the weights best.pt holds, instead of
    a second pass over the split: one evaluation per epoch plus the test split, and the final val
    metrics are the best epoch's."""
    calls = []
    real = medtrain.engine.loop.evaluate

    def counted(model, loader, *args, **kwargs):
        calls.append(len(loader.dataset))
        return real(model, loader, *args, **kwargs)

    monkeypatch.setattr(medtrain.engine.loop, "evaluate", counted)
    metrics = train_in_process(tmp_path, [*TINY, ON_CPU, "trainer.max_epochs=3"])
    assert calls == [48, 48, 48, 48]  # val after each of the 3 epochs, then test
    with open(tmp_path / "history.csv", newline="") as f:
        best = next(r for r in csv.DictReader(f) if int(r["epoch"]) == metrics["best_epoch"])
    assert metrics["val/auc"] == pytest.approx(float(best["val/auc"]), abs=1e-12)
    assert metrics["val/loss"] == pytest.approx(float(best["val/loss"]), abs=1e-12)


def test_validation_every_n_epochs_and_after_the_last(tmp_path, monkeypatch):
    """`trainer.val_every=2` over 5 epochs validates after epochs 2, 4 and 5; the others leave their
    validation cells empty, never become best.pt, and still write last.pt."""
    calls = []
    real = medtrain.engine.loop.evaluate

    def counted(model, loader, task, *args, **kwargs):
        calls.append(len(loader.dataset))
        return real(model, loader, task, *args, **kwargs)

    monkeypatch.setattr(medtrain.engine.loop, "evaluate", counted)
    overrides = [*TINY, ON_CPU, "trainer.max_epochs=5", "trainer.val_every=2"]
    metrics = train_in_process(tmp_path, overrides)
    assert calls == [48, 48, 48, 48]  # val after epochs 2, 4, 5; the best one reused; test
    with open(tmp_path / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [r["epoch"] for r in rows if r["val/auc"]] == ["2", "4", "5"]
    header = list(rows[0])  # as every run's: epoch, train/*, val/*, time_s
    assert header[:3] == ["epoch", "train/loss", "train/lr"] and header[-1] == "time_s"
    assert header[3] == "val/loss"
    assert all(r["train/loss"] for r in rows)
    assert metrics["best_epoch"] in (2, 4, 5)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == 5
    with pytest.raises(ConfigError, match="trainer.val_every"):
        train_in_process(tmp_path / "bad", [*TINY, ON_CPU, "trainer.val_every=0"])


def test_epochs_validate_without_the_views_when_asked(tmp_path, monkeypatch):
    """`trainer.val_tta=false`: the epochs' validation runs on the images alone; the best
    checkpoint's validation (for the threshold) and the test pass use `task.tta`'s views."""
    views = []
    real = medtrain.engine.loop.evaluate

    def counted(model, loader, task, *args, **kwargs):
        views.append(task.tta)
        return real(model, loader, task, *args, **kwargs)

    monkeypatch.setattr(medtrain.engine.loop, "evaluate", counted)
    overrides = [*TINY, ON_CPU, "trainer.max_epochs=2", "task.tta=hflip", "trainer.val_tta=false"]
    train_in_process(tmp_path, overrides)
    assert views == [None, None, "hflip", "hflip"]  # 2 epochs; then val again and test, with views


def test_a_resume_with_no_epoch_left_must_end_on_a_validated_epoch():
    """With `trainer.val_every`, a run killed after an epoch without validation and resumed with
    `max_epochs` at that epoch would be tested without validating it (or without any best.pt)."""
    from omegaconf import OmegaConf

    from medtrain.engine.loop import check_last_validated

    cfg = OmegaConf.create({"max_epochs": 3, "val_every": 2})
    history = [{"epoch": 1}, {"epoch": 2, "val/auc": 0.9}, {"epoch": 3}]
    state = {"epoch": 3, "history": history}
    with pytest.raises(ConfigError, match=r"trainer.max_epochs=3: .*give trainer.max_epochs > 3"):
        check_last_validated(state, cfg, "val/auc")
    check_last_validated({"epoch": 2, "history": history[:2]}, cfg, "val/auc")  # epoch 3 is left
    check_last_validated(
        {"epoch": 2, "history": history[:2]}, OmegaConf.create({"max_epochs": 2}), "val/auc"
    )


def test_the_file_cache_size_may_change_on_resume():
    """`dataset.cache_mb` changes only how fast files are read: a checkpoint of a run before the
    key, or with another size, continues."""
    from medtrain.engine.resume import check_resumed_config

    saved = {"dataset": {"_target_": "medtrain.data.image_folder.ImageFolder", "path": "x"}}
    for cache_mb in (512, 0):
        current = {"dataset": {**saved["dataset"], "cache_mb": cache_mb}}
        check_resumed_config(saved, current, None)
    with pytest.raises(ConfigError, match="dataset.path"):
        check_resumed_config(saved, {"dataset": {**saved["dataset"], "path": "y"}}, None)


def test_statistics_of_the_training_split_are_compared_once_the_data_are_read():
    """With `normalize.mode=dataset` the saved mean and std were computed from the data; before
    the data are read the config holds the YAML's placeholders, which are no change. Old runs
    without `cv` keys, and with `flip_tta`, resume."""
    from medtrain.engine.resume import check_resumed_config

    def config(mean, tta_key=("tta", None)):
        normalize = {"mode": "dataset", "mean": mean, "std": [0.2]}
        return {"dataset": {"normalize": normalize}, "task": dict([tta_key])}

    saved = config([0.41])
    check_resumed_config(saved, config([0.4]), None, before_data=True)
    with pytest.raises(ConfigError, match="dataset.normalize.mean"):
        check_resumed_config(saved, config([0.4]), None)
    check_resumed_config(saved, config([0.41]), None)
    old = config([0.41], ("flip_tta", True))
    check_resumed_config(old, config([0.41], ("tta", "hflip")) | {"cv": {"fold": None}}, None)
    with pytest.raises(ConfigError, match="task.tta"):
        check_resumed_config(old, config([0.41], ("tta", None)), None)


def test_a_key_a_base_class_takes_through_kwargs_is_compared_with_its_default():
    """`dataset.patch_area_power` is a parameter of `SegmentationDataset`, which `SegFolder`
    takes through `**kwargs`: a checkpoint without it meant the default, 0."""
    from medtrain.engine.resume import is_default

    config = {"dataset": {"_target_": "medtrain.data.seg_folder.SegFolder"}}
    assert is_default(config, "dataset.patch_area_power", 0.0)
    assert not is_default(config, "dataset.patch_area_power", 0.5)
    assert is_default(config, "dataset.val_size", 0.15)  # SegFolder's own parameter
    assert not is_default(config, "dataset.no_such_key", None)


def test_a_resume_on_changed_data_is_refused_before_anything_is_written(tmp_path, capsys):
    """Labels flipped in the manifest after the run was interrupted: continuing is refused,
    naming the data, both digests and the run folder, as `medtrain cv` refuses its folds; the
    run folder is left as it was (its provenance still records the data it started on). With
    the data restored, the same command continues it."""
    from medtrain.commands import main
    from tests.data.test_manifest import make_cases

    csv_path = make_cases(tmp_path / "data", [0, 1] * 12)
    run = tmp_path / "run"
    command = ["dataset=manifest", f"dataset.path={csv_path}", "dataset.image_size=16"]
    command += ["trainer.max_epochs=2", "trainer.progress=false", "trainer.report=false", ON_CPU]
    command.append(f"hydra.run.dir={run}")
    with interrupted_at_epoch(1):
        assert main(command) == 130
    recorded = json.loads((run / "provenance.json").read_text())["data"]["sha256"]
    original = csv_path.read_bytes()
    flipped = original.replace(b",0\r\n", b",x\r\n").replace(b",1\r\n", b",0\r\n")
    csv_path.write_bytes(flipped.replace(b",x\r\n", b",1\r\n"))
    assert csv_path.read_bytes() != original
    now = data_fingerprint(compose_cfg(command[:2]))["sha256"]
    kept = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "train.log"}
    capsys.readouterr()
    assert main([*command, "trainer.resume=true"]) == 2
    said = "".join(capsys.readouterr())
    assert (
        f"trainer.resume: the data changed since the run in {run} started: {csv_path} (data "
        f"fingerprint {recorded[:12]} -> {now[:12]}; 25 -> 25 files"
    ) in said
    assert "restore the data to continue the run, or train a new run on them" in said
    assert "Traceback" not in said
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "train.log"} == (
        kept
    )
    copy = tmp_path / "copy"  # continued knowingly on changed data: said and recorded
    shutil.copytree(run, copy)
    knowingly = [*command[:-1], f"hydra.run.dir={copy}", "trainer.resume=true"]
    knowingly.append("trainer.resume_on_changed_data=true")
    # The flipped labels draw the stratified split again: cases move, and that is refused.
    assert main(knowingly) == 2
    assert "case(s) are in another split than when the run started" in "".join(capsys.readouterr())
    csv_path.write_bytes(original)  # an image corrected instead: the cases stay where they were
    image = csv_path.parent / "images" / "case000.png"
    pixels = image.read_bytes()
    Image.fromarray(np.full((16, 16), 99, np.uint8)).save(image)
    assert main(knowingly) == 0
    assert "continuing on them (trainer.resume_on_changed_data=true)" in "".join(
        capsys.readouterr()
    )
    (session,) = json.loads((copy / "provenance.json").read_text())["resumed"]
    assert session["data_changed"].startswith(f"{csv_path} (data fingerprint {recorded[:12]}")
    image.write_bytes(pixels)
    assert main([*command, "trainer.resume=true"]) == 0
    assert read_metrics(run)["epochs_trained"] == 2


def test_a_resume_keeps_every_case_in_the_split_it_started_in(tmp_path):
    """A seeded split drawn again on changed data (a file added to the folder) can move a
    training image into test: the resume is refused, naming the cases that moved; new cases and
    cases in their old split pass."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from medtrain.engine.resume import check_same_splits

    run = tmp_path / "run"
    run.mkdir()
    (run / "splits.json").write_text(json.dumps({"train": ["a", "b"], "val": ["c"], "test": ["d"]}))

    def splits(**ids):
        return {split: SimpleNamespace(ids=cases) for split, cases in ids.items()}

    moved = splits(train=["a", "c", "e"], val=["b"], test=["d"])
    for dataset, advice in (
        ({"path": "x"}, "restore the data to continue the run, or train a new run on them"),
        (
            {"split_file": None},
            f"continue with the run's split, dataset.split_file={run / 'splits.json'}",
        ),
    ):
        with pytest.raises(ConfigError) as err:
            check_same_splits(OmegaConf.create({"dataset": dataset}), {"run": str(run)}, moved)
        assert str(err.value) == (
            "trainer.resume: 2 case(s) are in another split than when the run started (c: val "
            f"-> train; b: train -> val): training images would be scored as unseen; {advice}"
        )
    kept = splits(train=["a", "b", "e"], val=["c"], test=["d"])
    check_same_splits(OmegaConf.create({"dataset": {"path": "x"}}), {"run": str(run)}, kept)


def test_a_resumed_run_keeps_its_provenance_and_records_each_session(tmp_path, monkeypatch):
    """An interrupted run continued, then trained longer: provenance.json still records the
    run's start (when, its command, data and environment) and lists each session with its own
    command, the epoch it continued from and the values it changed (it was rewritten by each
    session, so the run's start was lost)."""
    from medtrain.commands import main

    run = tmp_path / "run"
    command = [*TINY, ON_CPU, f"hydra.run.dir={run}"]
    sessions = [command, [*command, "trainer.resume=true"]]
    sessions.append([*sessions[1], "trainer.max_epochs=3"])
    monkeypatch.setattr("sys.argv", ["medtrain", *sessions[0]])
    with interrupted_at_epoch(1):
        assert main(sessions[0]) == 130
    started = json.loads((run / "provenance.json").read_text())
    for argv in sessions[1:]:
        monkeypatch.setattr("sys.argv", ["medtrain", *argv])
        assert main(argv) == 0
    provenance = json.loads((run / "provenance.json").read_text())
    assert {k: v for k, v in provenance.items() if k != "resumed"} == started
    assert started["command"] == ["medtrain", *sessions[0]] and "distributed" not in started
    resumed = provenance["resumed"]
    assert [s["command"] for s in resumed] == [["medtrain", *argv] for argv in sessions[1:]]
    assert [s["after_epoch"] for s in resumed] == [1, 2]
    assert [s["config_changes"] for s in resumed] == [{}, {"trainer.max_epochs": [2, 3]}]
    assert [s["processes"] for s in resumed] == [1, 1]
    assert [s["environment_changes"] for s in resumed] == [{}, {}]
    assert started["created"] <= resumed[0]["created"] <= resumed[1]["created"]
    assert read_metrics(run)["epochs_trained"] == 3


def test_a_grid_whose_job_folders_leave_out_a_swept_key_stops_before_a_job_replaces_another(
    tmp_path, capsys
):
    """`hydra.sweep.subdir=lr${optimizer.lr}` over seeds gave both jobs one folder: the second
    replaced the first's run without a word, and the summary listed jobs planned as 'not
    started' that had run (its folders are not numbered). Folders named by every swept key are
    summarised as run."""
    from medtrain.commands import main

    grid = ["-m", *TINY, ON_CPU, "optimizer.lr=1e-3", "seed=1,2", f"hydra.sweep.dir={tmp_path}"]
    assert main([*grid, "hydra.sweep.subdir=lr${optimizer.lr}"]) == 2
    assert "hydra.sweep.subdir gives job 1 the folder" in capsys.readouterr().out
    first = tmp_path / "lr0.001"
    assert "seed=1" in (first / ".hydra" / "overrides.yaml").read_text()
    assert load_checkpoint(first / "checkpoints" / "best.pt")["seed"] == 1
    named = tmp_path / "named"
    grid = ["-m", *TINY, ON_CPU, "optimizer.lr=1e-3,1e-2", f"hydra.sweep.dir={named}"]
    assert main([*grid, "hydra.sweep.subdir=lr${optimizer.lr}"]) == 0
    text = (named / "sweep_summary.md").read_text()
    assert "2 jobs: 2 complete" in text and "not started" not in text
