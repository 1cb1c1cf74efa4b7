#!/usr/bin/env bash
# Idempotent set-up for hpctrain on a Debian machine: system packages, .venv/, pinned Python
# dependencies and a Horovod 0.28.1 wheel built against torch 2.13 (cached outside the repo).
# Called by `make setup` (and so by `make demo` / `make test`); safe to run again at any time.
#
# Environment:
#   HPCTRAIN_GPU=1        build Horovod with NCCL GPU operations (needs CUDA + NCCL; untested in CI)
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

# --- 3. Horovod wheel, built once per (horovod, torch, python, flavour) ----------------------------
pyver=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
flavour=cpu
[ "${HPCTRAIN_GPU:-0}" = 1 ] && flavour=nccl
key_dir="$CACHE/horovod-$HOROVOD_VERSION-torch$TORCH_VERSION-$pyver-$flavour"
if ! ls "$key_dir"/horovod-*.whl >/dev/null 2>&1; then
  log "building Horovod $HOROVOD_VERSION ($flavour) against torch $TORCH_VERSION: takes about 3 minutes"
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  pip download --no-deps --no-binary :all: -d "$build" "horovod==$HOROVOD_VERSION"
  tar -xzf "$build"/horovod-$HOROVOD_VERSION.tar.gz -C "$build"
  src="$build/horovod-$HOROVOD_VERSION"
  # torch 2.x headers need C++17 everywhere; gloo symbols fail to link if any part stays on C++11/14.
  sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
  sed -i 's/-std=c++11/-std=c++17/' "$src/third_party/gloo/CMakeLists.txt"
  grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt" || die "Horovod sdist layout changed: C++17 patch did not apply"
  export CMAKE_POLICY_VERSION_MINIMUM=3.5 HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
         HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)"
  if [ "$flavour" = nccl ]; then
    export HOROVOD_GPU_OPERATIONS=NCCL
  fi
  mkdir -p "$build/dist"
  "$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$build/dist" "$src" > "$build/build.log" 2>&1 \
    || { tail -40 "$build/build.log" >&2; die "Horovod build failed (log above)"; }
  mkdir -p "$key_dir"
  # Move into place only once complete, so an interrupted build never leaves a bad cached wheel.
  cp "$build"/dist/horovod-*.whl "$key_dir.tmp.$$.whl"
  mv "$key_dir.tmp.$$.whl" "$key_dir/$(basename "$build"/dist/horovod-*.whl)"
fi

# --- 4. hpctrain itself (editable) with the pinned dependencies ---------------------------------------
pip install --find-links "$key_dir" -e "$ROOT[test,examples]"
"$PY" -c "import horovod.torch as hvd; assert hvd.mpi_built() and hvd.gloo_built()" \
  || die "Horovod in $VENV lacks MPI or Gloo support: delete $key_dir and re-run"
log "ready: $VENV ($("$PY" -c 'import torch, horovod; print(f"torch {torch.__version__}, horovod {horovod.__version__}")'))"
