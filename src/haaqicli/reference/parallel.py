"""Threads inside one HAAQI call: the reference and processed signals, and the bands, are independent.

The compiled kernels release the GIL (numba ``nogil``) and scipy's FFTs take a ``workers`` count, so
one call can use every core without processes. Every split is over independent rows (a signal, a band,
a noise stream), so results are bit-identical for any thread count.

The count is HAAQI_THREADS, else OMP_NUM_THREADS (joblib's process workers set it to their share of
the cores, so batch labelling does not oversubscribe), else every core.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# one pool per thread count, per process (a forked child inherits the dict but not the threads)
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_inside = threading.local()  # .pool is True in the pools' threads


def thread_count() -> int:
    """Threads one HAAQI call may use (>= 1)."""
    for name in ("HAAQI_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def run_all(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls concurrently (sequentially with one thread); results in call order.
    Called from inside one of the pool's own threads, the calls run inline: waiting there on the
    same pool could deadlock, and the other threads are busy anyway."""
    n = min(thread_count(), len(calls))
    if n <= 1 or getattr(_inside, "pool", False):
        return [call() for call in calls]
    key = (os.getpid(), n)
    pool = _pools.get(key)
    if pool is None:
        pool = _pools[key] = ThreadPoolExecutor(n, thread_name_prefix="haaqi")
    return [future.result() for future in [pool.submit(_mark_inside, call) for call in calls]]


def _mark_inside(call: Callable[[], Any]) -> Any:
    _inside.pool = True
    return call()


def row_chunks(n_rows: int) -> list[tuple[int, int]]:
    """Split rows 0..n_rows-1 into one contiguous [start, stop) range per thread."""
    parts = max(1, min(thread_count(), n_rows))
    bounds = [round(i * n_rows / parts) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def map_rows(fn: Callable[[int, int], Any], n_rows: int) -> list[Any]:
    """fn(start, stop) for each thread's range of rows, concurrently."""
    return run_all(*[(lambda a=a, b=b: fn(a, b)) for a, b in row_chunks(n_rows)])
