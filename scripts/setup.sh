#!/usr/bin/env bash
# Installs the system packages that building and testing moshid need (Debian/Ubuntu).
# Idempotent: does nothing when everything is present.
set -euo pipefail
pkgs=(pkg-config libasound2-dev alsa-utils mosquitto mosquitto-clients systemd espeak-ng sox openssl git
      python3 python3-venv libopus-dev curl chromium)
# The browser test needs node + npm; a machine with another Node.js (e.g. NodeSource's, which
# bundles npm) keeps it.
command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# mosquitto's Debian package may start a system broker; tests start their own on free ports.
