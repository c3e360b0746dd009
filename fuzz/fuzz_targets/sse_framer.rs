//! The SSE framer (`src/sse.rs`) on arbitrary upstream bytes, cut into arbitrary reads.
//!
//! Input: the first byte sets the size of the reads (1–256 bytes), the rest is the stream.
//!
//! Checks: the events it yields are the input byte for byte (a whitespace-only tail aside);
//! every event but the last ends with a blank line; each event's `data` is what the SSE
//! specification's parser makes of its lines; how the bytes are cut into reads changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::sse::{RawEvent, SseFramer};

const MAX_EVENT: usize = 4096;

type Events = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Frames `bytes` read `read` bytes at a time; None when an event grew over the bound.
fn frame(bytes: &[u8], read: usize) -> Option<Events> {
    let mut f = SseFramer::new(MAX_EVENT);
    let mut out: Vec<RawEvent> = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (now, later) = rest.split_at(read.min(rest.len()));
        f.push(now, &mut out).ok()?;
        rest = later;
    }
    f.finish(&mut out);
    Some(
        out.into_iter()
            .map(|e| (e.raw.to_vec(), e.data.map(|d| d.to_vec())))
            .collect(),
    )
}

fn ends_with_blank_line(raw: &[u8]) -> bool {
    raw.ends_with(b"\n\n")
        || raw.ends_with(b"\r\r")
        || raw.ends_with(b"\n\r\n")
        || raw.ends_with(b"\r\n\r\n")
        || raw.ends_with(b"\n\r")
        || raw.ends_with(b"\r\n\r")
}

/// The `data` of one event as the HTML living standard's event-stream parser builds it: lines
/// end with CRLF, LF or CR; `name: value` with one leading space removed from the value; a line
/// without a colon is a name with an empty value; the `data` values are joined with LF. None
/// when the event has no `data` field, or (the standard dispatches nothing then) only empty ones.
fn spec_data(raw: &[u8]) -> Option<Vec<u8>> {
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut rest = raw;
    while let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
        lines.push(&rest[..i]);
        let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[i + skip..];
    }
    lines.push(rest);
    let mut buf: Vec<u8> = Vec::new();
    for line in lines {
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => (
                &line[..i],
                line[i + 1..].strip_prefix(b" ").unwrap_or(&line[i + 1..]),
            ),
            None => (line, &[][..]),
        };
        if name == b"data" {
            buf.extend_from_slice(value);
            buf.push(b'\n');
        }
    }
    buf.pop();
    (!buf.is_empty()).then_some(buf)
}

fuzz_target!(|data: &[u8]| {
    let Some((&read, bytes)) = data.split_first() else {
        return;
    };
    let Some(whole) = frame(bytes, usize::MAX) else {
        return;
    };
    let joined: Vec<u8> = whole
        .iter()
        .flat_map(|(raw, _)| raw.iter().copied())
        .collect();
    assert!(
        bytes.starts_with(&joined),
        "the events are the input, in order"
    );
    assert!(
        bytes[joined.len()..].iter().all(u8::is_ascii_whitespace),
        "only whitespace is dropped at the end"
    );
    if let Some(((_, _), complete)) = whole.split_last() {
        for (raw, _) in complete {
            assert!(
                ends_with_blank_line(raw),
                "an event ends with a blank line: {raw:?}"
            );
        }
    }
    for (raw, data) in &whole {
        let want = spec_data(raw);
        if want.is_some() || data.as_ref().is_some_and(|d| !d.is_empty()) {
            assert_eq!(data, &want, "the data field of {raw:?}");
        }
    }
    if let Some(cut) = frame(bytes, usize::from(read) + 1) {
        assert_eq!(cut, whole, "the reads' sizes change the events");
    }
});
