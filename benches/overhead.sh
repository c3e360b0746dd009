#!/usr/bin/env bash
# Sluice's overhead benchmark: what every filter costs, measured side by side.
#
#   benches/overhead.sh            # full run: ~8 minutes after the build
#   QUICK=1 benches/overhead.sh    # ~2 minutes: fewer, shorter rounds
#
# On loopback it starts the mock upstream (`sluice mock`), the floor (benches/floor: Pingora
# doing nothing but forwarding, one `ProxyHttp` with only `upstream_peer`, same Pingora and
# build profile as Sluice — every row is also given as a ratio to it), nginx as a plain reverse
# proxy (skipped when nginx is not installed), Sluice with an empty
# chain, Sluice with the full chain (auth, rate_limit, dlp with the secrets and pii packs, audit
# to a file with fsync = "interval") and, for the per-filter breakdown, Sluice with the chain's
# prefixes (auth; auth + rate_limit; auth + rate_limit + dlp). Then it measures each the same way:
#
#   load    wrk, 64 keep-alive connections, a ~1 KiB chat body, DURATION seconds: requests/s,
#           p50, p99, and the proxy's CPU time per request (/proc/PID/task/*/schedstat)
#   c1      wrk, 1 connection, LAT_DURATION seconds: p50 and p99; "added" = target minus
#           direct-to-mock in the same round. For Sluice, the mean of its own
#           sluice_overhead_seconds histogram over exactly these requests, from /metrics.
#   stream  streamed completions, STREAMS times each, one after another on one connection:
#           time to first token with chunks spaced as a model sends them (TTFT_CHUNKS=2 words,
#           TTFT_DELAY_MS=2 apart), and time per chunk of a 200-chunk completion that the mock
#           sends back to back (where the proxy, not the model, sets the pace), with the proxy's
#           CPU time per chunk; "added" = target minus direct, same round
#   memory  RSS after start, idle after the load, and with 1,000 concurrent open streams
#   syscalls  for the floor, the empty and the full chain: the kernel's syscall tracepoints
#           counted by `perf stat` (or, without perf, `strace -c -f`) on every thread over
#           SYS_REQUESTS requests on SYS_CONNS connections (after 200 unmeasured): system calls
#           per request, by name (what instructions do not show: writes, wake-ups)
#
# Each of RUNS rounds measures every target in turn, in a rotating order; the report gives
# medians over the rounds, and every "added" figure and ratio is taken within a round (the two
# sides minutes apart at most) before its median is taken, so that a noisy neighbour moves
# both sides alike.
#
# Pinning (2 CPUs): the proxies (nginx's workers, Sluice's threads) run on CPU 1, wrk, the
# mock and the drivers on CPU 0, for the load runs: there the proxy's core is the bottleneck
# and nginx gets as many workers as Sluice gets threads. For the latency and streaming runs
# (LAT_LAYOUT=same, the default), the proxy is moved to CPU 0 with everything else: a request
# then never waits for a wake-up on the other CPU (on a VM that costs tens of microseconds per
# hop and varies a lot), so "added latency" is the proxy's own work on the request path.
# LAT_LAYOUT=split keeps the proxy on its own CPU for those runs too.
#
# Settings (environment):
#   QUICK=1            RUNS=3 DURATION=2 LAT_DURATION=2 STREAMS=40
#   RUNS=5             rounds; the report shows medians
#   DURATION=6         seconds of each 64-connection wrk run
#   LAT_DURATION=5     seconds of each 1-connection wrk run
#   CONNS=64           connections of the load runs
#   STREAMS=100        streamed completions per target per round
#   CHUNKS=200         words, hence content chunks, of the back-to-back streamed completion
#   TTFT_CHUNKS=2, TTFT_DELAY_MS=2   the streamed completion of the time-to-first-token run
#   OPEN_STREAMS=1000  concurrent streams of the memory run
#   BODY_BYTES=1024    size of the chat body
#   BREAKDOWN=1        0 leaves out the per-filter rows (auth; + rate_limit; + dlp)
#   LAT_LAYOUT=same    or split (see above)
#   PROXY_CPUS, LOAD_CPUS   taskset CPU lists; PIN=0: no pinning at all
#   NGINX=auto         0 skips the nginx reference row
#   SLUICE_BIN=path    measure this binary instead of building (the report says so)
#   TELEMETRY=1        every Sluice config also exports traces ([telemetry], sample_ratio 1) to
#                      an OTLP/HTTP sink of the driver's on loopback: the cost of tracing
#   RESULTS=path       also write the report (markdown) to this file
#   KEEP=1             keep the temporary directory (configs, logs, raw results)
#
#   IDENTITY=1         every Sluice config also has an [identity] provider (a stand-in the driver
#                      serves: discovery, a JWKS with one RS256 key) and the chains with auth
#                      are called with a provider token (JWT) instead of a Sluice key: the cost
#                      of verifying a token (SPEC §13)
#   SPEND=1            every Sluice config also prices the model and gives the org, the user
#                      and the key a budget (SPEC §15): the cost of budgets at three levels
#   MODE=syscalls      only the syscalls phase (~1 minute)
#   SYS_REQUESTS=2000, SYS_CONNS=4   the syscalls phase; SYSCALLS=0 leaves it out
#   SYS_TOOL=auto      perf (tracepoints; requests at full speed) when `perf stat` can read them,
#                      else strace (slows requests ~10x: time-batched work looks costlier)
#   FLOOR=1            0 leaves out the Pingora floor row
#   MODE=callgrind     instead of timing anything, count the instructions Sluice executes per
#                      request (user space, every thread) under valgrind's callgrind, for the
#                      empty chain, each prefix of the chain and the full chain: a figure that a
#                      noisy machine does not move, to compare builds and find what dominates.
#                      CG_REQUESTS=2000 requests each (after 200 unmeasured); ~4 minutes.
#
# It installs nothing silently: when wrk or nginx is missing and it runs as root with apt-get,
# it says so and runs `apt-get install -y wrk nginx-light`; otherwise it stops (no wrk) or
# skips the nginx row. It binds only 127.0.0.1, on free ports, writes only to a temporary
# directory, bounds every wait, and stops every process it started however it exits.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE="$ROOT/benches/overhead"
DRIVER="$HERE/driver.py"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
  RUNS=${RUNS:-3} DURATION=${DURATION:-2} LAT_DURATION=${LAT_DURATION:-2} STREAMS=${STREAMS:-40}
  WARMUP=1
else
  RUNS=${RUNS:-5} DURATION=${DURATION:-6} LAT_DURATION=${LAT_DURATION:-5} STREAMS=${STREAMS:-100}
  WARMUP=2
fi
CONNS=${CONNS:-64}
CHUNKS=${CHUNKS:-200}
TTFT_CHUNKS=${TTFT_CHUNKS:-2}
TTFT_DELAY_MS=${TTFT_DELAY_MS:-2}
OPEN_STREAMS=${OPEN_STREAMS:-1000}
BODY_BYTES=${BODY_BYTES:-1024}
BREAKDOWN=${BREAKDOWN:-1}
LAT_LAYOUT=${LAT_LAYOUT:-same}
NGINX=${NGINX:-auto}
PIN=${PIN:-1}
KEEP=${KEEP:-0}
RESULTS=${RESULTS:-}
MODE=${MODE:-time}
CG_REQUESTS=${CG_REQUESTS:-2000}
SYS_REQUESTS=${SYS_REQUESTS:-2000}
SYS_CONNS=${SYS_CONNS:-4}
SYSCALLS=${SYSCALLS:-1}
SYS_TOOL=${SYS_TOOL:-auto}
FLOOR=${FLOOR:-1}
TELEMETRY=${TELEMETRY:-0}
SPEND=${SPEND:-0}
IDENTITY=${IDENTITY:-0}
PRICE_LINE="" BUDGET_LINE=""
if [[ $SPEND == 1 ]]; then
  PRICE_LINE='price = { input_per_mtok = 2.50, output_per_mtok = 10.00 }'
  BUDGET_LINE='budget = { usd = 1000000000, period = "monthly" }'
fi
[[ $MODE == callgrind || $MODE == syscalls ]] && NGINX=0

log() { printf '[overhead] %s\n' "$*" >&2; }
die() {
  printf '[overhead] error: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------------------------------------
# Tools

need_install=()
command -v wrk >/dev/null || need_install+=(wrk)
if [[ $NGINX != 0 ]] && ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
  need_install+=(nginx-light)
fi
if ((${#need_install[@]})) && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  log "installing ${need_install[*]} with apt-get (Debian packages)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_install[@]}" >&2 ||
    log "apt-get install failed"
fi
command -v wrk >/dev/null || die "wrk is needed (Debian: apt-get install wrk)"
command -v python3 >/dev/null || die "python3 is needed"
if [[ $MODE == callgrind ]] && ! command -v callgrind_annotate >/dev/null; then
  die "MODE=callgrind needs valgrind (Debian: apt-get install valgrind)"
fi
command -v taskset >/dev/null || PIN=0
if [[ $SYSCALLS == 1 || $MODE == syscalls ]]; then
  if [[ $SYS_TOOL == auto ]]; then
    SYS_TOOL=strace
    perf stat -e 'syscalls:sys_enter_write' -- true >/dev/null 2>&1 && SYS_TOOL=perf
  fi
  if ! command -v "$SYS_TOOL" >/dev/null; then
    [[ $MODE == syscalls ]] && die "MODE=syscalls needs perf or strace (Debian: apt-get install strace)"
    log "neither perf nor strace found: the syscalls phase is skipped (Debian: apt-get install strace)"
    SYSCALLS=0
  fi
fi
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
if [[ $NGINX != 0 && ! -x $NGINX_BIN ]]; then
  log "nginx not found: the nginx reference row is skipped (Debian: apt-get install nginx-light)"
  NGINX=0
fi

# ---------------------------------------------------------------------------------------------
# Sluice

if [[ -n ${SLUICE_BIN:-} ]]; then
  SLUICE=$SLUICE_BIN
  BUILT="prebuilt binary $SLUICE (SLUICE_BIN)"
  log "using $SLUICE (SLUICE_BIN): no build"
  FLOOR_BIN=${FLOOR_BIN:-$(dirname "$SLUICE")/examples/pingora_floor}
  if [[ $FLOOR != 0 && ! -x $FLOOR_BIN ]]; then
    log "building the floor: cargo build --release --locked --example pingora_floor"
    (cd "$ROOT" && cargo build --release --locked --example pingora_floor >&2)
    FLOOR_BIN="$ROOT/target/release/examples/pingora_floor"
  fi
else
  log "building: cargo build --release --locked --bin sluice --example pingora_floor"
  (cd "$ROOT" && cargo build --release --locked --bin sluice --example pingora_floor >&2)
  SLUICE="$ROOT/target/release/sluice"
  FLOOR_BIN="$ROOT/target/release/examples/pingora_floor"
  BUILT="\`cargo build --release --locked\` at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  git -C "$ROOT" diff --quiet HEAD -- src filters Cargo.toml Cargo.lock 2>/dev/null ||
    BUILT="$BUILT with uncommitted changes"
fi
[[ -x $SLUICE ]] || die "no sluice binary at $SLUICE"

# ---------------------------------------------------------------------------------------------
# CPUs

NCPU=$(nproc)
((NCPU < 2)) && PIN=0
if ((NCPU == 2)); then
  PROXY_CPUS=${PROXY_CPUS:-1} LOAD_CPUS=${LOAD_CPUS:-0}
elif ((NCPU > 2)); then
  # Half the CPUs for the proxy (the last ones), the rest for the load.
  PROXY_CPUS=${PROXY_CPUS:-$((NCPU / 2))-$((NCPU - 1))} LOAD_CPUS=${LOAD_CPUS:-0-$((NCPU / 2 - 1))}
fi
cpu_count() { # number of CPUs in a taskset list such as "1" or "0-2,4"
  python3 -c '
import sys
print(sum(int(b) - int(a) + 1 if b else 1
          for a, _, b in (p.partition("-") for p in sys.argv[1].split(","))))' "$1"
}
if [[ $PIN == 1 ]]; then
  PROXY_THREADS=${PROXY_THREADS:-$(cpu_count "$PROXY_CPUS")}
  on_proxy() { exec taskset -c "$PROXY_CPUS" "$@"; }
  on_load() { exec taskset -c "$LOAD_CPUS" "$@"; }
  PINNING="load runs: proxy on CPU $PROXY_CPUS, wrk and mock on CPU $LOAD_CPUS"
  if [[ $LAT_LAYOUT == same ]]; then
    PINNING="$PINNING; latency and streaming runs: everything on CPU $LOAD_CPUS"
  else
    PINNING="$PINNING; latency and streaming runs: the same"
  fi
else
  PROXY_THREADS=${PROXY_THREADS:-$NCPU}
  on_proxy() { exec "$@"; }
  on_load() { exec "$@"; }
  PINNING="no pinning"
  LAT_LAYOUT=split
fi
# Moves a running proxy (every thread, and its children: nginx's workers) to a CPU list.
move_proxy() { # pid cpus
  [[ $PIN == 1 && -n $1 ]] || return 0
  local p c
  for p in $1 $(cat "/proc/$1/task/$1/children" 2>/dev/null); do
    taskset -a -p -c "$2" "$p" >/dev/null 2>&1 || true
  done
}

# ---------------------------------------------------------------------------------------------
# Processes: every one started is recorded and stopped on exit.

T=$(mktemp -d "${TMPDIR:-/tmp}/sluice-overhead.XXXXXX")
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [[ $KEEP == 1 ]]; then log "kept $T"; else rm -rf "$T"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # port name pid [tenths of a second]: bounded wait until it accepts
  for _ in $(seq "${4:-100}"); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$3" 2>/dev/null || {
      tail -20 "$T/$2.log" >&2
      die "$2 exited at startup"
    }
    sleep 0.1
  done
  die "$2 does not accept connections on 127.0.0.1:$1"
}

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < 4 * OPEN_STREAMS + 256)); then
  OPEN_STREAMS=$((($(ulimit -n) - 256) / 4))
  log "the open files limit is $(ulimit -n): OPEN_STREAMS lowered to $OPEN_STREAMS"
fi
log "temporary directory $T"

# Every target: its port, proxy pid (none for direct), admin port (Sluice), key, label.
declare -A PORT PID ADMIN KEY LABEL
TARGETS=()      # measured in the load and latency runs
STREAMED=()     # also in the streaming and memory runs

MOCK_PORT=$(free_port)
(on_load "$SLUICE" mock --listen "127.0.0.1:$MOCK_PORT") >"$T/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_port "$MOCK_PORT" mock "$MOCK_PID"
if [[ $TELEMETRY == 1 ]]; then
  OTLP_PORT=$(free_port)
  python3 "$DRIVER" otlp-sink --port "$OTLP_PORT" >"$T/otlp-sink.log" 2>&1 &
  PIDS+=("$!")
  wait_port "$OTLP_PORT" otlp-sink "$!"
  log "traces on: every Sluice exports to the OTLP sink on 127.0.0.1:$OTLP_PORT"
fi
IDENTITY_CONF=""
if [[ $IDENTITY == 1 ]]; then
  OIDC_PORT=$(free_port)
  python3 "$DRIVER" oidc --port "$OIDC_PORT" --token-out "$T/jwt.txt" >"$T/oidc.log" 2>&1 &
  PIDS+=("$!")
  wait_port "$OIDC_PORT" oidc "$!"
  IDENTITY_CONF=$(printf '\n[identity]\nissuer = "http://127.0.0.1:%s"\nclient_id = "sluice"\naudiences = ["sluice"]\n[[identity.roles]]\ngroup = "*"\norg = "bench"\nrole = "bench"\n' "$OIDC_PORT")
  log "identity on: the chains with auth are called with an RS256 provider token"
fi
TARGETS+=(direct) STREAMED+=(direct)
PORT[direct]=$MOCK_PORT PID[direct]="" KEY[direct]="" LABEL[direct]="direct to the mock (no proxy)"

# --- the floor: Pingora forwarding and nothing else (benches/floor), as many threads as Sluice.
if [[ $FLOOR != 0 ]]; then
  [[ -x $FLOOR_BIN ]] || die "no floor binary at $FLOOR_BIN"
  FLOOR_PORT=$(free_port)
  (on_proxy "$FLOOR_BIN" "127.0.0.1:$FLOOR_PORT" "127.0.0.1:$MOCK_PORT" "$PROXY_THREADS") \
    >"$T/floor.log" 2>&1 &
  PIDS+=("$!")
  wait_port "$FLOOR_PORT" floor "$!"
  TARGETS+=(floor) STREAMED+=(floor)
  PORT[floor]=$FLOOR_PORT PID[floor]=${PIDS[-1]} KEY[floor]=""
  LABEL[floor]="the floor: Pingora forwarding only (benches/floor)"
fi

# --- nginx: a plain reverse proxy, keep-alive both ways, no buffering of responses.
if [[ $NGINX != 0 ]]; then
  NGINX_PORT=$(free_port)
  mkdir -p "$T/nginx"
  NGINX_USER=""
  [[ $(id -u) == 0 ]] && NGINX_USER="user root;"
  cat >"$T/nginx/nginx.conf" <<EOF
$NGINX_USER
worker_processes $PROXY_THREADS;
pid $T/nginx/nginx.pid;
error_log $T/nginx/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $T/nginx/body;
    proxy_temp_path $T/nginx/proxy;
    keepalive_requests 10000000;
    upstream mock {
        server 127.0.0.1:$MOCK_PORT;
        keepalive 256;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
  (on_proxy "$NGINX_BIN" -p "$T/nginx" -e "$T/nginx/error.log" -c "$T/nginx/nginx.conf" \
    -g 'daemon off;') >"$T/nginx.log" 2>&1 &
  PIDS+=("$!")
  wait_port "$NGINX_PORT" nginx "$!"
  TARGETS+=(nginx) STREAMED+=(nginx)
  PORT[nginx]=$NGINX_PORT PID[nginx]=${PIDS[-1]} KEY[nginx]=""
  LABEL[nginx]="nginx $("$NGINX_BIN" -v 2>&1 | sed 's|.*nginx/||'), plain reverse proxy"
fi

# --- Sluice configs.
KEY_OUT=$("$SLUICE" keys new --user bench --id bench-key)
API_KEY=$(sed -n 's/^#[[:space:]]*\(sk-sluice-[A-Za-z0-9]*\).*/\1/p' <<<"$KEY_OUT" | head -1)
KEY_SHA=$(sed -n 's/^sha256 = "\([0-9a-f]*\)"/\1/p' <<<"$KEY_OUT" | head -1)
[[ -n $API_KEY && -n $KEY_SHA ]] || die "cannot read the key printed by 'sluice keys new'"
RPM=1000000000     # requests per minute: never reached, but every bucket is still checked
TPM=1000000000000  # tokens per minute

# The model is not renamed on its way up (no `upstream_model`): a rename makes Sluice re-serialize
# every request body (~10k instructions per request with this body, ~5% of the empty chain's
# work, measured with MODE=callgrind), and nginx is asked to do nothing comparable.
write_sluice_conf() { # file listen-port admin-port filter...
  local file=$1 listen=$2 admin=$3 f
  shift 3
  {
    (($# == 0)) && echo "filters = []"
    cat <<EOF
[server]
listen = "127.0.0.1:$listen"
admin_listen = "127.0.0.1:$admin"
threads = $PROXY_THREADS
shutdown_grace_seconds = 1

# The key store's change counter is read in the background; at its slowest pace it costs the
# per-request figures next to nothing (it runs on time, not per request).
[store]
url = "sqlite://$T/store-$listen.db"
poll_interval_ms = 1000

[[upstreams]]
name = "mock"
url = "http://127.0.0.1:$MOCK_PORT"

[[models]]
name = "mock-echo"
upstream = "mock"
$PRICE_LINE

[[orgs]]
name = "bench"
rate_limit = { requests_per_minute = $RPM, tokens_per_minute = $TPM }
$BUDGET_LINE

[[roles]]
name = "bench"
permissions = ["chat", "models:list"]
models = ["mock-*"]

[[users]]
name = "bench"
org = "bench"
role = "bench"
rate_limit = { requests_per_minute = $RPM, tokens_per_minute = $TPM }
$BUDGET_LINE

[[keys]]
id = "bench-key"
user = "bench"
sha256 = "$KEY_SHA"
rate_limit = { requests_per_minute = $RPM, tokens_per_minute = $TPM }
$BUDGET_LINE
EOF
    for f in "$@"; do
      case $f in
        rate_limit) printf '\n[rate_limit]\nbackend = "local"\n' ;;
        dlp) printf '\n[dlp]\npacks = ["secrets", "pii"]\nrequest_action = "block"\nresponse_action = "redact"\n' ;;
        audit) printf '\n[audit]\npath = "%s"\nfsync = "interval"\n' "$T/audit-$(basename "$file" .toml).jsonl" ;;
      esac
    done
    for f in "$@"; do printf '\n[[filters]]\ntype = "%s"\n' "$f"; done
    [[ -n $IDENTITY_CONF ]] && printf '%s\n' "$IDENTITY_CONF"
    if [[ $TELEMETRY == 1 ]]; then
      printf '\n[telemetry]\notlp_endpoint = "http://127.0.0.1:%s"\nsample_ratio = 1.0\n' "$OTLP_PORT"
    fi
  } >"$file"
}

# The full chain, or, on a build that lacks some filter types, the filters it has: each one is
# tried alone with `sluice check`, and the row says which ones were on.
WANT=(auth rate_limit dlp audit)
FULL=()
MISSING=()
write_sluice_conf "$T/probe.toml" 1 2 "${WANT[@]}"
if "$SLUICE" check -c "$T/probe.toml" >"$T/check.log" 2>&1; then
  FULL=("${WANT[@]}")
else
  for f in "${WANT[@]}"; do
    write_sluice_conf "$T/probe.toml" 1 2 "$f"
    if "$SLUICE" check -c "$T/probe.toml" >>"$T/check.log" 2>&1; then FULL+=("$f"); else MISSING+=("$f"); fi
  done
  log "this build does not accept the filter type(s) ${MISSING[*]}; the full-chain row runs: ${FULL[*]:-no filter}"
  grep -v '^$' "$T/check.log" | sed 's/^/[overhead]   /' >&2 || true
fi
rm -f "$T/probe.toml"
plus() { local IFS=+; echo "$*" | sed 's/+/ + /g'; }

start_sluice() { # name label streamed(0|1) filter...
  local name=$1 label=$2 streamed=$3
  shift 3
  local port admin pid
  port=$(free_port)
  admin=$(free_port)
  write_sluice_conf "$T/$name.toml" "$port" "$admin" "$@"
  "$SLUICE" check -c "$T/$name.toml" >/dev/null || die "Sluice rejects the config $T/$name.toml"
  (RUST_LOG=${SLUICE_LOG:-warn} on_proxy "$SLUICE" run -c "$T/$name.toml") >"$T/$name.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_port "$port" "$name" "$pid"
  TARGETS+=("$name")
  [[ $streamed == 1 ]] && STREAMED+=("$name")
  PORT[$name]=$port PID[$name]=$pid ADMIN[$name]=$admin LABEL[$name]=$label KEY[$name]=""
  (($#)) && [[ " $* " == *" auth "* ]] && KEY[$name]=$API_KEY
  [[ -n ${KEY[$name]} && $IDENTITY == 1 ]] && KEY[$name]=$(cat "$T/jwt.txt")
  return 0
}
start_sluice empty "Sluice, empty chain" 1
if [[ $BREAKDOWN == 1 ]] && ((${#FULL[@]} > 1)); then
  for n in $(seq 1 $((${#FULL[@]} - 1))); do
    start_sluice "chain$n" "Sluice, $(plus "${FULL[@]:0:n}")" 0 "${FULL[@]:0:n}"
  done
fi
if ((${#MISSING[@]})); then
  FULL_LABEL="Sluice, full chain as available: $(plus "${FULL[@]}") (NOT ON: ${MISSING[*]})"
else
  FULL_LABEL="Sluice, full chain: $(plus "${FULL[@]}")"
fi
start_sluice full "$FULL_LABEL" 1 "${FULL[@]}"

python3 "$DRIVER" body --bytes "$BODY_BYTES" --out "$T/body.json"
RES="$T/results.jsonl"
: >"$RES"
{
  printf '{"labels": {'
  sep=""
  for t in "${TARGETS[@]}"; do
    printf '%s"%s": "%s"' "$sep" "$t" "${LABEL[$t]}"
    sep=", "
  done
  printf '}}\n'
} >"$T/targets.json"

# Sanity: every target answers; the full chain really authenticates and scans.
status_of() { # port key body-file
  python3 - "$@" <<'EOF'
import sys, urllib.request, urllib.error
port, key, body = sys.argv[1], sys.argv[2], open(sys.argv[3], "rb").read()
h = {"Content-Type": "application/json"}
if key:
    h["Authorization"] = "Bearer " + key
r = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body, headers=h)
try:
    print(urllib.request.urlopen(r, timeout=10).status)
except urllib.error.HTTPError as e:
    print(e.code)
EOF
}
for t in "${TARGETS[@]}"; do
  s=$(status_of "${PORT[$t]}" "${KEY[$t]}" "$T/body.json")
  [[ $s == 200 ]] || die "$t answered $s to the benchmark request"
done
if [[ " ${FULL[*]} " == *" auth "* ]]; then
  s=$(status_of "${PORT[full]}" "" "$T/body.json")
  [[ $s == 401 ]] || die "the full chain answered $s, not 401, to a request without a key: is auth on?"
fi
if [[ " ${FULL[*]} " == *" dlp "* ]]; then
  printf '{"model":"mock-echo","messages":[{"role":"user","content":"my key is AKIAIOSFODNN7EXAMPLE ok"}]}' >"$T/secret.json"
  s=$(status_of "${PORT[full]}" "$API_KEY" "$T/secret.json")
  [[ $s == 400 ]] || die "the full chain answered $s, not 400, to a request holding an AWS key: is dlp on?"
fi
log "every target answers; the full chain refuses a request without a key and one with an AWS key"

# ---------------------------------------------------------------------------------------------
# Syscalls per request over a fixed number of requests, every thread of a running proxy. With
# SYS_TOOL=perf (the default where `perf stat` can read the syscall tracepoints): the kernel counts
# them (`perf stat -e 'syscalls:sys_enter_*'`), so the requests run at full speed and the audit
# writer batches as it does in production. With SYS_TOOL=strace (the fallback): strace slows each
# call ~10x, so a time-batched writer gets smaller batches and more calls per request than it
# would; only the counts mean anything, not the time.

sys_count() { # target
  local t=$1 pid=${PID[$1]} args=() tid spid
  python3 "$DRIVER" requests --port "${PORT[$t]}" --key "${KEY[$t]}" --body "$T/body.json" \
    --n 200 --conns "$SYS_CONNS" || die "requests failed before counting syscalls ($t)"
  if [[ $SYS_TOOL == perf ]]; then
    perf stat -x, -e 'syscalls:sys_enter_*' -p "$pid" -o "$T/perf-$t.txt" 2>"$T/perf-$t.log" &
  else
    for tid in /proc/"$pid"/task/*; do args+=(-p "${tid##*/}"); done
    strace -c -f -o "$T/strace-$t.txt" "${args[@]}" 2>"$T/strace-$t.log" &
  fi
  spid=$!
  sleep 1 # attached to every thread
  timeout 600 python3 "$DRIVER" requests --port "${PORT[$t]}" --key "${KEY[$t]}" \
    --body "$T/body.json" --n "$SYS_REQUESTS" --conns "$SYS_CONNS" ||
    die "requests failed while counting syscalls ($t)"
  sleep 0.2 # the audit writer's last batch
  kill -INT "$spid"
  wait "$spid" 2>/dev/null || true
  python3 "$HERE/syscalls.py" parse --tool "$SYS_TOOL" --target "$t" --requests "$SYS_REQUESTS" \
    "$T/$SYS_TOOL-$t.txt"
}
syscalls_phase() { # results-file
  local t
  for t in floor empty full; do
    [[ -n ${PID[$t]:-} ]] || continue
    log "syscalls: ${LABEL[$t]}"
    sys_count "$t" >>"$1"
  done
}
if [[ $MODE == syscalls ]]; then
  : >"$T/sys.jsonl"
  syscalls_phase "$T/sys.jsonl"
  python3 "$HERE/report.py" "$T/sys.jsonl" --targets "$T/targets.json" --syscalls-only \
    --date "$(date -u +'%Y-%m-%d %H:%M UTC')" --command "MODE=syscalls benches/overhead.sh" \
    --settings "SYS_REQUESTS=$SYS_REQUESTS on SYS_CONNS=$SYS_CONNS connections, body $(wc -c <"$T/body.json") bytes" \
    --build "$BUILT" ${RESULTS:+--out "$RESULTS"}
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# MODE=callgrind: instructions per request instead of time.

if [[ $MODE == callgrind ]]; then
  cg_run() { # name filter...   (name "floor": the floor proxy instead of Sluice)
    local name=$1 port admin pid dump total
    shift
    port=$(free_port)
    admin=$(free_port)
    if [[ $name == floor ]]; then
      (exec valgrind --tool=callgrind --callgrind-out-file="$T/cg-$name.%p" \
        "$FLOOR_BIN" "127.0.0.1:$port" "127.0.0.1:$MOCK_PORT" 1) >"$T/cg-$name.log" 2>&1 &
    else
      write_sluice_conf "$T/cg-$name.toml" "$port" "$admin" "$@"
      (RUST_LOG=warn exec valgrind --tool=callgrind --callgrind-out-file="$T/cg-$name.%p" \
        "$SLUICE" run -c "$T/cg-$name.toml") >"$T/cg-$name.log" 2>&1 &
    fi
    pid=$!
    PIDS+=("$pid")
    wait_port "$port" "cg-$name" "$pid" 1200
    local key=""
    (($#)) && [[ " $* " == *" auth "* ]] && key=$API_KEY
    [[ -n $key && $IDENTITY == 1 ]] && key=$(cat "$T/jwt.txt")
    timeout 600 python3 "$DRIVER" requests --port "$port" --key "$key" --body "$T/body.json" --n 200 ||
      die "requests failed under callgrind ($name)"
    callgrind_control -z "$pid" >/dev/null
    timeout 1200 python3 "$DRIVER" requests --port "$port" --key "$key" --body "$T/body.json" --n "$CG_REQUESTS" ||
      die "requests failed under callgrind ($name)"
    sleep 1 # the audit writer's last batch
    callgrind_control -d "$pid" >/dev/null
    for _ in $(seq 100); do
      [[ -s "$T/cg-$name.$pid.1" ]] && break
      sleep 0.1
    done
    kill -TERM "$pid" 2>/dev/null || true
    dump="$T/cg-$name.$pid.1"
    total=$(sed -n 's/^\(summary\|totals\): *//p' "$dump" | head -1)
    callgrind_annotate --threshold=100 --inclusive=yes "$dump" >"$T/cg-$name.inclusive.txt" 2>/dev/null || true
    callgrind_annotate --threshold=100 "$dump" >"$T/cg-$name.self.txt" 2>/dev/null || true
    python3 "$HERE/cgsum.py" --name "$name" --label "${LABEL[$name]}" --total "$total" \
      --requests "$CG_REQUESTS" --inclusive "$T/cg-$name.inclusive.txt" --self "$T/cg-$name.self.txt" >>"$T/cg.jsonl"
  }
  : >"$T/cg.jsonl"
  if [[ $FLOOR != 0 ]]; then
    log "callgrind: ${LABEL[floor]}"
    cg_run floor
  fi
  cg_run empty
  if [[ $BREAKDOWN == 1 ]] && ((${#FULL[@]} > 1)); then
    for n in $(seq 1 $((${#FULL[@]} - 1))); do
      log "callgrind: ${LABEL[chain$n]}"
      cg_run "chain$n" "${FULL[@]:0:n}"
    done
  fi
  log "callgrind: ${LABEL[full]}"
  cg_run full "${FULL[@]}"
  python3 "$HERE/cgsum.py" --report "$T/cg.jsonl" \
    --header "Measured $(date -u +'%Y-%m-%d %H:%M UTC') with \`MODE=callgrind benches/overhead.sh\` ($CG_REQUESTS requests after 200 unmeasured, one connection, body $(wc -c <"$T/body.json") bytes). Build: $BUILT. valgrind $(valgrind --version | sed 's/valgrind-//')." \
    ${RESULTS:+--out "$RESULTS"}
  exit 0
fi

rss_of() { python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import driver; print(driver.rss_kib(int(sys.argv[2])))' "$HERE" "$1"; }
cpu_of() { if [[ -n $1 ]]; then python3 "$DRIVER" cpu --pid "$1"; else echo 0; fi; }
for t in "${STREAMED[@]}"; do
  [[ -n ${PID[$t]} ]] && echo "{\"target\":\"$t\",\"kind\":\"rss_start\",\"kib\":$(rss_of "${PID[$t]}")}" >>"$RES"
done

wrk_run() { # target connections seconds -> wrk's RESULT json
  local out
  out=$(BODY_FILE="$T/body.json" API_KEY=${KEY[$1]} on_load timeout $(($3 + 30)) \
    wrk -t1 -c"$2" -d"${3}s" --timeout 10s -s "$HERE/post.lua" \
    "http://127.0.0.1:${PORT[$1]}/v1/chat/completions") || die "wrk failed against $1"
  out=$(sed -n 's/^RESULT //p' <<<"$out")
  [[ -n $out ]] || die "wrk printed no result against $1"
  echo "$out"
}
metric_json() { if [[ -n ${ADMIN[$1]:-} ]]; then python3 "$DRIVER" metrics --url "http://127.0.0.1:${ADMIN[$1]}/metrics"; else echo '{}'; fi; }
lat_phase() { [[ $LAT_LAYOUT == same ]] && move_proxy "${PID[$1]}" "$LOAD_CPUS"; return 0; }
load_phase() { [[ $LAT_LAYOUT == same ]] && move_proxy "${PID[$1]}" "$PROXY_CPUS"; return 0; }

log "warm-up"
for t in "${TARGETS[@]}"; do wrk_run "$t" "$CONNS" "$WARMUP" >/dev/null; done

START=$(date -u +%s)
for r in $(seq 1 "$RUNS"); do
  # Rotate the order so that no target always runs first, or always right after another.
  n=${#TARGETS[@]}
  order=()
  for i in $(seq 0 $((n - 1))); do order+=("${TARGETS[$(((i + r - 1) % n))]}"); done
  log "round $r/$RUNS: ${order[*]}"
  for t in "${order[@]}"; do
    pid=${PID[$t]}
    c0=$(cpu_of "$pid")
    w=$(wrk_run "$t" "$CONNS" "$DURATION")
    c1=$(cpu_of "$pid")
    echo "{\"run\":$r,\"target\":\"$t\",\"kind\":\"load\",\"wrk\":$w,\"cpu_ns\":$((c1 - c0))}" >>"$RES"

    lat_phase "$t"
    m0=$(metric_json "$t")
    w=$(wrk_run "$t" 1 "$LAT_DURATION")
    m1=$(metric_json "$t")
    echo "{\"run\":$r,\"target\":\"$t\",\"kind\":\"c1\",\"wrk\":$w,\"m0\":$m0,\"m1\":$m1}" >>"$RES"

    if [[ " ${STREAMED[*]} " == *" $t "* ]]; then
      s=$(on_load timeout 300 python3 "$DRIVER" stream --port "${PORT[$t]}" --key "${KEY[$t]}" \
        --chunks "$TTFT_CHUNKS" --chunk-delay-ms "$TTFT_DELAY_MS" --n "$STREAMS" --warmup 3 \
        --max-seconds 120) || die "the time-to-first-token run failed against $t"
      echo "{\"run\":$r,\"target\":\"$t\",\"kind\":\"ttft\",\"res\":$s}" >>"$RES"
      c0=$(cpu_of "$pid")
      s=$(on_load timeout 300 python3 "$DRIVER" stream --port "${PORT[$t]}" --key "${KEY[$t]}" \
        --chunks "$CHUNKS" --n "$STREAMS" --warmup 3 --max-seconds 120) ||
        die "the streaming run failed against $t"
      c1=$(cpu_of "$pid")
      echo "{\"run\":$r,\"target\":\"$t\",\"kind\":\"stream\",\"res\":$s,\"cpu_ns\":$((c1 - c0))}" >>"$RES"
    fi
    load_phase "$t"
  done
done

# Memory: idle after the load, then with OPEN_STREAMS concurrent streams (the mock spaces their
# chunks 100 ms apart, so each would last 20 s; all are closed once every one is flowing).
sleep 1
for t in "${STREAMED[@]}"; do
  pid=${PID[$t]}
  [[ -z $pid ]] && continue
  echo "{\"target\":\"$t\",\"kind\":\"rss_idle\",\"kib\":$(rss_of "$pid")}" >>"$RES"
  log "memory: $OPEN_STREAMS open streams through $t"
  murl=""
  [[ -n ${ADMIN[$t]:-} ]] && murl="http://127.0.0.1:${ADMIN[$t]}/metrics"
  o=$(on_load timeout 180 python3 "$DRIVER" open-streams --port "${PORT[$t]}" --key "${KEY[$t]}" \
    --n "$OPEN_STREAMS" --chunks "$CHUNKS" --chunk-delay-ms 100 --pid "$t=$pid" \
    --metrics-url "$murl" --max-seconds 120) || die "the open-streams run failed against $t"
  echo "{\"target\":\"$t\",\"kind\":\"open\",\"res\":$o}" >>"$RES"
  if [[ -n $murl ]]; then # bounded wait for Sluice to see the clients go
    for _ in $(seq 100); do
      active=$(python3 "$DRIVER" metrics --url "$murl" --name sluice_active_streams --gauge)
      [[ $active == 0 ]] && break
      sleep 0.2
    done
  fi
  sleep 1
done
ELAPSED=$(($(date -u +%s) - START))
if [[ $SYSCALLS == 1 ]]; then
  syscalls_phase "$RES"
fi

AUDIT_NOTE=""
if [[ " ${FULL[*]} " == *" audit "* ]]; then
  # A clean stop flushes the log; then its whole hash chain is verified.
  kill -TERM "${PID[full]}" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "${PID[full]}" 2>/dev/null || break
    sleep 0.1
  done
  if v=$(timeout 120 "$SLUICE" audit verify "$T/audit-full.jsonl" 2>&1); then
    AUDIT_NOTE="the full chain's audit log after the run: \`sluice audit verify\`: $(tail -1 <<<"$v") ($(du -h "$T/audit-full.jsonl" | cut -f1))"
  else
    AUDIT_NOTE="the full chain's audit log was not verified: $(tail -1 <<<"$v")"
  fi
fi

CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
BUSY=$(pgrep -c rustc 2>/dev/null || true)
python3 "$HERE/report.py" "$RES" --targets "$T/targets.json" \
  --date "$(date -u +'%Y-%m-%d %H:%M UTC')" \
  --machine "$NCPU CPUs ($CPU_MODEL), $(uname -sr), $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo)" \
  --command "$([[ $QUICK == 1 ]] && echo 'QUICK=1 ')benches/overhead.sh" \
  --settings "RUNS=$RUNS, DURATION=${DURATION}s, LAT_DURATION=${LAT_DURATION}s, CONNS=$CONNS, STREAMS=$STREAMS, CHUNKS=$CHUNKS, TTFT_CHUNKS=$TTFT_CHUNKS, TTFT_DELAY_MS=$TTFT_DELAY_MS, OPEN_STREAMS=$OPEN_STREAMS, body $(wc -c <"$T/body.json") bytes; $PINNING; Sluice threads = nginx workers = $PROXY_THREADS; the measurements took ${ELAPSED}s" \
  --build "$BUILT" --ttft-delay "$TTFT_DELAY_MS" \
  --audit "$AUDIT_NOTE" \
  --noise "rustc processes running at the end: ${BUSY:-0}; load average $(cut -d' ' -f1-3 /proc/loadavg)" \
  ${RESULTS:+--out "$RESULTS"}
