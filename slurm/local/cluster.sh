#!/usr/bin/env bash
# A multi-node test cluster on this one machine: each node is its own set of Linux namespaces (network, UTS,
# mount, IPC, PID) with its own hostname (n1, n2, ...), node-local tmp and scratch disk and /dev/shm, joined to a
# head namespace by veth pairs on a bridge. The head runs slurmctld, each node a real slurmd; the file system
# (run dirs, checkpoints, the repository) is shared, as on a cluster. Nothing is added to the root network
# namespace: the addresses live on the head's bridge only, and no namespace has a route out.
#
#   cluster.sh up [--nodes N] [--no-slurm]   start (idempotent: an identical running cluster is kept)
#   cluster.sh down                          stop everything it started, by PID
#   cluster.sh env                           print the exports for using it (PATH with the wrappers, SLURM_CONF)
#   cluster.sh exec NODE|head CMD...         run CMD inside a node's (or the head's) namespaces
#   cluster.sh poweroff NODE                 kill the node's PID-namespace init: every process on it dies at once
#   cluster.sh kill-slurmd NODE              SIGKILL only the node's slurmd (its job steps live on)
#   cluster.sh cut NODE | heal NODE          take the node's link down / up (its processes keep running)
#   cluster.sh revive NODE                   boot a powered-off node again, with an empty tmp, scratch and spool
#   cluster.sh status                        one line per node
#
# After `up`, $DIR/bin holds wrappers that run inside the head's namespaces, where the node names resolve and
# the bridge (named eth0, like the nodes' interface: horovodrun looks the common NIC name up on the launching
# host) reaches every node: the Slurm clients (sbatch, srun, squeue, ...), `mpirun` and `horovodrun`, and an
# `ssh` stand-in (also `rsh-agent`) that enters a node's namespaces instead of logging in, so mpirun and
# horovodrun start ranks across the node hostnames without Slurm (`mpirun -H n1:2,n2:2 ...`). Unlike ssh it
# keeps the caller's environment (PATH, the virtualenv); Open MPI's -x still decides what reaches the ranks.
#
# State, logs and PIDs live under $HPCTRAIN_CLUSTER_DIR (default /tmp/hpctrain-cluster). Each node's tmp
# (Slurm's TmpFS) and scratch disk appear at the same paths on every node, $DIR/node/tmp and $DIR/node/scratch,
# with different contents per node (bind mounts in the node's mount namespace); from outside they are
# $DIR/nodes/NODE/{tmp,scratch}.
# Needs root, util-linux (unshare, nsenter), iproute2 and, unless --no-slurm, Slurm and munge: installed if
# missing (HPCTRAIN_WITH_SLURM=1 bash scripts/setup.sh does the same).
set -euo pipefail

DIR="${HPCTRAIN_CLUSTER_DIR:-/tmp/hpctrain-cluster}"
CONF="$DIR/slurm.conf"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export SLURM_CONF="$CONF"
NET=10.77.0        # the bridge's /24, private to the head's network namespace
MAC=02:00:0a:4d    # fixed MACs (locally administered, then the /24's first bytes): nodes 01:<index>, bridge 00:fe
CPUS="${HPCTRAIN_CLUSTER_CPUS:-4}"  # CPUs each node declares (Slurm places -N2 -n4 as 3+1 with 4)
SELF=$(readlink -f "${BASH_SOURCE[0]}")

say() { printf '[cluster] %s\n' "$*"; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
node_pid() { cat "$DIR/nodes/$1/init.pid" 2>/dev/null; }
head_pid() { cat "$DIR/head.pid" 2>/dev/null; }
nodes() { cat "$DIR/nodes.list" 2>/dev/null; }
slurm_on() { [ -f "$DIR/slurm.on" ]; }
in_head() { nsenter -t "$(head_pid)" -n -m -u --wd="$PWD" -- "$@"; }
in_node() {  # in_node NODE CMD...: the node's own namespaces, from the caller's directory (shared file system)
  local pid; pid=$(node_pid "$1") && kill -0 "$pid" 2>/dev/null || die "node $1 is not running"
  shift
  nsenter -t "$pid" -n -m -u -i -p --wd="$PWD" -- "$@"
}
child_pid() {  # child_pid PID COMM: the root-namespace PID of PID's child named COMM
  local c
  for c in $(cat "/proc/$1/task/"*/children 2>/dev/null); do
    [ "$(cat "/proc/$c/comm" 2>/dev/null)" = "$2" ] && { echo "$c"; return 0; }
  done
  return 1
}

need_tools() {
  local pkgs=() b
  command -v unshare >/dev/null && command -v nsenter >/dev/null || pkgs+=(util-linux)
  command -v ip >/dev/null || pkgs+=(iproute2)
  if [ "${1:-slurm}" = slurm ]; then
    for b in slurmctld slurmd; do command -v $b >/dev/null || pkgs+=("$b"); done
    command -v srun >/dev/null || pkgs+=(slurm-client)
    command -v munged >/dev/null || pkgs+=(munge)
    dpkg-query -W -f='${Status}' libpmix2 2>/dev/null | grep -q "install ok installed" || pkgs+=(libpmix2)
  fi
  [ ${#pkgs[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing ${pkgs[*]} and no apt-get: install them by hand"
  say "installing ${pkgs[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
}

write_hosts() {
  { echo "127.0.0.1 localhost"; echo "$NET.254 head"
    local i=1; for n in $(nodes); do echo "$NET.$i $n"; i=$((i + 1)); done; } > "$DIR/hosts"
  : > "$DIR/resolv.conf"
}

write_conf() {
  local list; list=$(nodes | paste -sd, -)
  cat > "$CONF" <<CONF
ClusterName=hpctrain-multi
SlurmctldHost=head($NET.254)
Include $HERE/common.conf
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
# The same path on every node, a different directory behind it (bind-mounted per node).
TmpFS=$DIR/node/tmp
# A node that stops answering is DOWN after SlurmdTimeout; one that comes back rejoins by itself.
SlurmdTimeout=10
CONF
  local i=1
  for n in $(nodes); do
    echo "NodeName=$n NodeHostname=$n NodeAddr=$NET.$i CPUs=$CPUS State=UNKNOWN" >> "$CONF"
    i=$((i + 1))
  done
  echo "PartitionName=debug Nodes=$list Default=YES MaxTime=INFINITE State=UP" >> "$CONF"
}

write_wrappers() {
  mkdir -p "$DIR/bin"
  local b
  for b in sbatch srun salloc squeue scontrol scancel sinfo mpirun horovodrun; do
    { echo '#!/bin/bash'
      echo "# $b in the hpctrain test cluster (written by slurm/local/cluster.sh): outside the cluster it runs"
      echo "# inside the head's namespaces; on a node or the head, it is the real $b."
      echo "DIR=$DIR B=$b"
      cat <<'EOF'
PATH=${PATH//$DIR\/bin:/}
real=$(command -v "$B") || { echo "$B: not installed" >&2; exit 127; }
h=$(hostname)
if { [ "$h" = head ] || [ -e "$DIR/nodes/$h/init.pid" ]; } && cmp -s /etc/hosts "$DIR/hosts"; then
  exec env PATH="$DIR/bin:$PATH" "$real" "$@"
fi
exec nsenter -t "$(cat "$DIR/head.pid")" -n -m -u --wd="$PWD" -- env PATH="$DIR/bin:$PATH" "$real" "$@"
EOF
    } > "$DIR/bin/$b"
  done
  # ssh [OPTIONS] HOST CMD...: what Open MPI's rsh launcher and horovodrun call.
  { echo '#!/bin/bash'
    echo "# An ssh stand-in for the hpctrain test cluster (written by slurm/local/cluster.sh): enters node HOST's"
    echo "# namespaces and runs CMD there with sh, from \$HOME, keeping the caller's environment."
    echo "DIR=$DIR"
    cat <<'EOF'
host="" config="$HOME/.ssh/config" alive="" count=""
option() {  # option KEY=VALUE or "KEY VALUE": the ServerAlive settings, the first one given wins (as in ssh)
  local k=${1%%[= ]*} v=${1#*[= ]}
  v=${v//[[:space:]=]/}
  case "${k,,}" in
    serveraliveinterval) alive=${alive:-$v} ;;
    serveralivecountmax) count=${count:-$v} ;;
  esac
}
while [ $# -gt 0 ]; do  # options may come before and after HOST (horovodrun puts -o ConnectTimeout after it)
  case "$1" in
    -o) option "$2"; shift 2 ;;
    -o*) option "${1#-o}"; shift ;;
    -F) config=$2; shift 2 ;;
    -[plicEJLRDbemwWQS]) shift 2 ;;
    -*) shift ;;
    *) [ -n "$host" ] && break; host=$1; shift ;;
  esac
done
if [ -r "$config" ]; then  # then ssh_config (Host patterns are not matched: every line applies)
  while read -r k v; do option "$k $v"; done < <(grep -iE '^[[:space:]]*ServerAlive(Interval|CountMax)' "$config")
fi
[ -n "$host" ] || { echo "usage: ssh [OPTIONS] HOST CMD" >&2; exit 255; }
host=${host#*@}
pid=$(cat "$DIR/nodes/$host/init.pid" 2>/dev/null) || { echo "ssh: Could not resolve hostname $host" >&2; exit 255; }
kill -0 "$pid" 2>/dev/null || { echo "ssh: connect to host $host port 22: No route to host" >&2; exit 255; }
[ -f "$DIR/nodes/$host/cut" ] && { echo "ssh: connect to host $host port 22: Connection timed out" >&2; exit 255; }
nsenter -t "$pid" -n -m -u -i -p --wd=/ -- /bin/sh -c "cd \"\$HOME\" 2>/dev/null; $*" <&0 &
cmd=$!
trap 'kill $cmd 2>/dev/null; exit 255' TERM INT HUP
wait $cmd; rc=$?
if [ -f "$DIR/nodes/$host/off" ] || ! kill -0 "$pid" 2>/dev/null; then
  # The node went away under the command. A real ssh gets no FIN from a host that vanished: it waits until
  # TCP gives up retransmitting (net.ipv4.tcp_retries2, ~15 min), or, with ServerAliveInterval set, until
  # ServerAliveCountMax probes went unanswered; so does this stand-in, so that mpirun and horovodrun learn
  # of the loss as they would on a cluster, not from their ssh exiting.
  # (bash's own read -t on a FIFO it holds both ends of: no child process that a SIGKILL would orphan)
  fifo=$(mktemp -u); mkfifo "$fifo"; exec 3<>"$fifo"; rm -f "$fifo"
  if [ "${alive:-0}" -gt 0 ]; then
    read -r -t $((alive * ${count:-3})) -u 3 || true
    echo "Timeout, server $host not responding." >&2
  else
    read -r -t 924 -u 3 || true
    echo "ssh: Connection to $host timed out" >&2
  fi
  exit 255
fi
exit $rc
EOF
  } > "$DIR/bin/ssh"
  cp "$DIR/bin/ssh" "$DIR/bin/rsh-agent"
  chmod +x "$DIR/bin/"*
}

boot_node() {  # boot_node NAME INDEX: namespaces, mounts, link, slurmd
  local n=$1 i=$2 d="$DIR/nodes/$1" pid
  rm -rf "$d/tmp" "$d/scratch" "$DIR/spool/$n" "$d/cut" "$d/off"  # a (re)booted node starts with clean local disks
  mkdir -p "$d/tmp" "$d/scratch" "$DIR/spool/$n"
  # The node's init (PID 1 of its PID namespace) makes its mounts, waits for its link, starts slurmd in the
  # foreground and reaps orphans; killing it ends every process of the node.
  setsid unshare --net --uts --mount --ipc --pid --fork --kill-child --mount-proc --propagation private \
    bash -c '
      hostname "$1"
      mount --bind "$2/hosts" /etc/hosts
      mount --bind "$2/resolv.conf" /etc/resolv.conf
      mount --bind "$3/tmp" "$2/node/tmp"
      mount --bind "$3/scratch" "$2/node/scratch"
      mount -t tmpfs -o size=2g tmpfs /dev/shm
      touch "$3/mounted"
      while [ ! -f "$3/linked" ]; do sleep 0.05; done
      if [ -f "$2/slurm.on" ]; then slurmd -D -f "$2/slurm.conf" >>"$2/log/slurmd-$1.out" 2>&1 & fi
      trap "exit 0" TERM
      while :; do sleep 3600 & wait $!; done' node-init "$n" "$DIR" "$d" </dev/null >>"$DIR/log/$n.init.log" 2>&1 &
  local unshare_pid=$!
  for _ in $(seq 100); do pid=$(child_pid "$unshare_pid" bash) && break; sleep 0.05; done
  [ -n "${pid:-}" ] || die "node $n did not start: see $DIR/log/$n.init.log"
  echo "$pid" > "$d/init.pid"
  for _ in $(seq 100); do [ -f "$d/mounted" ] && break; sleep 0.05; done
  in_head ip link del "v$n" 2>/dev/null || true
  # A fixed MAC per node, as a real NIC keeps across reboots: with a new random one, the other nodes' ARP
  # entries for a revived node stay stale until they time out, and Slurm's launch requests to it time out first.
  in_head ip link add "v$n" type veth peer name eth0 address "$(printf "$MAC:01:%02x" "$i")" netns "$pid"
  in_head ip link set "v$n" master eth0 up
  nsenter -t "$pid" -n sh -c "ip link set lo up && ip addr add $NET.$i/24 dev eth0 && ip link set eth0 up"
  rm -f "$d/mounted"
  touch "$d/linked"
}

cmd_up() {
  local want=2 slurm=slurm
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) want=$2; shift 2 ;;
      --no-slurm) slurm=none; shift ;;
      *) die "up: unknown option $1 (expected --nodes N, --no-slurm)" ;;
    esac
  done
  [[ "$want" =~ ^[1-9][0-9]?$ ]] || die "--nodes $want: expected 1 to 99"
  [ "$(id -u)" -eq 0 ] || die "run as root: it makes namespaces and slurmd starts jobs as their users"
  local have=none; slurm_on && have=slurm
  if alive "$DIR/head.pid" && [ "$(nodes | wc -l)" -eq "$want" ] && [ $have = $slurm ]; then
    local ok=1 n; for n in $(nodes); do kill -0 "$(node_pid "$n")" 2>/dev/null || ok=0; done
    if [ $ok = 1 ]; then write_wrappers; say "already up: $(nodes | paste -sd' ' -)"; cmd_env; return 0; fi
  fi
  cmd_down >/dev/null 2>&1 || true  # a different or half-started cluster: start clean
  need_tools $slurm
  mkdir -p "$DIR"/{ctld,spool,log,run,nodes,node/tmp,node/scratch}
  seq 1 "$want" | sed 's/^/n/' > "$DIR/nodes.list"
  if [ $slurm = slurm ]; then touch "$DIR/slurm.on"; else rm -f "$DIR/slurm.on"; fi
  write_hosts; write_conf; write_wrappers
  export SLURM_CONF="$CONF"
  if [ $slurm = slurm ] && ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    install -d -o munge -g munge -m 0755 /run/munge
    [ -s /etc/munge/munge.key ] || die "/etc/munge/munge.key missing: reinstall the munge package"
    runuser -u munge -- /usr/sbin/munged --force --pid-file=/run/munge/hpctrain-cluster-munged.pid
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || die "munged did not start: see /var/log/munge/munged.log"
    cp /run/munge/hpctrain-cluster-munged.pid "$DIR/munged.pid"
  fi
  # The head: its own network, UTS and mount namespaces, but the machine's PID namespace and /proc, so that
  # wrappers run there can enter the nodes by PID. Its init runs slurmctld in the foreground. The bridge gets a
  # fixed MAC: by default it takes its ports' lowest, which changes whenever a node is revived.
  setsid unshare --net --uts --mount --fork --propagation private bash -c '
      hostname head
      mount --bind "$1/hosts" /etc/hosts
      mount --bind "$1/resolv.conf" /etc/resolv.conf
      ip link set lo up && ip link add eth0 type bridge && ip link set eth0 address "$3:00:fe"
      ip addr add "$2.254/24" dev eth0 && ip link set eth0 up
      ctld=""
      if [ -f "$1/slurm.on" ]; then slurmctld -D -i -f "$1/slurm.conf" >>"$1/log/slurmctld.out" 2>&1 & ctld=$!; fi
      trap "kill \$ctld \$! 2>/dev/null; exit 0" TERM
      touch "$1/head.ready"
      while :; do sleep 3600 & wait $!; done' head-init "$DIR" "$NET" "$MAC" </dev/null >>"$DIR/log/head.init.log" 2>&1 &
  local unshare_pid=$! pid=""
  for _ in $(seq 100); do pid=$(child_pid "$unshare_pid" bash) && [ -f "$DIR/head.ready" ] && break; sleep 0.05; done
  [ -n "$pid" ] && [ -f "$DIR/head.ready" ] || die "head did not start: see $DIR/log/head.init.log"
  echo "$pid" > "$DIR/head.pid"
  local i=1 n
  for n in $(nodes); do boot_node "$n" $i; i=$((i + 1)); done
  if [ $slurm = slurm ]; then wait_idle $(nodes); fi
  say "up: $(nodes | paste -sd' ' -)$([ $slurm = slurm ] && echo ', slurmctld on head, partition debug')"
  cmd_env
}

node_state() { "$DIR/bin/sinfo" -h -n "$1" -o %T 2>/dev/null | head -1 | tr -d '*~#$@'; }

wait_idle() {  # wait_idle NODE...: each node's slurmd listens and the controller calls the node usable
  local n s
  for n in "$@"; do
    # first the slurmd itself: a node powered off less than SlurmdTimeout ago still looks idle to the controller
    for _ in $(seq 100); do in_node "$n" bash -c 'exec 2>/dev/null 3<>/dev/tcp/127.0.0.1/6818' && break; sleep 0.1; done
    for _ in $(seq 300); do
      s=$(node_state "$n"); case "$s" in idle|mixed|allocated) break ;; esac
      sleep 0.1
    done
    case "$s" in idle|mixed|allocated) ;; *) die "node $n is '$s', not idle: see $DIR/log/" ;; esac
  done
}

cmd_env() {
  echo "export PATH=$DIR/bin:\$PATH SLURM_CONF=$CONF"
}

stop_pid() {  # stop_pid PID: SIGTERM, SIGKILL after 5 s
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

cmd_poweroff() {
  local n=${1:?poweroff NODE} pid
  pid=$(node_pid "$n") || die "no node $n"
  # The link first: a host that loses power sends nothing, while processes that are killed close their
  # sockets, and the FINs and RSTs would tell every peer at once (measured: Open MPI then ends in 2 s).
  in_head ip link set "v$n" down 2>/dev/null || true
  touch "$DIR/nodes/$n/off"  # for the ssh stand-in: its command did not end, the node did
  kill -9 "$pid" 2>/dev/null || true  # PID 1 of the namespace: the kernel kills everything else in it
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  say "powered off $n"
}

cmd_kill_slurmd() {
  local n=${1:?kill-slurmd NODE} pid
  pid=$(child_pid "$(node_pid "$n")" slurmd) || die "no slurmd running on $n"
  kill -9 "$pid"
  say "killed slurmd of $n (pid $pid)"
}

cmd_cut() {
  local n=${1:?cut NODE}
  in_head ip link set "v$n" down
  touch "$DIR/nodes/$n/cut"
  say "cut the link of $n"
}

cmd_heal() {
  local n=${1:?heal NODE}
  in_head ip link set "v$n" up
  rm -f "$DIR/nodes/$n/cut"
  say "healed the link of $n"
}

cmd_revive() {
  local n=${1:?revive NODE} i
  kill -0 "$(node_pid "$n")" 2>/dev/null && cmd_poweroff "$n" >/dev/null
  i=$(nodes | grep -nx "$n" | cut -d: -f1)
  [ -n "$i" ] || die "no node $n"
  boot_node "$n" "$i"
  if slurm_on; then
    # Until the controller hears from the new slurmd it may still call the node down (ReturnToService=2
    # brings it back as soon as it registers).
    wait_idle "$n"
  fi
  say "revived $n"
}

cmd_status() {
  local n
  for n in $(nodes); do
    local st=off
    kill -0 "$(node_pid "$n")" 2>/dev/null && st=on
    [ -f "$DIR/nodes/$n/cut" ] && st="$st, link cut"
    slurm_on && alive "$DIR/head.pid" && st="$st, slurm: $(node_state "$n")"
    echo "$n: $st"
  done
}

cmd_down() {
  local n pid
  if alive "$DIR/head.pid" && slurm_on; then
    SLURM_CONF="$CONF" "$DIR/bin/scancel" --quiet --full --user="$(id -un)" 2>/dev/null || true
  fi
  for n in $(nodes); do
    pid=$(node_pid "$n") || continue
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null && say "stopped $n (pid $pid)"
    rm -f "$DIR/nodes/$n/init.pid"
  done
  if alive "$DIR/head.pid"; then
    pid=$(head_pid)
    stop_pid "$pid"  # its init stops slurmctld; a slurmctld that outlived it is its orphan, found below
    say "stopped head (pid $pid)"
  fi
  # slurmctld writes its PID file in the machine's PID namespace (the head has none of its own)
  alive "$DIR/run/slurmctld.pid" && stop_pid "$(cat "$DIR/run/slurmctld.pid")"
  alive "$DIR/munged.pid" && stop_pid "$(cat "$DIR/munged.pid")" && say "stopped munged"
  rm -f "$DIR/head.pid" "$DIR/head.ready" "$DIR/munged.pid" "$DIR/run/"*.pid
  [ "${1:-}" = "--purge" ] && rm -rf "$DIR"
  return 0
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  env) cmd_env ;;
  exec) shift; n=${1:?exec NODE CMD}; shift; if [ "$n" = head ]; then in_head "$@"; else in_node "$n" "$@"; fi ;;
  poweroff) cmd_poweroff "${2:-}" ;;
  kill-slurmd) cmd_kill_slurmd "${2:-}" ;;
  cut) cmd_cut "${2:-}" ;;
  heal) cmd_heal "${2:-}" ;;
  revive) cmd_revive "${2:-}" ;;
  status) cmd_status ;;
  *) sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'; [ -n "${1:-}" ] && exit 2 || exit 0 ;;
esac
