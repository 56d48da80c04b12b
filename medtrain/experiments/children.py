"""The training processes the experiment verbs start (a CV's folds, a rerun's training): they end
with the verb's process, however it ends, so that no training goes on unwatched."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

# How long a stopped training may take to leave (it saves nothing more than its log line).
STOP_S = 60


def die_with_parent() -> None:
    """In a child process before it starts (Linux): end it when its parent ends, even by
    SIGKILL, so that a killed verb leaves no training on (the next run resumes it)."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start(command: list[str], **kwargs: Any) -> subprocess.Popen:
    """`subprocess.Popen(command, **kwargs)`, ended with this process (`die_with_parent`)."""
    child_setup = die_with_parent if sys.platform == "linux" else None
    return subprocess.Popen(command, preexec_fn=child_setup, **kwargs)


def stop(process: subprocess.Popen) -> None:
    """End a child training as Ctrl-C does (SIGTERM, which medtrain's training takes so: its
    interruption logged, its checkpoints kept; torchrun passes it on to its processes, which
    stop without that line), waiting `STOP_S` before killing it."""
    process.terminate()
    try:
        process.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
