#!/usr/bin/env bash
# `make demo`: a real multi-rank Horovod training on this machine, then a summary a person can read.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
np=${1:-2}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# horovodrun always gives its mpirun --tag-output, which prefixes every line with "[1,<rank>]<stderr>:"; the
# log lines already name their rank. A later MCA setting wins over the flag (measured with Open MPI 4.1).
mpi_args="-mca orte_tag_output 0"
# More ranks than cores: OpenMPI refuses unless told to oversubscribe.
[ "$np" -gt "$(nproc)" ] && mpi_args="$mpi_args --oversubscribe"
run_dir=runs/demo
rm -rf "$run_dir"
echo "== hpctrain demo: $np ranks via horovodrun, config configs/demo.toml (synthetic 32x32 images, CNN)"
start=$(date +%s)
# Rank 0 ends with the run's summary (the lines after "done"); it is not printed again here.
.venv/bin/horovodrun -np "$np" -H "localhost:$np" --mpi-args="$mpi_args" \
  .venv/bin/hpctrain train --config configs/demo.toml run.progress=off
echo
echo "== done in $(( $(date +%s) - start )) s; per-step log: $run_dir/metrics.jsonl; more ranks: make demo NP=4; docs: docs/"
