//! Splits a `text/event-stream` body into events as bytes arrive.
//!
//! Pingora hands the body over in reads of any size: an event may be split across reads and one
//! read may hold several. The framer keeps the incomplete tail (bounded) and yields whole events,
//! each with its terminating blank line, so they can be passed on byte for byte.

use bytes::{Bytes, BytesMut};

/// Incremental SSE framer with a bounded carry buffer.
pub struct SseFramer {
    carry: BytesMut,
    max_event: usize,
}

/// An event as received: its raw bytes (with the blank line) and its joined `data:` payload.
pub struct RawEvent {
    pub raw: Bytes,
    pub data: Option<Bytes>,
}

/// An event grew past the configured bound without ending.
#[derive(Debug)]
pub struct EventTooLarge;

impl SseFramer {
    pub fn new(max_event: usize) -> SseFramer {
        SseFramer {
            carry: BytesMut::new(),
            max_event,
        }
    }

    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<RawEvent>) -> Result<(), EventTooLarge> {
        self.carry.extend_from_slice(chunk);
        while let Some(end) = find_event_end(&self.carry) {
            let raw = self.carry.split_to(end).freeze();
            let data = data_field(&raw);
            out.push(RawEvent { raw, data });
        }
        if self.carry.len() > self.max_event {
            return Err(EventTooLarge);
        }
        Ok(())
    }

    /// At end of stream: whatever is left (an event without its blank line).
    pub fn finish(&mut self, out: &mut Vec<RawEvent>) {
        if self.carry.iter().all(|b| b.is_ascii_whitespace()) {
            self.carry.clear();
            return;
        }
        let raw = self.carry.split().freeze();
        let data = data_field(&raw);
        out.push(RawEvent { raw, data });
    }
}

/// The index just past the first blank line (`\n\n`, `\r\n\r\n`, `\r\r`, mixed).
fn find_event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        // Jump to the next line terminator: events are mostly long `data:` lines.
        match memchr::memchr2(b'\n', b'\r', &buf[i..]) {
            Some(k) => i += k,
            None => return None,
        }
        match buf[i] {
            b'\n' => {
                // A line ended at i; is the next line empty?
                match buf.get(i + 1) {
                    Some(b'\n') => return Some(i + 2),
                    Some(b'\r') => {
                        if buf.get(i + 2) == Some(&b'\n') {
                            return Some(i + 3);
                        }
                        if i + 2 < buf.len() {
                            return Some(i + 2);
                        }
                        return None;
                    }
                    _ => {}
                }
            }
            b'\r' => match buf.get(i + 1) {
                Some(b'\n') => {
                    i += 1;
                    continue;
                }
                Some(b'\r') => return Some(i + 2),
                _ => {}
            },
            _ => {}
        }
        i += 1;
    }
    None
}

/// Joins the event's `data:` lines with `\n`, as the SSE spec says. The usual event, one
/// `data: ` line, is sliced out of `raw` without a copy.
fn data_field(raw: &Bytes) -> Option<Bytes> {
    if let Some(rest) = raw.strip_prefix(b"data: ") {
        if let Some(eol) = memchr::memchr2(b'\n', b'\r', rest) {
            if rest[eol..].iter().all(|b| matches!(b, b'\n' | b'\r')) {
                return Some(raw.slice(6..6 + eol));
            }
        }
    }
    let mut data: Option<Vec<u8>> = None;
    // Lines end with LF, CRLF or CR; the empty pieces a CRLF leaves hold no field.
    for line in raw.split(|&b| b == b'\n' || b == b'\r') {
        if let Some(rest) = line.strip_prefix(b"data") {
            let value = match rest {
                [] => &[][..],
                [b':', b' ', v @ ..] => v,
                [b':', v @ ..] => v,
                _ => continue,
            };
            // Joined with LF whatever the values: an empty `data` line still counts.
            match &mut data {
                Some(d) => {
                    d.push(b'\n');
                    d.extend_from_slice(value);
                }
                None => data = Some(value.to_vec()),
            }
        }
    }
    data.map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_all(parts: &[&[u8]]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut f = SseFramer::new(1 << 20);
        let mut out = Vec::new();
        for p in parts {
            f.push(p, &mut out).unwrap_or_else(|_| panic!("too large"));
        }
        f.finish(&mut out);
        out.into_iter()
            .map(|e| (e.raw.to_vec(), e.data.map(|d| d.to_vec())))
            .collect()
    }

    #[test]
    fn splits_at_every_offset() {
        let stream = b"data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\n: comment\n\ndata: [DONE]\n\n";
        let whole = frame_all(&[stream]);
        assert_eq!(whole.len(), 4);
        assert_eq!(whole[0].1.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(whole[1].1.as_deref(), Some(&b"{\"b\":2}"[..]));
        assert_eq!(whole[2].1, None);
        assert_eq!(whole[3].1.as_deref(), Some(&b"[DONE]"[..]));
        for i in 0..stream.len() {
            for j in i..stream.len() {
                let got = frame_all(&[&stream[..i], &stream[i..j], &stream[j..]]);
                assert_eq!(got, whole, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn multiline_data_and_tail() {
        let got = frame_all(&[b"data: x\ndata: y\n\ndata: tail"]);
        assert_eq!(got[0].1.as_deref(), Some(&b"x\ny"[..]));
        assert_eq!(got[1].1.as_deref(), Some(&b"tail"[..]));
        // One data line followed by another field: not the single-line shortcut.
        let got = frame_all(&[b"data: x\n: note\nid: 7\n\ndata:y\r\rdata: z\r\n\r\n"]);
        let data: Vec<_> = got.iter().map(|e| e.1.as_deref()).collect();
        assert_eq!(data, [Some(&b"x"[..]), Some(&b"y"[..]), Some(&b"z"[..])]);
    }

    #[test]
    fn empty_data_lines_are_joined_too() {
        // Found by fuzz/fuzz_targets/sse_framer.rs: the empty first value was dropped ("y").
        let got = frame_all(&[b"data\n\x07data: x\rdata: y\r\r"]);
        assert_eq!(got[0].1.as_deref(), Some(&b"\ny"[..]));
        let got = frame_all(&[b"data:\ndata:\n\ndata: a\ndata:\n\n"]);
        let data: Vec<_> = got.iter().map(|e| e.1.as_deref()).collect();
        assert_eq!(data, [Some(&b"\n"[..]), Some(&b"a\n"[..])]);
    }

    #[test]
    fn bounded() {
        let mut f = SseFramer::new(1024);
        let mut out = Vec::new();
        assert!(f.push(&[b'a'; 2000], &mut out).is_err());
    }
}
