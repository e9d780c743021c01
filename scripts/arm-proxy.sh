#!/bin/bash
# Instruction counts of Mimi's CPU kernel families on aarch64, generic vs NEON: a PROXY for the
# NEON path's speed where no Arm CPU is at hand. It counts the instructions the emulated CPU
# executes under qemu-aarch64 (cross/qemu-insn.c, a TCG plugin); caches, memory stalls and
# issue width do not enter, so it is not a timing. The workload is the ignored test
# `mimi::cpu::tests::kernel_workload` (one thread), run for REPS and for 0 repetitions: the
# difference is the kernel alone.
#   cross/aarch64.sh --no-test && scripts/arm-proxy.sh      (needs qemu-user and a C compiler)
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-20}
deps=${CROSS_TARGET_DIR:-target-cross}/aarch64-unknown-linux-gnu/release/deps
plugin=${CROSS_TARGET_DIR:-target-cross}/qemu-insn.so
cc -O2 -shared -fPIC cross/qemu-insn.c -o "$plugin"
bin=
for f in $(ls -t "$deps"/moshid_models-* 2>/dev/null | grep -v '\.d$'); do
  # grep reads it all (no -q): with pipefail, qemu killed by SIGPIPE would fail the test.
  if qemu-aarch64 "$f" --list --ignored 2>/dev/null | grep '^mimi::cpu::tests::kernel_workload' >/dev/null; then
    bin=$f; break
  fi
done
[ -n "$bin" ] || { echo "arm-proxy: no aarch64 moshid-models test binary in $deps: run cross/aarch64.sh --no-test first" >&2; exit 1; }
count() { # kernels workload reps -> instructions
  MOSHID_MIMI_THREADS=1 MOSHID_MIMI_KERNELS=$1 MOSHID_MIMI_PROXY=$2 MOSHID_MIMI_PROXY_REPS=$3 \
    qemu-aarch64 -plugin "$plugin" -d plugin "$bin" --ignored --exact mimi::cpu::tests::kernel_workload \
    2>&1 >/dev/null | sed -n 's/^insns: //p'
}
echo "arm-proxy: $bin, $REPS repetitions (instructions per repetition; a proxy, not a timing)"
for w in stream stream16 conv elu; do
  g=$(( ($(count generic $w $REPS) - $(count generic $w 0)) / REPS ))
  n=$(( ($(count auto $w $REPS) - $(count auto $w 0)) / REPS ))
  python3 -c "print(f'$w: generic $g, neon $n, generic/neon {$g / max($n, 1):.2f}x')"
done
