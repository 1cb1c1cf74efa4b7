#!/usr/bin/env bash
# The scaling studies committed under results/, exactly as they were made (this 2-core machine, 1-4 ranks:
# 3 and 4 ranks oversubscribe the cores, which the figures show). Takes about 5 minutes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
H=.venv/bin/hpctrain
R=scaling_studies/results
rm -f $R/weak-cnn.jsonl $R/strong-cnn.jsonl
$H scaling run --mode weak --ranks 1,2,3,4 --repeats 2 --config scaling_studies/configs/cnn.toml --out $R/weak-cnn.jsonl
$H scaling run --mode strong --ranks 1,2,4 --global-batch 128 --repeats 2 --config scaling_studies/configs/cnn.toml \
  --out $R/strong-cnn.jsonl
{ echo "\$ mpirun -np 2 $H bench allreduce --json $R/allreduce-2.json   (scaling_studies/run_local.sh)"
  mpirun -np 2 $H bench allreduce --json $R/allreduce-2.json; } > $R/allreduce-2.txt
cat $R/weak-cnn.jsonl $R/strong-cnn.jsonl > $R/cnn.jsonl
$H scaling report $R/cnn.jsonl --out $R/report-cnn --allreduce $R/allreduce-2.json
rm -rf $R/weak-cnn-runs $R/strong-cnn-runs  # per-run directories: the records keep what the report needs
