#!/usr/bin/env bash
# The test suite: the README's test command. Installs what it needs, then runs every check.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
t0=$(date +%s)
cargo fmt --all -- --check
cargo test --workspace --release --locked
echo "test: cargo test took $(( $(date +%s) - t0 )) s"
