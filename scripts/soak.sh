#!/usr/bin/env bash
# Soak and fault run (not in CI): `moshid run` with the demo model on ALSA file PCMs, a
# private mosquitto, NOTIFY_SOCKET read by the script (WatchdogSec=10), for MINUTES (default
# 30), with random MQTT commands (valid, malformed, oversized), the broker SIGKILLed and
# restarted, SIGHUPs, and web clients once `moshid run` serves the web endpoint. Samples RSS,
# threads and fds every second and fails (exit 1) on a growth trend, a retained state lost
# after a broker restart, `offline` between a connect and `online`, a reload without READY=1,
# a watchdog gap over WatchdogSec/2, or a daemon that died. The driver is scripts/soak.py.
#   scripts/soak.sh [MINUTES]      (MOSHID_BIN: the binary; SOAK_SEED: the random seed)
# Run it at low priority on a shared machine: nice -n 15 scripts/soak.sh 30
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
minutes=${1:-30}
bin=${MOSHID_BIN:-target/release/moshid}
if [ ! -x "$bin" ]; then
    cargo build --release -p moshid
fi
for tool in mosquitto mosquitto_sub mosquitto_pub python3; do
    command -v "$tool" >/dev/null || { echo "soak: $tool missing (scripts/setup.sh installs it)"; exit 1; }
done
exec python3 scripts/soak.py "$minutes" "$bin"
