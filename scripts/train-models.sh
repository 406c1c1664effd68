#!/usr/bin/env bash
# The recipe behind weights/: train the teacher, distil the student, evaluate both on the validation
# packages, benchmark, and write the figures that weights/MODEL_CARD.md and the README quote.
# Needs a labelled manifest (make corpus dataset freeze labels: labels/manifest.parquet and its shards). CPU-friendly defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
RESULTS=${RESULTS:-data/results}
RUNS=${RUNS:-runs}
mkdir -p "$RESULTS"
TEACHER_MINUTES=${TEACHER_MINUTES:-45}
STUDENT_MINUTES=${STUDENT_MINUTES:-15}
THREADS=${THREADS:-2}
WEIGHTS=${WEIGHTS:-weights}

# Architectures: the registry defaults (teacher: BEATs encoder 4 x 256 + HAAQI-Net head; student: conv
# front end + 2 x 160 layers that learn teacher layers 2 and 4). TEACHER_INIT / STUDENT_INIT warm-start
# from a registered model (e.g. the previous release) or a .safetensors file; empty = from scratch.
TEACHER_INIT=${TEACHER_INIT:-}
STUDENT_INIT=${STUDENT_INIT:-}
TEACHER_LR=${TEACHER_LR:-5e-4}
STUDENT_LR=${STUDENT_LR:-1e-3}
STUDENT_LABEL_WEIGHT=${STUDENT_LABEL_WEIGHT:-1}  # weight of the true-label term next to the teacher's
# TEACHER_DROPOUT / STUDENT_DROPOUT override every dropout rate (empty = the config's; 0 suits a warm-started
# teacher that sees about one epoch: dropout is ~30% of its CPU step and only regularises an underfit model).
TEACHER_DROPOUT=${TEACHER_DROPOUT:-}
STUDENT_DROPOUT=${STUDENT_DROPOUT:-}
# TEACHER_FLAGS / STUDENT_FLAGS: more options for haaqi train / distill, e.g. the new designs
# ("--terms --bands 32 --rank-weight 0.5 --selection validation-real:ufoai-music"); empty = the release recipe.
TEACHER_FLAGS=${TEACHER_FLAGS:-}
STUDENT_FLAGS=${STUDENT_FLAGS:-}

$BIN/haaqi dataset stats --json > "$RESULTS/dataset.json"
$BIN/haaqi train --epochs ${TEACHER_EPOCHS:-8} --threads "$THREADS" --lr "$TEACHER_LR" \
    --max-minutes "$TEACHER_MINUTES" --weights-dir "$WEIGHTS" --run-dir "$RUNS/teacher" ${TEACHER_INIT:+--init "$TEACHER_INIT"} ${TEACHER_DROPOUT:+--dropout "$TEACHER_DROPOUT"} \
    ${RESUME:+--resume} $TEACHER_FLAGS 2>&1 | tee "$RESULTS/train-teacher.log"
$BIN/haaqi distill --epochs ${STUDENT_EPOCHS:-20} --threads "$THREADS" --lr "$STUDENT_LR" --label-weight "$STUDENT_LABEL_WEIGHT" \
    --max-minutes "$STUDENT_MINUTES" --weights-dir "$WEIGHTS" --run-dir "$RUNS/distilled" ${STUDENT_INIT:+--init "$STUDENT_INIT"} ${STUDENT_DROPOUT:+--dropout "$STUDENT_DROPOUT"} \
    $STUDENT_FLAGS 2>&1 | tee "$RESULTS/distill.log"
HAAQI_WEIGHTS=$WEIGHTS $BIN/haaqi evaluate --record --weights-dir "$WEIGHTS" --json "$RESULTS/evaluate.json" | tee "$RESULTS/evaluate.txt"
