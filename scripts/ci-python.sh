#!/usr/bin/env bash
# The Python bindings (models/python, module `moshid_mimi`): `pip install ./models/python` into
# a virtual environment (git-ignored .venv, or $MOSHID_VENV), then the pytest suite against the
# committed Mimi references. models/python is its own Cargo workspace (excluded from the root
# one, see its Cargo.toml); maturin builds it, --locked, into target-py ($MOSHID_PY_TARGET).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${MOSHID_PY_TARGET:-$PWD/target-py}"
export MATURIN_PEP517_ARGS="--locked"
# Its own workspace, so the root `cargo fmt --all` does not see it.
cargo fmt --manifest-path models/python/Cargo.toml -- --check
venv="${MOSHID_VENV:-$PWD/.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check numpy pytest
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "$venv/bin/python" -m pip install -v --disable-pip-version-check --force-reinstall --no-deps \
    ./models/python >"$log" 2>&1; then
  tail -n 60 "$log" >&2
  exit 1
fi
# What the wheel cost to build (cold: candle and the rest again, in target-py).
echo "ci-python: the wheel compiled $(grep -c ' Compiling ' "$log") crates; $(grep -m1 -o 'Finished.*' "$log")"
"$venv/bin/python" -m pytest -q models/python/tests
