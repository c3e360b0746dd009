#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (cargo fuzz, libFuzzer) for FUZZ_SECONDS each (default 30):
#   bash scripts/fuzz.sh                 # every target: the bounded smoke run of scripts/test.sh
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh dlp_stream
# New inputs go to a scratch directory: the committed corpus (fuzz/corpus/TARGET) is read, not
# changed. A crash, a panic or a failed check stops the run: the input is in
# fuzz/artifacts/TARGET/ and `cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-…` replays it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SECONDS:-30}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
# cargo fuzz passes nightly flags (-Zsanitizer=address); on a stable toolchain
# RUSTC_BOOTSTRAP=1 lets rustc accept them.
rustc --version | grep -q nightly || export RUSTC_BOOTSTRAP=1
# The targets are built with the fuzz crate's dev profile (`--dev`: opt-level 1, debug assertions
# and overflow checks; fuzz/Cargo.toml), still instrumented for coverage and ASan (it guards the
# DLP scanner's SIMD loads). Measured on this 2-core machine while other builds ran, so in CPU
# seconds (user + sys) of a build from scratch, and inputs executed per second in the 30 s runs
# (config, dlp_json, dlp_stream, request, sse_framer):
#   release, 16 codegen units: 1441 CPU-s; 1570, 3562, 1142, 3417, 6334 /s
#   --dev, opt-level 1:          843 CPU-s; 1430, 3812, 1174, 4383, 5887 /s
#   --dev, opt-level 0:          369 CPU-s; 12, 8, <1, <1, 71 /s, inputs over 10 s each
# Level 1 runs as many inputs as release for 40% less build; level 0 builds fastest but barely
# replays the corpus in 30 s, which is no smoke run. `run` must be given the same flags as
# `build`, or it rebuilds.
build_flags=(--dev)

cargo fuzz build "${build_flags[@]}"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  echo "fuzz: $t for ${seconds}s"
  # -timeout: an input that takes a minute is a hang, reported like a crash.
  if ! cargo fuzz run "${build_flags[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -timeout=60 -rss_limit_mb=4096 -print_final_stats=1 \
      > "$scratch/$t.log" 2>&1; then
    tail -60 "$scratch/$t.log"
    echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$t.log" | grep -o '[0-9]*$' || echo '?')
  speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$scratch/$t.log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -o 'cov: [0-9]*' "$scratch/$t.log" | tail -1 || true)
  echo "fuzz: $t ok: $runs runs, $speed/s, $cov"
done
