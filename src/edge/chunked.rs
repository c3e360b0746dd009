//! Strict chunked framing (RFC 9112 §7.1): every chunk-size line, chunk extension and trailer
//! line ends with CRLF, and nothing else ends it.
//!
//! Pingora 0.9 parses chunk heads with `httparse::parse_chunk_size`, which accepts a bare LF
//! inside a chunk extension and swallows the rest of the line: a front proxy that ends the line
//! at the LF frames the body differently, and a request can be smuggled past it. Sluice sees
//! the bytes Pingora reads (the connection's stream is wrapped, see [`super::Guarded`]) and
//! checks the framing as they go by; a violation fails the read, and the request is refused as
//! the client's bad request.

/// Why a chunked body is refused.
pub const BAD_FRAMING: &str = "chunked body framing is not valid HTTP/1.1 (RFC 9112 §7.1)";

/// The most hex digits a chunk size may have (2^64 - 1).
const MAX_SIZE_DIGITS: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The chunk size's hex digits (`digits` so far).
    Size {
        digits: u32,
        size: u64,
    },
    /// Whitespace or an extension after the size, up to CR.
    Ext {
        size: u64,
    },
    /// CR after the size line: LF must follow.
    SizeLf {
        size: u64,
    },
    /// Chunk data still to come.
    Data(u64),
    /// CR after the data, then LF.
    DataCr,
    DataLf,
    /// A trailer line (`at_start`: nothing of it read yet).
    Trailer {
        at_start: bool,
    },
    /// CR in a trailer line: LF must follow (`empty`: the line was empty, the body ends).
    TrailerLf {
        empty: bool,
    },
    /// The body ended; what follows is the next request.
    Done,
}

/// Follows one chunked body's framing.
#[derive(Debug, Clone)]
pub struct ChunkedCheck {
    state: State,
}

impl Default for ChunkedCheck {
    fn default() -> Self {
        ChunkedCheck {
            state: State::Size { digits: 0, size: 0 },
        }
    }
}

impl ChunkedCheck {
    /// Feeds the next bytes of the body; `Err` at the first byte the framing does not allow.
    #[cfg(test)]
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), &'static str> {
        self.feed_until_bad(bytes).map_err(|_| BAD_FRAMING)
    }

    /// Like [`ChunkedCheck::feed`]; `Err(i)`: `bytes[i]` is the first byte the framing does not
    /// allow (the bytes before it are valid).
    pub fn feed_until_bad(&mut self, bytes: &[u8]) -> Result<(), usize> {
        let mut i = 0;
        while i < bytes.len() {
            if let State::Data(n) = self.state {
                let take = n.min((bytes.len() - i) as u64);
                i += take as usize;
                self.state = if take == n {
                    State::DataCr
                } else {
                    State::Data(n - take)
                };
                continue;
            }
            self.state = step(self.state, bytes[i]).ok_or(i)?;
            i += 1;
        }
        Ok(())
    }

    pub fn done(&self) -> bool {
        self.state == State::Done
    }
}

fn step(state: State, b: u8) -> Option<State> {
    Some(match state {
        State::Size { digits, size } => match b {
            b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                let v = (b as char).to_digit(16)? as u64;
                if digits >= MAX_SIZE_DIGITS {
                    return None;
                }
                State::Size {
                    digits: digits + 1,
                    size: size.checked_mul(16)?.checked_add(v)?,
                }
            }
            _ if digits == 0 => return None,
            b';' | b' ' | b'\t' => State::Ext { size },
            b'\r' => State::SizeLf { size },
            _ => return None,
        },
        // Any visible byte, space or tab; never a bare LF or another control byte.
        State::Ext { size } => match b {
            b'\r' => State::SizeLf { size },
            b'\t' | 0x20..=0x7e | 0x80..=0xff => State::Ext { size },
            _ => return None,
        },
        State::SizeLf { size } => match b {
            b'\n' if size == 0 => State::Trailer { at_start: true },
            b'\n' => State::Data(size),
            _ => return None,
        },
        State::Data(_) => return None,
        State::DataCr => (b == b'\r').then_some(State::DataLf)?,
        State::DataLf => (b == b'\n').then_some(State::Size { digits: 0, size: 0 })?,
        State::Trailer { at_start } => match b {
            b'\r' => State::TrailerLf { empty: at_start },
            b'\t' | 0x20..=0x7e | 0x80..=0xff => State::Trailer { at_start: false },
            _ => return None,
        },
        State::TrailerLf { empty } => match b {
            b'\n' if empty => State::Done,
            b'\n' => State::Trailer { at_start: true },
            _ => return None,
        },
        State::Done => State::Done,
    })
}

/// Whether a request head says its body is chunked.
pub fn head_is_chunked(head: &[u8]) -> bool {
    let mut from = 0;
    let lines = memchr::memchr_iter(b'\n', head).map(move |pos| {
        let line = &head[from..pos];
        from = pos + 1;
        line
    });
    lines.skip(1).any(|line| {
        // Most lines are told apart by their first byte.
        if !matches!(line.first(), Some(b't' | b'T')) {
            return false;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return false;
        };
        let (name, value) = line.split_at(colon);
        name.trim_ascii().eq_ignore_ascii_case(b"transfer-encoding")
            && value[1..]
                .split(|&b| b == b',')
                .any(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &[u8]) -> Result<bool, &'static str> {
        // Byte by byte and whole: the same verdict.
        let mut a = ChunkedCheck::default();
        let whole = a.feed(body).map(|()| a.done());
        let mut b = ChunkedCheck::default();
        let mut split = Ok(false);
        for byte in body {
            split = b.feed(std::slice::from_ref(byte)).map(|()| b.done());
            if split.is_err() {
                break;
            }
        }
        assert_eq!(whole, split, "{:?}", String::from_utf8_lossy(body));
        whole
    }

    #[test]
    fn valid_bodies() {
        assert_eq!(check(b"5\r\nhello\r\n0\r\n\r\n"), Ok(true));
        assert_eq!(check(b"5;name=value\r\nhello\r\n0\r\n\r\n"), Ok(true));
        assert_eq!(check(b"A\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\n"), Ok(true));
        assert_eq!(check(b"5\r\nhel"), Ok(false));
    }

    #[test]
    fn bare_lf_and_other_framing_errors() {
        for bad in [
            &b"5;ext\nx\r\nhello\r\n0\r\n\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloX\r\n",
            b"zz\r\n",
            b"\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"11111111111111111\r\n",
            b"5;a\x00b\r\nhello",
        ] {
            assert!(check(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn chunked_heads() {
        assert!(head_is_chunked(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        ));
        assert!(!head_is_chunked(
            b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n"
        ));
        assert!(!head_is_chunked(
            b"POST /transfer-encoding:chunked HTTP/1.1\r\n\r\n"
        ));
    }
}
