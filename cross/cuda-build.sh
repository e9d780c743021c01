#!/usr/bin/env bash
# Builds moshid with candle's CUDA backend on a machine without a GPU or a system CUDA, from
# PyPI's CUDA 13.4 toolchain (x86_64 here; the same wheels exist for aarch64 sbsa, but a
# JetPack 6 board has CUDA 12.6: see cross/Dockerfile.jetpack6 for the board's build).
# Proves that every CUDA code path of moshid compiles and gives an sm_87/sm_90 binary for a
# GPU host. The binary links libcuda.so.1 at start, so the CPU build stays the default.
#
# Usage: cross/cuda-build.sh [CAP...]     (default: 87 90; 87 = Jetson Orin, 90 = H100)
# Env:   CUDA_TARGET_DIR (default <repo>/target-cuda), CUDA_VENV (default $CUDA_TARGET_DIR/venv),
#        CUDA_BUILD_TESTS (default 1; 0 builds the binary only, as scripts/gpu-check.sh does)
# Result: $CUDA_TARGET_DIR/moshid-sm<CAP> for each CAP (and the test binaries, built, not run).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
caps=("$@")
[ ${#caps[@]} -gt 0 ] || caps=(87 90)
tdir=${CUDA_TARGET_DIR:-$root/target-cuda}
venv=${CUDA_VENV:-$tdir/venv}
mkdir -p "$tdir"
t0=$(date +%s)

# 1. nvcc, cudart, cublas, curand, nvrtc and cccl (candle's kernels include cub/thrust) from
#    PyPI. Pinned to 13.4: cudarc 0.19 (candle 0.11) rejects 13.5.
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import importlib.metadata as m; assert m.version("cuda-toolkit") == "13.4.3"' 2>/dev/null; then
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "cuda-toolkit[nvcc,cudart,cublas,curand,nvrtc,cccl]==13.4.3"
fi
cu=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
[ -x "$cu/bin/nvcc" ] || { echo "cuda: no nvcc in $cu/bin" >&2; exit 1; }
t1=$(date +%s)
echo "cuda: toolkit ready in $((t1 - t0)) s ($cu)"

# 2. A CUDA_HOME laid out the way candle's build scripts and the linker expect.
home=$tdir/cuda-home
rm -rf "$home"
mkdir -p "$home/lib64/stubs"
for d in bin include nvvm; do ln -s "$cu/$d" "$home/$d"; done
for f in "$cu"/lib/lib*.so.*; do
  base=$(basename "$f")
  ln -sf "$f" "$home/lib64/$base"
  ln -sf "$f" "$home/lib64/${base%%.so.*}.so"   # unversioned name for -l<name>
done
# No wheel ships libcuda (it comes with the driver): a link-time stub whose soname is the
# driver's. One function per cu* entry point named in cuda.h or in cudarc's driver bindings,
# each returning CUDA_ERROR_NO_DEVICE (100) if it ever ran (it does not: the real libcuda.so.1
# is found at run time).
cargo fetch --locked -q
names=$(
  {
    grep -ohE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' "$cu/include/cuda.h"
    find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*cudarc-*/src/driver/sys/*.rs' \
      -exec grep -ohE '\bfn cu[A-Z][A-Za-z0-9_]*' {} + | sed 's/^fn //'
  } | sed 's/[[:space:]]*($//' | sort -u)
[ "$(echo "$names" | wc -l)" -gt 300 ] || { echo "cuda: too few driver entry points found" >&2; exit 1; }
echo "$names" | awk '{ printf "int %s(void) { return 100; }\n", $1 }' >"$home/lib64/stubs/libcuda.c"
gcc -shared -fPIC -o "$home/lib64/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$home/lib64/stubs/libcuda.c"

export CUDA_HOME=$home CUDA_PATH=$home CUDA_ROOT=$home
export PATH=$home/bin:$PATH
export LIBRARY_PATH=$home/lib64:$home/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$home/lib64 -L native=$home/lib64/stubs"
export CARGO_TARGET_DIR=$tdir/build
nvcc --version | tail -n 2

# 3. One build per compute capability (candle compiles its kernels for exactly one).
for cap in "${caps[@]}"; do
  s=$(date +%s)
  CUDA_COMPUTE_CAP=$cap cargo build --release --locked -p moshid --features cuda
  cp "$CARGO_TARGET_DIR/release/moshid" "$tdir/moshid-sm$cap"
  echo "cuda: sm_$cap build took $(( $(date +%s) - s )) s"
  # It must link the real CUDA libraries (proof the cuda feature reached candle).
  ldd "$tdir/moshid-sm$cap" | grep -E 'libcuda\.so\.1|libcublas' || {
    echo "cuda: moshid-sm$cap does not link CUDA" >&2; exit 1; }
  # The tests' CUDA code paths compile too (they cannot run here: no GPU).
  [ "${CUDA_BUILD_TESTS:-1}" = 0 ] && continue
  CUDA_COMPUTE_CAP=$cap cargo test --release --locked --workspace --features moshid/cuda,moshid-models/cuda --no-run
done
echo "cuda: total $(( $(date +%s) - t0 )) s"
