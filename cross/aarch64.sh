#!/usr/bin/env bash
# Cross-builds the workspace for aarch64-unknown-linux-gnu (Jetson: JetPack 6 / L4T r36, or a
# meta-tegra Yocto image) and runs its tests under qemu-aarch64. CPU build; the CUDA build is
# cross/cuda-build.sh (here) or cross/Dockerfile.jetpack6 (for the board's CUDA 12.6).
#
# Toolchain: Debian bookworm's rustc-web/cargo-web 1.96 with the arm64 std from
# libstd-rust-web-dev:arm64 (rustup's targets need static.rust-lang.org, which CI cannot reach).
#
# Usage: cross/aarch64.sh [--install] [--no-test] [-- extra cargo test args]
#   --install   apt-get the toolchain first (CI does; needs root or sudo)
#   --no-test   only build (tests and the binary), do not run them
# Env: CROSS_TARGET_DIR (default <repo>/target-cross), CROSS_TEST_PACKAGES (default: all three
# crates; see the note on tests that spawn the binary below).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
install=0 run_tests=1
while [ $# -gt 0 ]; do
  case "$1" in
    --install) install=1 ;;
    --no-test) run_tests=0 ;;
    --) shift; break ;;
    *) echo "cross: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$install" = 1 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  pkgs=(rustc-web cargo-web libstd-rust-web-dev libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu
        g++-aarch64-linux-gnu libc6-dev-arm64-cross libasound2-dev:arm64 libopus-dev:arm64 pkg-config qemu-user)
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "cross: installing ${missing[*]}"
    dpkg --print-foreign-architectures | grep -qx arm64 || $sudo dpkg --add-architecture arm64
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

for tool in /usr/bin/cargo /usr/bin/rustc aarch64-linux-gnu-gcc qemu-aarch64; do
  command -v "$tool" >/dev/null || { echo "cross: $tool missing; run with --install" >&2; exit 1; }
done
[ -d /usr/lib/rustlib/aarch64-unknown-linux-gnu ] ||
  { echo "cross: no arm64 std (libstd-rust-web-dev:arm64); run with --install" >&2; exit 1; }

# Debian's toolchain, not rustup's proxies (which would pick a rustc without the arm64 std).
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
cargo=/usr/bin/cargo
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# Plain qemu-aarch64: libc6:arm64 comes in multiarch paths with libasound2:arm64, and
# `-L /usr/aarch64-linux-gnu` hangs on thread creation.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export PKG_CONFIG_ALLOW_CROSS=1
export PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig
export CARGO_TARGET_DIR=${CROSS_TARGET_DIR:-$root/target-cross}
target=aarch64-unknown-linux-gnu

# Release profile: one build serves the tests (which are numeric and slow under emulation in
# debug) and the binary that `cargo deb --target aarch64-unknown-linux-gnu --no-build` packages.
t0=$(date +%s)
read -r -a pkgs_test <<<"${CROSS_TEST_PACKAGES:--p moshid-models -p moshid-hal -p moshid}"
$cargo build --release --locked --target $target -p moshid
$cargo test --release --locked --target $target "${pkgs_test[@]}" --no-run
t1=$(date +%s)
echo "cross: aarch64 build took $((t1 - t0)) s"
file "$CARGO_TARGET_DIR/$target/release/moshid" 2>/dev/null || true

# Integration tests exec the aarch64 `moshid` binary (CARGO_BIN_EXE_moshid): that needs the
# kernel's binfmt_misc to hand aarch64 ELF files to qemu. Register it when we may (root, a VM
# or privileged container); otherwise run every test that does not exec the binary.
binfmt=/proc/sys/fs/binfmt_misc
register_binfmt() {
  [ -e $binfmt/qemu-aarch64 ] && return 0
  [ "$(id -u)" -eq 0 ] || return 1
  [ -e $binfmt/register ] || mount -t binfmt_misc binfmt_misc $binfmt 2>/dev/null || return 1
  # Debian's qemu-user-binfmt entry; F: the kernel opens qemu now (works inside chroots too).
  printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64:F' \
    >$binfmt/register 2>/dev/null || return 1
  [ -e $binfmt/qemu-aarch64 ]
}

if [ "$run_tests" = 1 ]; then
  if register_binfmt; then
    $cargo test --release --locked --target $target "${pkgs_test[@]}" "$@"
  else
    echo "cross: no binfmt_misc for aarch64 here: the daemon's integration tests (they exec the"
    echo "cross: aarch64 moshid binary) are skipped; its unit tests and all models/hal tests run"
    $cargo test --release --locked --target $target -p moshid-models -p moshid-hal "$@"
    $cargo test --release --locked --target $target -p moshid --bins "$@"
  fi
  echo "cross: tests under qemu-aarch64 took $(( $(date +%s) - t1 )) s"
fi
