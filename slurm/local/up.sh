#!/usr/bin/env bash
# Stand up a single-node Slurm cluster on this machine (no systemd): munged, slurmctld, slurmd.
# Idempotent: if it is already up, it says so and exits 0. State, logs and PIDs live under $HPCTRAIN_SLURM_DIR
# (default /tmp/hpctrain-slurm); slurm/local/down.sh stops exactly what this started.
#
# Then:  export SLURM_CONF=$HPCTRAIN_SLURM_DIR/slurm.conf   (the script prints the line)
#
# Needs root and the Debian packages slurmctld slurmd slurm-client munge libpmix2
# (`HPCTRAIN_WITH_SLURM=1 bash scripts/setup.sh` installs them).
#   HPCTRAIN_SLURM_CPUS  CPUs the node declares (default 8; more than the cores is fine, jobs share them)
set -euo pipefail

DIR="${HPCTRAIN_SLURM_DIR:-/tmp/hpctrain-slurm}"
CPUS="${HPCTRAIN_SLURM_CPUS:-8}"
CONF="$DIR/slurm.conf"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NODE=$(hostname -s)
export SLURM_CONF="$CONF"

say() { printf '[slurm-local] %s\n' "$*"; }
die() { printf '[slurm-local] error: %s\n' "$*" >&2; exit 1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

[ "$(id -u)" -eq 0 ] || die "run as root: slurmd must start jobs as their users"
for b in munged slurmctld slurmd sbatch; do
  command -v "$b" >/dev/null || die "$b not found: HPCTRAIN_WITH_SLURM=1 bash scripts/setup.sh installs Slurm and munge"
done

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1 | tr -d '*~#'; }

if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && [ "$(node_state)" != "" ]; then
  say "already up ($NODE: $(node_state)); export SLURM_CONF=$CONF"
  exit 0
fi
"$(dirname "${BASH_SOURCE[0]}")/down.sh" >/dev/null 2>&1 || true  # a half-started cluster: start clean

mkdir -p "$DIR"/{ctld,spool,log}
# --- munge: reuse a working munged (e.g. the system's), else start one and remember its PID ------------
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  install -d -o munge -g munge -m 0755 /run/munge
  [ -s /etc/munge/munge.key ] || die "/etc/munge/munge.key missing: reinstall the munge package"
  runuser -u munge -- /usr/sbin/munged --force --pid-file=/run/munge/hpctrain-munged.pid
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || die "munged did not start: see /var/log/munge/munged.log"
  cp /run/munge/hpctrain-munged.pid "$DIR/munged.pid"
fi

# --- slurm.conf: why each line is there ------------------------------------------------------------
cat > "$CONF" <<CONF
ClusterName=hpctrain-local
SlurmctldHost=$NODE
Include $HERE/common.conf
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$NODE CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF

slurmctld -i -f "$CONF"
slurmd -f "$CONF"
for _ in $(seq 100); do
  case "$(node_state)" in idle|mixed|allocated) break ;; esac
  sleep 0.2
done
case "$(node_state)" in
  idle|mixed|allocated) ;;
  *) die "node $NODE is '$(node_state)', not idle: see $DIR/log/slurmctld.log and slurmd.log" ;;
esac
say "up: node $NODE with $CPUS CPUs, partition debug; export SLURM_CONF=$CONF"
