#!/usr/bin/env bash
# Regenerates the wake-word parity fixtures (models/tests/fixtures/wake/): synthesises the test
# clips with espeak-ng + sox, then runs the reference (PyPI pymicro-wakeword 2.5.0, which pulls
# pymicro-features 2.0.2 and ships the four models and a TFLite C library) over them in a venv.
# CI needs none of this: the clips and the JSON results are committed. Also copies the reference's
# model files into models/wake/ (they are committed too, with their licence).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/models/tests/fixtures/wake"
venv="${WAKE_VENV:-$root/target/wake-venv}"
mkdir -p "$out"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q pymicro-wakeword==2.5.0
fi
pkg="$("$venv/bin/python" -c 'import pymicro_wakeword, os; print(os.path.dirname(pymicro_wakeword.__file__))')"
for m in okay_nabu hey_jarvis alexa hey_mycroft; do
  cp "$pkg/models/$m.tflite" "$pkg/models/$m.json" "$root/models/wake/"
done
lic="$(ls "$pkg"/../pymicro_wakeword-2.5.0.dist-info/licenses/LICENSE)"
cp "$lic" "$root/models/wake/LICENSE"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# say NAME VOICE TEXT: espeak-ng at its rate, then 16 kHz 16-bit mono with 0.5 s of silence around
# (sox -D: no dither; -R: the noise from a fixed seed; so that a rerun gives the same bytes).
say() {
  espeak-ng -v "$2" -w "$tmp/$1.wav" "$3"
  sox -D "$tmp/$1.wav" -r 16000 -b 16 -c 1 "$out/$1.wav" pad 0.5 0.5
}
say pos_okay_nabu_en-us en-us "Okay Nabu, turn on the lights."
say pos_okay_nabu_en-gb en-gb "Okay Nabu, what time is it?"
say pos_okay_nabu_en_m1 en+m1 "Okay Nabu."
say pos_okay_nabu_en-us_m3 en-us+m3 "Okay Nabu, play some music."
say pos_alexa_en-us en-us "Alexa, what time is it?"
say pos_hey_mycroft_en-us en-us "Hey Mycroft, what is the weather?"
say pos_hey_jarvis_en-gb en-gb "Hey Jarvis."
say neg_sentence_en-us en-us "The weather is nice today, let us go for a walk."
say neg_sentence_en-gb en-gb "Please put the kettle on and close the window."
# Noise: two seconds of pink noise at a moderate level, then a quieter white noise.
sox -D -R -n -r 16000 -b 16 -c 1 "$out/neg_noise.wav" synth 2 pinknoise vol 0.3 : synth 1 whitenoise vol 0.05
# Moshi's own voice: the offline demo model's reply (random weights, fixed seed) to its spoken
# input, as the room's speaker plays it; it must not wake anything. Needs the built binary.
moshid="${MOSHID:-$root/target/release/moshid}"
"$moshid" demo --fast --seconds 4 --cache-dir "$tmp/cache" --output "$tmp/moshi.wav" \
  --transcript "$tmp/moshi.jsonl" >/dev/null
sox -D "$tmp/moshi.wav" -r 16000 -b 16 -c 1 "$out/neg_moshi_demo.wav"
"$venv/bin/python" "$root/models/tests/fixtures/gen_wake.py" "$out"
