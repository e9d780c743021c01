#!/usr/bin/env bash
# The Firefox test: Debian's Firefox ESR (headless, its fake microphone: a tone) against moshid's
# page, driven over WebDriver BiDi by puppeteer-core from npm (tests/firefox/). Needs a release
# build, firefox-esr and pulseaudio: Firefox's AudioContext stays "suspended" without an audio
# output device (a headless machine has none), so a private PulseAudio with a null sink is
# started for the test and stopped after it. Output (result.json, page.png, kiosk.png) in tests/firefox/out/.
source "$(dirname "$0")/page-test-env.sh" firefox
mkdir -p "$out/run"
export XDG_RUNTIME_DIR="$out/run" PULSE_RUNTIME_PATH="$out/run/pulse"
chmod 700 "$XDG_RUNTIME_DIR"
# -n: no default.pa (no hardware probing); the null sink is the output device Firefox opens.
pulseaudio -n --daemonize=no --exit-idle-time=-1 --log-target=file:"$out/pulse.log" \
  --load=module-native-protocol-unix --load=module-null-sink 2>/dev/null &
pa=$!
trap 'kill "$pa" 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -S "$PULSE_RUNTIME_PATH/native" ] && break; sleep 0.1; done
[ -S "$PULSE_RUNTIME_PATH/native" ] || { echo "firefox test: pulseaudio did not start" >&2; cat "$out/pulse.log" >&2; exit 1; }
(cd tests/firefox && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
node tests/firefox/page.mjs "$bin" "$out"
