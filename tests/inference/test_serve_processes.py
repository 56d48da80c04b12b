"""`medtrain serve processes=N`: forked server processes on one port, answering as one server
does; a dead worker replaced, a stuck one killed after the stop deadline, workers leaving with
their supervisor; and the refusals of the key."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from medtrain.errors import ConfigError
from medtrain.inference import processes as forked
from medtrain.inference.predictor import Predictor
from medtrain.inference.processes import Supervisor, check_processes, listening_socket
from tests.conftest import ROOT
from tests.inference.test_serve import encode, fetch, grey, post
from tests.inference.test_serve_limits import wait_until_up

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="forked servers are for Linux"
)


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, parent, ...); None: gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def is_alive(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def children(pid: int) -> set[int]:
    """The live processes whose parent is `pid`."""
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        fields = stat_fields(entry)
        if fields is not None and int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def wait_for(check, seconds: float = 20.0, what: str = "the condition"):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {seconds} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(run_dir, port: int, *keys: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "medtrain", "serve", f"run_dir={run_dir}", f"port={port}"]
    process = subprocess.Popen(
        [*command, *keys], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    wait_until_up(port, process)
    return process


def answers(port: int, data: bytes, count: int) -> list[dict]:
    """`count` predictions, each over its own connection (so the kernel spreads them over the
    processes accepting on the port)."""
    results = []
    for _ in range(count):
        status, result = post(port, "/predict", ("file", "a.png", data))
        assert status == 200, result
        results.append(result)
    return results


@pytest.mark.slow
def test_processes_answer_as_one_server_replace_a_dead_one_and_stop_on_sigterm(finished_runs):
    run_dir = finished_runs["classification"]
    data = encode(grey(3, (24, 24)), "PNG")
    expected = Predictor(run_dir).predict([Predictor(run_dir).decode(data, "a.png")], ["a.png"])[0]
    port = free_port()
    # threads=2: each process makes its own thread pool (a parent's pool does not survive a fork:
    # a model call in the child would hang in OpenMP).
    process = serve(run_dir, port, "processes=2", "threads=2", "shutdown_s=2")
    try:
        workers = wait_for(lambda: len(children(process.pid)) == 2 and children(process.pid))
        for result in answers(port, data, 12):
            assert result["label"] == expected["label"]
            assert result["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)
        status, _, body = fetch(port, "GET", "/ready")
        assert status == 200, body

        dead = min(workers)
        os.kill(dead, signal.SIGKILL)
        replaced = wait_for(
            lambda: (now := children(process.pid)) and len(now) == 2 and dead not in now and now,
            what="a new worker in place of the killed one",
        )
        assert replaced - workers, "no new worker"
        assert len(answers(port, data, 6)) == 6

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        err = process.stderr.read()
        assert f"server process {dead} exited (signal 9); starting another" in err
        assert not any(os.path.exists(f"/proc/{pid}") for pid in replaced), "a worker outlived"
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.slow
def test_workers_stop_when_their_supervisor_is_killed(finished_runs):
    port = free_port()
    process = serve(finished_runs["classification"], port, "processes=2", "backend=torch")
    try:
        workers = wait_for(lambda: len(children(process.pid)) == 2 and children(process.pid))
        process.kill()  # SIGKILL: no chance to forward anything
        process.wait(timeout=10)
        wait_for(
            lambda: not any(is_alive(pid) for pid in workers),
            seconds=10,
            what="the orphaned workers stopping",
        )
    finally:
        if process.poll() is None:
            process.kill()


def test_a_worker_that_ignores_sigterm_is_killed_at_the_deadline(capfd):
    def stubborn() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)

    supervisor = Supervisor(stubborn, processes=2, stop_s=0.5)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    began = time.perf_counter()
    assert supervisor.run() == 1  # not a clean stop
    assert time.perf_counter() - began < 5
    assert not supervisor.workers
    assert capfd.readouterr().err.count("did not stop within 0.5 s; killed") == 2


def test_workers_that_keep_dying_stop_the_server(capfd):
    def broken() -> None:
        raise RuntimeError("cannot serve")

    supervisor = Supervisor(broken, processes=2, stop_s=2)
    assert supervisor.run() == 1
    err = capfd.readouterr().err
    assert err.count("starting another") == forked.MAX_RESTARTS
    assert f"server processes keep exiting ({forked.MAX_RESTARTS + 1} in 60 s" in err


def test_a_signal_during_start_up_stops_forking_and_reaches_the_workers_started():
    class SignalledAfterFirst(Supervisor):
        def fork(self) -> bool:
            started = super().fork()
            os.kill(os.getpid(), signal.SIGTERM)  # while the others are still to be started
            return started

    supervisor = SignalledAfterFirst(lambda: time.sleep(30), processes=3, stop_s=10)
    began = time.perf_counter()
    assert supervisor.run() == 0
    assert time.perf_counter() - began < 5  # the one worker got SIGTERM: nobody waited for 10 s


def test_other_children_of_the_supervisor_are_not_workers(capfd):
    """A process the supervisor did not fork (an orphan handed to it as PID 1 of a container, a
    helper) exits: it is reaped, not replaced."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    assert Supervisor(lambda: time.sleep(30), processes=2, stop_s=5).run() == 0
    assert "starting another" not in capfd.readouterr().err
    other.wait(timeout=5)


def test_a_refused_fork_stops_the_server_with_one_line(monkeypatch, capfd):
    supervisor = Supervisor(lambda: time.sleep(30), processes=2, stop_s=5)
    real_fork = os.fork
    calls = []

    def fork():
        calls.append(1)
        if len(calls) == 2:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real_fork()

    monkeypatch.setattr(os, "fork", fork)
    assert supervisor.run() == 1
    err = capfd.readouterr().err
    assert "error: cannot start a server process ([Errno 11] Resource temporarily" in err
    assert "Traceback" not in err


def test_ctrl_c_stops_the_servers_with_status_130(capfd):
    """SIGINT (Ctrl-C) ends the supervisor as it ends one server process: one line, status 130
    (it returned 0); SIGTERM stays 0 (a service manager's stop)."""
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    assert Supervisor(lambda: time.sleep(30), processes=1, stop_s=5).run() == 130
    assert "interrupted: the servers stopped" in capfd.readouterr().err


def test_the_supervisor_lets_go_of_the_port_at_the_first_signal():
    sock = listening_socket("127.0.0.1", 0)
    supervisor = Supervisor(lambda: time.sleep(30), processes=1, stop_s=5, sock=sock)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    assert supervisor.run() == 0
    assert sock.fileno() == -1


def test_one_signal_arriving_twice_at_once_drains_once():
    """From the supervisor and from the group (Ctrl-C, systemd): drain, not stop at once."""
    import uvicorn

    from medtrain.inference.guard import REPEATED_SIGNAL_S, DrainingServer, ServiceState

    state = ServiceState(max_in_flight=4)
    server = DrainingServer(uvicorn.Config(app=None), state, drain_s=30)
    server.handle_exit(signal.SIGTERM, None)
    server.handle_exit(signal.SIGTERM, None)  # the copy
    assert state.draining and not server.should_exit
    time.sleep(REPEATED_SIGNAL_S + 0.05)
    server.handle_exit(signal.SIGTERM, None)  # a real second signal ends the drain
    assert server.should_exit


def test_auto_threads_are_shared_out_among_the_processes(monkeypatch):
    from medtrain.commands.serve import _threads

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert [_threads("auto", n) for n in (1, 2, 4, 8, 16)] == [8, 4, 2, 1, 1]
    assert _threads("3", 4) == 3


def test_the_processes_key_is_checked():
    assert check_processes(1, on_cpu=False) == 1  # one process: any device
    assert check_processes(3, on_cpu=True) == 3
    with pytest.raises(ConfigError, match="processes=0"):
        check_processes(0, on_cpu=True)
    with pytest.raises(ConfigError, match="processes"):
        check_processes("two", on_cpu=True)
    with pytest.raises(ConfigError, match="processes=2 with the model on a GPU.*processes=1"):
        check_processes(2, on_cpu=False)


def test_the_port_is_refused_early_when_taken():
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        assert sock.proto == socket.IPPROTO_TCP  # asyncio then sets TCP_NODELAY per connection
        with pytest.raises(ConfigError, match=f"port={port}: cannot listen there"):
            listening_socket("127.0.0.1", port)
    finally:
        sock.close()


def test_cli_refuses_a_bad_processes_value_before_loading(finished_runs, capsys, monkeypatch):
    from medtrain.commands.serve import main

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("medtrain.inference.predictor.Predictor.__init__", no_loading)
    run = f"run_dir={finished_runs['classification']}"
    assert main([run, "processes=0"]) == 2
    assert "processes=0" in capsys.readouterr().err
    assert main([run, "processes=2", "device=cuda"]) == 2
    assert "processes=2 with the model on a GPU" in capsys.readouterr().err


def test_a_refused_start_leaves_torch_threads_as_they_were(tmp_path, capsys):
    """`main` called in-process (tests, notebooks): a refusal after the thread setting undoes it
    (a run trained afterwards in the same process would round differently on other threads)."""
    import torch

    from medtrain.commands.serve import main

    before = torch.get_num_threads()
    assert main([f"run_dir={tmp_path / 'missing'}", f"threads={before + 1}"]) == 2
    assert "error:" in capsys.readouterr().err
    assert torch.get_num_threads() == before
