#!/usr/bin/env bash
# The scaling study across nodes committed under results/multinode/, exactly as it was made: a two-node cluster
# of slurm/local/cluster.sh on this machine (each node its own namespaces and slurmd, Open MPI over TCP between
# them, shared memory within one), the CNN weak-scaling on 1 and 2 ranks, on one node and on two, 3 repeats;
# Horovod and raw MPI all-reduce within a node (2 ranks on n1) and between nodes (one rank on each); the report
# with the two-level model, fitted to the raw MPI timings and stated for NVLink and 200 Gb/s InfiniBand.
# The nodes share this machine's 2 cores: the timings show the pipeline works, not how a cluster performs.
# Needs root (namespaces). Takes about 5 minutes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HPCTRAIN_CLUSTER_DIR=${HPCTRAIN_CLUSTER_DIR:-/tmp/hpctrain-scaling-multinode}
trap 'slurm/local/cluster.sh down >/dev/null 2>&1 || true' EXIT
slurm/local/cluster.sh up --nodes 2
export PATH="$HPCTRAIN_CLUSTER_DIR/bin:$PWD/.venv/bin:$PATH" SLURM_CONF="$HPCTRAIN_CLUSTER_DIR/slurm.conf"
H=$PWD/.venv/bin/hpctrain
R=scaling_studies/results/multinode
mkdir -p $R
rm -rf $R/weak-cnn.jsonl $R/weak-cnn-runs
# one core per rank, as a real node's binding would give (the script says why)
HPCTRAIN_BIN=$PWD/scaling_studies/multinode/one_core_per_rank.sh \
  $H scaling run --slurm --mode weak --nodes 1,2 --ranks 1,2 --repeats 3 --config scaling_studies/configs/cnn.toml \
  --out $R/weak-cnn.jsonl run.report=false run.tensorboard=false
for level in intra inter; do
  layout=(-N1 -n2); [ $level = inter ] && layout=(-N2 --ntasks-per-node=1)
  cmd=(srun "${layout[@]}" --mpi=pmix $H bench allreduce --max-size 16MB --impl horovod,mpi --json $R/allreduce-$level.json)
  { echo "\$ ${cmd[*]}   (scaling_studies/run_multinode.sh)"; "${cmd[@]}"; } > $R/allreduce-$level.txt
done
$H scaling report $R/weak-cnn.jsonl --out $R/report --allreduce $R/allreduce-intra.json \
  --allreduce-inter $R/allreduce-inter.json --fit-impl mpi --link-gbps 200
# The same measurements, the model asked about a ResNet-50-sized step (25.6M fp32 parameters, 100 ms compute)
$H scaling report $R/weak-cnn.jsonl --out $R/report-resnet50-size --allreduce $R/allreduce-intra.json \
  --allreduce-inter $R/allreduce-inter.json --fit-impl mpi --link-gbps 200 --model-bytes 102.4e6 --compute-s 0.1
rm -rf $R/weak-cnn-runs  # per-run directories: the records keep what the report needs
