#!/usr/bin/env bash
# Runs every test: installs prerequisites, then the Rust unit and integration tests (real
# gateways, a real mock upstream, real redis-server, PostgreSQL and SQLite stores), the OpenAI
# and Anthropic Python SDK suites, the OpenAI Node SDK suite, the Claude Code and Codex CLI
# suite, the checks of deploy/ and a short
# run of each fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The OpenID provider the identity tests (Rust and Python) run: oidc-provider, tests/oidc/.
(cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error)
# One debug build serves every suite: `cargo test` links the integration tests against the same
# `sluice` binary and library that `cargo build` made, and the Python, Node and CLI suites run
# that binary (SLUICE_BIN). The integration tests are one binary per crate (tests/it,
# filters/tests/it): as 50 binaries, each linking all of Sluice, Pingora and sqlx, they took
# 359 s of build time here (summed over units, 2 busy cores); the two take 36 s.
cargo build --locked --bins --examples
RUST_TEST_THREADS=4 cargo test --locked --workspace --all-targets
SLUICE_BIN="$PWD/target/debug/sluice" python3 -m pytest -q tests/python
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
SLUICE_BIN="$PWD/target/debug/sluice" node --test tests/node/
# The quick start through the real Claude Code and Codex CLIs (offline, built-in mock).
(cd tests/cli && npm ci --no-audit --no-fund --loglevel=error)
SLUICE_BIN="$PWD/target/debug/sluice" node --test tests/cli/
# deploy/: alert rules (promtool) and the systemd unit (systemd-analyze, where present).
bash scripts/check-deploy.sh
# A bounded run of every fuzz target (FUZZ_SECONDS each, default 30) on the committed corpus.
bash scripts/fuzz.sh
