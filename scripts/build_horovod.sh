#!/usr/bin/env bash
# Build a Horovod 0.28.1 wheel against the torch installed in PYTHON, and put it in OUT_DIR.
#
#   bash scripts/build_horovod.sh PYTHON cpu|nccl OUT_DIR
#
# cpu:  MPI and Gloo controllers, CPU operations (the project's CI and CPU clusters; MPI is required).
# nccl: NCCL GPU operations, Gloo, and MPI where an MPI compiler wrapper (mpicxx) is on PATH; needs a CUDA
#       build of torch, nvcc, and NCCL (found in the CUDA toolkit, HOROVOD_NCCL_HOME, or torch's
#       nvidia-nccl pip package). Kernels are built for the GPU in this machine unless
#       HOROVOD_BUILD_CUDA_CC_LIST says otherwise (e.g. 80,90).
# HOROVOD_SDIST=path/to/horovod-0.28.1.tar.gz builds from a local sdist (machines with no package index);
# HOROVOD_BUILD_LOG=file keeps the compiler's log of a failed build; HOROVOD_WITHOUT_MPI=1 leaves MPI out.
#
# The sdist does not build against torch 2.x as shipped: torch's headers need C++17, and gloo's symbols fail
# to link if any part stays on C++11/14, so the standard is raised to 17 everywhere (the CUDA kernels too).
# Called by scripts/setup.sh (cpu) and scripts/setup_gpu.sh (nccl). Nothing is left in OUT_DIR on failure.
set -euo pipefail

PY=${1:?usage: build_horovod.sh PYTHON cpu\|nccl OUT_DIR}
FLAVOUR=${2:?usage: build_horovod.sh PYTHON cpu\|nccl OUT_DIR}
OUT_DIR=${3:?usage: build_horovod.sh PYTHON cpu\|nccl OUT_DIR}
VERSION=0.28.1

log() { printf '[build_horovod] %s\n' "$*"; }
die() { printf '[build_horovod] error: %s\n' "$*" >&2; exit 1; }
[ "$FLAVOUR" = cpu ] || [ "$FLAVOUR" = nccl ] || die "flavour must be cpu or nccl, not '$FLAVOUR'"

build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
if [ -n "${HOROVOD_SDIST:-}" ]; then
  [ -f "$HOROVOD_SDIST" ] || die "HOROVOD_SDIST=$HOROVOD_SDIST: no such file"
  cp "$HOROVOD_SDIST" "$build/horovod-$VERSION.tar.gz"
else
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: -d "$build" "horovod==$VERSION"
fi
tar -xzf "$build/horovod-$VERSION.tar.gz" -C "$build"
src="$build/horovod-$VERSION"
sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
sed -i 's/-std=c++11/-std=c++17/' "$src/third_party/gloo/CMakeLists.txt"
sed -i 's/CMAKE_CUDA_STANDARD 11/CMAKE_CUDA_STANDARD 17/' "$src/horovod/common/ops/cuda/CMakeLists.txt"
# Python 3.12 has no distutils: ask sysconfig for Python's headers instead
sed -i 's/from distutils.sysconfig import get_python_inc; print(get_python_inc())/import sysconfig; print(sysconfig.get_paths()[\x27include\x27])/' \
  "$src/horovod/torch/CMakeLists.txt"
grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt" || die "Horovod sdist layout changed: C++17 patch did not apply"

# GCC 13's standard headers include fewer of one another, and the sdist relied on the old chains (std::string
# in group_table.h, std::logic_error in common.h): include what it uses in every C++ file.
export CXXFLAGS="-include cstdint -include string -include stdexcept -include system_error ${CXXFLAGS:-}"
export CMAKE_POLICY_VERSION_MINIMUM=3.5 HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
       HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)"
if [ "${HOROVOD_WITHOUT_MPI:-0}" != 1 ] && { [ "$FLAVOUR" = cpu ] || command -v mpicxx >/dev/null; }; then
  export HOROVOD_WITH_MPI=1
else
  log "building without MPI (no mpicxx on PATH, or HOROVOD_WITHOUT_MPI=1): Gloo controller only"
  export HOROVOD_WITHOUT_MPI=1
fi
if [ "$FLAVOUR" = nccl ]; then
  "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' \
    || die "$PY has no CUDA-enabled torch (or sees no GPU): the NCCL build needs one"
  nvcc=$(command -v nvcc || true)
  [ -n "$nvcc" ] || [ -n "${CUDA_HOME:-}" ] || die "no nvcc on PATH and no CUDA_HOME: load your site's CUDA module"
  export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$nvcc")")}
  export HOROVOD_CUDA_HOME=$CUDA_HOME HOROVOD_GPU_OPERATIONS=NCCL
  # Horovod's NVTX ranges serve profiling only, and its finder predates CUDA 13's header-only NVTX 3
  export HOROVOD_WITHOUT_NVTX=${HOROVOD_WITHOUT_NVTX:-1}
  export HOROVOD_BUILD_CUDA_CC_LIST=${HOROVOD_BUILD_CUDA_CC_LIST:-$("$PY" -c \
    'import torch; print("%d%d" % torch.cuda.get_device_capability())')}
  if [ -z "${HOROVOD_NCCL_HOME:-}${HOROVOD_NCCL_INCLUDE:-}" ] && [ ! -f "$CUDA_HOME/include/nccl.h" ]; then
    # torch's own NCCL (the nvidia-nccl-cuXX wheel) ships libnccl.so.2 but no libnccl.so to link against
    header=$("$PY" -c 'import glob, os, site
hits = [h for r in site.getsitepackages() for h in glob.glob(os.path.join(r, "nvidia", "**", "nccl.h"), recursive=True)]
print(hits[0] if hits else "")')
    nccl=$(dirname "$(dirname "${header:-/none/include/nccl.h}")")
    [ -f "$nccl/lib/libnccl.so.2" ] || die "NCCL not found: set HOROVOD_NCCL_HOME (its include/ and lib/)"
    mkdir -p "$build/nccl-lib"
    ln -s "$nccl/lib/libnccl.so.2" "$build/nccl-lib/libnccl.so"
    export HOROVOD_NCCL_INCLUDE="$nccl/include" HOROVOD_NCCL_LIB="$build/nccl-lib" HOROVOD_NCCL_LINK=SHARED
  fi
  log "CUDA $CUDA_HOME, compute capability $HOROVOD_BUILD_CUDA_CC_LIST, NCCL ${HOROVOD_NCCL_INCLUDE:-${HOROVOD_NCCL_HOME:-$CUDA_HOME}}"
fi

log "building Horovod $VERSION ($FLAVOUR) against $("$PY" -c 'import torch; print("torch", torch.__version__)')"
mkdir -p "$build/dist"
"$PY" -m pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps -w "$build/dist" "$src" \
  > "$build/build.log" 2>&1 || {
    [ -z "${HOROVOD_BUILD_LOG:-}" ] || cp "$build/build.log" "$HOROVOD_BUILD_LOG"
    grep -E -A4 '(error|Error)[: ]' "$build/build.log" | head -60 >&2
    die "Horovod build failed (first errors above${HOROVOD_BUILD_LOG:+; whole log in $HOROVOD_BUILD_LOG})"
  }
mkdir -p "$OUT_DIR"
# Moved into place only once complete, so an interrupted build never leaves a bad wheel behind.
wheel=$(basename "$build"/dist/horovod-*.whl)
cp "$build/dist/$wheel" "$OUT_DIR/.$wheel.tmp.$$"
mv "$OUT_DIR/.$wheel.tmp.$$" "$OUT_DIR/$wheel"
log "built $OUT_DIR/$wheel"
