//! Upstreams of the test's own, on real sockets, whose behaviour a test switches while they
//! run: answer (a chat completion, streamed when asked), fail with a status (and
//! `Retry-After`), hang before the response head, reset before it, die in the middle of a
//! stream, stream slowly, or refuse connections (the listener is closed). `GET /health`
//! answers the status [`Upstream::set_health`] chose. Each counts the requests it received and
//! keeps their bodies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How an upstream answers requests (other than `/health`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// A chat completion (streamed when the request says `"stream": true`) whose text is
    /// `from <name>`.
    Ok,
    /// This status with a JSON error body, and `Retry-After` when given.
    Status(u16, Option<u64>),
    /// Reads the request and does not answer until the mode changes (then answers as the new
    /// mode says), or closes after 20 s.
    Hang,
    /// Reads the request and closes the connection.
    Reset,
    /// Streams the head and this many events, then closes the connection mid-stream.
    DieMidStream(usize),
    /// Streams ten events this many milliseconds apart.
    Slow(u64),
}

struct State {
    name: String,
    mode: Mutex<Mode>,
    health: Mutex<u16>,
    hits: AtomicUsize,
    health_hits: AtomicUsize,
    bodies: Mutex<Vec<Vec<u8>>>,
    down: AtomicBool,
    stop: AtomicBool,
}

/// A running upstream; stops when dropped.
pub struct Upstream {
    pub port: u16,
    state: Arc<State>,
}

impl Upstream {
    pub fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let state = Arc::new(State {
            name: name.to_string(),
            mode: Mutex::new(Mode::Ok),
            health: Mutex::new(200),
            hits: AtomicUsize::new(0),
            health_hits: AtomicUsize::new(0),
            bodies: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || accept_loop(listener, port, st));
        Upstream { port, state }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: Mode) {
        *lock(&self.state.mode) = mode;
    }

    pub fn set_health(&self, status: u16) {
        *lock(&self.state.health) = status;
    }

    /// Requests received, `/health` excluded.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn health_hits(&self) -> usize {
        self.state.health_hits.load(Ordering::SeqCst)
    }

    /// The bodies of the requests received, in order.
    pub fn bodies(&self) -> Vec<Vec<u8>> {
        lock(&self.state.bodies).clone()
    }

    /// Closes the listener: connections are refused until [`Upstream::revive`].
    pub fn kill(&self) {
        self.state.down.store(true, Ordering::SeqCst);
        // The accept loop drops the listener within a poll.
        std::thread::sleep(Duration::from_millis(50));
    }

    pub fn revive(&self) {
        self.state.down.store(false, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept_loop(listener: TcpListener, port: u16, st: Arc<State>) {
    let mut listener = Some(listener);
    while !st.stop.load(Ordering::SeqCst) {
        if st.down.load(Ordering::SeqCst) {
            listener = None;
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        if listener.is_none() {
            // Back on the same port (std sets SO_REUSEADDR).
            listener = TcpListener::bind(("127.0.0.1", port)).ok();
        }
        let Some(l) = &listener else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let _ = l.set_nonblocking(true);
        match l.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let st = st.clone();
                std::thread::spawn(move || serve(stream, &st));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Reads one request: its path and body.
fn read_request(stream: &TcpStream) -> Option<(String, Vec<u8>)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            if n.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some((path, body))
}

fn serve(mut stream: TcpStream, st: &State) {
    let _ = stream.set_nodelay(true);
    let Some((path, body)) = read_request(&stream) else {
        return;
    };
    if path == "/health" {
        st.health_hits.fetch_add(1, Ordering::SeqCst);
        let status = *lock(&st.health);
        let _ = write!(
            stream,
            "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
        );
        return;
    }
    st.hits.fetch_add(1, Ordering::SeqCst);
    lock(&st.bodies).push(body.clone());
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let stream_asked = req["stream"] == json!(true);
    let model = req["model"].as_str().unwrap_or("").to_string();
    let mut mode = lock(&st.mode).clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Hanging until the mode changes, then answering as it says.
    while mode == Mode::Hang && Instant::now() < deadline && !st.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
        mode = lock(&st.mode).clone();
    }
    match mode {
        Mode::Ok if stream_asked => write_stream(&mut stream, &st.name, &model, 10, 0, true),
        Mode::Ok => {
            let answer = json!({"id": "c1", "object": "chat.completion", "created": 0,
                "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": format!("from {}", st.name)}}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}})
            .to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
        Mode::Status(code, retry_after) => {
            let answer = json!({"error": {"message": format!("{} says {code}", st.name),
                "type": "server_error", "code": code}})
            .to_string();
            let ra = retry_after
                .map(|s| format!("retry-after: {s}\r\n"))
                .unwrap_or_default();
            let _ = write!(
                stream,
                "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\n{ra}content-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
        Mode::Hang | Mode::Reset => {}
        Mode::DieMidStream(n) => write_stream(&mut stream, &st.name, &model, n, 0, false),
        Mode::Slow(ms) => write_stream(&mut stream, &st.name, &model, 10, ms, true),
    }
}

/// A streamed chat completion: `n` events `w0 w1 …` (each `delay_ms` apart), then, when
/// `complete`, the finish, usage and `[DONE]`; else the connection just closes.
fn write_stream(
    s: &mut TcpStream,
    name: &str,
    model: &str,
    n: usize,
    delay_ms: u64,
    complete: bool,
) {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    if s.write_all(head.as_bytes()).is_err() {
        return;
    }
    let chunk = |s: &mut TcpStream, data: String| {
        let ev = format!("data: {data}\n\n");
        let _ = write!(s, "{:x}\r\n{ev}\r\n", ev.len());
        let _ = s.flush();
    };
    let event = |delta: Value, finish: Value| {
        json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    chunk(
        s,
        event(json!({"role": "assistant", "content": ""}), Value::Null),
    );
    for i in 0..n {
        if delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(delay_ms));
        }
        let word = if i == 0 {
            format!("from {name}")
        } else {
            format!(" w{i}")
        };
        chunk(s, event(json!({ "content": word }), Value::Null));
    }
    if !complete {
        let _ = s.flush();
        let _ = s.shutdown(std::net::Shutdown::Both);
        return;
    }
    chunk(s, event(json!({}), json!("stop")));
    chunk(
        s,
        json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": model,
               "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": n}})
        .to_string(),
    );
    chunk(s, "[DONE]".to_string());
    let _ = s.write_all(b"0\r\n\r\n");
    let _ = s.flush();
}

/// A port whose connections hang (the accept queue is full and never drained): a connect
/// timeout. Dropping it closes the port.
pub struct Blackhole {
    pub port: u16,
    _listener: TcpListener,
    _filled: Vec<TcpStream>,
}

pub fn blackhole() -> Blackhole {
    use std::os::fd::AsRawFd;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    // A backlog of 0: one queued connection fills it; later SYNs are dropped.
    // SAFETY: `listen` on a socket this function owns; it only changes the backlog.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), 0) };
    assert_eq!(rc, 0, "listen");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let filled = (0..3)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
        .collect();
    Blackhole {
        port,
        _listener: listener,
        _filled: filled,
    }
}

/// `[[upstreams]]` entries for `(name, url, extra TOML lines)`; timeouts are short unless
/// `extra` sets them.
pub fn upstreams_toml(list: &[(&str, String, &str)]) -> String {
    list.iter()
        .map(|(name, url, extra)| {
            let mut t = format!("[[upstreams]]\nname = \"{name}\"\nurl = \"{url}\"\n");
            for (key, value) in [("connect_timeout_ms", 500), ("read_timeout_ms", 3000)] {
                if !extra.contains(key) {
                    t += &format!("{key} = {value}\n");
                }
            }
            t + extra + "\n"
        })
        .collect()
}

/// A chat request for `model` (its text names the request, `stream` as asked).
pub fn chat_request(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hello there"}]})
}

pub fn send_chat(gw: &sluice::Gateway, body: &Value) -> reqwest::blocking::Response {
    super::client()
        .post(super::url(gw, "/v1/chat/completions"))
        .json(body)
        .send()
        .unwrap_or_else(|e| panic!("request failed: {e}"))
}

/// The text of a chat completion answer.
pub fn answer_text(v: &Value) -> String {
    v.pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// `GET /admin/upstreams`.
pub fn admin_upstreams(gw: &sluice::Gateway) -> Value {
    let text = super::client()
        .get(super::admin_url(gw, "/admin/upstreams"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// One upstream's entry in `/admin/upstreams`.
pub fn upstream_state(gw: &sluice::Gateway, name: &str) -> Value {
    let v = admin_upstreams(gw);
    v["data"]
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no upstream {name} in {v}"))
}

/// Polls `/admin/upstreams` until `name`'s entry satisfies `ok` (10 s at most).
pub fn wait_upstream(gw: &sluice::Gateway, name: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = upstream_state(gw, name);
        if ok(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "upstream {name} never got there: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
