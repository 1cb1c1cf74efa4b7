#!/usr/bin/env bash
# The one-GPU report: samples/s of `hpctrain train` against a plain PyTorch loop (same model, synthetic
# data, batch and fused SGD; each batch copied from host memory) on one GPU, for the CNN and the Transformer,
# at each model's own small batch (where per-step host work shows) and at a large one (where the GPU's
# arithmetic does). Sets up hpctrain and Horovod with NCCL first (scripts/setup_gpu.sh). From the repository
# root of a GPU machine:
#
#   PYTHON=/path/to/python bash scaling_studies/gpu/run_one_gpu.sh [OUT_DIR] [ROUNDS] [STEPS]
#
# OUT_DIR defaults to scaling_studies/results/gpu; ROUNDS to 3; STEPS (per run, 5 untimed) to 1000.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT=${1:-scaling_studies/results/gpu}
ROUNDS=${2:-3}
STEPS=${3:-1000}
PY=${PYTHON:-python3}
mkdir -p "$OUT"

bash scripts/setup_gpu.sh
HPCTRAIN="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")/hpctrain"
"$HPCTRAIN" info > "$OUT/info.txt" 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$OUT/info.txt" 2>&1 || true
for batch in "" 256; do
  name=compare${batch:+-b$batch}
  cmd=("$HPCTRAIN" bench compare --launcher direct --impls hpctrain,torch --ranks 1 --models cnn,transformer
       --rounds "$ROUNDS" --steps "$STEPS" ${batch:+--batch "$batch"} --json "$OUT/$name.json")
  { echo "\$ ${cmd[*]}"; "${cmd[@]}"; } > "$OUT/$name.txt"
  cat "$OUT/$name.txt"
done
