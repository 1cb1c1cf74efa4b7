#!/usr/bin/env bash
# Stop the cluster slurm/local/up.sh started: cancel its jobs, then stop slurmd, slurmctld and (if up.sh
# started it) munged, by their PIDs. Idempotent. --purge also deletes $HPCTRAIN_SLURM_DIR (state and logs).
set -uo pipefail

DIR="${HPCTRAIN_SLURM_DIR:-/tmp/hpctrain-slurm}"
export SLURM_CONF="$DIR/slurm.conf"

stop() {  # stop PIDFILE NAME: SIGTERM, then SIGKILL after 10 s
  local pidfile=$1 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    printf '[slurm-local] stopped %s (pid %s)\n' "$2" "$pid"
  fi
  rm -f "$pidfile"
}

if [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
  scancel --full --quiet --user="$(id -un)" 2>/dev/null
  scancel --quiet --state=PENDING 2>/dev/null
  sleep 1
fi
stop "$DIR/slurmd.pid" slurmd
stop "$DIR/slurmctld.pid" slurmctld
stop "$DIR/munged.pid" munged
# Job steps left behind by a killed slurmd (slurmstepd) would hold the ports and the node's processes. Only
# this cluster's: a slurmstepd inherits slurmd's environment, SLURM_CONF included (another cluster, or the
# system's, has another one); each is stopped by its PID.
for env in /proc/[0-9]*/environ; do
  pid=${env#/proc/}; pid=${pid%/environ}
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = slurmstepd ] || continue
  tr '\0' '\n' < "$env" 2>/dev/null | grep -qxF "SLURM_CONF=$SLURM_CONF" && kill -9 "$pid" 2>/dev/null
done
[ "${1:-}" = "--purge" ] && rm -rf "$DIR"
exit 0
