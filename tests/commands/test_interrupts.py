"""SIGTERM (a batch system's time limit or preemption, `docker stop`, `kill`) ends the verbs that
train as Ctrl-C does: logged, summaries written, exit status 130, continued by the same command."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medtrain.engine.callbacks import Epoch
from medtrain.experiments.sweep_summary import INTERRUPTED_LOG
from medtrain.io import load_checkpoint
from tests.conftest import ON_CPU, ROOT, TINY


@pytest.mark.parametrize("whole_group", [True, False], ids=["process-group", "main-process"])
def test_sigterm_ends_a_run_as_ctrl_c_does(tmp_path, whole_group):
    """Sent to the whole group (as SLURM sends it) or to the main process alone (`kill PID`), with
    a DataLoader worker: the run stops after its last finished epoch without a traceback, and
    says how to continue (continuing is tested after Ctrl-C, in tests/engine/test_training.py)."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "medtrain", *TINY, ON_CPU, "trainer.num_workers=1"]
    command += ["trainer.max_epochs=50", f"hydra.run.dir={run}"]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    last = run / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.is_file():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no epoch finished in 120 s"
        time.sleep(0.05)
    if whole_group:
        os.killpg(process.pid, signal.SIGTERM)
    else:
        process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 130, output[-3000:]
    # No error of the main process (before, torch's: "DataLoader worker ... is killed by signal").
    # A worker killed while printing may leave a bare "Traceback" header under heavy load (seen
    # once, not reproduced): no exception is named.
    errors = [line for line in output.splitlines() if line.startswith(("RuntimeError", "Keyboard"))]
    assert not errors and "DataLoader worker" not in output, output[-3000:]
    log = (run / "train.log").read_text()
    assert f"{INTERRUPTED_LOG} with trainer.resume=true continues from the last finished" in log
    assert 1 <= load_checkpoint(last)["epoch"] < 50 and not (run / "metrics.json").exists()


@pytest.fixture
def sigterm_at_second_trial(monkeypatch):
    """The process receives SIGTERM while the second trial of a search trains."""
    import medtrain.experiments.sweep as sweep_module

    trials = []
    original = sweep_module.train

    def train(cfg, run_dir: Path, callbacks=()):
        trials.append(run_dir)

        def stop(epoch: Epoch) -> None:
            if len(trials) == 2:
                os.kill(os.getpid(), signal.SIGTERM)

        return original(cfg, run_dir, callbacks=[*callbacks, stop])

    monkeypatch.setattr(sweep_module, "train", train)
    return trials


def test_a_search_stopped_by_sigterm_writes_its_summary_and_resumes(
    tmp_path, sigterm_at_second_trial, capsys
):
    from medtrain.commands.sweep import main

    argv = [f"sweep.dir={tmp_path}", "sweep.trials=2", "sweep.pruner=none", *TINY, ON_CPU]
    argv += ["sweep.params.optimizer.lr=log(1e-4,1e-2)", "augmentation=none"]
    argv += ["model.widths=[8,16]", "model.hidden=16"]
    before = signal.getsignal(signal.SIGTERM)
    assert main(argv) == 130
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    out = capsys.readouterr().out
    assert f"summary so far: {tmp_path / 'sweep_summary.csv'}" in out
    with open(tmp_path / "sweep_summary.csv", newline="") as f:
        rows = {row["job"]: (row["status"], row["error"]) for row in csv.DictReader(f)}
    assert rows == {"0": ("complete", ""), "1": ("failed", "interrupted")}

    assert main(argv) == 0  # the same command: one more trial, the interrupted one not counted
    with open(tmp_path / "sweep_summary.csv", newline="") as f:
        statuses = sorted((row["job"], row["status"]) for row in csv.DictReader(f))
    assert statuses == [("0", "complete"), ("1", "failed"), ("2", "complete")]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_stops_on_ctrl_c_with_one_line(tmp_path, sig):
    """Ctrl-C after start-up ended in a KeyboardInterrupt traceback through asyncio and uvicorn:
    now one line and status 130, as `predict` stops; SIGTERM (a service manager) stays quiet."""
    from tests.conftest import train_in_process
    from tests.inference.test_serve_limits import wait_until_up
    from tests.inference.test_serve_processes import free_port

    run = tmp_path / "run"
    train_in_process(run, [*TINY, ON_CPU, "trainer.max_epochs=1"])
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "medtrain", "serve", f"run_dir={run}", f"port={port}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # pytest-xdist workers ignore SIGINT, and a child would inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_until_up(port, process)
        process.send_signal(sig)
        err = process.communicate(timeout=30)[1]
    finally:
        if process.poll() is None:
            process.kill()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    if sig == signal.SIGINT:
        assert process.returncode == 130
        assert err.splitlines()[-1] == "interrupted: the server stopped"
    else:
        assert process.returncode == -signal.SIGTERM  # uvicorn's stop: the signal's own status
