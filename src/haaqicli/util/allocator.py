"""Keep freed memory for reuse instead of handing it back to the kernel (glibc only).

glibc serves blocks above its mmap threshold (at most 32 MB, adjusted as blocks are freed) with a
fresh mmap, and returns them on free; every reuse then faults its pages in again, zero-filled by the
kernel. Scoring allocates the same large tensors batch after batch (spectra, encoder activations,
windows), so on 8 stereo 3-minute files this cost 470,000 page faults and 1.2-2.2 s of system time
(`perf stat -e minor-faults`). A fixed threshold of 64 MB and a large trim threshold keep those
blocks on the heap. Peak memory stays bounded by the batch, as before, plus the freed blocks kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Iterator

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 1 << 30

# the same settings for child processes (joblib workers), which read them from the environment at start
_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Apply the settings to this process and its future children; False where the C library is
    not glibc (nothing changes there). A user's own MALLOC_* environment settings win."""
    if any(name in os.environ for name in _ENVIRONMENT):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt, Windows)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if applied:
        os.environ.update(_ENVIRONMENT)
    return applied


@contextlib.contextmanager
def children_with_default_allocator() -> Iterator[None]:
    """Processes started inside get glibc's default settings, not ours: baselines (pyclarity in
    `haaqi bench`) run as their users run them."""
    ours = {name: os.environ.pop(name) for name in _ENVIRONMENT if os.environ.get(name) == _ENVIRONMENT[name]}
    try:
        yield
    finally:
        os.environ.update(ours)


def disable_worker_leak_check() -> None:
    """Called by each task run in a joblib (loky) worker process: turn off loky's memory-leak check there.

    With psutil installed, loky restarts a worker whose resident memory has grown by 300 MB since its first
    task. The heap kept above grows that much whenever a later task is larger than the first (a long
    pair after a short or failed one), so the check took it for a leak and replaced the worker: a fresh
    interpreter, its imports and compiled kernels (about 2 s), and a "A worker stopped" warning printed to
    the user. Memory is bounded by this tool's own guards (each worker's share of the available memory),
    not by restarts. Outside a loky worker nothing changes."""
    executor = sys.modules.get("joblib.externals.loky.process_executor")
    if executor is not None and getattr(executor, "_USE_PSUTIL", False):
        executor._USE_PSUTIL = False
