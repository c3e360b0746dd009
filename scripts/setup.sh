#!/usr/bin/env bash
# Installs what building and testing Sluice needs on a fresh Debian/Ubuntu machine:
# cmake (Pingora's zlib-ng build), redis-server (rate-limit tests), postgresql (the key-store
# tests start throw-away clusters from /usr/lib/postgresql/*/bin), the Python test client.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
if [ "${1:-}" != "--no-redis" ]; then
  command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_apt+=(postgresql)
  # The audit-disk fault tests (tests/it/faults_audit.rs) format a loop filesystem to freeze.
  command -v mkfs.ext4 >/dev/null 2>&1 || need_apt+=(e2fsprogs)
fi
if [ "${1:-}" != "--no-redis" ]; then
  command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
  # The console's browser tests (tests/python/test_console.py): Debian's Chromium + its driver.
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${need_apt[*]} (apt)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  fi
fi
if ! command -v cmake >/dev/null 2>&1; then
  echo "setup: installing cmake from PyPI"
  python3 -m pip install -q cmake
fi
command -v cmake >/dev/null || { echo "setup: cmake is required to build Pingora" >&2; exit 1; }
if [ "${1:-}" != "--no-redis" ] && ! command -v redis-server >/dev/null 2>&1; then
  echo "setup: redis-server is required by the rate-limit tests (apt-get install redis-server)" >&2
  exit 1
fi
if [ "${1:-}" != "--no-redis" ] && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  echo "setup: PostgreSQL is required by the key-store tests (apt-get install postgresql)" >&2
  exit 1
fi
if [ "${1:-}" != "--no-python" ] && [ "${1:-}" != "--no-redis" ]; then
  python3 -c "import openai, pytest, requests, anthropic, selenium, mcp, uvicorn" 2>/dev/null || {
    echo "setup: installing the Python test clients (tests/python/requirements.txt)"
    python3 -m pip install -q -r tests/python/requirements.txt
  }
fi
# Test-only tools (not with --no-redis, the build-only mode of scripts/run.sh): promtool checks
# deploy/prometheus (only the promtool binary is taken from Debian's prometheus package: no
# Prometheus service is installed), cargo-fuzz runs the fuzz smoke test (scripts/fuzz.sh).
if [ "${1:-}" != "--no-redis" ]; then
  if ! command -v promtool >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing promtool (from Debian's prometheus package)"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    apt-cache show prometheus >/dev/null 2>&1 || $SUDO apt-get update -qq
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null)
    dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool
    $SUDO install -m 0755 "$tmp/usr/bin/promtool" /usr/local/bin/promtool
    rm -rf "$tmp"
  fi
  command -v promtool >/dev/null 2>&1 || {
    echo "setup: promtool is required to check deploy/prometheus (Debian: the prometheus package)" >&2
    exit 1
  }
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "setup: installing cargo-fuzz (crates.io)"
    cargo install --locked cargo-fuzz
  fi
fi
