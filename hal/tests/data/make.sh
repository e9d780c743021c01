#!/bin/sh
# Regenerates the speech clips used by the echo-cancellation tests (espeak-ng + sox).
set -e
cd "$(dirname "$0")"
espeak-ng -v en-us -s 150 -w /tmp/far.wav "The quick brown fox jumps over the lazy dog. Moshi listens and speaks at the same time, so it must not hear itself. Echo cancellation removes the sound of the speaker from the microphone signal."
espeak-ng -v en-gb+f3 -s 140 -w /tmp/near.wav "Hello, can you hear me? I am talking while the speaker is quiet. Please turn on the kitchen lights."
sox /tmp/far.wav -r 16000 -b 16 -c 1 far_speech_16k.wav
sox /tmp/near.wav -r 16000 -b 16 -c 1 near_speech_16k.wav
