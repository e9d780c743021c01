#!/usr/bin/env bash
# CI stage: the Yocto layer yocto/meta-moshid (no bitbake here).
#  - moshid-crates.inc matches Cargo.lock (yocto/update-crates.py --check);
#  - oelint-adv --release scarthgap finds nothing, with only the rule that needs the network
#    (oelint.vars.homepageping) suppressed;
#  - the recipe's SRCREV, when this clone has it, holds every file do_install installs.
set -euo pipefail
cd "$(dirname "$0")/.."
layer=yocto/meta-moshid
recipe=$layer/recipes-multimedia/moshid/moshid_0.1.0.bb
python3 yocto/update-crates.py --check

# Debian's python is externally managed (PEP 668): oelint-adv goes into a venv.
venv=${OELINT_VENV:-target-lint/venv}
if [ ! -x "$venv/bin/oelint-adv" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "oelint-adv>=9,<10"
fi
out=$("$venv/bin/oelint-adv" --quiet --release scarthgap --suppress oelint.vars.homepageping \
  "$recipe" "$layer/conf/layer.conf" 2>&1) || { echo "$out" >&2; echo "ci-yocto: oelint-adv failed" >&2; exit 1; }
[ -z "$out" ] || { echo "$out" >&2; echo "ci-yocto: oelint-adv findings" >&2; exit 1; }
echo "ci-yocto: oelint-adv $("$venv/bin/oelint-adv" --version | awk '{print $2}'): no findings"

grep -q '^LAYERSERIES_COMPAT_moshid = "scarthgap"' $layer/conf/layer.conf
rev=$(sed -n 's/^SRCREV = "\([0-9a-f]\{40\}\)"$/\1/p' "$recipe")
[ -n "$rev" ] || { echo "ci-yocto: no SRCREV in $recipe" >&2; exit 1; }
if git cat-file -e "$rev^{commit}" 2>/dev/null; then
  for f in $(grep -o '\${S}/[^ ]*' "$recipe" | sed 's#\${S}/##' | sort -u); do
    git cat-file -e "$rev:$f" 2>/dev/null || { echo "ci-yocto: SRCREV $rev lacks $f" >&2; exit 1; }
  done
  echo "ci-yocto: SRCREV $rev has the installed files"
else
  echo "ci-yocto: SRCREV $rev not in this clone (shallow?); its contents not checked"
fi
