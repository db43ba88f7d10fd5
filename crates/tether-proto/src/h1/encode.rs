//! Response encoding: status line, header fields, body framing headers and
//! chunked body framing (RFC 9112 §4, §6, §7.1).
//!
//! The connection decides *which* framing and persistence headers a
//! response carries; this module only writes bytes. Header fields a handler
//! set that the engine owns (`Connection`, `Keep-Alive`, `Content-Length`,
//! `Transfer-Encoding`) are dropped here and written by policy instead, so
//! a response can never say two things about its own framing.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::StatusCode;

/// The framing and persistence header fields the engine adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineHeaders<'a> {
    /// `Content-Length: n`.
    pub content_length: Option<u64>,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// What the `Connection` header says, if anything.
    pub connection: ConnectionHeader,
    /// `Keep-Alive: timeout=T[, max=M]`.
    pub keep_alive: Option<(u64, Option<u32>)>,
    /// `Date: …`, written only when `headers` has no `Date` of its own
    /// (RFC 9110 §6.6.1: the caller, which has the clock, formats it).
    pub date: Option<&'a [u8]>,
}

/// The value of the engine's `Connection` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionHeader {
    /// No `Connection` header (HTTP/1.1 default persistence).
    None,
    /// `Connection: keep-alive` (HTTP/1.0 persistence).
    KeepAlive,
    /// `Connection: close`.
    Close,
}

/// Whether the engine owns this header field (it never copies it from the handler).
fn engine_owned(name: &header::HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == "keep-alive"
}

/// Writes a complete response head.
///
/// With `pass_through` (a `101` response) the handler's header fields are
/// written as they are, `Connection` and `Upgrade` included.
pub fn encode_head(
    out: &mut BytesMut,
    status: StatusCode,
    headers: &HeaderMap,
    engine: &EngineHeaders,
    pass_through: bool,
) {
    let estimate = 64
        + headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    out.reserve(estimate);
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.put_slice(b"\r\n");
    let mut has_date = false;
    for (name, value) in headers {
        if !pass_through && engine_owned(name) {
            continue;
        }
        has_date |= name == header::DATE;
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if let (false, Some(date)) = (has_date, engine.date) {
        out.put_slice(b"date: ");
        out.put_slice(date);
        out.put_slice(b"\r\n");
    }
    if let Some(n) = engine.content_length {
        out.put_slice(b"content-length: ");
        put_decimal(out, n);
        out.put_slice(b"\r\n");
    }
    if engine.chunked {
        out.put_slice(b"transfer-encoding: chunked\r\n");
    }
    match engine.connection {
        ConnectionHeader::None => {}
        ConnectionHeader::KeepAlive => out.put_slice(b"connection: keep-alive\r\n"),
        ConnectionHeader::Close => out.put_slice(b"connection: close\r\n"),
    }
    if let Some((timeout, max)) = engine.keep_alive {
        out.put_slice(b"keep-alive: timeout=");
        put_decimal(out, timeout);
        if let Some(max) = max {
            out.put_slice(b", max=");
            put_decimal(out, u64::from(max));
        }
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

/// Writes `n` in decimal.
pub fn put_decimal(out: &mut BytesMut, n: u64) {
    // Most values here (timeouts, short bodies) have one or two digits.
    if n < 10 {
        out.put_u8(b'0' + n as u8);
        return;
    }
    if n < 100 {
        out.put_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
        return;
    }
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut n = n;
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&tmp[i..]);
}

/// The line that opens a chunk of `len` bytes: `HEX\r\n`.
pub fn chunk_size_line(len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(18);
    let _ = std::fmt::Write::write_fmt(&mut FmtAdapter(&mut b), format_args!("{len:x}\r\n"));
    b.freeze()
}

struct FmtAdapter<'a>(&'a mut BytesMut);
impl std::fmt::Write for FmtAdapter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

/// The CRLF that ends a chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";
/// The last chunk and an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_with_engine_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        h.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "999".parse().unwrap());
        let mut out = BytesMut::new();
        encode_head(
            &mut out,
            StatusCode::OK,
            &h,
            &EngineHeaders {
                content_length: Some(2),
                chunked: false,
                connection: ConnectionHeader::None,
                keep_alive: Some((5, Some(100))),
                date: None,
            },
            false,
        );
        assert_eq!(
            &out[..],
            &b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nkeep-alive: timeout=5, max=100\r\n\r\n"[..]
        );
    }

    #[test]
    fn chunk_lines() {
        assert_eq!(&chunk_size_line(255)[..], b"ff\r\n");
        let mut out = BytesMut::new();
        put_decimal(&mut out, 0);
        put_decimal(&mut out, u64::MAX);
        assert_eq!(&out[..], b"018446744073709551615");
    }

    #[test]
    fn decimals_of_every_length() {
        for n in [0u64, 7, 9, 10, 42, 99, 100, 101, 999, 1000, 65_535, 1 << 40, u64::MAX] {
            let mut out = BytesMut::new();
            put_decimal(&mut out, n);
            assert_eq!(&out[..], n.to_string().as_bytes(), "{n}");
        }
    }
}
