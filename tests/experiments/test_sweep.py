"""Sweeps: the Optuna search (pruning, resume after a kill, failing trials, bad arguments), the
summary of a sweep folder and the Hydra grid multirun that writes it."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import optuna
import pytest
import torch
from hydra.types import RunMode
from omegaconf import OmegaConf
from optuna.trial import TrialState

from medtrain.commands.report import main as report_main
from medtrain.commands.sweep import main
from medtrain.errors import ConfigError
from medtrain.experiments import sweep_summary
from medtrain.experiments.hydra_callbacks import SweepSummary
from medtrain.io import load_checkpoint
from tests.conftest import ROOT, TINY, read_metrics, run_cli

# Trials of well under a second: a small CNN on tiny synthetic images, three epochs.
FAST = [
    *TINY,
    "trainer.max_epochs=3",
    "model.widths=[8,16]",
    "model.hidden=16",
    "augmentation=none",
]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@pytest.fixture
def one_thread(monkeypatch):
    """One torch thread: on 2 shared cores more threads only wait on each other."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for subprocesses
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_study(sweep_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="medtrain", storage=f"sqlite:///{sweep_dir / 'study.db'}")


def read_summary(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / "sweep_summary.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_search_prunes_poor_trials_and_writes_the_summary(tmp_path, one_thread, capsys):
    # A log-uniform lr up to 1 gives trials that collapse to val/auc 0.5 after one epoch: the
    # median pruner stops them once two trials have completed. The seeded sampler makes it repeat.
    argv = [f"sweep.dir={tmp_path}", "sweep.trials=6", "sweep.params.optimizer.lr=log(1e-4,1)"]
    argv += ["sweep.pruner=median", "sweep.min_epochs=1", "sweep.startup_trials=2", *FAST]
    assert main(argv) == 0

    trials = load_study(tmp_path).trials
    assert len(trials) == 6 and all(t.state in FINISHED for t in trials)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and len(complete) >= 2
    for trial in pruned:  # stopped early: fewer epochs than max_epochs, no test metrics
        assert len(trial.intermediate_values) < 3
        assert not (tmp_path / str(trial.number) / "metrics.json").exists()
    from medtrain.commands.rerun import main as rerun_main

    capsys.readouterr()
    assert rerun_main([f"run_dir={tmp_path / str(pruned[0].number)}"]) == 2
    assert "trial pruned at epoch " in capsys.readouterr().err  # not "did the run finish?"
    for trial in complete:  # the objective is the monitored validation value of the run
        assert trial.value == pytest.approx(read_metrics(tmp_path / str(trial.number))["val/auc"])
        saved = OmegaConf.load(tmp_path / str(trial.number) / ".hydra" / "config.yaml")
        assert saved.optimizer.lr == trial.params["optimizer.lr"]

    rows = read_summary(tmp_path)
    assert len(rows) == 6
    status = {int(r["job"]): r["status"] for r in rows}
    assert status == {
        t.number: {"COMPLETE": "complete", "PRUNED": "pruned"}[t.state.name] for t in trials
    }
    done = [float(r["val/auc"]) for r in rows if r["status"] == "complete"]
    assert done == sorted(done, reverse=True) and rows[0]["status"] == "complete"
    assert rows[0]["overrides"].startswith("optimizer.lr=") and rows[0]["test/auc"]
    assert all(r["val/auc"] and r["train_seconds"] for r in rows)  # pruned: their last epoch
    assert (tmp_path / "sweep_summary.md").read_text().count("\n| ") == 7  # header + 6 jobs
    assert (tmp_path / "sweep_optimizer.lr.png").stat().st_size > 0

    (tmp_path / "sweep_summary.csv").unlink()  # the CLI writes it again for an old sweep
    assert report_main([f"sweep_dir={tmp_path}"]) == 0
    assert read_summary(tmp_path) == rows
    # Ranked by another metric the jobs recorded; a metric none recorded is refused, naming it,
    # and the summary is left as it was.
    assert report_main([f"sweep_dir={tmp_path}", "monitor=val/loss"]) == 0
    losses = [float(r["val/loss"]) for r in read_summary(tmp_path) if r["status"] == "complete"]
    assert losses == sorted(losses)
    before = (tmp_path / "sweep_summary.csv").read_bytes()
    assert report_main([f"sweep_dir={tmp_path}", "monitor=val/aucc"]) == 2
    err = capsys.readouterr().err
    assert "monitor=val/aucc: no job recorded it; they recorded [" in err and "'val/auc'" in err
    assert (tmp_path / "sweep_summary.csv").read_bytes() == before
    # A run folder (a job's) is not a sweep's: refused, nothing written into it.
    job = next(d for d in tmp_path.iterdir() if (d / "metrics.json").is_file())
    assert report_main([f"sweep_dir={job}"]) == 2
    assert "is a run folder, not a sweep's" in capsys.readouterr().err
    assert not (job / "sweep_summary.csv").exists()
    # Nor is a folder of runs that were not trained as one sweep (a day's outputs/<date>/).
    day = tmp_path.with_name(f"{tmp_path.name}_day")
    shutil.copytree(job, day / "10-00-00")
    shutil.copytree(job, day / "11-00-00")
    assert report_main([f"sweep_dir={day}"]) == 2
    assert f"sweep_dir: {day} is no grid's or search's folder" in capsys.readouterr().err
    assert sorted(p.name for p in day.iterdir()) == ["10-00-00", "11-00-00"]


def _states(db: Path) -> dict[int, str]:
    try:
        with closing(sqlite3.connect(db, timeout=1)) as con:
            return dict(con.execute("SELECT number, state FROM trials"))
    except sqlite3.Error:  # not created yet, or being written
        return {}


def test_killed_sweep_resumes_without_repeating_trials(tmp_path, one_thread):
    command = [sys.executable, "-m", "medtrain", "sweep", f"sweep.dir={tmp_path}", "sweep.trials=4"]
    command += ["sweep.params.optimizer.lr=log(1e-4,1e-2)", "sweep.pruner=none", *FAST]
    command += ["trainer.max_epochs=4"]  # long enough to be caught running
    log = (tmp_path / "first.log").open("w")
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        states = _states(tmp_path / "study.db")
        done = [n for n, s in states.items() if s != "RUNNING"]
        if len(done) >= 2 and "RUNNING" in states.values():
            process.send_signal(signal.SIGKILL)
            break
        assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the sweep did not reach two finished trials"
        time.sleep(0.05)
    process.wait()
    log.close()

    study = load_study(tmp_path)
    before = {t.number: (t.state, t.params, t.value) for t in study.trials if t.state in FINISHED}
    killed = [t.number for t in study.trials if t.state == TrialState.RUNNING]
    assert len(before) >= 2 and killed

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = {t.number: t for t in load_study(tmp_path).trials}
    for number in killed:  # recorded as failed, and not counted towards the four
        assert trials[number].state == TrialState.FAIL
        assert trials[number].user_attrs["error"] == "interrupted"
        assert (tmp_path / str(number) / "error.txt").read_text().strip() == "interrupted"
    counted = [t for n, t in trials.items() if t.state in FINISHED and n not in killed]
    assert len(counted) == 4 and len(trials) == 4 + len(killed)
    for number, finished in before.items():  # finished trials keep their number, params and value
        assert (trials[number].state, trials[number].params, trials[number].value) == finished
    new = [t for n, t in trials.items() if n not in before and n not in killed]
    assert min(t.number for t in new) > max([*before, *killed])
    old_values = {p["optimizer.lr"] for _, p, _ in before.values()}
    assert not old_values & {t.params["optimizer.lr"] for t in new}
    statuses = {r["job"]: (r["status"], r["error"]) for r in read_summary(tmp_path)}
    assert all(statuses[str(n)] == ("failed", "interrupted") for n in killed)


def test_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, one_thread):
    argv = [f"sweep.dir={tmp_path}", "sweep.trials=3", "sweep.params.optimizer.lr=choice(0.001,-1)"]
    assert main([*argv, *FAST]) == 0  # exit 0: at least one trial completed

    trials = load_study(tmp_path).trials
    failed = [t for t in trials if t.state == TrialState.FAIL]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(trials) == 3 and failed and complete
    for trial in failed:
        assert trial.params["optimizer.lr"] == -1
        assert "optimizer.lr=-1: must be a number > 0" in trial.user_attrs["error"]
        error = (tmp_path / str(trial.number) / "error.txt").read_text()
        assert error.startswith("ConfigError: optimizer.lr=-1")
    assert all(t.params["optimizer.lr"] == 0.001 for t in complete)
    rows = {r["job"]: r for r in read_summary(tmp_path)}
    for trial in failed:
        assert rows[str(trial.number)]["status"] == "failed"
        assert "must be a number > 0" in rows[str(trial.number)]["error"]
    # choice(...) is categorical: labelled points
    assert (tmp_path / "sweep_optimizer.lr.png").exists()


def test_a_searched_choice_is_a_column_even_when_every_trial_drew_alike(tmp_path, one_thread):
    """choice(cnn) is searched (one option): its own column and plot, not an every-job setting."""
    argv = [f"sweep.dir={tmp_path}", "sweep.trials=2", "sweep.params.model=choice(cnn)"]
    argv += ["sweep.params.optimizer.lr=log(1e-4,1e-2)"]
    assert main([*argv, *TINY, "trainer.max_epochs=1"]) == 0
    every = next(
        line
        for line in (tmp_path / "sweep_summary.md").read_text().splitlines()
        if line.startswith("Every job")
    )
    assert "model=cnn" not in every
    assert all(row["overrides"].startswith("model=cnn ") for row in read_summary(tmp_path))
    assert (tmp_path / "sweep_model.png").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sweep.trails=3", "sweep.params.optimizer.lr=log(1e-4,1)"], "unknown key 'sweep.trails'"),
        (["trainer.max_epochs=1"], "nothing to search"),
        (["sweep.params.optimizer.lr=uniform(1,2)"], "expected float(low,high)"),
        (["sweep.params.optimizer.lr=log(0,1)"], "log bounds must be > 0"),
        (["sweep.params.trainer.max_epochs=int(5,2)"], "low must be below high"),
        (["sweep.params.model=choice(cnn,resnt18)"], "no option ['resnt18'] in group 'model'"),
        (["sweep.params.model=float(0,1)"], "is a config group"),
        (["sweep.params.optimizer.lr=log(1e-4,1)", "optimizer.lr=0.1"], "fixes a searched key"),
        (["sweep.params.optimizer.lr=log(1e-4,1)", "sweep.pruner=asha"], "choose one of"),
        (["sweep.params.optimizer.lr=log(1e-4,1)", "trainer.max_epoch=3"], "trainer.max_epochs"),
        (["sweep.params.optimizer.lrr=log(1e-4,1)"], "optimizer.lrr"),
        (
            ["~sweep.trials", "sweep.params.optimizer.lr=log(1e-4,1)"],
            "sweep keys cannot be deleted",
        ),
        (["sweep.params.optimizer.lr=log(1e-4,1)", "~optimizer.lr"], "fixes a searched key"),
        (["sweep.params.optimizer.lr=log(1e-4,1)", "model"], "expected key=value or ~key"),
        # What no searched value changes would fail every trial alike: before the first.
        (
            ["sweep.params.optimizer.lr=log(1e-4,1)", "dataset=manifest", "dataset.path=/no.csv"],
            "dataset.path='/no.csv': does not exist",
        ),
        (
            ["sweep.params.optimizer.lr=log(1e-4,1)", "trainer.batch_size=0"],
            "trainer.batch_size=0: must be an integer >= 1 (every trial would fail the same way",
        ),
    ],
)
def test_bad_sweep_arguments_exit_2_before_anything_runs(tmp_path, capsys, argv, message):
    sweep_dir = tmp_path / "sweep"
    assert main([f"sweep.dir={sweep_dir}", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    if "no trial was run" in err:  # the trials' config, not the command line's sweep keys
        assert "sweep --help" not in err
    assert not sweep_dir.exists()


def test_a_config_error_of_some_drawn_values_is_left_to_their_trials(tmp_path):
    """A key interpolated from a searched one fails for some values only (scheduler.factor of
    optimizer.lr=2.0, valid at 0.5): the search is not refused before its trials."""
    from medtrain.experiments.sweep import check_every_trial, parse_args

    argv = [f"sweep.dir={tmp_path}", "sweep.params.optimizer.lr=choice(2.0,0.5)"]
    check_every_trial(parse_args([*argv, "scheduler=plateau", "scheduler.factor=${optimizer.lr}"]))
    with pytest.raises(ConfigError, match="every trial would fail the same way"):
        check_every_trial(parse_args([*argv, "trainer.batch_size=0"]))


@pytest.mark.parametrize(
    ("spec", "said"),
    [  # a run's config check; a network's parameter annotated int
        ("trainer.batch_size=float(8,64)", "trainer.batch_size=28.72: must be an integer >= 1"),
        ("model.hidden=log(16,64.5)", "model.hidden=33.945: must be a whole number"),
    ],
)
def test_a_search_of_fractions_for_a_whole_number_key_is_refused_before_a_trial(
    spec, said, tmp_path
):
    """Each trial failed alike (an error.txt per trial, the search counting them); refused before
    the first, with the int() to use. Keys that take fractions are searched as before."""
    from medtrain.experiments.sweep import check_every_trial, parse_args

    key, bounds = spec.split("=")
    low, high = bounds[bounds.index("(") + 1 : -1].split(",")
    with pytest.raises(ConfigError) as err:
        check_every_trial(parse_args([f"sweep.dir={tmp_path}", f"sweep.params.{spec}"]))
    assert str(err.value) == (
        f"sweep.params.{key}={bounds} draws fractions, which {key} does not take ({said}): "
        f"search it with int({math.ceil(float(low))},{math.floor(float(high))}); no trial was run"
    )
    fractions = ["optimizer.lr=log(1e-4,1e-2)", "model.dropout=float(0,0.5)"]
    check_every_trial(
        parse_args([f"sweep.dir={tmp_path}", *(f"sweep.params.{f}" for f in fractions)])
    )
    assert not any(tmp_path.iterdir())


def test_grid_multirun_writes_the_summary(tmp_path, one_thread):
    sweep_dir = tmp_path / "grid"
    done = run_cli(
        "-m",
        *TINY,
        "trainer.max_epochs=1",
        "optimizer.lr=1e-3,1e-2",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_summary(sweep_dir)
    assert sorted(r["overrides"] for r in rows) == ["optimizer.lr=0.001", "optimizer.lr=0.01"]
    for row in rows:
        metrics = read_metrics(sweep_dir / row["job"])
        assert row["status"] == "complete"
        assert float(row["val/auc"]) == pytest.approx(metrics["val/auc"])
        assert float(row["test/auc"]) == pytest.approx(metrics["test/auc"])
        assert float(row["train_seconds"]) > 0
    assert float(rows[0]["val/auc"]) >= float(rows[1]["val/auc"])
    trained = {  # each job trained with its own value
        row["overrides"]: load_checkpoint(sweep_dir / row["job"] / "checkpoints" / "best.pt")
        for row in rows
    }
    assert {k: v["config"]["optimizer"]["lr"] for k, v in trained.items()} == {
        "optimizer.lr=0.001": 1e-3,
        "optimizer.lr=0.01": 1e-2,
    }
    assert "trainer.max_epochs=1" in (sweep_dir / "sweep_summary.md").read_text()  # common values
    assert (sweep_dir / "sweep_optimizer.lr.png").exists()


def test_summary_of_a_grid_with_a_failed_job(tmp_path):
    # Job folders as Hydra writes them; job 1 stopped with an error before metrics.json.
    for job, lr in (("0", "0.001"), ("1", "10.0")):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(
            f"- optimizer.lr={lr}\n- seed=1\n- ~model.hidden\n"
        )
        (tmp_path / job / ".hydra" / "config.yaml").write_text(
            "task: {monitor: val/loss, monitor_mode: min}\n"
        )
    (tmp_path / "0" / "metrics.json").write_text('{"val/loss": 0.3, "test/mae": 1.5}')
    (tmp_path / "0" / "run_info.json").write_text('{"train_seconds": 2.5}')
    (tmp_path / "1" / "train.log").write_text(
        "[t][medtrain][INFO] - epoch 1\n[t][medtrain][ERROR] - the loss became NaN at epoch 2\n"
    )
    # A rerun of job 0, written beside it by `medtrain rerun`, is no job of the sweep.
    rerun = tmp_path / "0_rerun_2026-12-06_20-10-00"
    (rerun / ".hydra").mkdir(parents=True)
    (rerun / ".hydra" / "overrides.yaml").write_text("[]\n")
    (rerun / "rerun.json").write_text('{"verdict": "REPRODUCED"}')
    sweep_summary.write_sweep_summary(tmp_path)
    rows = read_summary(tmp_path)
    assert [(r["job"], r["overrides"], r["status"]) for r in rows] == [
        ("0", "optimizer.lr=0.001", "complete"),
        ("1", "optimizer.lr=10.0", "failed"),
    ]
    assert rows[0]["val/loss"] == "0.3" and rows[0]["test/mae"] == "1.5"
    assert rows[1]["error"] == "the loss became NaN at epoch 2"
    # a deletion is shown as typed, not as `~model.hidden=`
    assert "Every job: `seed=1 ~model.hidden`." in (tmp_path / "sweep_summary.md").read_text()


def test_summary_ranked_by_another_metric_goes_its_way(tmp_path):
    """Ranked by a metric other than the runs' monitor, an error metric puts the smallest first
    (val/rmse was ranked upwards: the worst job first); a score, the largest."""
    for job, (rmse, pearson) in {"0": (72.0, 0.1), "1": (42.0, 0.9), "2": (55.0, 0.5)}.items():
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        (tmp_path / job / ".hydra" / "config.yaml").write_text(
            "task: {monitor: val/mae, monitor_mode: min}\n"
        )
        metrics = {"val/mae": 1.0, "val/rmse": rmse, "val/pearson": pearson}
        (tmp_path / job / "metrics.json").write_text(json.dumps(metrics))
    sweep_summary.write_sweep_summary(tmp_path, "val/rmse", plots=False)
    assert [r["job"] for r in read_summary(tmp_path)] == ["1", "2", "0"]
    assert "val/rmse (min)" in (tmp_path / "sweep_summary.md").read_text()
    sweep_summary.write_sweep_summary(tmp_path, "val/pearson", plots=False)
    assert [r["job"] for r in read_summary(tmp_path)] == ["1", "2", "0"]


def test_callback_leaves_single_runs_alone_and_never_raises(tmp_path, caplog):
    config = OmegaConf.create({"hydra": {"mode": RunMode.RUN, "sweep": {"dir": str(tmp_path)}}})
    SweepSummary().on_job_end(config, job_return=None)
    assert not list(tmp_path.iterdir())
    config.hydra.mode = RunMode.MULTIRUN
    SweepSummary().on_multirun_end(config)  # an empty sweep folder: a warning, not an exception
    assert "no sweep summary" in caplog.text
    assert os.listdir(tmp_path) == []


def test_two_workers_on_one_journal_finish_exactly_the_trials_asked(tmp_path, one_thread):
    """Two worker processes started independently on one journal file draw trials from one study
    until 5 are done: exactly 5, none run twice, and each worker's summary lists them all."""
    journal = tmp_path / "journal.log"
    command = [sys.executable, "-m", "medtrain", "sweep", f"sweep.dir={tmp_path / 'sweep'}"]
    command += [f"sweep.storage={journal}", "sweep.trials=5", "sweep.pruner=none"]
    command += ["sweep.params.optimizer.lr=log(1e-4,1e-2)", *FAST, "trainer.max_epochs=2"]
    workers = [
        subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(
        study_name="medtrain", storage=JournalStorage(JournalFileBackend(str(journal)))
    )
    ran = [t for t in study.trials if not t.user_attrs.get("surplus")]
    both = outputs[0][-3000:] + outputs[1][-3000:]
    assert len(ran) == 5 and all(t.state == TrialState.COMPLETE for t in ran), both
    # every trial trained once, by one worker, in its own folder
    lines = [line for out in outputs for line in out.splitlines() if " - trial " in line]
    numbers = sorted(int(line.split(" - trial ")[1].split()[0]) for line in lines)
    assert numbers == [t.number for t in ran], both
    for trial in ran:
        log = (tmp_path / "sweep" / str(trial.number) / "train.log").read_text()
        assert log.count("done in ") == 1
        pid = trial.user_attrs["worker"].rsplit(":", 1)[1].partition("/")[0]  # host:pid/space
        assert pid in {str(w.pid) for w in workers}
    surplus = [t for t in study.trials if t.user_attrs.get("surplus")]
    assert all(t.state == TrialState.FAIL for t in surplus)
    rows = read_summary(tmp_path / "sweep")
    assert sorted(int(r["job"]) for r in rows) == [t.number for t in ran], both
    assert all(r["status"] == "complete" for r in rows), rows


def test_a_summary_lists_trials_run_on_another_machine(tmp_path, one_thread):
    """A shared study's trials whose folders are elsewhere come into the summary from the study."""
    journal = tmp_path / "journal.log"
    assert (
        main(
            [f"sweep.dir={tmp_path / 'here'}", f"sweep.storage={journal}", "sweep.trials=1"]
            + ["sweep.params.optimizer.lr=log(1e-4,1e-2)", *FAST]
        )
        == 0
    )
    # the same study, as seen from another machine's sweep folder: no trial folder there
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "study.json").write_text((tmp_path / "here" / "study.json").read_text())
    row = sweep_summary.read_job(
        elsewhere / "0", "val/auc", sweep_summary.study_trials(elsewhere)[0][0]
    )
    local = read_metrics(tmp_path / "here" / "0")
    assert row["status"] == "complete"
    assert row["val/auc"] == pytest.approx(local["val/auc"])
    assert row["test/auc"] == pytest.approx(local["test/auc"])
    assert row["folder"].endswith(str(tmp_path / "here" / "0"))


def test_stale_trials_are_those_of_dead_workers():
    from types import SimpleNamespace

    from medtrain.experiments.sweep import STALE_AFTER_S, is_stale, this_worker

    now = time.time()

    def trial(worker: str, beat: float):
        start = SimpleNamespace(timestamp=lambda: beat)
        return SimpleNamespace(
            user_attrs={"worker": worker, "heartbeat": beat}, datetime_start=start
        )

    assert not is_stale(trial(this_worker(), now), shared=True)  # this process: alive
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host, _, rest = this_worker().rpartition(":")
    space = rest.partition("/")[2]
    pid = dead.stdout.strip()
    assert is_stale(trial(f"{host}:{pid}/{space}", now), shared=True)
    assert is_stale(trial(f"{host}:{pid}", now), shared=True)  # a worker of release 0.3
    # The same host name and a dead pid in another PID namespace (another container on this
    # host, host networking): no process of ours; it is stale by its heartbeat only.
    assert not is_stale(trial(f"{host}:{pid}/1", now - 60), shared=True, now=now)
    assert not is_stale(trial("other-host:1", now - 60), shared=True, now=now)
    assert is_stale(trial("other-host:1", now - STALE_AFTER_S - 1), shared=True, now=now)
    assert is_stale(trial(this_worker(), now), shared=False)  # alone on study.db: a killed sweep's


def test_a_study_says_what_it_searches_in_one_attribute():
    """Workers started together read the search all at once (one attribute) or not at all; studies
    of release 0.2, with three attributes, are still read."""
    import optuna

    from medtrain.experiments.studies import SEARCH, search_of

    new, old = optuna.create_study(), optuna.create_study()
    assert search_of(new) is None
    search = {
        "overrides": ["a=1"],
        "params": {"optimizer.lr": ["log", 1e-4, 1e-2]},
        "monitor": "val/auc",
    }
    new.set_user_attr(SEARCH, search)
    assert search_of(new) == search
    old.set_user_attr("overrides", ["a=1"])
    assert search_of(old) is None  # half written: not yet a search
    old.set_user_attr("params", search["params"])
    old.set_user_attr("monitor", "val/auc")
    assert search_of(old) == search


def test_deletions_pass_to_the_trials():
    from medtrain.experiments.sweep import parse_args

    sweep = parse_args(["sweep.params.optimizer.lr=log(1e-4,1)", "model=resnet", "~model.dropout"])
    assert sweep.overrides == ["model=resnet", "~model.dropout"]


def test_a_sweep_writes_only_into_a_folder_of_its_own_study(tmp_path):
    """Finished trials whose study is gone (a deleted study.db) or stored elsewhere (another
    sweep.storage): a new study numbered its trials alike and rewrote their saved configs, and
    the summary paired new values with old metrics. Refused, as are a file, a run's folder and
    a CV's, before anything is written."""
    from medtrain.errors import ConfigError
    from medtrain.experiments.sweep import open_study, parse_args
    from tests.conftest import compose_cfg

    cfg = compose_cfg(TINY)
    spec = "sweep.params.optimizer.lr=log(1e-4,1e-2)"
    old = tmp_path / "old"
    (old / "0" / ".hydra").mkdir(parents=True)
    (old / "0" / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"holds trial folders \[0\] that its study \(study.db\)"):
        open_study(parse_args([f"sweep.dir={old}", spec]), cfg)
    assert sorted(p.name for p in old.iterdir()) == ["0"]  # no new study.db left
    (old / "study.json").write_text(json.dumps({"storage": str(tmp_path / "a.log")}))
    with pytest.raises(ConfigError, match=r"holds a search stored in .*a.log \(study.json\)"):
        open_study(parse_args([f"sweep.dir={old}", spec, f"sweep.storage={tmp_path}/b.log"]), cfg)
    for name, said in (
        ("metrics.json", "holds a run"),
        ("folds.json", "a cross-validation"),
        ("multirun.yaml", r"holds a grid \(medtrain -m\) \(multirun.yaml\)"),
    ):
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        (folder / name).write_text("{}")
        with pytest.raises(ConfigError, match=said):
            open_study(parse_args([f"sweep.dir={folder}", spec]), cfg)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file; give a folder"):
        open_study(parse_args([f"sweep.dir={tmp_path / 'file'}", spec]), cfg)


def test_a_shared_study_of_another_search_is_named_and_leaves_no_folder(tmp_path, monkeypatch):
    """A second search given the shared storage of another blamed its own new sweep.dir and left
    its study.json there; a relative SQLite URL was kept relative (another folder's `medtrain
    report` then opened another database)."""
    from medtrain.errors import ConfigError
    from medtrain.experiments.sweep import absolute_sqlite, open_study, parse_args
    from tests.conftest import compose_cfg

    monkeypatch.chdir(tmp_path)
    assert absolute_sqlite("sqlite:///s7/shared.db") == f"sqlite:///{tmp_path}/s7/shared.db"
    assert absolute_sqlite("sqlite+pysqlite:///a.db?timeout=10") == (
        f"sqlite+pysqlite:///{tmp_path}/a.db?timeout=10"
    )
    for url in (
        "sqlite:////abs/x.db",
        "sqlite:///:memory:",
        "sqlite:///file:a.db?mode=ro&uri=true",
        "postgresql://u:p@h/db",
    ):
        assert absolute_sqlite(url) == url
    cfg = compose_cfg(TINY)
    shared = f"sweep.storage={tmp_path}/shared.log"
    open_study(parse_args(["sweep.dir=a", "sweep.params.optimizer.lr=log(1e-4,1e-2)", shared]), cfg)
    assert (tmp_path / "a" / "study.json").is_file()
    other = ["sweep.dir=b", "sweep.params.optimizer.lr=log(1e-3,1e-1)", shared]
    with pytest.raises(ConfigError, match=r"^the study 'medtrain' in .*shared.log holds another"):
        open_study(parse_args(other), cfg)
    assert not (tmp_path / "b").exists()


def test_a_run_folder_given_to_a_search_is_refused_by_key():
    """`hydra.run.dir=` was ignored without a word: the trials went into sweep.dir."""
    from medtrain.errors import ConfigError
    from medtrain.experiments.sweep import parse_args

    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        with pytest.raises(ConfigError, match=f"^{key}: a search's trials go in sweep.dir"):
            parse_args(["sweep.params.optimizer.lr=log(1e-4,1e-2)", f"{key}=somewhere"])


def test_a_shared_worker_that_found_no_trial_left_exits_0_and_one_whose_trials_failed_1(
    tmp_path, monkeypatch, capsys
):
    """A worker joining as the last trials were taken, or whose trials were all pruned while the
    first trials still ran elsewhere, said 'no trial completed' and exited 1 (a job array read it
    as failed); one whose own trial failed must still exit 1."""
    import optuna

    import medtrain.experiments.sweep as sweep_module
    from medtrain.commands.sweep import main as sweep_main

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    other = study.ask()
    other.set_user_attr("worker", "elsewhere:1")  # still running on another worker
    monkeypatch.setattr(sweep_module, "run_sweep", lambda sweep: study)
    argv = [
        f"sweep.dir={tmp_path / 's'}",
        f"sweep.storage={tmp_path / 'j.log'}",
        "sweep.params.optimizer.lr=log(1e-4,1e-2)",
    ]
    assert sweep_main(argv) == 0
    assert "no trial left for this worker: 1 trial(s) still run" in capsys.readouterr().out
    pruned = study.ask()  # pruned against the reports of the other worker's trial so far
    pruned.set_user_attr("worker", sweep_module.this_worker())
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    assert sweep_main(argv) == 0
    assert (
        "this worker's 1 trial(s) were pruned: 1 trial(s) still run on other workers"
        in capsys.readouterr().out
    )
    mine = study.ask()
    mine.set_user_attr("worker", sweep_module.this_worker())
    study.tell(mine, state=optuna.trial.TrialState.FAIL)
    assert sweep_main(argv) == 1
    assert "error: no trial completed" in capsys.readouterr().err
