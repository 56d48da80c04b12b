"""Training on several processes (torch.distributed with Gloo on the CPU, two processes on this
machine): torchrun's launch against one process, the run folder, evaluation against a single
process's, a killed rank, resume, rerun, and the exchanges of `medtrain.engine.distributed`."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from medtrain.commands import main as medtrain_main
from medtrain.data.loading import DealtBatches, ShardedBatches, make_loader
from medtrain.engine import distributed
from medtrain.engine.build import build_datasets, build_loaders, build_model, build_task
from medtrain.engine.loop import seed_everything
from medtrain.engine.loop import test as evaluate_best
from medtrain.errors import ConfigError
from medtrain.io import load_checkpoint
from tests.conftest import compose_cfg, read_metrics, train_in_process

RANKS = Path(__file__).with_name("distributed_ranks.py")
# No batch norm, dropout or augmentation, SGD: a result that does not depend on how the global
# batch is split. 101 training images in global batches of 16: the last batch (5 images) is shared
# 3 + 2, which the gradient weighting must get right.
EXACT = [
    "dataset.num_train=101",
    "dataset.num_val=40",
    "dataset.num_test=40",
    "dataset.image_size=16",
    "dataset.contrast=1.0",
    "model.batch_norm=false",
    "model.dropout=0",
    "model.widths=[8,16]",
    "model.hidden=16",
    "augmentation=none",
    "optimizer=sgd",
    "trainer.max_epochs=3",
    "trainer.batch_size=16",
    "trainer.eval_batch_size=16",
    "trainer.progress=false",
    "trainer.device=cpu",
    "trainer.distributed.timeout_s=60",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(command: list[str], cwd: Path, processes: int = 2) -> list[subprocess.Popen]:
    """`processes` copies of `command` with the environment torchrun gives its workers."""
    port = free_port()
    started = []
    for rank in range(processes):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(processes),
            "LOCAL_WORLD_SIZE": str(processes),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            "HYDRA_FULL_ERROR": "0",
            "TMPDIR": str(cwd),  # a killed rank leaves its scratch folder here, not in /tmp
        }
        started.append(
            subprocess.Popen(
                [sys.executable, *command],
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return started


def finish(processes: list[subprocess.Popen], timeout: float = 180) -> list[tuple[int, str]]:
    return [(p.wait(timeout=timeout), p.stdout.read()) for p in processes]


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*command, "-m", "medtrain", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same experiment trained by 2 processes (started as torchrun starts its workers; the
    rerun test goes through torchrun itself) and by 1 process."""
    base = tmp_path_factory.mktemp("ddp")
    outputs = finish(start_ranks(["-m", "medtrain", *EXACT, "hydra.run.dir=ddp"], base))
    for status, output in outputs:
        assert status == 0, output[-3000:]
    single = tmp_path_factory.mktemp("single") / "run"
    train_in_process(single, EXACT)
    return {"base": base, "ddp": base / "ddp", "single": single, "outputs": outputs}


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "time_s"} for row in csv.DictReader(f)]


def test_two_processes_train_one_model_into_one_run_folder(runs):
    base, ddp = runs["base"], runs["ddp"]
    # no rank made a folder of its own (torch may keep a compiler cache in TMPDIR, here too)
    assert sorted(p.name for p in base.iterdir() if not p.name.startswith("torchinductor")) == [
        "ddp"
    ]
    assert not list(base.glob("medtrain-rank*"))  # rank 1's scratch folder was removed
    assert [p.relative_to(ddp) for p in ddp.rglob(".hydra")] == [Path(".hydra")]
    assert len(list(ddp.rglob("metrics.json"))) == 1
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    info = json.loads((ddp / "run_info.json").read_text())
    assert info["world"]["world_size"] == 2 and info["world"]["backend"] == "gloo"
    # the parameters of both ranks after training, hashed by each rank: identical
    first, second = info["parameter_checksums"]
    assert first == second and len(first) == 64
    provenance = json.loads((ddp / "provenance.json").read_text())
    assert provenance["distributed"]["world_size"] == 2
    log = (ddp / "train.log").read_text()
    assert "distributed: 2 processes (gloo); global batch 16 (8 per process)" in log
    assert "[rank 1]" not in log  # rank 0 alone writes the log
    rank_1 = runs["outputs"][1][1].splitlines()  # warnings and errors only, with the rank
    assert all("[rank 1]" in line and "[INFO]" not in line for line in rank_1 if "][" in line)
    assert "[INFO]" in runs["outputs"][0][1]
    checkpoint = load_checkpoint(ddp / "checkpoints" / "best.pt")
    assert not any(k.startswith("module.") for k in checkpoint["model"])
    assert checkpoint["world_size"] == 2


def test_two_processes_with_half_batches_end_where_one_process_ends(runs):
    ddp = load_checkpoint(runs["ddp"] / "checkpoints" / "last.pt")["model"]
    single = load_checkpoint(runs["single"] / "checkpoints" / "last.pt")["model"]
    seed_everything(42)  # the initialisation both runs started from
    initial = build_model(compose_cfg(EXACT)).state_dict()
    assert ddp.keys() == single.keys()
    for key in ddp:
        assert not torch.equal(ddp[key], initial[key])  # trained
        torch.testing.assert_close(ddp[key], single[key], rtol=0, atol=1e-5)
    for a, b in zip(_history(runs["ddp"]), _history(runs["single"]), strict=True):
        assert float(a["train/loss"]) == pytest.approx(float(b["train/loss"]), abs=1e-6)
        assert float(a["val/auc"]) == pytest.approx(float(b["val/auc"]), abs=1e-6)


def test_distributed_evaluation_equals_one_process_evaluating_best_pt(runs, tmp_path):
    """Validation and test predictions gathered from both ranks: the same metrics and the same
    predictions.csv as one process evaluating the run's best.pt."""
    ddp = runs["ddp"]
    checkpoint = load_checkpoint(ddp / "checkpoints" / "best.pt")
    cfg = OmegaConf.create(checkpoint["config"])
    (tmp_path / "checkpoints").mkdir()
    shutil.copyfile(ddp / "checkpoints" / "best.pt", tmp_path / "checkpoints" / "best.pt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank computed (OMP_NUM_THREADS=1 under torchrun)
    try:
        datasets = build_datasets(cfg)
        loaders = build_loaders(cfg, datasets, torch.device("cpu"))
        model, task = build_model(cfg), build_task(cfg)
        alone = evaluate_best(model, task, loaders, torch.device("cpu"), cfg.trainer, tmp_path)
    finally:
        torch.set_num_threads(threads)
    reported = read_metrics(ddp)
    for key, value in alone.items():
        assert reported[key] == pytest.approx(value, rel=0, abs=1e-12), key
    assert (tmp_path / "predictions.csv").read_bytes() == (ddp / "predictions.csv").read_bytes()
    assert reported["test/auc"] > 0.8  # a model that learnt something


def test_a_killed_rank_stops_the_other_and_the_run_resumes_to_the_same_result(runs, tmp_path):
    """Rank 1 is killed when epoch 3 starts: rank 0 stops with an error at once (not after the
    timeout), and resuming with two processes ends exactly where the uninterrupted run ended
    (`trainer.resume=auto`, as a requeued job says it: rank 0 finds last.pt and tells rank 1)."""
    cut = tmp_path / "cut"
    ranks = start_ranks([str(RANKS), "dying", "2", *EXACT, f"hydra.run.dir={cut}"], tmp_path)
    start = time.monotonic()
    (status_0, output_0), (status_1, _) = finish(ranks)
    assert status_1 == -signal.SIGKILL
    assert status_0 == 1, output_0
    assert "another process of this run failed, was killed or stopped answering" in output_0
    assert time.monotonic() - start < 60  # well inside trainer.distributed.timeout_s
    assert load_checkpoint(cut / "checkpoints" / "last.pt")["epoch"] == 2

    resumed = start_ranks(
        ["-m", "medtrain", *EXACT, f"hydra.run.dir={cut}", "trainer.resume=auto"], tmp_path
    )
    for status, output in finish(resumed):
        assert status == 0, output
    assert read_metrics(cut) == read_metrics(runs["ddp"])
    assert _history(cut) == _history(runs["ddp"])
    provenance = json.loads((cut / "provenance.json").read_text())
    assert provenance["distributed"]["world_size"] == 2  # the run's start, kept
    [session] = provenance["resumed"]
    assert session["after_epoch"] == 2 and session["distributed"]["world_size"] == 2


def test_a_rank_failing_alone_leaves_at_once_and_stops_the_other(tmp_path):
    """Rank 1 raises an error of its own (not a config error every rank raises): it says so and
    leaves without waiting for its peer at a barrier, and rank 0 stops at once too."""
    cut = tmp_path / "cut"
    ranks = start_ranks([str(RANKS), "failing", "1", *EXACT, f"hydra.run.dir={cut}"], tmp_path)
    start = time.monotonic()
    (status_0, output_0), (status_1, output_1) = finish(ranks)
    assert time.monotonic() - start < 60  # well inside trainer.distributed.timeout_s
    assert status_1 == 1 and "rank 1 failed" in output_1 and "rank 1's own failure" in output_1
    assert status_0 == 1, output_0
    assert "another process of this run failed, was killed or stopped answering" in output_0


def test_a_distributed_run_continued_by_one_process_keeps_its_record(runs, tmp_path):
    """The 2-process run trained one epoch longer by 1 process: provenance.json still says the
    run was trained by 2 (what `medtrain rerun` launches again; the resume dropped it) and
    records the session's single process and its longer run, which a rerun names."""
    from medtrain.experiments.rerun import processes, resumed_changes

    run = tmp_path / "run"
    shutil.copytree(runs["ddp"], run)
    started = json.loads((run / "provenance.json").read_text())
    train_in_process(run, [*EXACT, "trainer.max_epochs=4", "trainer.resume=true"])
    provenance = json.loads((run / "provenance.json").read_text())
    assert {k: v for k, v in provenance.items() if k != "resumed"} == started
    assert provenance["distributed"]["world_size"] == 2
    [session] = provenance["resumed"]
    assert session["processes"] == 1 and "distributed" not in session
    assert session["after_epoch"] == 3
    assert session["config_changes"] == {"trainer.max_epochs": [3, 4]}
    assert processes(provenance) == 2  # a rerun trains it with torchrun, and says why it differs
    [said] = resumed_changes(provenance)  # and the CPU threads, where this process has others
    assert said.startswith(
        "after epoch 3: trainer.max_epochs 3 -> 4, 1 process(es) where the run started with 2"
    )


def test_rerun_of_a_distributed_run_trains_it_distributed(runs, tmp_path, monkeypatch):
    """`medtrain rerun` starts torchrun with the run's two processes, and reproduces it."""
    from medtrain.experiments.rerun import rerun

    monkeypatch.chdir(runs["base"])
    result = rerun(runs["ddp"], tmp_path / "again")
    assert result["command"][1:5] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
    ]
    assert "note: the run trained with 2 processes; the rerun too (torchrun)" in result["lines"]
    assert result["verdict"] == "REPRODUCED", result["lines"]
    info = json.loads((tmp_path / "again" / "run_info.json").read_text())
    assert info["world"]["world_size"] == 2


def test_a_grid_with_a_failed_job_ends_on_every_rank_after_its_summary(tmp_path):
    """The ranks leave together: rank 1 exited as soon as the grid ended, and torchrun then
    stopped rank 0 (SIGTERM) before its summary's plots and its 'job(s) failed' line."""
    grid = tmp_path / "grid"
    argv = ["-m", *EXACT, "trainer.max_epochs=1", "optimizer.lr=-1,1e-2", f"hydra.sweep.dir={grid}"]
    done = torchrun(argv, tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "medtrain: 1 job(s) failed (job 0)" in done.stderr
    assert (grid / "sweep_optimizer.lr.png").is_file()
    assert (grid / "1" / "metrics.json").is_file()


def test_rank_0_decides_and_every_rank_follows(tmp_path):
    """The exchanges, in a real two-process Gloo group: decisions and errors from rank 0,
    sums, rank 0's weights, checksums, and evaluation batches gathered in order."""
    for status, output in finish(start_ranks([str(RANKS), "checks", str(tmp_path)], tmp_path)):
        assert status == 0, output
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, s in enumerate(seen):
        assert (s["rank"], s["world"], s["main"]) == (r, 2, r == 0)
        assert s["decided"] == "chosen by rank 0"
        assert s["error"] == ["dataset.path: rank 0 found a bad file", r == 1]
        # raised on rank 1 only: every rank raises it (rank 0 with where it came from), and rank 1
        # alone reports it (its log lines carry its rank)
        where = "rank 1: " if r == 0 else ""
        assert s["agreed"] == [f"{where}dataset.path: not found on this node", r == 0, True]
        assert s["sum"] == 3.0
        assert s["weights"] == seen[0]["weights"] and s["weights"][3:] == [0.0, 0.0, 0.0]
        assert s["checksums"][0] != s["checksums"][1]  # two differently initialised layers
        assert s["wrapped_keys"] == ["image", "tabular"] and s["wrapped_output"] == [2, 1]
    assert seen[0]["gathered"] == [
        {"batch": [0, 1, 2], "by": 0},
        {"batch": [3, 4, 5], "by": 1},
        {"batch": [6, 7, 8], "by": 0},
        {"batch": [9], "by": 1},
    ]
    assert seen[1]["gathered"] == []


@pytest.mark.parametrize(
    ("size", "batch", "processes", "dropped"),
    [
        (101, 16, 2, False),
        (99, 16, 2, True),
        (100, 16, 3, True),
        (10, 4, 4, True),
        (10, 4, 1, False),
    ],
)
def test_shards_together_are_the_single_process_batches(size, batch, processes, dropped):
    """Each process's share of every global batch: disjoint, and together the batches of one
    process's epoch (the same (seed, epoch) permutation), whatever the number of processes."""
    samples = [{"index": torch.tensor(k)} for k in range(size)]
    loader = make_loader(samples, batch_size=batch, shuffle=True, seed=7)
    loader.set_epoch(3)
    alone = [b["index"].tolist() for b in loader]
    shards = []
    for rank in range(processes):
        generator = torch.Generator()
        generator.manual_seed(7 * 100_003 + 3)
        torch.empty((), dtype=torch.int64).random_(generator=generator)  # the loader's worker seed
        shards.append(list(ShardedBatches(size, batch, rank, processes, generator, True)))
    # A last batch that would leave a process with no sample, or with one while the other batches
    # give it several, is left out: 99 = 6 x 16 + 3 shares 2 + 1 over two processes.
    alone = alone[:-1] if dropped else alone
    assert all(len(s) == len(alone) for s in shards)
    for k, whole in enumerate(alone):
        parts = [s[k] for s in shards]
        assert sorted(sum(parts, [])) == sorted(whole)
        assert all(parts)  # no process without data
    shares = [
        ShardedBatches(size, batch, r, processes, None, False).shares for r in range(processes)
    ]
    assert [sum(column) for column in zip(*shares, strict=True)] == pytest.approx(
        [1.0] * len(alone)
    )


def test_evaluation_batches_are_dealt_whole():
    assert [list(DealtBatches(7, 2, r, 3)) for r in range(3)] == [
        [[0, 1], [6]],
        [[2, 3]],
        [[4, 5]],
    ]
    assert DealtBatches(7, 2, 0, 3).total == 4


def test_distributed_settings_are_checked(monkeypatch):
    with pytest.raises(ConfigError, match="trainer.distributed.backend=mpi: choose one of"):
        distributed.check_settings(compose_cfg(["trainer.distributed.backend=mpi"]).trainer)
    with pytest.raises(ConfigError, match="trainer.distributed.timeout_s=0"):
        distributed.check_settings(compose_cfg(["trainer.distributed.timeout_s=0"]).trainer)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    cfg = compose_cfg(["trainer.distributed.sync_batchnorm=true", "trainer.device=cpu"])
    with pytest.raises(ConfigError, match="sync_batchnorm=true needs CUDA"):
        distributed.setup(cfg, lambda: torch.device("cpu"))
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ConfigError, match="RANK=5 is not below WORLD_SIZE=2"):
        distributed.setup(cfg, lambda: torch.device("cpu"))


def test_a_global_batch_smaller_than_the_processes_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    cfg = compose_cfg(["trainer.batch_size=2"])
    with pytest.raises(ConfigError, match="trainer.batch_size=2 is the global batch, shared by 4"):
        build_loaders(cfg, {}, torch.device("cpu"))


def test_other_verbs_refuse_to_run_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert medtrain_main(["predict", "run_dir=x"]) == 2
    assert "under torchrun only training runs" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpus_train_with_nccl(tmp_path):
    launched = torchrun(
        [*EXACT[:-2], "trainer.device=cuda", "trainer.max_epochs=2", "hydra.run.dir=gpus"],
        tmp_path,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    info = json.loads((tmp_path / "gpus" / "run_info.json").read_text())
    assert "nccl" in info["world"]["backend"]
    assert len(set(info["parameter_checksums"])) == 1
