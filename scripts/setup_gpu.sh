#!/usr/bin/env bash
# Set-up on a GPU machine: hpctrain and a Horovod built with NCCL, into the Python environment that already
# holds a CUDA build of torch (your site's module, a conda env or a venv). Nothing else is installed or
# upgraded there, so the torch your site built against its CUDA and drivers stays as it is.
#
#   PYTHON=/path/to/python bash scripts/setup_gpu.sh
#
# Environment:
#   PYTHON                the Python with CUDA torch (default python3)
#   HPCTRAIN_WHEEL_CACHE  where built Horovod wheels are kept (default ~/.cache/hpctrain/wheels)
#   HOROVOD_SDIST, HOROVOD_BUILD_CUDA_CC_LIST, HOROVOD_NCCL_HOME: see scripts/build_horovod.sh
# Without an MPI compiler wrapper (mpicxx) on PATH, Horovod is built without MPI: one process per machine,
# or horovodrun --gloo; load your site's MPI module first for mpirun/srun launches.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
CACHE="${HPCTRAIN_WHEEL_CACHE:-$HOME/.cache/hpctrain/wheels}"

log() { printf '[setup_gpu] %s\n' "$*"; }
die() { printf '[setup_gpu] error: %s\n' "$*" >&2; exit 1; }

command -v "$PY" >/dev/null || die "PYTHON=$PY: not found"
"$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null \
  || die "$PY has no CUDA-enabled torch that sees a GPU: install your site's CUDA torch, or use make setup (CPU)"
"$PY" -c 'import numpy, h5py, tqdm, matplotlib, tensorboard, mpi4py, cffi, cloudpickle, psutil, yaml, setuptools' 2>/dev/null \
  || die "$PY lacks hpctrain's dependencies: $PY -m pip install numpy h5py tqdm matplotlib tensorboard mpi4py cffi cloudpickle psutil pyyaml"

tag=$("$PY" -c 'import sys, torch; print(f"torch{torch.__version__}-cp{sys.version_info[0]}{sys.version_info[1]}")')
key_dir="$CACHE/horovod-0.28.1-$tag-nccl"
if ! ls "$key_dir"/horovod-*.whl >/dev/null 2>&1; then
  bash "$ROOT/scripts/build_horovod.sh" "$PY" nccl "$key_dir"
fi
pip() { "$PY" -m pip --disable-pip-version-check -q "$@"; }
pip install --no-deps --no-index --force-reinstall "$key_dir"/horovod-*.whl
pip install --no-deps --no-index --no-build-isolation -e "$ROOT"
"$PY" -c 'import horovod.torch as hvd; assert hvd.nccl_built()' \
  || die "Horovod in $PY lacks NCCL: delete $key_dir and re-run"
log "ready: $("$PY" -c 'import torch, horovod; print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}, horovod {horovod.__version__}")')"
