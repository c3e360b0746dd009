//! A real OTLP/HTTP receiver on a loopback socket: it takes `POST /v1/traces` (protobuf),
//! decodes each export with the protocol's own types and keeps its spans.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
pub use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// One span as received, with the resource that exported it.
#[derive(Debug, Clone)]
pub struct Received {
    pub span: Span,
    pub resource: Vec<KeyValue>,
}

#[derive(Default)]
struct Seen {
    spans: Vec<Received>,
    /// (path, content-type) of every export request.
    requests: Vec<(String, String)>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        Receiver { addr, seen }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<Received> {
        self.seen
            .lock()
            .map(|s| s.spans.clone())
            .unwrap_or_default()
    }

    pub fn requests(&self) -> Vec<(String, String)> {
        self.seen
            .lock()
            .map(|s| s.requests.clone())
            .unwrap_or_default()
    }

    /// Waits (bounded) until the spans received satisfy `done`, and returns them.
    pub fn wait(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if Instant::now() > deadline {
                let names: Vec<&str> = spans.iter().map(|r| r.span.name.as_str()).collect();
                panic!("no {what} exported; received {names:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn serve(conn: TcpStream, seen: &Mutex<Seen>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut w = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let (mut len, mut ctype) = (0usize, String::new());
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "content-type" => ctype = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(mut s) = seen.lock() {
            s.requests.push((path, ctype));
            if let Ok(req) = ExportTraceServiceRequest::decode(body.as_slice()) {
                for rs in req.resource_spans {
                    let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
                    for ss in rs.scope_spans {
                        for span in ss.spans {
                            s.spans.push(Received {
                                span,
                                resource: resource.clone(),
                            });
                        }
                    }
                }
            }
        }
        let ok =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if w.write_all(ok).is_err() {
            return;
        }
    }
}

pub fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Any> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

pub fn str_attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attr(span, key) {
        Some(Any::StringValue(s)) => Some(s),
        _ => None,
    }
}

pub fn int_attr(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key) {
        Some(Any::IntValue(i)) => Some(*i),
        _ => None,
    }
}

pub fn strings_attr(span: &Span, key: &str) -> Option<Vec<String>> {
    match attr(span, key) {
        Some(Any::ArrayValue(a)) => Some(
            a.values
                .iter()
                .filter_map(|v| match &v.value {
                    Some(Any::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

/// Every string a span carries: its name, status message, attribute keys and values (nested
/// ones too), events and links, and its resource's attributes.
pub fn all_strings(r: &Received) -> Vec<String> {
    fn any(v: &AnyValue, out: &mut Vec<String>) {
        match &v.value {
            Some(Any::StringValue(s)) => out.push(s.clone()),
            Some(Any::BytesValue(b)) => out.push(String::from_utf8_lossy(b).into_owned()),
            Some(Any::ArrayValue(a)) => a.values.iter().for_each(|v| any(v, out)),
            Some(Any::KvlistValue(l)) => l.values.iter().for_each(|kv| kvs(kv, out)),
            _ => {}
        }
    }
    fn kvs(kv: &KeyValue, out: &mut Vec<String>) {
        out.push(kv.key.clone());
        if let Some(v) = &kv.value {
            any(v, out);
        }
    }
    let s = &r.span;
    let mut out = vec![s.name.clone(), s.trace_state.clone()];
    if let Some(st) = &s.status {
        out.push(st.message.clone());
    }
    s.attributes.iter().for_each(|kv| kvs(kv, &mut out));
    for e in &s.events {
        out.push(e.name.clone());
        e.attributes.iter().for_each(|kv| kvs(kv, &mut out));
    }
    for l in &s.links {
        l.attributes.iter().for_each(|kv| kvs(kv, &mut out));
    }
    r.resource.iter().for_each(|kv| kvs(kv, &mut out));
    out
}
