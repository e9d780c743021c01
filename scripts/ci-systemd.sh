#!/usr/bin/env bash
# CI stage: the systemd unit, sysusers.d and tmpfiles.d files.
#  - `systemd-analyze verify` on the unit with nothing on stderr (systemd 252 prints warnings
#    there and still exits 0), against the binary this tree builds;
#  - `systemd-analyze security --offline=true` exposure <= MOSHID_MAX_EXPOSURE (2.0);
#  - sysusers/tmpfiles applied to a scratch root create the user, groups and directories.
set -euo pipefail
cd "$(dirname "$0")/.."
max=${MOSHID_MAX_EXPOSURE:-2.0}
bin=${MOSHID_BIN:-target/release/moshid}
if [ ! -x "$bin" ]; then
  cargo build --release --locked -p moshid
fi
bin=$(readlink -f "$bin")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# verify needs ExecStart's binary to exist: point a copy of the unit at the built one.
sed "s#^ExecStart=/usr/bin/moshid #ExecStart=$bin #" systemd/moshid.service >"$work/moshid.service"
grep -q "^ExecStart=$bin " "$work/moshid.service" || { echo "ci-systemd: ExecStart not found" >&2; exit 1; }
"$bin" --help >/dev/null
systemd-analyze verify "$work/moshid.service" >"$work/verify.out" 2>"$work/verify.err" || {
  cat "$work/verify.out" "$work/verify.err" >&2; echo "ci-systemd: verify failed" >&2; exit 1; }
if [ -s "$work/verify.err" ]; then
  cat "$work/verify.err" >&2; echo "ci-systemd: verify printed warnings" >&2; exit 1
fi
echo "ci-systemd: systemd-analyze verify: clean"

systemd-analyze security --offline=true --no-pager "$work/moshid.service" >"$work/sec.out" 2>&1 || true
score=$(sed -n 's/.*Overall exposure level for moshid\.service: \([0-9.]*\).*/\1/p' "$work/sec.out")
[ -n "$score" ] || { cat "$work/sec.out" >&2; echo "ci-systemd: no exposure score" >&2; exit 1; }
echo "ci-systemd: exposure $score (limit $max)"
awk -v s="$score" -v m="$max" 'BEGIN { exit !(s + 0 <= m + 0) }' || {
  grep '✗' "$work/sec.out" >&2 || true; echo "ci-systemd: exposure $score > $max" >&2; exit 1; }
# The unit must keep the contract's settings, whatever the score does.
for key in Type=notify WatchdogSec= Restart=on-failure StartLimitBurst= User=moshid \
  'SupplementaryGroups=audio video render' ConfigurationDirectory=moshid StateDirectory=moshid \
  CacheDirectory=moshid ProtectSystem=strict ProtectHome=yes PrivateTmp=yes NoNewPrivileges=yes \
  RestrictAddressFamilies= SystemCallFilter= 'CapabilityBoundingSet=$' DevicePolicy=closed \
  'DeviceAllow=char-alsa' 'DeviceAllow=/dev/nvmap'; do
  grep -q "^$key" systemd/moshid.service || { echo "ci-systemd: unit lacks $key" >&2; exit 1; }
done

# sysusers.d and tmpfiles.d on a scratch root.
mkdir -p "$work/root/etc"
systemd-sysusers --root="$work/root" "$PWD/systemd/moshid.sysusers" 2>"$work/sysusers.err"
grep -q '^moshid:x:[0-9]*:[0-9]*:.*:/var/lib/moshid:' "$work/root/etc/passwd"
for g in audio video render; do
  grep -q "^$g:x:[0-9]*:.*moshid" "$work/root/etc/group" || { echo "ci-systemd: moshid not in $g" >&2; exit 1; }
done
systemd-tmpfiles --root="$work/root" --create "$PWD/systemd/moshid.tmpfile"
[ "$(stat -c %a "$work/root/etc/moshid")" = 750 ]
[ "$(stat -c %a "$work/root/var/cache/moshid")" = 750 ]
echo "ci-systemd: sysusers.d and tmpfiles.d: ok"
