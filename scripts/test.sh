#!/usr/bin/env bash
# Runs every test: installs prerequisites, then the Rust unit and integration tests (real
# gateways, a real mock upstream, real redis-server processes), the OpenAI Python SDK suite and
# the OpenAI Node SDK suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --locked --bins --examples
RUST_TEST_THREADS=4 cargo test --locked --workspace --all-targets
SLUICE_BIN="$PWD/target/debug/sluice" python3 -m pytest -q tests/python
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
SLUICE_BIN="$PWD/target/debug/sluice" node --test tests/node/
