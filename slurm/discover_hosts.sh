#!/bin/bash
# horovodrun --host-discovery-script from Slurm's node list: prints HOST:SLOTS for every node of
# HPCTRAIN_ELASTIC_NODES (a Slurm hostlist; default: this job's nodes, $SLURM_JOB_NODELIST) that Slurm has
# up and responding now. A node that dies drops out as soon as slurmctld stops hearing from it; one that
# comes back (ReturnToService) is listed again, and horovodrun adds workers there at the next commit.
#
#   horovodrun -np 8 --min-np 4 --max-np 8 --host-discovery-script slurm/discover_hosts.sh \
#     .venv/bin/hpctrain train --config run.toml fault.elastic=true
#
# HPCTRAIN_SLOTS_PER_NODE: workers per node (default $SLURM_NTASKS_PER_NODE, else 1). docs/fault-tolerance.md
# ("Elastic training across nodes") has the ssh settings a lost node needs and what was measured.
set -euo pipefail
nodes=${HPCTRAIN_ELASTIC_NODES:-${SLURM_JOB_NODELIST:-}}
if [ -z "$nodes" ]; then
  echo "discover_hosts.sh: set HPCTRAIN_ELASTIC_NODES (a Slurm hostlist such as node[01-04]) or run it in a Slurm job" >&2
  exit 2
fi
slots=${HPCTRAIN_SLOTS_PER_NODE:-${SLURM_NTASKS_PER_NODE:-1}}
slots=${slots%%(*}  # SLURM_NTASKS_PER_NODE may read "2(x4)"
# %t: the compact state; a suffix (* not responding, ~ powered off, # powering up, ! or % powering down,
# @ rebooting, $ maintenance) or any other state (down, drain, fail...) means no workers there now.
# sinfo lists a node once per partition.
sinfo --noheader --Node --nodes="$nodes" --format="%N %t" | while read -r node state; do
  case "$state" in
    idle|alloc|mix|comp|resv|plnd) echo "$node:$slots" ;;
  esac
done | sort -u
