#!/usr/bin/env bash
# The test suite: the README's test command. Installs what it needs, then runs every check.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
t0=$(date +%s)
cargo fmt --all -- --check
cargo test --workspace --release --locked
echo "test: cargo test took $(( $(date +%s) - t0 )) s"
# The Python bindings (models/python): pip install + pytest against the same references.
t2=$(date +%s)
./scripts/ci-python.sh
echo "test: python bindings took $(( $(date +%s) - t2 )) s"
# A real browser against the page (Chromium + playwright-core, about 30 s).
tb=$(date +%s)
./scripts/ci-browser.sh
echo "test: browser test took $(( $(date +%s) - tb )) s"
# Packaging and the Jetson builds (cross/README.md): unit checks, .deb + lintian (reusing the
# release build above), Yocto lint, then the aarch64 cross build with its tests under qemu.
# MOSHID_SKIP_CROSS=1 skips the cross stage (about 20 min cold) on a laptop; the CUDA build
# is not in CI (its cost would push CI past an hour): MOSHID_CUDA=1 adds it.
t1=$(date +%s)
./scripts/ci-systemd.sh
./scripts/ci-deb.sh
./scripts/ci-yocto.sh
echo "test: packaging checks took $(( $(date +%s) - t1 )) s"
[ "${MOSHID_SKIP_CROSS:-0}" = 1 ] || ./scripts/ci-cross.sh
[ "${MOSHID_CUDA:-0}" != 1 ] || ./scripts/ci-cuda.sh
