#!/usr/bin/env bash
# Sluice's overhead benchmark: what every filter costs, measured side by side.
#
#   benches/overhead.sh            # full run, ~8 minutes after the build
#   QUICK=1 benches/overhead.sh    # ~2 minutes, fewer and shorter runs
#
# On loopback, it starts the mock upstream (`sluice mock`), nginx as a plain reverse proxy
# (the cost of a proxy that does nothing; skipped when nginx is not installed), Sluice with an
# empty chain and Sluice with the full chain (auth, rate_limit, dlp with the secrets and pii
# packs, audit to a file with fsync = "interval"), then measures each of them the same way:
#
#   load      wrk, 64 keep-alive connections, a ~1 KiB chat body: requests/s, p50, p99, and the
#             proxy's CPU time per request (from /proc/PID/task/*/schedstat)
#   c1        wrk, 1 connection: p50 and p99; "added" = target minus direct-to-mock, same run;
#             Sluice's own sluice_overhead_seconds mean over exactly these requests beside it
#   stream    a 200-chunk streamed completion, one after another on one connection:
#             time to first token and time per chunk; "added" = target minus direct
#   memory    RSS idle (after the load) and with 1,000 concurrent open streams
#
# Each of RUNS rounds measures every target in turn (the order rotates), and the report gives
# medians over the rounds; ratios (Sluice / nginx, full / empty) are taken within each round,
# so that a noisy neighbour slows both sides of a ratio alike.
#
# Pinning: proxies (nginx's workers, Sluice's threads) run on PROXY_CPUS, the load generators
# and the mock on LOAD_CPUS. With 2 cores: the proxy on CPU 1, everything else on CPU 0, and
# nginx gets as many workers as Sluice gets threads (one per proxy CPU).
#
# Settings (environment):
#   QUICK=1            RUNS=3, DURATION=3, LAT_DURATION=3, STREAMS=40
#   RUNS=5             rounds; the report shows medians
#   DURATION=8         seconds of each 64-connection wrk run
#   LAT_DURATION=8     seconds of each 1-connection wrk run
#   CONNS=64           connections of the load run
#   STREAMS=100        streamed completions per target per round
#   CHUNKS=200         words, hence content chunks, per streamed completion
#   OPEN_STREAMS=1000  concurrent streams of the memory run
#   BODY_BYTES=1024    size of the chat body
#   PROXY_CPUS, LOAD_CPUS   CPU lists for taskset (PIN=0: no pinning)
#   NGINX=auto|0       0 skips the nginx reference row
#   SLUICE_BIN=path    use this binary instead of building (the report says so)
#   RESULTS=path       also write the report (markdown) to this file
#   KEEP=1             keep the temporary directory (configs, logs, raw results)
#
# It installs nothing silently: when wrk or nginx is missing and it runs as root on Debian, it
# says so and runs `apt-get install -y wrk nginx-light`; otherwise it stops (wrk) or skips the
# nginx row. It binds only 127.0.0.1, on free ports, writes everything to a temporary directory,
# and stops every process it started when it exits, however it exits.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE="$ROOT/benches/overhead"
DRIVER="$HERE/driver.py"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
  RUNS=${RUNS:-3} DURATION=${DURATION:-3} LAT_DURATION=${LAT_DURATION:-3} STREAMS=${STREAMS:-40}
else
  RUNS=${RUNS:-5} DURATION=${DURATION:-8} LAT_DURATION=${LAT_DURATION:-8} STREAMS=${STREAMS:-100}
fi
CONNS=${CONNS:-64}
CHUNKS=${CHUNKS:-200}
OPEN_STREAMS=${OPEN_STREAMS:-1000}
BODY_BYTES=${BODY_BYTES:-1024}
NGINX=${NGINX:-auto}
PIN=${PIN:-1}
KEEP=${KEEP:-0}
RESULTS=${RESULTS:-}

log() { printf '[overhead] %s\n' "$*" >&2; }
die() { printf '[overhead] error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Tools

need_install=()
command -v wrk >/dev/null || need_install+=(wrk)
if [[ $NGINX != 0 ]] && ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
  need_install+=(nginx-light)
fi
if ((${#need_install[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "installing ${need_install[*]} with apt-get (Debian packages)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_install[@]}" >&2 ||
      log "apt-get install failed"
  fi
fi
command -v wrk >/dev/null || die "wrk is needed (Debian: apt-get install wrk)"
command -v python3 >/dev/null || die "python3 is needed"
command -v taskset >/dev/null || PIN=0
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
if [[ $NGINX != 0 && ! -x $NGINX_BIN ]]; then
  log "nginx not found: the nginx reference row is skipped (Debian: apt-get install nginx-light)"
  NGINX=0
fi

# ---------------------------------------------------------------------------------------------
# Sluice

if [[ -n ${SLUICE_BIN:-} ]]; then
  SLUICE=$SLUICE_BIN
  BUILT="prebuilt binary $SLUICE_BIN (SLUICE_BIN)"
  log "using $SLUICE (SLUICE_BIN): no build"
else
  log "building: cargo build --release --locked"
  (cd "$ROOT" && cargo build --release --locked >&2)
  SLUICE="$ROOT/target/release/sluice"
  BUILT="cargo build --release --locked at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- src filters Cargo.toml Cargo.lock 2>/dev/null || echo ' (with local changes)')"
fi
[[ -x $SLUICE ]] || die "no sluice binary at $SLUICE"

# ---------------------------------------------------------------------------------------------
# CPUs

NCPU=$(nproc)
if ((NCPU < 2)); then PIN=0; fi
if ((NCPU >= 2)); then
  PROXY_CPUS=${PROXY_CPUS:-$((NCPU - 1))}
  if ((NCPU == 2)); then LOAD_CPUS=${LOAD_CPUS:-0}; else LOAD_CPUS=${LOAD_CPUS:-0-$((NCPU - 2))}; fi
else
  PROXY_CPUS=${PROXY_CPUS:-0} LOAD_CPUS=${LOAD_CPUS:-0}
fi
cpu_count() { # number of CPUs in a taskset list such as "1" or "0-2,4"
  python3 - "$1" <<'EOF'
import sys
n = 0
for part in sys.argv[1].split(","):
    a, _, b = part.partition("-")
    n += (int(b) - int(a) + 1) if b else 1
print(n)
EOF
}
if [[ $PIN == 1 ]]; then
  PROXY_THREADS=${PROXY_THREADS:-$(cpu_count "$PROXY_CPUS")}
  on_proxy() { exec taskset -c "$PROXY_CPUS" "$@"; }
  on_load() { exec taskset -c "$LOAD_CPUS" "$@"; }
  PINNING="proxies on CPU $PROXY_CPUS, load generators and mock on CPU $LOAD_CPUS"
else
  PROXY_THREADS=${PROXY_THREADS:-$NCPU}
  on_proxy() { exec "$@"; }
  on_load() { exec "$@"; }
  PINNING="no pinning"
fi

# ---------------------------------------------------------------------------------------------
# Processes: every one started is recorded, and stopped on exit.

T=$(mktemp -d "${TMPDIR:-/tmp}/sluice-overhead.XXXXXX")
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [[ $KEEP == 1 ]]; then log "kept $T"; else rm -rf "$T"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # port, name, pid: bounded wait until it accepts
  local i
  for i in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$3" 2>/dev/null || { tail -20 "$T/$2.log" >&2; die "$2 exited at startup"; }
    sleep 0.1
  done
  die "$2 does not accept connections on 127.0.0.1:$1"
}

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < 4 * OPEN_STREAMS + 256)); then
  log "open files limit $(ulimit -n) is low for $OPEN_STREAMS streams; lowering OPEN_STREAMS"
  OPEN_STREAMS=$((($(ulimit -n) - 256) / 4))
fi

MOCK_PORT=$(free_port)
log "temporary directory $T"
(on_load "$SLUICE" mock --listen "127.0.0.1:$MOCK_PORT") >"$T/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_port "$MOCK_PORT" mock "$MOCK_PID"

# --- nginx: a plain reverse proxy with keep-alive both ways, nothing else.
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
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  wait_port "$NGINX_PORT" nginx "$NGINX_PID"
  NGINX_VERSION=$("$NGINX_BIN" -v 2>&1 | sed 's/.*version: //')
fi

# --- Sluice configs.
KEY_OUT=$("$SLUICE" keys new --user bench --id bench-key)
API_KEY=$(sed -n 's/^#[[:space:]]*\(sk-sluice-[A-Za-z0-9]*\).*/\1/p' <<<"$KEY_OUT" | head -1)
KEY_SHA=$(sed -n 's/^sha256 = "\([0-9a-f]*\)"/\1/p' <<<"$KEY_OUT" | head -1)
[[ -n $API_KEY && -n $KEY_SHA ]] || die "cannot read the key from 'sluice keys new'"
BIG=1000000000     # requests per minute: never reached, but every bucket is still checked
BIGT=1000000000000 # tokens per minute

write_sluice_conf() { # file listen admin filter...
  local file=$1 listen=$2 admin=$3
  shift 3
  {
    if (($# == 0)); then echo "filters = []"; fi
    cat <<EOF
[server]
listen = "127.0.0.1:$listen"
admin_listen = "127.0.0.1:$admin"
threads = $PROXY_THREADS
shutdown_grace_seconds = 1

[[upstreams]]
name = "mock"
url = "http://127.0.0.1:$MOCK_PORT"

[[models]]
name = "mock-echo"
upstream = "mock"
upstream_model = "echo"

[[orgs]]
name = "bench"
rate_limit = { requests_per_minute = $BIG, tokens_per_minute = $BIGT }

[[roles]]
name = "bench"
permissions = ["chat", "models:list"]
models = ["mock-*"]

[[users]]
name = "bench"
org = "bench"
role = "bench"
rate_limit = { requests_per_minute = $BIG, tokens_per_minute = $BIGT }

[[keys]]
id = "bench-key"
user = "bench"
sha256 = "$KEY_SHA"
rate_limit = { requests_per_minute = $BIG, tokens_per_minute = $BIGT }
EOF
    local f
    for f in "$@"; do
      case $f in
        rate_limit) printf '\n[rate_limit]\nbackend = "local"\n' ;;
        dlp) printf '\n[dlp]\npacks = ["secrets", "pii"]\nrequest_action = "block"\nresponse_action = "redact"\n' ;;
        audit) printf '\n[audit]\npath = "%s"\nfsync = "interval"\n' "$T/audit.jsonl" ;;
      esac
    done
    for f in "$@"; do printf '\n[[filters]]\ntype = "%s"\n' "$f"; done
  } >"$file"
}

# The full chain, or, on a build that lacks some filter types, the filters it has: each one is
# tried alone with `sluice check`, and the row says which ones were on.
WANT=(auth rate_limit dlp audit)
FULL=()
MISSING=()
write_sluice_conf "$T/full.toml" 1 2 "${WANT[@]}"
if "$SLUICE" check -c "$T/full.toml" >"$T/check.log" 2>&1; then
  FULL=("${WANT[@]}")
else
  for f in "${WANT[@]}"; do
    write_sluice_conf "$T/probe.toml" 1 2 "$f"
    if "$SLUICE" check -c "$T/probe.toml" >>"$T/check.log" 2>&1; then FULL+=("$f"); else MISSING+=("$f"); fi
  done
  log "this build does not accept filter(s): ${MISSING[*]} (see below); the full-chain row runs: ${FULL[*]:-none}"
  grep -v '^$' "$T/check.log" | sed 's/^/[overhead]   /' >&2 || true
fi
FULL_LABEL="Sluice, full chain ($(IFS=,; echo "${FULL[*]}" | sed 's/,/ + /g'))"
((${#MISSING[@]})) && FULL_LABEL="Sluice, chain available ($(IFS=,; echo "${FULL[*]:-none}" | sed 's/,/ + /g'); NOT ON: ${MISSING[*]})"

start_sluice() { # name filter...
  local name=$1
  shift
  local port admin
  port=$(free_port)
  admin=$(free_port)
  write_sluice_conf "$T/$name.toml" "$port" "$admin" "$@"
  "$SLUICE" check -c "$T/$name.toml" >&2 || die "config $name rejected"
  (RUST_LOG=${SLUICE_LOG:-warn} on_proxy "$SLUICE" run -c "$T/$name.toml") >"$T/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_port "$port" "$name" "$pid"
  eval "${name^^}_PORT=$port ${name^^}_ADMIN=$admin ${name^^}_PID=$pid"
}
start_sluice empty
start_sluice full "${FULL[@]}"

# ---------------------------------------------------------------------------------------------
# Targets: name, port, pid of the proxy (none for the direct row), API key

TARGETS=(direct)
[[ $NGINX != 0 ]] && TARGETS+=(nginx)
TARGETS+=(empty full)
port_of() { case $1 in direct) echo "$MOCK_PORT" ;; nginx) echo "$NGINX_PORT" ;; empty) echo "$EMPTY_PORT" ;; full) echo "$FULL_PORT" ;; esac; }
pid_of() { case $1 in direct) echo "" ;; nginx) echo "$NGINX_PID" ;; empty) echo "$EMPTY_PID" ;; full) echo "$FULL_PID" ;; esac; }
admin_of() { case $1 in empty) echo "$EMPTY_ADMIN" ;; full) echo "$FULL_ADMIN" ;; *) echo "" ;; esac; }
key_of() { [[ $1 == full ]] && echo "$API_KEY" || echo ""; }

python3 "$DRIVER" body --bytes "$BODY_BYTES" --out "$T/body.json"
RES="$T/results.jsonl"
: >"$RES"

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
  s=$(status_of "$(port_of "$t")" "$(key_of "$t")" "$T/body.json")
  [[ $s == 200 ]] || die "$t answered $s to the benchmark request"
done
if [[ " ${FULL[*]} " == *" auth "* ]]; then
  s=$(status_of "$FULL_PORT" "" "$T/body.json")
  [[ $s == 401 ]] || die "full chain without a key answered $s, not 401: is auth on?"
fi
if [[ " ${FULL[*]} " == *" dlp "* ]]; then
  printf '{"model":"mock-echo","messages":[{"role":"user","content":"my key is AKIAIOSFODNN7EXAMPLE ok"}]}' >"$T/secret.json"
  s=$(status_of "$FULL_PORT" "$API_KEY" "$T/secret.json")
  [[ $s == 400 ]] || die "full chain let an AWS key through ($s, not 400): is dlp on?"
fi
log "all targets answer; the full chain refuses a missing key and an AWS key"

rss_of() { python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import driver; print(driver.rss_kib(int(sys.argv[2])))' "$HERE" "$1"; }
cpu_of() { if [[ -n $1 ]]; then python3 "$DRIVER" cpu --pid "$1"; else echo 0; fi; }
for t in "${TARGETS[@]}"; do
  p=$(pid_of "$t")
  [[ -n $p ]] && echo "{\"target\":\"$t\",\"kind\":\"rss_start\",\"kib\":$(rss_of "$p")}" >>"$RES"
done

wrk_run() { # target connections seconds -> the RESULT json
  local t=$1 c=$2 d=$3 out
  out=$(BODY_FILE="$T/body.json" API_KEY=$(key_of "$t") on_load timeout $((d + 30)) \
    wrk -t1 -c"$c" -d"${d}s" --timeout 10s -s "$HERE/post.lua" \
    "http://127.0.0.1:$(port_of "$t")/v1/chat/completions") || die "wrk failed against $t"
  sed -n 's/^RESULT //p' <<<"$out"
}
metric_json() { python3 "$DRIVER" metrics --url "http://127.0.0.1:$1/metrics"; }

# Warm-up: connection pools, page faults, allocator arenas.
log "warm-up"
for t in "${TARGETS[@]}"; do wrk_run "$t" "$CONNS" 2 >/dev/null; done

START=$(date -u +%s)
for r in $(seq 1 "$RUNS"); do
  # Rotate the order so that no target always runs first (or right after another).
  n=${#TARGETS[@]}
  order=()
  for i in $(seq 0 $((n - 1))); do order+=("${TARGETS[$(((i + r - 1) % n))]}"); done
  log "round $r/$RUNS: ${order[*]}"
  for t in "${order[@]}"; do
    pid=$(pid_of "$t")
    c0=$(cpu_of "$pid")
    w=$(wrk_run "$t" "$CONNS" "$DURATION")
    c1=$(cpu_of "$pid")
    echo "{\"run\":$r,\"target\":\"$t\",\"kind\":\"load\",\"wrk\":$w,\"cpu_ns\":$((c1 - c0))}" >>"$RES"

    adm=$(admin_of "$t")
    m0='{}'; [[ -n $adm ]] && m0=$(metric_json "$adm")
    w=$(wrk_run "$t" 1 "$LAT_DURATION")
    m1='{}'; [[ -n $adm ]] && m1=$(metric_json "$adm")
    echo "{\"run\":$r,\"target\":\"$t\",\"kind\":\"c1\",\"wrk\":$w,\"m0\":$m0,\"m1\":$m1}" >>"$RES"

    c0=$(cpu_of "$pid")
    s=$(on_load timeout 300 python3 "$DRIVER" stream --port "$(port_of "$t")" \
      --key "$(key_of "$t")" --chunks "$CHUNKS" --n "$STREAMS" --warmup 3 --max-seconds 120) ||
      die "streaming run failed against $t"
    c1=$(cpu_of "$pid")
    echo "{\"run\":$r,\"target\":\"$t\",\"kind\":\"stream\",\"res\":$s,\"cpu_ns\":$((c1 - c0))}" >>"$RES"
  done
done

# Memory: idle after the load, then with OPEN_STREAMS concurrent streams (the mock spaces the
# chunks 100 ms apart, so each stream lasts 20 s; they are closed once all are flowing).
sleep 1
for t in "${TARGETS[@]}"; do
  pid=$(pid_of "$t")
  [[ -z $pid ]] && continue
  echo "{\"target\":\"$t\",\"kind\":\"rss_idle\",\"kib\":$(rss_of "$pid")}" >>"$RES"
  log "memory: $OPEN_STREAMS open streams through $t"
  adm=$(admin_of "$t")
  murl=""; [[ -n $adm ]] && murl="http://127.0.0.1:$adm/metrics"
  o=$(on_load timeout 180 python3 "$DRIVER" open-streams --port "$(port_of "$t")" \
    --key "$(key_of "$t")" --n "$OPEN_STREAMS" --chunks "$CHUNKS" --chunk-delay-ms 100 \
    --pid "$t=$pid" --metrics-url "$murl" --max-seconds 120) || die "open streams failed against $t"
  echo "{\"target\":\"$t\",\"kind\":\"open\",\"res\":$o}" >>"$RES"
  # Bounded wait for the proxy to see the clients go.
  if [[ -n $adm ]]; then
    for _ in $(seq 100); do
      curl_active=$(python3 -c 'import sys,urllib.request
for l in urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().splitlines():
    if l.startswith("sluice_active_streams "): print(int(float(l.split()[1])))' "$murl")
      [[ $curl_active == 0 ]] && break
      sleep 0.2
    done
  fi
  sleep 1
done
ELAPSED=$(($(date -u +%s) - START))

AUDIT_NOTE=""
if [[ " ${FULL[*]} " == *" audit "* ]]; then
  kill -TERM "$FULL_PID" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$FULL_PID" 2>/dev/null || break; sleep 0.1; done
  if v=$(timeout 120 "$SLUICE" audit verify "$T/audit.jsonl" 2>&1); then
    AUDIT_NOTE="audit log after the run: $(tail -1 <<<"$v") ($(du -h "$T/audit.jsonl" | cut -f1))"
  else
    AUDIT_NOTE="audit log not verified: $(tail -1 <<<"$v")"
  fi
fi

CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
[[ -z $CPU_MODEL ]] && CPU_MODEL=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
BUSY=$(pgrep -c rustc 2>/dev/null || true)
python3 "$HERE/report.py" "$RES" \
  --date "$(date -u +'%Y-%m-%d %H:%M UTC')" \
  --machine "$NCPU CPUs ($CPU_MODEL), $(uname -sr), $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo)" \
  --command "$( [[ $QUICK == 1 ]] && echo 'QUICK=1 ')benches/overhead.sh" \
  --settings "RUNS=$RUNS DURATION=${DURATION}s LAT_DURATION=${LAT_DURATION}s CONNS=$CONNS STREAMS=$STREAMS CHUNKS=$CHUNKS OPEN_STREAMS=$OPEN_STREAMS BODY=$(wc -c <"$T/body.json")B; $PINNING; Sluice threads = nginx workers = $PROXY_THREADS; measuring took ${ELAPSED}s" \
  --build "$BUILT" \
  --full-label "$FULL_LABEL" \
  --nginx "${NGINX_VERSION:-}" \
  --audit "$AUDIT_NOTE" \
  --noise "rustc processes running at the end: ${BUSY:-0}; load average $(cut -d' ' -f1-3 /proc/loadavg)" \
  ${RESULTS:+--out "$RESULTS"}
