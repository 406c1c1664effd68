#!/usr/bin/env bash
# The recipe behind weights/: train the teacher, distil the student, evaluate both on the validation
# packages, benchmark, and write the figures that weights/MODEL_CARD.md and the README quote.
# Needs data/manifest.parquet with labels (make corpus dataset labels). CPU-friendly defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
RESULTS=data/results
mkdir -p "$RESULTS"
TEACHER_MINUTES=${TEACHER_MINUTES:-45}
STUDENT_MINUTES=${STUDENT_MINUTES:-15}
THREADS=${THREADS:-2}
WEIGHTS=${WEIGHTS:-weights}

# Teacher: BEATs encoder (4 layers x 256, 24 kHz fbank) + HAAQI-Net head.
TEACHER_CONFIG=$($BIN/python - <<'PY'
import copy, json
from haaqicli.models.registry import TEACHER_CONFIG
config = copy.deepcopy(TEACHER_CONFIG)
config["encoder"]["encoder_layers"] = 4
print(json.dumps(config))
PY
)
# Student: its three layers predict teacher layers 1, 2 and 4.
STUDENT_CONFIG=$($BIN/python - <<'PY'
import copy, json
from haaqicli.models.registry import STUDENT_CONFIG
config = copy.deepcopy(STUDENT_CONFIG)
config["distill"]["targets"] = [[1, 1], [2, 2], [3, 4]]
print(json.dumps(config))
PY
)

$BIN/haaqi dataset stats --json > "$RESULTS/dataset.json"
$BIN/haaqi train --config "$TEACHER_CONFIG" --epochs ${TEACHER_EPOCHS:-8} --threads "$THREADS" \
    --max-minutes "$TEACHER_MINUTES" --weights-dir "$WEIGHTS" ${RESUME:+--resume} 2>&1 | tee "$RESULTS/train-teacher.log"
$BIN/haaqi distill --config "$STUDENT_CONFIG" --epochs ${STUDENT_EPOCHS:-20} --threads "$THREADS" \
    --max-minutes "$STUDENT_MINUTES" --weights-dir "$WEIGHTS" 2>&1 | tee "$RESULTS/distill.log"
HAAQI_WEIGHTS=$WEIGHTS $BIN/haaqi evaluate --record --weights-dir "$WEIGHTS" --json "$RESULTS/evaluate.json" | tee "$RESULTS/evaluate.txt"
