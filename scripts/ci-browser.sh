#!/usr/bin/env bash
# The browser test: Debian's Chromium (headless, fake microphone from a WAV) against moshid's
# page, driven by playwright-core from npm (tests/browser/). Needs a release build.
# Cold cost: npm install of playwright-core (one package, ~10 MB, a few seconds); the test
# itself takes about 20 s. Output (result.json, page.png, kiosk.png; kiosk/kiosk-WxH.png and
# kiosk/kiosk.json from kiosk.mjs; origin/origin.json; persona/persona.json and persona.png) in
# tests/browser/out/.
source "$(dirname "$0")/page-test-env.sh" browser
# The fake microphone: a spoken sentence (espeak-ng), repeated for 20 s, 48 kHz mono 16-bit.
espeak-ng -s 150 -w "$out/say.wav" "Hello Moshi. Can you hear me? What is the weather like in the kitchen today?"
sox "$out/say.wav" -r 48000 -c 1 -b 16 "$out/mic.wav" repeat 3
(cd tests/browser && npm ci --no-audit --no-fund --silent)
node tests/browser/page.mjs "$bin" "$out/mic.wav" "$out"
# The kiosk screen against the appliance (`moshid run`, ALSA file PCMs): fits 800x480, 1024x600
# and 1280x800, Talk/Stop drive the room's conversation. Screenshots: $out/kiosk/kiosk-WxH.png.
node tests/browser/kiosk.mjs "$bin" "$out/kiosk"
# Cross-site requests (issue 24, item 1): a page of another origin can neither POST controls nor
# open /api/chat; with the token (worker_auth_id, as Kyutai's web UI) it can; a rebound name gets
# 403; the device's own page still works.
node tests/browser/origin.mjs "$bin" "$out/origin"
# The page's persona select (issue 23): a small random PersonaPlex model with two [personas];
# Talk as one of them.
node tests/browser/persona.mjs "$bin" "$out/mic.wav" "$out/persona"
