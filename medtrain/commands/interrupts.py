"""SIGTERM taken as Ctrl-C by the verbs that train (train, cv, sweep, rerun): a batch system's time limit
or preemption (SLURM and Kubernetes send SIGTERM some seconds before SIGKILL), `docker stop` or
`kill` ends a run as Ctrl-C does: the interruption logged, a grid's or a search's summary written,
exit status 130, and the same command continues it."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt, as SIGINT does (Python's own handler of
    SIGINT, `signal.default_int_handler`). DataLoader workers started meanwhile take it over
    (`medtrain.data.loading.start_worker`), so that a signal sent to the whole process group (as
    SLURM sends it) ends them as Ctrl-C in a terminal does: quietly, the main process reporting
    the interruption. Nothing changes outside the main thread (where Python allows no handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
