#!/usr/bin/env python3
"""Load drivers for benches/overhead.sh that wrk cannot do: streaming timings and open streams.

Standard library only (Python >= 3.8). Raw sockets on loopback, one keep-alive connection,
pre-built request bytes, so that the driver's own cost per request is small and, above all,
the same whichever target (direct mock, nginx, Sluice) it talks to: every figure the benchmark
reports is a difference or a ratio between targets measured by the same driver.

Subcommands (all print one JSON object on stdout):

  stream       N streamed chat completions, one after the other, on one connection:
               time to first token (first SSE event with a non-empty delta.content) and the
               time per chunk, (t[DONE] - t[first token]) / (the events in between), per stream.
  open-streams open N concurrent streams that stay open (the mock is asked to space chunks),
               wait until every one has received its first event, sample the RSS of the given
               processes, then close them all.
  metrics      the sum and count of a histogram (or, --gauge, a gauge's value) from a
               Prometheus /metrics URL.
  requests     N chat completions (the body file), one after the other, on one connection.
  body         writes the ~1 KiB chat body the throughput and latency runs POST.
  cpu          the CPU time (ns, all threads) of a process, from /proc/PID/task/*/schedstat.
  otlp-sink    an OTLP/HTTP receiver that takes every POST (spans are not decoded) and answers
               200, until killed: the collector of TELEMETRY=1 runs.
"""

import argparse
import json
import os
import selectors
import socket
import statistics
import sys
import threading
import time
import urllib.request

WORDS = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua"
).split()


def chat_body(model, words, stream, max_tokens=64):
    text = " ".join(WORDS[i % len(WORDS)] for i in range(words))
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": text},
        ],
        "max_tokens": max_tokens,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def request_bytes(host, port, path, body, key, extra_headers=()):
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive",
    ]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    lines.extend(extra_headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def connect(host, port):
    s = socket.create_connection((host, port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class ChunkedReader:
    """Reads one HTTP/1.1 response with a chunked body, timestamping SSE milestones.

    Only what the benchmark needs: status line, headers, chunked framing (or Content-Length).
    The SSE payload is searched, not parsed: the first `"content":"<non-empty>` and `[DONE]`.
    """

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        d = self.sock.recv(262144)
        if not d:
            raise ConnectionError("connection closed mid-response")
        self.buf += d
        return time.perf_counter_ns()

    def read_response(self):
        t_first_token = None
        t_done = None
        events = 0
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ", 2)[1])
        hl = head.lower()
        chunked = b"transfer-encoding: chunked" in hl
        length = None
        if not chunked:
            for line in hl.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
        body_seen = b""  # payload not yet scanned for milestones (bounded below)
        now = time.perf_counter_ns()

        def scan(payload, now):
            nonlocal t_first_token, t_done, events, body_seen
            body_seen += payload
            events += payload.count(b"data: ")
            if t_first_token is None:
                i = body_seen.find(b'"content":"')
                while i >= 0:
                    if body_seen[i + 11 : i + 12] not in (b'"', b""):
                        t_first_token = now
                        break
                    i = body_seen.find(b'"content":"', i + 1)
            if t_done is None and b"data: [DONE]" in body_seen:
                t_done = now
            body_seen = body_seen[-64:]

        if chunked:
            while True:
                while b"\r\n" not in self.buf:
                    now = self._fill()
                line, rest = self.buf.split(b"\r\n", 1)
                size = int(line.split(b";")[0], 16)
                while len(rest) < size + 2:
                    self.buf = rest
                    now = self._fill()
                    rest = self.buf
                payload, self.buf = rest[:size], rest[size + 2 :]
                if size == 0:
                    # Trailers are not used by any target here: the final CRLF was consumed.
                    break
                scan(payload, now)
        else:
            while len(self.buf) < (length or 0):
                now = self._fill()
            payload, self.buf = self.buf[:length], self.buf[length:]
            scan(payload, now)
        return status, t_first_token, t_done, events


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))
    return v[k]


def cmd_stream(a):
    body = chat_body(a.model, a.chunks, True)
    extra = [f"x-mock-chunk-delay-ms: {a.chunk_delay_ms}"] if a.chunk_delay_ms else []
    req = request_bytes(a.host, a.port, "/v1/chat/completions", body, a.key, extra)
    sock = connect(a.host, a.port)
    rd = ChunkedReader(sock)
    ttft, per_chunk, total = [], [], []
    deadline = time.monotonic() + a.max_seconds
    for i in range(a.warmup + a.n):
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter_ns()
        sock.sendall(req)
        status, t1, t2, events = rd.read_response()
        if status != 200 or t1 is None or t2 is None:
            print(json.dumps({"error": f"status {status}, events {events}"}))
            sys.exit(1)
        if i < a.warmup:
            continue
        ttft.append((t1 - t0) / 1000.0)
        # Events after the first token: chunks-1 more words, the finish chunk and [DONE].
        per_chunk.append((t2 - t1) / 1000.0 / (a.chunks + 1))
        total.append((t2 - t0) / 1000.0)
    sock.close()
    print(
        json.dumps(
            {
                "streams": len(ttft),
                "events_last": events,
                "ttft_p50_us": statistics.median(ttft),
                "ttft_p99_us": pct(ttft, 99),
                "chunk_p50_us": statistics.median(per_chunk),
                "total_p50_us": statistics.median(total),
            }
        )
    )


def rss_kib(pid):
    """RSS of a process and of its children (nginx: master + workers), in KiB."""
    total = 0
    for p in family(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cmd_open_streams(a):
    """Opens N streams in batches, waits for each one's first bytes, samples RSS, closes all."""
    body = chat_body(a.model, a.chunks, True)
    req = request_bytes(
        a.host,
        a.port,
        "/v1/chat/completions",
        body,
        a.key,
        [f"x-mock-chunk-delay-ms: {a.chunk_delay_ms}"],
    )
    sel = selectors.DefaultSelector()
    socks = []
    started = 0
    deadline = time.monotonic() + a.max_seconds
    pending = {}
    try:
        while (len(socks) < a.n or pending) and time.monotonic() < deadline:
            # Keep at most `batch` streams waiting for their first bytes.
            while len(socks) < a.n and len(pending) < a.batch:
                s = socket.create_connection((a.host, a.port), timeout=10)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(req)
                s.setblocking(False)
                socks.append(s)
                pending[s] = b""
                sel.register(s, selectors.EVENT_READ)
            for key, _ in sel.select(timeout=0.5):
                s = key.fileobj
                try:
                    d = s.recv(65536)
                except BlockingIOError:
                    continue
                if not d:
                    raise ConnectionError("a stream closed before its first event")
                if s in pending:
                    pending[s] += d
                    if b"data: " in pending[s]:
                        if not pending[s].startswith(b"HTTP/1.1 200"):
                            raise ConnectionError(pending[s][:200].decode(errors="replace"))
                        del pending[s]
                        started += 1
        # Every stream is open and flowing (chunks keep arriving; drain them briefly so the
        # proxies' socket buffers do not fill), then sample.
        t_end = time.monotonic() + a.settle_seconds
        while time.monotonic() < t_end:
            for key, _ in sel.select(timeout=0.1):
                try:
                    key.fileobj.recv(65536)
                except BlockingIOError:
                    pass
        rss = {name: rss_kib(int(pid)) for name, pid in (p.split("=") for p in a.pid)}
        active = None
        if a.metrics_url:
            try:
                text = urllib.request.urlopen(a.metrics_url, timeout=5).read().decode()
                for line in text.splitlines():
                    if line.startswith("sluice_active_streams "):
                        active = float(line.split()[1])
            except OSError:
                pass
        print(json.dumps({"opened": len(socks), "started": started, "rss_kib": rss,
                          "active_streams_metric": active}))
    finally:
        for s in socks:
            try:
                s.close()
            except OSError:
                pass


def cmd_metrics(a):
    text = urllib.request.urlopen(a.url, timeout=5).read().decode()
    if a.gauge:
        print(int(sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                      if l.startswith(a.name + " ") or l.startswith(a.name + "{"))))
        return
    out = {}
    for line in text.splitlines():
        for suffix in ("_sum", "_count"):
            if line.startswith(a.name + suffix + " ") or line.startswith(a.name + suffix + "{"):
                out[suffix[1:]] = out.get(suffix[1:], 0.0) + float(line.rsplit(" ", 1)[1])
    print(json.dumps(out))


def cmd_requests(a):
    body = open(a.body, "rb").read()
    req = request_bytes(a.host, a.port, "/v1/chat/completions", body, a.key)
    failed = []

    def one_connection(n):
        sock = connect(a.host, a.port)
        sock.settimeout(a.timeout)
        rd = ChunkedReader(sock)
        for _ in range(n):
            sock.sendall(req)
            status = rd.read_response()[0]
            if status != 200:
                failed.append(status)
                break
        sock.close()

    # --conns connections side by side, --n requests in all.
    share = [a.n // a.conns + (1 if i < a.n % a.conns else 0) for i in range(a.conns)]
    threads = [threading.Thread(target=one_connection, args=(n,)) for n in share]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        print(json.dumps({"error": f"status {failed[0]}"}))
        sys.exit(1)


def cmd_body(a):
    # Grow the user message until the whole body is at least `bytes` long.
    words = 1
    while len(chat_body(a.model, words, False)) < a.bytes:
        words += 1
    with open(a.out, "wb") as f:
        f.write(chat_body(a.model, words, False))


def family(pid):
    """The process and its children (nginx: the master and its workers)."""
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return pids


def cpu_ns(pid):
    """CPU time of every thread of a process, in ns (schedstat: not the 10 ms tick of stat)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def cmd_cpu(a):
    print(sum(cpu_ns(q) for p in a.pid for q in family(int(p))))


def cmd_otlp_sink(a):
    import http.server

    class Sink(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer((a.host, a.port), Sink).serve_forever()


def cmd_oidc(a):
    """A stand-in identity provider for IDENTITY=1: discovery and a JWKS with one RS256 key, and
    one access token signed with it (written to --token-out). Only what Sluice's token check
    reads; the real provider is tested in tests/oidc."""
    import base64
    import http.server

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    nums = key.public_key().public_numbers()
    b64 = lambda n: base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
    issuer = f"http://{a.host}:{a.port}"
    jwks = {"keys": [{"kty": "RSA", "kid": "bench", "use": "sig", "alg": "RS256", "n": b64(nums.n), "e": b64(nums.e)}]}
    discovery = {"issuer": issuer, "jwks_uri": issuer + "/jwks", "authorization_endpoint": issuer + "/auth",
                 "token_endpoint": issuer + "/token", "response_types_supported": ["code"],
                 "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"]}
    now = int(time.time())
    claims = {"iss": issuer, "aud": "sluice", "sub": "bench-user", "email": "jwt-bench@example.com",
              "groups": ["bench"], "iat": now, "nbf": now, "exp": now + 86400}
    with open(a.token_out, "w") as f:
        f.write(jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"}))

    class Provider(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            doc = {"/.well-known/openid-configuration": discovery, "/jwks": jwks}.get(self.path)
            body = json.dumps(doc).encode() if doc else b"{}"
            self.send_response(200 if doc else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer((a.host, a.port), Provider).serve_forever()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def target(p):
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--key", default="")
        p.add_argument("--model", default="mock-echo")
        p.add_argument("--chunks", type=int, default=200)

    p = sub.add_parser("stream")
    target(p)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--chunk-delay-ms", type=int, default=0,
                   help="ask the mock to space the chunks (x-mock-chunk-delay-ms)")
    p.add_argument("--max-seconds", type=float, default=60)
    p.set_defaults(fn=cmd_stream)

    p = sub.add_parser("open-streams")
    target(p)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--chunk-delay-ms", type=int, default=100)
    p.add_argument("--settle-seconds", type=float, default=1.0)
    p.add_argument("--max-seconds", type=float, default=60)
    p.add_argument("--pid", action="append", default=[], help="NAME=PID to sample")
    p.add_argument("--metrics-url", default="")
    p.set_defaults(fn=cmd_open_streams)

    p = sub.add_parser("metrics")
    p.add_argument("--url", required=True)
    p.add_argument("--name", default="sluice_overhead_seconds")
    p.add_argument("--gauge", action="store_true", help="print the value of a gauge")
    p.set_defaults(fn=cmd_metrics)

    p = sub.add_parser("requests")
    target(p)
    p.add_argument("--body", required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--timeout", type=float, default=60)
    p.set_defaults(fn=cmd_requests)

    p = sub.add_parser("body")
    p.add_argument("--model", default="mock-echo")
    p.add_argument("--bytes", type=int, default=1024)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_body)

    p = sub.add_parser("otlp-sink")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.set_defaults(fn=cmd_otlp_sink)

    p = sub.add_parser("oidc")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token-out", required=True)
    p.set_defaults(fn=cmd_oidc)

    p = sub.add_parser("cpu")
    p.add_argument("--pid", action="append", default=[])
    p.set_defaults(fn=cmd_cpu)

    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
