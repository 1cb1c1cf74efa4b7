#!/bin/sh
# HPCTRAIN_BIN for studies on slurm/local/cluster.sh: its nodes share this machine's cores, and its slurmd
# cannot bind tasks, so each node's ranks would count all the cores as their own (two nodes of one rank each:
# 2 x 2 intra-op threads on 2 cores). Pin rank r to core r mod cores instead, as a real node's binding would
# give each rank cores of its own; hpctrain then uses one thread per rank (its binding).
cores=$(nproc --all)
exec taskset -c $(( ${SLURM_PROCID:-0} % cores )) "${HPCTRAIN_REAL_BIN:-$(dirname "$0")/../../.venv/bin/hpctrain}" "$@"
