#!/usr/bin/env bash
# Idempotent set-up for hpctrain on a Debian machine: system packages, .venv/, pinned Python
# dependencies and a Horovod 0.28.1 wheel built against torch 2.13 (cached outside the repo).
# CPU only (torch is pinned to its CPU wheel); a GPU machine uses scripts/setup_gpu.sh instead.
# Called by `make setup` (and so by `make demo` / `make test`); safe to run again at any time.
#
# Environment:
#   HPCTRAIN_WHEEL_CACHE  where built Horovod wheels are kept (default ~/.cache/hpctrain/wheels)
#   HPCTRAIN_WITH_SLURM=1 also install the Slurm/munge packages the integration tests use
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
HOROVOD_VERSION=0.28.1
TORCH_VERSION=2.13.0
CACHE="${HPCTRAIN_WHEEL_CACHE:-$HOME/.cache/hpctrain/wheels}"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@";
  else die "need root to install system packages ($*); install them yourself and re-run"; fi
}

# --- 1. system packages -------------------------------------------------------------------------
apt_pkgs=(openmpi-bin libopenmpi-dev)
if [ "${HPCTRAIN_WITH_SLURM:-0}" = 1 ]; then
  apt_pkgs+=(slurmctld slurmd slurm-client munge libpmix2)
fi
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "missing system packages ${missing[*]} and no apt-get: install them by hand"
  log "installing system packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- 2. virtualenv and pinned dependencies ------------------------------------------------------
if [ ! -x "$PY" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
pip() { "$PY" -m pip --disable-pip-version-check -q "$@"; }
# torch first and pinned exactly: a looser requirement pulls the multi-GB CUDA wheels.
"$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null \
  || { log "installing torch==$TORCH_VERSION"; pip install "torch==$TORCH_VERSION"; }
# Build requirements of the Horovod sdist (it is built without isolation, against this torch).
pip install "setuptools<81" wheel "cmake>=3.13" packaging cloudpickle psutil pyyaml

# --- 3. Horovod wheel, built once per (horovod, torch, python) ----------------------------------------
pyver=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
key_dir="$CACHE/horovod-$HOROVOD_VERSION-torch$TORCH_VERSION-$pyver-cpu"
if ! ls "$key_dir"/horovod-*.whl >/dev/null 2>&1; then
  log "building Horovod $HOROVOD_VERSION against torch $TORCH_VERSION: takes about 3 minutes"
  bash "$ROOT/scripts/build_horovod.sh" "$PY" cpu "$key_dir"
fi

# --- 4. hpctrain itself (editable) with the pinned dependencies ---------------------------------------
pip install --find-links "$key_dir" -e "$ROOT[test,examples]"
"$PY" -c "import horovod.torch as hvd; assert hvd.mpi_built() and hvd.gloo_built()" \
  || die "Horovod in $VENV lacks MPI or Gloo support: delete $key_dir and re-run"
log "ready: $VENV ($("$PY" -c 'import torch, horovod; print(f"torch {torch.__version__}, horovod {horovod.__version__}")'))"
