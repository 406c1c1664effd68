"""Which HAAQI engine scores a batch of items: the numba engine over CPU worker processes, or the
batched torch engine on a CUDA device. Kept apart from both engines so neither imports the other."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from haaqicli.reference.haaqi import compute_haaqi
from haaqicli.util import allocator
from haaqicli.util.devices import cuda_device


def _score_chunk(items: Sequence[dict[str, Any]]) -> list[float]:
    """Worker: score a chunk of items single-threaded (the process pool already uses every core;
    nested BLAS/OpenMP threads would only contend for them)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    allocator.disable_worker_leak_check()
    try:  # lazy and optional: only the worker processes need it
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: joblib's loky workers already cap native threads
        return [compute_haaqi(**item) for item in items]
    with threadpool_limits(limits=1):
        return [compute_haaqi(**item) for item in items]


def compute_haaqi_batch(
    items: Sequence[dict[str, Any]],
    workers: int = 1,
    device: str = "cpu",
    batch_size: int = 8,
) -> list[float]:
    """Score many items (dicts of compute_haaqi keyword arguments), in order.

    On a CUDA device named explicitly ("cuda", "cuda:N"; "auto" is the CPU, see `cuda_device`)
    `batch_size` clips at a time go through the batched torch engine (`reference.batched`). On the
    CPU the numba engine is the faster one: bands and segments are vectorised inside each item, and items are spread over
    `workers` single-threaded processes (joblib loky), in a few chunks per worker so that the per-task
    overhead and the numba cache loading of each process are amortised. workers <= 0 means one per
    CPU core."""
    items = list(items)
    cuda = cuda_device(device)
    if cuda is not None:
        # lazy: the batched engine imports torch, which the CPU path never needs
        from haaqicli.reference.batched import compute_haaqi_torch

        return compute_haaqi_torch(items, cuda, batch_size)
    if workers <= 0:
        workers = os.cpu_count() or 1
    if workers <= 1 or len(items) <= 1:
        return [compute_haaqi(**item) for item in items]
    # lazy: joblib's process pool is needed only for several workers
    from joblib import Parallel, delayed

    n_chunks = min(len(items), 4 * workers)
    bounds = np.linspace(0, len(items), n_chunks + 1).astype(int)
    chunks = [items[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    results = Parallel(n_jobs=workers)(delayed(_score_chunk)(chunk) for chunk in chunks)
    return [score for chunk in results for score in chunk]
