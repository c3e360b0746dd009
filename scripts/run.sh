#!/usr/bin/env bash
# Builds Sluice (release) and runs it on the quick-start config: the gateway on 127.0.0.1:8080
# with the built-in mock upstream, admin on 127.0.0.1:9090. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-redis
cargo build --release --locked
config="${1:-conf/sluice.toml}"
listen=$(sed -n 's/^listen *= *"\(.*\)".*/\1/p' "$config" | head -n1)
echo "run: the console is at http://${listen:-127.0.0.1:8080}/console/ (sign in with a key, e.g. the demo key of the README)"
exec ./target/release/sluice run -c "$config"
