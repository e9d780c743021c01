#!/usr/bin/env bash
# CI stage: aarch64 (Jetson) cross build of the workspace, its tests under qemu-aarch64, and
# the arm64 .deb from that build (lintian-checked like the amd64 one).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
# The web client test streams its WAV in real time; under qemu's emulation the demo model steps
# far slower than 80 ms, so lag control drops the oldest input and less audio comes back than
# was sent. That is the designed behaviour, not an aarch64 defect: the test runs natively.
# The same holds for the web sessions inside `moshid run` (web_room.rs), which count the audio
# that comes back and compare reply latencies, for three real-time clients sharing the demo model (web.rs), and for the
# client that never reads (web.rs), whose server must produce a few hundred frames within the
# 30 s the client sends to fill the socket's buffers. A satellite (satellite.rs) hears its brain
# only when the brain steps in real time too (its replies are otherwise late: silence); the
# fault, token, certificate, busy and check-config tests, which need no audio, run.
# Batched Mimi on candle's path (f16/bf16 generic ops, f32 over the packed kernels) takes many
# minutes per scenario under emulation (the CPU engine's scenario, which runs, takes seconds);
# those two run natively. On aarch64 candle's f16 GEMM rounds a 2-row and an 8-row product
# differently (seen under qemu: a code of stream 1 differed); their bound is half precision's
# own, not measured under emulation.
./cross/aarch64.sh --install -- -- --skip client_talks_to_the_demo_over_tls \
  --skip the_room_and_three_web_clients_talk_at_once_on_one_model \
  --skip a_room_capture_that_ends_does_not_stop_a_web_session \
  --skip a_missing_microphone_at_start_still_serves_web_sessions \
  --skip the_room_switches_persona_over_mqtt_and_a_web_session_has_its_own_prompt \
  --skip a_client_that_stops_reading_costs_the_other_sessions_at_most_a_frame \
  --skip a_waiting_client_gets_the_conversation \
  --skip clients_share_the_model_and_one_beyond_capacity_waits_or_is_rejected \
  --skip a_client_that_never_reads_does_not_hold_the_conversation \
  --skip a_satellite_talks_through_a_brain --skip an_unreachable_brain_is_one_error \
  --skip a_brain_answering_garbage --skip two_satellites_share_one_brain \
  --skip a_page_session_on_a_satellite \
  --skip candle_streams_in_a_batch_match_each_alone \
  --skip candle_f32_streams_in_a_batch_match_each_alone
t1=$(date +%s)
DEB_TARGET=aarch64-unknown-linux-gnu CARGO_TARGET_DIR=${CROSS_TARGET_DIR:-$PWD/target-cross} \
  ./scripts/ci-deb.sh
echo "ci-cross: build + qemu tests $((t1 - t0)) s, arm64 deb $(( $(date +%s) - t1 )) s"
