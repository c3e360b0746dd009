#!/usr/bin/env bash
# Checks deploy/: the Prometheus alert rules (promtool check and unit tests) and the systemd
# unit (systemd-analyze verify, offline, and its security exposure) where systemd-analyze
# exists. scripts/setup.sh installs promtool.
set -euo pipefail
cd "$(dirname "$0")/.."

promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts.test.yml)

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "check-deploy: systemd-analyze not found: deploy/sluice.service NOT verified"
  exit 0
fi
bin="$PWD/target/debug/sluice"
[ -x "$bin" ] || cargo build --locked --bin sluice
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# The unit names the installed binary; verify it against the one just built.
sed "s#/usr/local/bin/sluice#$bin#g" deploy/sluice.service > "$dir/sluice.service"
# verify exits 0 on unknown keys and bad values (it only warns): any output is a failure.
out=$(systemd-analyze verify "$dir/sluice.service" 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then
  echo "$out"
  echo "check-deploy: systemd-analyze verify found problems in deploy/sluice.service" >&2
  exit 1
fi
echo "check-deploy: deploy/sluice.service verified"
if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
  # Exposure is 0.0 (locked down) to 10.0; the unit scores 1.2. Fail if it gets above 2.0.
  systemd-analyze security --offline=yes --threshold=20 "$dir/sluice.service" | tail -1
fi
