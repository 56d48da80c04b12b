"""glibc keeps the memory a training step frees (medtrain.engine.memory): set once per process,
left alone on request or when the user set malloc up, and it stops the heap's shrink-and-regrow."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc on Linux")

PROBE = """
import ctypes, os, sys
from medtrain.engine.memory import keep_freed_memory
applied = keep_freed_memory()
assert keep_freed_memory() == applied  # once per process
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
sbrk = libc.sbrk
sbrk.restype, sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
# A 24 MiB block freed at the top of the heap: glibc's default returns it (the break falls); kept,
# the break stays.
blocks = [libc.malloc(64 << 10) for _ in range(384)]  # below the default mmap threshold
top = sbrk(0)
for block in reversed(blocks):
    libc.free(block)
print(applied, sbrk(0) == top)
"""


def probe(env: dict[str, str] | None = None) -> str:
    import os

    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | (env or {}),
        check=True,
    )
    return done.stdout.strip()


def test_freed_heap_memory_is_kept_for_the_next_step():
    assert probe() == "True True"


def test_medtrain_malloc_system_leaves_glibcs_defaults():
    # glibc's default trims the heap's free top once it passes its threshold.
    assert probe({"MEDTRAIN_MALLOC": "system"}) == "False False"


def test_the_users_own_malloc_settings_are_left_alone():
    assert probe({"MALLOC_TRIM_THRESHOLD_": "1048576"}).startswith("False")
