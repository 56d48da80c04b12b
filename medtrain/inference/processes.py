"""`medtrain serve processes=N`: N server processes answering on one listening socket, forked
from the process that loaded the model (its memory shared copy-on-write), watched by that process.

One server process runs its Python (HTTP parsing, the event loop, decoding, answers) on one core
at a time, whatever the number of cores; on a 2-core machine it served 539-605 small requests a
second with the ONNX backend, and two processes 820-993 (docs/benchmarks.md, "Serving").

The parent only supervises: it forwards SIGTERM and SIGINT to every worker (each drains and shuts
down as a single server does; a second SIGINT stops them at once; the same signal reaching a worker
twice within `guard.REPEATED_SIGNAL_S`, from the parent and from a terminal's Ctrl-C or a service
manager signalling the whole group, counts once), starts a new worker in place of one that dies,
and gives up, stopping the others, when workers keep dying. Each worker applies the serve limits
to itself (`max_concurrent`, `max_connections` are per process). Workers shut down, as on
SIGTERM, when the parent is gone.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

from medtrain.errors import ConfigError
from medtrain.values import whole_number

logger = logging.getLogger(__name__)
# More than this many unexpected worker exits within RESTART_WINDOW_S seconds: something is wrong
# with every worker (not one request), so the server stops instead of restarting them forever.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)
POLL_S = 0.1  # how often the supervisor looks at its workers


def check_processes(value, on_cpu: bool) -> int:
    """The number of server processes: a whole number >= 1; more than one needs Linux and a model
    on the CPU.

    Raises:
        ConfigError: naming `processes`.
    """
    processes = whole_number(value, "processes", 1)
    if processes == 1:
        return 1
    if not sys.platform.startswith("linux"):
        raise ConfigError(
            f"processes={processes}: forked server processes are supported on Linux only (after "
            "torch is loaded, fork is not safe on macOS and absent on Windows); use processes=1 "
            "and run one server per port behind a load balancer"
        )
    if not on_cpu:
        raise ConfigError(
            f"processes={processes} with the model on a GPU: forked processes cannot share a "
            "CUDA context; use processes=1 (one server per GPU), or device=cpu"
        )
    return processes


# What a refused address means, by errno, for the error line.
BIND_ADVICE = {
    errno.EADDRINUSE: "another program listens on that port: give port= another, or stop it",
    errno.EADDRNOTAVAIL: "not an address of this machine: give one of its own (127.0.0.1, or "
    "0.0.0.0 for every interface)",
    errno.EACCES: "ports below 1024 need administrator rights: give port= one above 1023",
}


def listening_sockets(
    host: str, port: int, backlog: int = 2048, every: bool = True
) -> list[socket.socket]:
    """TCP sockets bound to (host, port) and listening: one per address `host` names, as uvicorn
    (asyncio's `create_server`) binds them (`localhost`: IPv4 and IPv6), or the first address
    alone (`every=False`). Bound before the server says it serves, so that a port in use is a
    one-line error rather than uvicorn's, after "serving ... on http://...".

    Raises:
        ConfigError: the address cannot be bound (in use, not this machine's, no permission), or
            `host` names no address.
    """
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )
    except OSError as err:
        raise ConfigError(
            f"host={host}: cannot listen there ({err.strerror or err}): give an address of this "
            "machine (127.0.0.1, or 0.0.0.0 for every interface)"
        ) from err
    unique = list(dict.fromkeys((family, address) for family, _, _, _, address in infos))
    sockets: list[socket.socket] = []
    skipped: OSError | None = None
    for family, address in unique if every else unique[:1]:
        sock = None
        try:
            # proto IPPROTO_TCP: asyncio then sets TCP_NODELAY on each accepted connection
            # (without it small answers wait for the client's delayed ACK, about 40 ms).
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if every and family == socket.AF_INET6:  # as asyncio: IPv6 alone, beside IPv4
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sockets.append(sock)
        except OSError as err:
            if sock is not None:
                sock.close()
            if every and err.errno in UNUSABLE_FAMILY:  # `localhost`'s ::1 without IPv6: skipped,
                skipped = err  # as asyncio skips it
                continue
            for bound in sockets:
                bound.close()
            raise bind_error(host, port, err) from err
    if not sockets:  # every address skipped
        assert skipped is not None
        raise bind_error(host, port, skipped) from skipped
    return sockets


# An address family this machine cannot use (IPv6 disabled): one of several addresses is skipped.
UNUSABLE_FAMILY = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)


def bind_error(host: str, port: int, err: OSError) -> ConfigError:
    advice = BIND_ADVICE.get(err.errno)
    return ConfigError(
        f"host={host} port={port}: cannot listen there ({err.strerror or err})"
        + (f": {advice}" if advice else "")
    )


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A TCP socket bound to (host, port)'s first address and listening, to be shared by forked
    servers (`listening_sockets`).

    Raises:
        ConfigError: the address cannot be bound (in use, not this machine's, no permission).
    """
    sock = listening_sockets(host, port, backlog, every=False)[0]
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Forks `processes` workers, each calling `serve()` (which serves on the shared socket until
    it is told to stop, then returns), and watches them; `run` returns the exit status (0 after a
    stop signal, 130 after Ctrl-C (SIGINT) as one server process exits, 1 when workers kept
    dying, could not be started or had to be killed)."""

    def __init__(
        self,
        serve: Callable[[], None],
        processes: int,
        stop_s: float = 30.0,
        sock: socket.socket | None = None,
    ):
        """
        Args:
            stop_s: after the first SIGTERM/SIGINT, workers still running this long later (a
                worker stuck in native code never runs its signal handler) are killed.
            sock: the listening socket the workers serve on: the supervisor closes its own copy
                at the first stop signal, so that once the workers have closed theirs new
                connections are refused (a proxy then tries another server) instead of waiting
                in the backlog of a socket nobody accepts on.
        """
        self.serve = serve
        self.processes = processes
        self.stop_s = stop_s
        self.sock = sock
        self.workers: set[int] = set()
        self.kill_at: float | None = None  # set by the first stop signal
        self.stopped_by: int | None = None  # that signal
        self.failed = False
        self.deaths: list[float] = []  # times of unexpected exits

    @property
    def stopping(self) -> bool:
        return self.kill_at is not None

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self.forward) for sig in SIGNALS}
        try:
            for _ in range(self.processes):
                if self.stopping or not self.fork():
                    break
            while self.workers:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:  # reaped elsewhere
                    break
                if pid == 0:
                    self.kill_late()
                    time.sleep(POLL_S)
                elif pid in self.workers:  # (not an orphan reparented to this process)
                    self.workers.discard(pid)
                    if not self.stopping:
                        self.replace(pid, status)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.failed:
            return 1
        if self.stopped_by == signal.SIGINT:  # Ctrl-C: as one server process says it
            print("interrupted: the servers stopped", file=sys.stderr, flush=True)
            return 130
        return 0

    def kill_late(self) -> None:
        """Past the stop deadline: SIGKILL the workers still running."""
        if self.kill_at is None or time.monotonic() < self.kill_at:
            return
        for pid in list(self.workers):
            print(
                f"warning: server process {pid} did not stop within {self.stop_s:g} s; killed",
                file=sys.stderr,
                flush=True,
            )
            self.send(pid, signal.SIGKILL)
            self.failed = True
        self.kill_at = math.inf

    def fork(self) -> bool:
        """Start one worker; False (the others told to stop) when the system refuses.

        Stop signals are held back from fork until the new worker is in `workers` (the parent)
        and has its own handlers (the child), so that every worker gets every stop signal once.
        """
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            pid = os.fork()
        except OSError as err:  # e.g. EAGAIN: a container's limit on processes
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
            print(f"error: cannot start a server process ({err})", file=sys.stderr, flush=True)
            self.failed = True
            self.forward(signal.SIGTERM, None)
            return False
        if pid == 0:  # the worker
            status = 1
            try:
                for sig in SIGNALS:  # the server installs its own; until then, the default
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
                self.serve()
                status = 0
            except BaseException:
                logger.exception("server process %d failed", os.getpid())
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        self.workers.add(pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        return True

    def forward(self, sig: int, frame) -> None:
        """SIGTERM/SIGINT: every worker gets it (the first drains and stops; a second SIGINT stops
        at once); no worker is started afterwards, and the supervisor lets go of the socket."""
        if self.kill_at is None:
            self.kill_at = time.monotonic() + self.stop_s
            self.stopped_by = sig
            if self.sock is not None:
                self.sock.close()
        for pid in list(self.workers):
            self.send(pid, sig)

    def send(self, pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped
            os.kill(pid, sig)

    def replace(self, pid: int, status: int) -> None:
        """A worker that exited while not asked to: start another, unless workers keep dying."""
        how = (
            f"signal {os.WTERMSIG(status)}"
            if os.WIFSIGNALED(status)
            else f"status {os.waitstatus_to_exitcode(status)}"
        )
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if now - t < RESTART_WINDOW_S] + [now]
        if len(self.deaths) > MAX_RESTARTS:
            print(
                f"error: server processes keep exiting ({len(self.deaths)} in "
                f"{RESTART_WINDOW_S:g} s, the last by {how}); stopping",
                file=sys.stderr,
                flush=True,
            )
            self.failed = True
            self.forward(signal.SIGTERM, None)
            return
        print(
            f"warning: server process {pid} exited ({how}); starting another",
            file=sys.stderr,
            flush=True,
        )
        self.fork()


def parent_watch(parent: int) -> Callable[[], bool]:
    """A check that the process `parent` is still this process's parent (a worker whose
    supervisor is gone, e.g. killed with SIGKILL, stops itself)."""
    return lambda: os.getppid() == parent
