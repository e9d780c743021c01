#!/usr/bin/env bash
# CI stage: the .deb. Packages the release binary that the tests already built (cargo deb
# --no-build), checks its contents and maintainer scripts, runs lintian (clean, or overridden
# with a reason in systemd/debian/lintian-overrides) and, in CI (a throwaway container) or
# with MOSHID_DEB_INSTALL_TEST=1, installs, upgrades with an edited config, and purges it.
# arm64: DEB_TARGET=aarch64-unknown-linux-gnu CARGO_TARGET_DIR=target-cross after cross/aarch64.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
t0=$(date +%s)

if ! cargo deb --version >/dev/null 2>&1; then
  # ~2-3 min on 2 cores; pinned so that the package layout does not move under us.
  cargo install --locked cargo-deb --version 3.8.0
fi
if ! command -v lintian >/dev/null; then
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends lintian
fi
t1=$(date +%s)

target_args=()
bin=${CARGO_TARGET_DIR:-target}/release/moshid
if [ -n "${DEB_TARGET:-}" ]; then
  target_args=(--target "$DEB_TARGET")
  bin=${CARGO_TARGET_DIR:-target}/$DEB_TARGET/release/moshid
fi
[ -x "$bin" ] || cargo build --release --locked -p moshid "${target_args[@]}"
# --strip: the release profile keeps line tables for tests' backtraces; the package needs none.
deb=$(cargo deb -p moshid --no-build --strip "${target_args[@]}" | tail -n 1)
[ -f "$deb" ] || { echo "ci-deb: cargo deb gave no package ($deb)" >&2; exit 1; }
echo "ci-deb: built $deb ($(du -h "$deb" | cut -f1))"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -c "$deb" | awk '{print $6}' | sed 's#^\./#/#' >"$work/files"
for f in /usr/bin/moshid /usr/lib/sysusers.d/moshid.conf /usr/lib/tmpfiles.d/moshid.conf \
  /etc/moshid/config.toml /usr/share/doc/moshid/copyright; do
  grep -qx "$f" "$work/files" || { cat "$work/files" >&2; echo "ci-deb: $f missing" >&2; exit 1; }
done
grep -qE '^/(usr/)?lib/systemd/system/moshid.service$' "$work/files" ||
  { echo "ci-deb: unit missing" >&2; exit 1; }
dpkg-deb -e "$deb" "$work/ctrl"
grep -qx /etc/moshid/config.toml "$work/ctrl/conffiles" || { echo "ci-deb: config.toml is not a conffile" >&2; exit 1; }
grep -q systemd-sysusers "$work/ctrl/postinst" || { echo "ci-deb: postinst does not create the user" >&2; exit 1; }
grep -q systemd-tmpfiles "$work/ctrl/postinst" || { echo "ci-deb: postinst does not apply tmpfiles" >&2; exit 1; }
# Binary and unit in the package are the ones this tree has.
dpkg-deb -x "$deb" "$work/root"
unit=$work/root/usr/lib/systemd/system/moshid.service
[ -f "$unit" ] || unit=$work/root/lib/systemd/system/moshid.service
cmp "$unit" systemd/moshid.service

# lintian: errors, warnings and info fail; overrides carry their reasons.
lintian --fail-on error,warning,info --info --display-info "$deb" | tee "$work/lintian" || {
  echo "ci-deb: lintian findings" >&2; exit 1; }
t2=$(date +%s)
echo "ci-deb: tools $((t1 - t0)) s, package + checks + lintian $((t2 - t1)) s"

if [ "${CI:-}" = true ] || [ "${MOSHID_DEB_INSTALL_TEST:-0}" = 1 ]; then
  [ -z "${DEB_TARGET:-}" ] || { echo "ci-deb: install test skipped for $DEB_TARGET"; exit 0; }
  if dpkg-query -W moshid >/dev/null 2>&1; then
    echo "ci-deb: moshid already installed here; install test skipped"; exit 0
  fi
  $sudo dpkg -i "$deb"
  # cargo-deb's postinst applies tmpfiles.d only under a running systemd (a Jetson has one, a
  # CI container has not): do what boot would.
  [ -d /run/systemd/system ] || $sudo systemd-tmpfiles --create moshid.conf
  # The justification of the no-md5sums-control-file override.
  [ -s /var/lib/dpkg/info/moshid.md5sums ] || { echo "ci-deb: dpkg recorded no md5sums" >&2; exit 1; }
  id moshid | grep -q audio && id moshid | grep -q render
  [ "$(stat -c '%a %U %G' /etc/moshid)" = "750 root moshid" ]
  [ "$(stat -c '%a %U %G' /etc/moshid/config.toml)" = "640 root moshid" ]
  /usr/bin/moshid --version
  # An edited config survives reinstalling (the upgrade path): dpkg keeps the admin's conffile.
  echo "# edited by the admin" | $sudo tee -a /etc/moshid/config.toml >/dev/null
  $sudo dpkg -i --force-confold "$deb"
  grep -q "edited by the admin" /etc/moshid/config.toml
  $sudo dpkg --purge moshid
  [ ! -e /etc/moshid/config.toml ] && [ ! -e /usr/bin/moshid ]
  echo "ci-deb: install, upgrade (conffile kept), purge: ok"
fi
