# Sourced by the page tests (ci-browser.sh, ci-firefox.sh) with the test's folder under tests/
# as $1: strict mode, the repository root as working directory, $bin = the release moshid
# (built when missing), $out = tests/$1/out, emptied.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="$PWD/target/release/moshid"
[ -x "$bin" ] || cargo build --release --locked -p moshid
out="$PWD/tests/$1/out"
rm -rf "$out" && mkdir -p "$out"
