#!/usr/bin/env bash
# GPU checks in one short call, for a session that is lent a GPU machine (device tool `run`). That
# machine's own python3 has torch/torchaudio 2.11, numba, scipy, pandas, pytest; soundfile is not there,
# so carry its wheel (.whl/, see the device tool's README). Writes under $OUT (default data/results):
#   gpu.txt        the GPU
#   gpu-tests.txt  tests/test_reference_batched.py, whose CUDA test compares CUDA with CPU scores
#   gpu-bench.txt  the batched exact HAAQI on CUDA (8 and 32 clips of 10 s at 44.1 kHz per call)
# Not yet run: no GPU was lent to the session that wrote it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-data/results}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_reference_batched.py 2>&1 | tee "$OUT/gpu-tests.txt"
python3 - <<'PY' 2>&1 | tee "$OUT/gpu-bench.txt"
from haaqicli.reference.bench import benchmark_batch

for clips in (8, 32):
    run = benchmark_batch(10.0, clips, 44100, device="cuda", repeats=2)
    print(f"cuda, {clips} clips of 10 s: {run['seconds_per_clip']:.4f} s per clip "
          f"({10.0 / run['seconds_per_clip']:.0f}x real time)")
PY
