#!/bin/bash
# Times moshid's Mimi against Kyutai's crate on the same checkpoint, alternating, in one run:
# the README's Mimi speed table. Full-size random Mimi (seed 1) unless MIMI is given, 8 codebooks,
# synthetic voice, W untimed frames first (125 fills the 250-step attention window: the steady
# state of a long conversation), F timed frames, R rounds. Run it on a quiet machine.
#   scripts/mimi-vs-kyutai.sh            (builds moshid and scripts/kyutai-bench if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
F=${F:-30} W=${W:-125} R=${R:-2}
B=${B:-target/release/moshid}
K=${K:-scripts/kyutai-bench/target/release/mimi}
[ -x "$B" ] || cargo build --release -p moshid
[ -x "$K" ] || (cd scripts/kyutai-bench && cargo build --release)
MIMI=${MIMI:-target/mimi-random-seed1.safetensors}
[ -f "$MIMI" ] || "$B" codec random-weights --seed 1 "$MIMI"
pick="import json,sys; d=json.loads(sys.stdin.read()); print(json.dumps({k: d.get(k) for k in
 ['encode_ms_median','decode_ms_median','cpu_ms_per_frame','loadavg_1m','huge_page_mb','parts_ms_median','kinds_ms_mean']}))"
bench() { "$B" bench mimi --mimi "$MIMI" --frames "$F" --warmup "$W" "$@" | python3 -c "$pick"; }
for i in $(seq "$R"); do
  echo "== round $i $(date +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "moshid candle path (the engine before)"; MOSHID_MIMI_ENGINE=candle bench
  echo "moshid f32"; bench
  echo "kyutai"; "$K" "$MIMI" "$F" "$W"
  echo "moshid f16 weights"; bench --mimi-dtype f16
done
