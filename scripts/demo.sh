#!/usr/bin/env bash
# `make demo`: a real multi-rank Horovod training on this machine, then a summary a person can read.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
np=${1:-2}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi_args=""
# More ranks than cores: OpenMPI refuses unless told to oversubscribe.
[ "$np" -gt "$(nproc)" ] && mpi_args="--oversubscribe"
run_dir=runs/demo
rm -rf "$run_dir"
echo "== hpctrain demo: $np ranks via horovodrun, config configs/demo.toml (synthetic 32x32 images, CNN)"
start=$(date +%s)
.venv/bin/horovodrun -np "$np" -H "localhost:$np" ${mpi_args:+--mpi-args="$mpi_args"} \
  .venv/bin/hpctrain train --config configs/demo.toml run.progress=off
echo
echo "== done in $(( $(date +%s) - start )) s"
.venv/bin/python - "$run_dir" <<'PY'
import json, sys
from pathlib import Path
from hpctrain.train import describe_summary
run_dir = Path(sys.argv[1])
print(describe_summary(json.loads((run_dir / "summary.json").read_text()), run_dir))
print(f"  per-step log: {run_dir}/metrics.jsonl; more ranks: make demo NP=4; docs: docs/")
PY
