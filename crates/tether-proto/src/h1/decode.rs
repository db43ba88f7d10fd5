//! Request body framing: `Content-Length` and `chunked` (RFC 9112 §6, §7.1).
//!
//! The decoder takes bytes from the front of the connection's read buffer
//! and yields body chunks as zero-copy `Bytes`. It never reads past the
//! end of the body, so whatever follows is the next request, exactly.
//! Every line of the chunked framing (chunk-size lines, the end of chunk
//! data, trailer lines and the final empty line) must end in CRLF (RFC 9112
//! §7.1): a bare LF is refused, since a proxy in front that reads it
//! differently would frame the body differently (request smuggling). Sizes
//! are 1 to 16 hex digits (an empty size is an error, not zero); chunk
//! extensions are checked for forbidden bytes, counted against a bound and
//! ignored; trailers are bounded like a head and returned as a `HeaderMap`.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Total chunk-extension bytes accepted in one body.
pub const MAX_CHUNK_EXTENSIONS: usize = 16 * 1024;

/// What went wrong in a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Invalid chunked framing (size, extension, line end or trailer).
    #[error("invalid chunked encoding")]
    InvalidChunk,
    /// The body is larger than the limit.
    #[error("request body too large")]
    TooLarge,
    /// The trailer section is larger than the limits.
    #[error("trailer section too large")]
    TrailersTooLarge,
    /// The peer closed before the body was complete.
    #[error("connection closed before the request body was complete")]
    Incomplete,
    /// The body made no progress within the body timeout.
    #[error("request body timed out")]
    Timeout,
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The body is complete; trailers, if any were sent.
    End(Option<HeaderMap>),
    /// More input is needed.
    NeedMore,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// Reading trailer lines after the last chunk.
    Trailers,
    /// Done.
    Done,
}

/// Decodes one request body.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    kind: Kind,
    received: u64,
    max_body: u64,
    // The four below are u32 (saturating: they are bounded far below), so
    // a decoder in flight keeps an idle-sized connection small.
    max_trailer_bytes: u32,
    max_trailers: u32,
    extension_bytes: u32,
    trailer_bytes: u32,
    trailers: Option<Box<HeaderMap>>,
}

#[derive(Debug, Clone)]
enum Kind {
    Length(u64),
    Chunked(Chunked),
}

impl BodyDecoder {
    /// A body of exactly `n` bytes.
    pub fn length(n: u64) -> Self {
        Self::new(Kind::Length(n), u64::MAX, 0, 0)
    }

    /// A chunked body with limits on its total size and trailer section.
    pub fn chunked(max_body: u64, max_trailer_bytes: usize, max_trailers: usize) -> Self {
        Self::new(Kind::Chunked(Chunked::Size), max_body, max_trailer_bytes, max_trailers)
    }

    fn new(kind: Kind, max_body: u64, max_trailer_bytes: usize, max_trailers: usize) -> Self {
        Self {
            kind,
            received: 0,
            max_body,
            max_trailer_bytes: u32::try_from(max_trailer_bytes).unwrap_or(u32::MAX),
            max_trailers: u32::try_from(max_trailers).unwrap_or(u32::MAX),
            extension_bytes: 0,
            trailer_bytes: 0,
            trailers: None,
        }
    }

    /// Body bytes decoded so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Whether the whole body has been decoded.
    pub fn is_done(&self) -> bool {
        matches!(self.kind, Kind::Length(0) | Kind::Chunked(Chunked::Done))
    }

    /// Body bytes still expected, when known (`Content-Length`).
    pub fn remaining(&self) -> Option<u64> {
        match self.kind {
            Kind::Length(n) => Some(n),
            Kind::Chunked(Chunked::Done) => Some(0),
            Kind::Chunked(_) => None,
        }
    }

    /// Decodes the next piece from the front of `buf`, consuming what it uses.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, BodyError> {
        loop {
            match &mut self.kind {
                Kind::Length(0) => return Ok(Decoded::End(None)),
                Kind::Length(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = (*n).min(buf.len() as u64) as usize;
                    *n -= take as u64;
                    self.received += take as u64;
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                Kind::Chunked(Chunked::Done) => return Ok(Decoded::End(self.trailers.take().map(|t| *t))),
                Kind::Chunked(Chunked::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = (*left).min(buf.len() as u64) as usize;
                    *left -= take as u64;
                    if *left == 0 {
                        self.kind = Kind::Chunked(Chunked::DataEnd);
                    }
                    self.received += take as u64;
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                Kind::Chunked(Chunked::DataEnd) => match buf.first() {
                    None => return Ok(Decoded::NeedMore),
                    Some(b'\r') => match buf.get(1) {
                        None => return Ok(Decoded::NeedMore),
                        Some(b'\n') => {
                            buf.advance(2);
                            self.kind = Kind::Chunked(Chunked::Size);
                        }
                        Some(_) => return Err(BodyError::InvalidChunk),
                    },
                    Some(_) => return Err(BodyError::InvalidChunk),
                },
                Kind::Chunked(Chunked::Size) => {
                    let Some(line) = take_line(buf, MAX_CHUNK_EXTENSIONS + 64, BodyError::InvalidChunk)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let (size, ext_len) = parse_size_line(&line)?;
                    self.extension_bytes = self.extension_bytes.saturating_add(ext_len as u32);
                    if self.extension_bytes as usize > MAX_CHUNK_EXTENSIONS {
                        return Err(BodyError::InvalidChunk);
                    }
                    if size == 0 {
                        self.kind = Kind::Chunked(Chunked::Trailers);
                    } else {
                        if self.received.saturating_add(size) > self.max_body {
                            return Err(BodyError::TooLarge);
                        }
                        self.kind = Kind::Chunked(Chunked::Data(size));
                    }
                }
                Kind::Chunked(Chunked::Trailers) => {
                    let limit = self.max_trailer_bytes.saturating_sub(self.trailer_bytes) as usize + 2;
                    let Some(line) = take_line(buf, limit, BodyError::TrailersTooLarge)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    self.trailer_bytes = self
                        .trailer_bytes
                        .saturating_add(u32::try_from(line.len() + 2).unwrap_or(u32::MAX));
                    if u64::from(self.trailer_bytes) > u64::from(self.max_trailer_bytes) + 2 {
                        return Err(BodyError::TrailersTooLarge);
                    }
                    if line.is_empty() {
                        self.kind = Kind::Chunked(Chunked::Done);
                        continue;
                    }
                    self.push_trailer(&line)?;
                }
            }
        }
    }

    fn push_trailer(&mut self, line: &[u8]) -> Result<(), BodyError> {
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(BodyError::InvalidChunk);
        }
        let colon = line.iter().position(|&b| b == b':').ok_or(BodyError::InvalidChunk)?;
        let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| BodyError::InvalidChunk)?;
        let mut value = &line[colon + 1..];
        while let [b' ' | b'\t', rest @ ..] = value {
            value = rest;
        }
        while let [rest @ .., b' ' | b'\t'] = value {
            value = rest;
        }
        let value = HeaderValue::from_bytes(value).map_err(|_| BodyError::InvalidChunk)?;
        let trailers = self.trailers.get_or_insert_with(Default::default);
        if trailers.len() >= self.max_trailers as usize {
            return Err(BodyError::TrailersTooLarge);
        }
        trailers.append(name, value);
        Ok(())
    }
}

/// Takes one line (without its CRLF) if a whole line is buffered. A line
/// must end in CRLF; a bare LF, or a CR anywhere else, is `InvalidChunk`.
/// No line end within `limit` bytes is `too_long`. Which error comes out
/// depends only on the bytes, never on how they were split into reads.
fn take_line(buf: &mut BytesMut, limit: usize, too_long: BodyError) -> Result<Option<BytesMut>, BodyError> {
    let window = &buf[..buf.len().min(limit)];
    match window.iter().position(|&b| b == b'\n') {
        Some(0) => Err(BodyError::InvalidChunk),
        Some(lf) => {
            if window[lf - 1] != b'\r' || window[..lf - 1].contains(&b'\r') {
                return Err(BodyError::InvalidChunk);
            }
            let mut line = buf.split_to(lf + 1);
            line.truncate(lf - 1);
            Ok(Some(line))
        }
        None if buf.len() >= limit => Err(too_long),
        None => Ok(None),
    }
}

/// Parses `1*HEXDIG [BWS ; ext...]`, returning the size and extension length.
fn parse_size_line(line: &[u8]) -> Result<(u64, usize), BodyError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(BodyError::InvalidChunk);
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let d = (b as char).to_digit(16).ok_or(BodyError::InvalidChunk)? as u64;
        size = (size << 4) | d;
    }
    let mut rest = &line[digits..];
    while let [b' ' | b'\t', r @ ..] = rest {
        rest = r;
    }
    if rest.is_empty() {
        return Ok((size, 0));
    }
    if rest[0] != b';' {
        return Err(BodyError::InvalidChunk);
    }
    // chunk-ext: visible characters, spaces, tabs and obs-text; no CTLs.
    if rest.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(BodyError::InvalidChunk);
    }
    Ok((size, rest.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(
        dec: &mut BodyDecoder,
        input: &[u8],
        split: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, BytesMut), BodyError> {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut pieces = vec![&input[..split.min(input.len())], &input[split.min(input.len())..]].into_iter();
        loop {
            match dec.decode(&mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::End(t) => {
                    for p in pieces {
                        buf.extend_from_slice(p);
                    }
                    return Ok((body, t, buf));
                }
                Decoded::NeedMore => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => return Err(BodyError::Incomplete),
                },
            }
        }
    }

    fn chunked(input: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>, BytesMut), BodyError> {
        // Same result at every split point.
        let first = decode_all(&mut BodyDecoder::chunked(1 << 20, 1024, 10), input, 0);
        for split in 1..=input.len() {
            let other = decode_all(&mut BodyDecoder::chunked(1 << 20, 1024, 10), input, split);
            assert_eq!(format!("{first:?}"), format!("{other:?}"), "split {split}");
        }
        first
    }

    /// Found by the `h1_body` fuzz target (docs/fuzzing.md): a malformed
    /// trailer line (a bare CR) read together with more bytes than the
    /// trailer limit was reported as "too large", and as "invalid" when it
    /// arrived in a shorter read. The error depends on the bytes only.
    #[test]
    fn a_malformed_trailer_line_is_invalid_however_it_is_split() {
        let mut input = b"0\r\nX: a\rb\r\n".to_vec();
        input.extend_from_slice(&[b'f'; 40]);
        for split in 0..=input.len() {
            let got = decode_all(&mut BodyDecoder::chunked(1 << 20, 16, 10), &input, split);
            assert_eq!(got.err(), Some(BodyError::InvalidChunk), "split {split}");
        }
        // A trailer line with no end within the limit is too large.
        let mut long = b"0\r\nX: ".to_vec();
        long.extend_from_slice(&[b'f'; 40]);
        for split in 0..=long.len() {
            let got = decode_all(&mut BodyDecoder::chunked(1 << 20, 16, 10), &long, split);
            assert_eq!(got.err(), Some(BodyError::TrailersTooLarge), "split {split}");
        }
    }

    #[test]
    fn length_body_stops_at_its_end() {
        let (body, _, rest) = decode_all(&mut BodyDecoder::length(5), b"helloGET /", 3).unwrap();
        assert_eq!(body, b"hello");
        assert_eq!(&rest[..], b"GET /");
    }

    #[test]
    fn chunked_basic_with_extensions_and_trailers() {
        let (body, trailers, rest) =
            chunked(b"5;name=value\r\nhello\r\n6 ; x\r\n world\r\n0\r\nX-Sum: 1\r\n\r\nNEXT").unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(trailers.unwrap()["x-sum"], "1");
        assert_eq!(&rest[..], b"NEXT");
    }

    #[test]
    fn chunked_lines_need_crlf() {
        // RFC 9112 §7.1: every line of the framing ends in CRLF. Each of
        // these has one bare LF (the two reports first).
        for bad in [
            &b"5;ext\nhello\r\n0\r\n\r\n"[..],
            b"5\nhello\n0\n\n",
            b"3\nabc\r\n0\r\n\r\n",         // size line
            b"3\r\nabc\n0\r\n\r\n",         // end of chunk data
            b"3\r\nabc\r\n0\n\r\n",         // last-chunk line
            b"3\r\nabc\r\n0\r\nT: v\n\r\n", // trailer line
            b"3\r\nabc\r\n0\r\n\n",         // final empty line
            b"3\r\nabc\r\n0\r\n\r\r\n",     // a CR before the CRLF
        ] {
            assert_eq!(
                chunked(bad).unwrap_err(),
                BodyError::InvalidChunk,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn invalid_chunks() {
        for bad in [
            &b"\r\nabc\r\n0\r\n\r\n"[..], // empty size is not zero
            b"zz\r\n",
            b"-1\r\n",
            b"0x3\r\nabc\r\n0\r\n\r\n",
            b"11111111111111111\r\n",  // 17 hex digits: overflow
            b"3\r\nabcX\r\n0\r\n\r\n", // data not followed by CRLF
            b"3\rX\nabc\r\n0\r\n\r\n", // bare CR
            b"3;a\x01b\r\nabc\r\n0\r\n\r\n",
            b"0\r\n bad: fold\r\n\r\n",
            b"0\r\nno colon\r\n\r\n",
        ] {
            assert!(chunked(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn chunked_size_limit() {
        let mut dec = BodyDecoder::chunked(10, 1024, 10);
        assert_eq!(
            decode_all(&mut dec, b"b\r\nhello world\r\n0\r\n\r\n", 0).unwrap_err(),
            BodyError::TooLarge
        );
    }

    #[test]
    fn extension_and_trailer_bounds() {
        let long_ext = format!("1;{}\r\na\r\n0\r\n\r\n", "x".repeat(MAX_CHUNK_EXTENSIONS + 10));
        assert!(decode_all(&mut BodyDecoder::chunked(1 << 20, 1024, 10), long_ext.as_bytes(), 0).is_err());
        let many: String = (0..11).map(|i| format!("T{i}: v\r\n")).collect();
        let input = format!("0\r\n{many}\r\n");
        assert_eq!(
            decode_all(&mut BodyDecoder::chunked(1 << 20, 1024, 10), input.as_bytes(), 0).unwrap_err(),
            BodyError::TrailersTooLarge
        );
        let big = format!("0\r\nT: {}\r\n\r\n", "v".repeat(2000));
        assert_eq!(
            decode_all(&mut BodyDecoder::chunked(1 << 20, 1024, 10), big.as_bytes(), 0).unwrap_err(),
            BodyError::TrailersTooLarge
        );
    }
}
