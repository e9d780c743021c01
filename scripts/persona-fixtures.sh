#!/usr/bin/env bash
# Regenerates the PersonaPlex parity fixtures (models/tests/fixtures/persona/) with NVIDIA's
# reference code. Needs network once: a venv with torch 2.9.1 (PyPI's wheel; it pulls CUDA
# libraries, about 2 minutes) and NVIDIA's `moshi` package from github.com/NVIDIA/personaplex
# (commit 3428dfd9 was used), installed with --no-deps since it pins older torch/sphn than it
# needs. CI needs none of this: the fixtures are committed and the checkpoint is rewritten by
# the test itself from its seed.
#   PERSONAPLEX_SRC=path/to/personaplex-checkout scripts/persona-fixtures.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${PERSONA_VENV:-$root/target/persona-venv}"
src="${PERSONAPLEX_SRC:?set PERSONAPLEX_SRC to a checkout of github.com/NVIDIA/personaplex}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.9.1 'numpy==2.2.*' safetensors 'sphn==0.2.*' \
    sentencepiece pyloudnorm einops tqdm huggingface_hub
  "$venv/bin/pip" install -q --no-deps "$src/moshi"
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The random LM, written by moshid's own code (same seed as the test).
PERSONA_CHECKPOINT="$tmp/persona.safetensors" cargo test --release -q -p moshid-models \
  --test persona_parity -- --ignored write_checkpoint
NO_TORCH_COMPILE=1 "$venv/bin/python" "$root/models/tests/fixtures/gen_persona.py" "$tmp/persona.safetensors"
