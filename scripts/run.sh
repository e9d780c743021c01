#!/usr/bin/env bash
# The main job: the offline demo (random-weight model, no weights, no sound card, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec cargo run --release --locked -p moshid -- demo "$@"
