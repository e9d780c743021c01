#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/) for SECONDS each (default 60) with cargo-fuzz
# and libFuzzer, then prints one line per target: executions, seconds, crashes. Not in CI (CI
# replays the committed seeds in fuzz/seeds/ with `cargo test`). cargo-fuzz needs nightly
# rustc flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
#   scripts/fuzz.sh [SECONDS] [TARGET...]   e.g. scripts/fuzz.sh 600 gguf_header wav
# FUZZ_RUNS=N stops each target after N executions (SECONDS stays the cap): the README's
# figures come from `FUZZ_RUNS=1000000 scripts/fuzz.sh 3600`.
# A crash leaves its input in fuzz/artifacts/TARGET/; once fixed, copy it into
# fuzz/seeds/TARGET/ so that `cargo test` replays it from then on.
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
runs_limit=${FUZZ_RUNS:--1}
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked || exit 1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi
# One build for all targets (ASan, debug assertions on, optimised).
(cd fuzz && cargo fuzz build) || exit 1
status=0
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log="fuzz/artifacts/$t.log"
    t0=$(date +%s)
    # -rss_limit_mb: an input must not make a parser take gigabytes; -timeout: nor hang.
    (cd fuzz && cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -runs="$runs_limit" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1) >"$log" 2>&1
    rc=$?
    took=$(( $(date +%s) - t0 ))
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    crashes=$(find "fuzz/artifacts/$t" -type f | wc -l)
    echo "fuzz: $t: ${runs:-?} executions in ${took} s, exit $rc, $crashes crash input(s) in fuzz/artifacts/$t"
    [ "$rc" = 0 ] || status=1
done
exit $status
