#!/usr/bin/env bash
# GPU checks in one short call, for a session that is lent a GPU machine (device tool `run`). That
# machine's own python3 has torch/torchaudio 2.11, numba, scipy, pandas, pytest; soundfile (and its cffi,
# pycparser) is not there, so carry their wheels (.whl/, see the device tool's README). Writes under $OUT
# (default data/results), most important first, each step time-limited:
#   gpu.txt         the GPU
#   gpu-tests.txt   the tests that take a CUDA path (CUDA against CPU scores, device choice, CLI)
#   gpu-models.json each model's CUDA scores against the CPU's and against a second CUDA run, timings
#   gpu-e2e.json    the end-to-end bench rows (whole haaqi processes; --device auto is CUDA there)
#   gpu-bench.txt   the batched exact HAAQI on CUDA (8 and 32 clips of 10 s at 44.1 kHz per call)
#   gpu-suite.txt   the whole test suite (where time is left), auto device = CUDA
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-data/results}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
nproc | tee -a "$OUT/gpu.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider -n 8 tests/test_reference_batched.py \
  tests/test_models_registry.py tests/test_score_cli.py tests/test_reference.py 2>&1 | tee "$OUT/gpu-tests.txt"
timeout 240 python3 scripts/device_check.py "$OUT" ${DEVICE_CHECK_ARGS:-} 2>&1 | tee "$OUT/gpu-models.txt"
timeout 60 python3 - <<'PY' 2>&1 | tee "$OUT/gpu-bench.txt"
from haaqicli.reference.bench import benchmark_batch

for clips in (8, 32):
    run = benchmark_batch(10.0, clips, 44100, device="cuda", repeats=2)
    print(f"cuda, {clips} clips of 10 s: {run['seconds_per_clip']:.4f} s per clip "
          f"({10.0 / run['seconds_per_clip']:.0f}x real time)")
PY
# one thread per test process: 14 processes with 16 threads each timed two numba-heavy tests out (60 s)
HAAQI_THREADS=1 OMP_NUM_THREADS=1 timeout ${SUITE_SECONDS:-90} python3 -m pytest -q -p no:cacheprovider -n 14 \
  --timeout 100 -rf tests 2>&1 \
  | tail -40 | tee "$OUT/gpu-suite.txt"
