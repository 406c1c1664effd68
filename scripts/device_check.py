"""GPU checks of the scoring models and the CLI, for a session lent a GPU machine (scripts/device-check.sh
runs this after the batched exact-HAAQI checks). Writes JSON and text under OUT:

- models: each model's scores of generated stereo files on CUDA against the CPU (largest difference) and
  against a second CUDA run (the same input, model and device must give the same scores);
- e2e: the end-to-end bench rows (whole `haaqi` processes, `--device auto`, which is CUDA there).

python scripts/device_check.py OUT [--quick]
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from haaqicli.bench import e2e


def generate(folder: Path, n_files: int, seconds: float, pool: ProcessPoolExecutor) -> None:
    """The folder e2e.music_files makes, its files generated in parallel."""
    folder.mkdir(parents=True, exist_ok=True)
    list(pool.map(e2e.music_file, [folder] * n_files, range(n_files), [seconds] * n_files))


def scores(folder: Path, model: str, device: str, out: Path) -> tuple[pd.DataFrame, float]:
    seconds = e2e.timed(["score", str(folder), "--profile", "mild", "--profile", "normal", "--model", model,
                         "--device", device, "-q", "--out", str(out)])
    return pd.read_csv(out).sort_values(["file", "profile", "ear"]).reset_index(drop=True), seconds


def main() -> None:
    out = Path(sys.argv[1])
    work = Path("/tmp/haaqi-device")
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(16) as pool:
        generate(work / "short-64x10s", 64, 10.0, pool)
        generate(work / "long-8x180s", 8, 180.0, pool)
        generate(work / "one", 1, 6.0, pool)
    print(f"inputs generated in {time.perf_counter() - start:.1f} s", flush=True)

    report: dict[str, dict] = {}
    for model in ("distilled", "teacher"):
        cpu, cpu_s = scores(work / "short-64x10s", model, "cpu", work / f"{model}-cpu.csv")
        gpu, gpu_s = scores(work / "short-64x10s", model, "cuda", work / f"{model}-cuda.csv")
        again, again_s = scores(work / "short-64x10s", model, "cuda", work / f"{model}-cuda2.csv")
        columns = ["score", "score_lo", "score_hi", "score_min", "score_p10"]
        report[model] = {
            "rows": len(gpu), "ok": int((gpu["status"] == "ok").sum()),
            "max_abs_cuda_vs_cpu": {c: float((gpu[c] - cpu[c]).abs().max()) for c in columns},
            "max_abs_cuda_vs_cuda": {c: float((again[c] - gpu[c]).abs().max()) for c in columns},
            "identical_cuda_runs": bool((again[columns].to_numpy() == gpu[columns].to_numpy()).all()),
            "wall_s": {"cpu": cpu_s, "cuda": gpu_s, "cuda_again": again_s},
        }
        print(model, json.dumps(report[model]), flush=True)
    (out / "gpu-models.json").write_text(json.dumps(report, indent=2))

    if "--quick" not in sys.argv:
        result = e2e.run_e2e(work, short_files=64, short_seconds=10.0, long_files=8, long_seconds=180.0,
                             pairs=72, pair_seconds=6.0, workers=2)
        (out / "gpu-e2e.json").write_text(json.dumps(result, indent=2))
        print(e2e.format_e2e(result), flush=True)


if __name__ == "__main__":
    main()
