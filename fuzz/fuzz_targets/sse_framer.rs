//! The SSE framer (`src/sse.rs`) on arbitrary upstream bytes, cut into arbitrary reads.
//!
//! Input: the first byte sets the size of the reads (1–256 bytes), the rest is the stream.
//!
//! Checks: the events it yields are the input byte for byte (a whitespace-only tail aside);
//! every event but the last ends with a blank line; how the bytes are cut into reads changes
//! nothing.
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
    if let Some(cut) = frame(bytes, usize::from(read) + 1) {
        assert_eq!(cut, whole, "the reads' sizes change the events");
    }
});
