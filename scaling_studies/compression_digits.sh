#!/usr/bin/env bash
# The compression walk-through of docs/compression.md, exactly as its table and plot were made: on
# scikit-learn's digits, a dense teacher (configs/digits.toml), gradual pruning to 80% and 90% (unstructured)
# and to 50% of the hidden rows (structured, then cut out), a width-32 student distilled from the teacher,
# int8 and bf16 versions, all measured side by side by one `hpctrain evaluate`; then the same for a wide MLP
# on synthetic data (accuracy meaningless there: it measures what int8 and cut-out rows do to speed and size).
#   scaling_studies/compression_digits.sh [OUT]    (default scaling_studies/results/compression; ~4 min on 2 cores)
# Latency at batch 1, 64 and 1024 (the throughput batch: at 64 the digits MLP's fixed cost per layer call still
# weighs; scaling_studies/compression_sizes.py shows where). NP=1 trains on one rank. QUICK=1 (the test's
# setting) trains 200 steps, times 2 short rounds at batch 1 and 64 and leaves out the wide MLP, whose commands
# are the digits part's over again (its five launches were 30 s of the suite). The runs live in a temporary
# directory; OUT keeps the tables, JSON and plot.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
OUT=${1:-scaling_studies/results/compression}
NP=${NP:-2}
H=$PWD/.venv/bin/hpctrain
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
mkdir -p "$OUT"
export HPCTRAIN_BENCH_NOTE="${HPCTRAIN_BENCH_NOTE:-Measured on a 2-core VM shared with other jobs: the models are timed interleaved, so load falls on all alike.}"

.venv/bin/python data/digits.py --out "$W/data" > /dev/null
if [ "${QUICK:-0}" = 1 ]; then
  STEPS=(train.steps=200); GRADUAL=(prune.start_step=40 prune.end_step=150 prune.every_steps=10)
  TIMING=(--rounds 2 --min-time 0.05 --batch 1,64)
else  # configs/digits.toml's 600 steps: sparsity rises from step 100 to 450, then 150 steps of fine-tuning
  STEPS=(); GRADUAL=(prune.start_step=100 prune.end_step=450 prune.every_steps=25)
  TIMING=(--rounds 7 --batch 1,64,1024)
fi
TRAIN=(mpirun -np "$NP" "$H" train --config configs/digits.toml "data.path=$W/data/train" "data.val_path=$W/data/val"
       run.report=false run.tensorboard=false run.log_every=600 eval.every_steps=0 "${STEPS[@]}")
"${TRAIN[@]}" "run.dir=$W/dense"
"${TRAIN[@]}" "run.dir=$W/prune80" prune.kind=unstructured prune.sparsity=0.8 "${GRADUAL[@]}"
"${TRAIN[@]}" "run.dir=$W/prune90" prune.kind=unstructured prune.sparsity=0.9 "${GRADUAL[@]}"
"${TRAIN[@]}" "run.dir=$W/rows50" prune.kind=structured prune.sparsity=0.5 "${GRADUAL[@]}"
"${TRAIN[@]}" "run.dir=$W/student" model.width=32 "distill.teacher=$W/dense/checkpoints"
$H compress "$W/dense/checkpoints" --out "$W/dense-int8" --quantize int8
$H compress "$W/dense/checkpoints" --out "$W/dense-bf16" --dtype bf16 --export
$H compress "$W/rows50/checkpoints" --out "$W/rows50-cut" --materialize
$H compress "$W/rows50/checkpoints" --out "$W/rows50-cut-int8" --materialize --quantize int8
$H compress "$W/student/checkpoints" --out "$W/student-int8" --quantize int8
$H evaluate --data "$W/data/val" "${TIMING[@]}" --labels \
  dense,int8,bf16,bf16-export,pruned-80%,pruned-90%,rows-50%-masked,rows-50%-cut,rows-50%-cut-int8,student-w32,student-w32-int8 \
  "$W/dense/checkpoints" "$W/dense-int8" "$W/dense-bf16" "$W/dense-bf16/model.pt2" "$W/prune80/checkpoints" \
  "$W/prune90/checkpoints" "$W/rows50/checkpoints" "$W/rows50-cut" "$W/rows50-cut-int8" "$W/student/checkpoints" \
  "$W/student-int8" --json "$OUT/digits.json" --markdown "$OUT/digits.md"

# A wide MLP (64 -> 2048 -> 2048 -> 2048 -> 10, 8.5M parameters) on synthetic data, 30 steps: speed and size only.
if [ "${QUICK:-0}" != 1 ]; then
  WIDE=(mpirun -np "$NP" "$H" train model.name=mlp model.width=2048 model.depth=3 train.steps=30 data.samples=2048
        data.val_samples=512 run.report=false run.tensorboard=false run.log_every=30)
  "${WIDE[@]}" "run.dir=$W/wide"
  "${WIDE[@]}" "run.dir=$W/wide-rows50" prune.kind=structured prune.sparsity=0.5 prune.end_step=10 prune.every_steps=5
  $H compress "$W/wide/checkpoints" --out "$W/wide-int8" --quantize int8
  $H compress "$W/wide-rows50/checkpoints" --out "$W/wide-rows50-cut" --materialize
  $H evaluate "${TIMING[@]}" --labels wide,wide-int8,wide-rows-50%-cut \
    "$W/wide/checkpoints" "$W/wide-int8" "$W/wide-rows50-cut" --json "$OUT/wide.json" --markdown "$OUT/wide.md"
fi

.venv/bin/python scaling_studies/plot_compression.py "$OUT/digits.json" "$OUT/accuracy-vs-size.png"
