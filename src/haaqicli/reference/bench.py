"""Time our HAAQI against pyclarity's on the same synthetic clip, in one run.

The machine this runs on is often shared, so both implementations are timed alternately and the
minimum CPU time (time.process_time) over the repeats is reported: contention inflates wall time
but not the ratio.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import numpy as np

from haaqicli.audio import synth
from haaqicli.reference.dispatch import compute_haaqi_batch
from haaqicli.reference.haaqi import compute_haaqi

AUDIOGRAM = (10.0, 15.0, 20.0, 30.0, 35.0, 40.0, 50.0, 60.0)  # mild-to-moderate sloping loss


def _clip(seconds: float, sample_rate: int) -> tuple[np.ndarray, np.ndarray, float]:
    reference = synth.music(seconds, sample_rate, seed=1)[0].astype(np.float64)
    processed = synth.lowpass(reference, sample_rate, 5000).astype(np.float64)
    level1 = 65.0 - 20.0 * np.log10(np.sqrt(np.mean(reference**2)))
    return reference, processed, level1


def _timed(fn: Any) -> tuple[float, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return float(value), time.perf_counter() - wall, time.process_time() - cpu


def benchmark_reference(
    seconds: float = 10.0, repeats: int = 3, with_oracle: bool = True, sample_rate: int = 24000
) -> dict[str, Any]:
    """Returns ours_seconds / ours_cpu_seconds (min over repeats), the same for pyclarity when
    available, speedup (pyclarity CPU / ours CPU), both scores and their absolute difference."""
    reference, processed, level1 = _clip(seconds, sample_rate)

    def ours() -> float:
        return compute_haaqi(processed, reference, sample_rate, sample_rate, AUDIOGRAM, 1, level1, seed=0)

    oracle = None
    if with_oracle:
        try:
            # lazy: pyclarity is an optional dependency, needed on this path only
            from clarity.evaluator.haaqi import compute_haaqi as clarity_haaqi
            from clarity.utils.audiogram import Audiogram
        except ImportError:
            oracle = None
        else:
            audiogram = Audiogram(levels=np.array(AUDIOGRAM))

            def oracle() -> float:
                np.random.seed(0)  # pyclarity's threshold noise uses the global legacy generator
                return clarity_haaqi(processed, reference, sample_rate, sample_rate, audiogram, 1, level1)

    # one untimed full-length call of each (numba compilation, FFT plans for these sizes, first-touch
    # memory), so that both are timed warm
    ours()
    if oracle is not None:
        oracle()
    ours_runs, oracle_runs = [], []
    for _ in range(max(1, repeats)):
        ours_runs.append(_timed(ours))
        if oracle is not None:
            oracle_runs.append(_timed(oracle))
    result: dict[str, Any] = {
        "seconds": seconds,
        "sample_rate": sample_rate,
        "repeats": repeats,
        "ours_score": ours_runs[0][0],
        "ours_seconds": min(r[1] for r in ours_runs),
        "ours_cpu_seconds": min(r[2] for r in ours_runs),
    }
    if oracle_runs:
        result.update(
            pyclarity_score=oracle_runs[0][0],
            pyclarity_seconds=min(r[1] for r in oracle_runs),
            pyclarity_cpu_seconds=min(r[2] for r in oracle_runs),
            abs_diff=abs(ours_runs[0][0] - oracle_runs[0][0]),
        )
        result["speedup"] = result["pyclarity_cpu_seconds"] / result["ours_cpu_seconds"]
        result["speedup_wall"] = result["pyclarity_seconds"] / result["ours_seconds"]
    return result


def benchmark_batch(
    seconds: float = 10.0, n_clips: int = 8, sample_rate: int = 44100, device: str = "cpu", workers: int = 0,
    repeats: int = 2,
) -> dict[str, Any]:
    """Throughput of the labelling engine: `n_clips` items (the bench clip with different threshold-noise
    seeds) in one `compute_haaqi_batch` call: on the CPU, spread over `workers` single-threaded processes
    (0: one per core); on CUDA, batched in the torch engine. Best of `repeats` after a warm-up call
    (process start, numba cache, CUDA context)."""
    reference, processed, level1 = _clip(seconds, sample_rate)
    items = [{"processed": processed, "reference": reference, "processed_sr": sample_rate,
              "reference_sr": sample_rate, "audiogram": AUDIOGRAM, "equalisation": 1, "level1": level1, "seed": seed}
             for seed in range(n_clips)]
    compute_haaqi_batch(items[: min(2, n_clips)], workers=workers, device=device, batch_size=n_clips)
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        scores = compute_haaqi_batch(items, workers=workers, device=device, batch_size=n_clips)
        best = min(best, time.perf_counter() - start)
    return {"seconds": seconds, "n_clips": n_clips, "device": device, "wall_seconds": best,
            "seconds_per_clip": best / n_clips, "scores": scores}


def peak_memory(seconds: float, sample_rate: int = 44100) -> dict[str, float]:
    """Peak resident memory of this process after one exact-HAAQI call on the bench clip (run it in a
    fresh process: the figure behind `haaqi.BYTES_PER_MODEL_SAMPLE`)."""
    reference, processed, level1 = _clip(seconds, sample_rate)
    compute_haaqi(processed, reference, sample_rate, sample_rate, AUDIOGRAM, 1, level1)
    return {"seconds": seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


if __name__ == "__main__":  # python -m haaqicli.reference.bench [seconds] [repeats] | memory SECONDS
    import sys

    args = sys.argv[1:]
    if args[:1] == ["memory"]:
        print(peak_memory(float(args[1]) if len(args) > 1 else 10.0))
    else:
        print(benchmark_reference(float(args[0]) if args else 10.0, int(args[1]) if len(args) > 1 else 3))
