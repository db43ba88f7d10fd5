//! Request head parsing and validation (RFC 9112 §2–§7, RFC 9110 §7.6.1).
//!
//! `httparse` finds the request line and header fields; this module decides
//! what they mean for framing and persistence and rejects everything that
//! could be read two ways (request smuggling): `Content-Length` together
//! with `Transfer-Encoding`, differing `Content-Length` values, a final
//! coding other than `chunked`, obs-fold, a missing or repeated `Host`.
//! It never allocates beyond the request's own data: header values are
//! zero-copy slices of the frozen head buffer (not byte-checked a second
//! time: httparse accepted exactly the bytes `HeaderValue` allows), and the
//! header map is a spare one handed back with [`recycle_header_map`] (a
//! sent response's, emptied) whenever one is big enough.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

use super::config::{Config, HEADER_CAPACITY};

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// `Content-Length: n` (n > 0).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed, validated request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// The request method.
    pub method: Method,
    /// The request target.
    pub uri: Uri,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// All header fields as received (names lower-cased).
    pub headers: HeaderMap,
    /// How the body is framed.
    pub body: BodyFraming,
    /// Whether the client allows the connection to persist after this request.
    pub keep_alive: bool,
    /// `Connection: close` was present.
    pub client_close: bool,
    /// The client asked to switch protocols (`Connection: upgrade` + `Upgrade`).
    pub upgrade: bool,
    /// `Expect: 100-continue` was present (HTTP/1.1 only).
    pub expect_continue: bool,
}

/// Why a request head was refused; each maps to one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Syntax error in the request line or a header field.
    #[error("malformed request head")]
    Malformed,
    /// A header line began with whitespace (obs-fold).
    #[error("obsolete line folding in a header field")]
    ObsFold,
    /// The request line names a version other than HTTP/1.0 or HTTP/1.1.
    #[error("unsupported HTTP version")]
    Version,
    /// The request head is larger than the limit.
    #[error("request head too large")]
    HeadTooLarge,
    /// More header fields than the limit.
    #[error("too many header fields")]
    TooManyHeaders,
    /// The request target is longer than the limit.
    #[error("request target too long")]
    TargetTooLong,
    /// An HTTP/1.1 request without exactly one `Host`, or a `Host` value
    /// that is not `uri-host [ ":" port ]` (RFC 9112 §3.2).
    #[error("missing, repeated or invalid Host header")]
    Host,
    /// A request target that is none of the four forms (RFC 9112 §3.2):
    /// origin-form must start with `/`, `*` is for `OPTIONS` only,
    /// authority-form for `CONNECT` only, absolute-form needs a scheme and
    /// an authority.
    #[error("invalid request target")]
    Target,
    /// A method longer than any this server could implement.
    #[error("method too long")]
    MethodTooLong,
    /// Bad or conflicting `Content-Length`.
    #[error("invalid Content-Length")]
    ContentLength,
    /// Both `Content-Length` and `Transfer-Encoding`.
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndEncoding,
    /// A `Transfer-Encoding` whose final coding is not `chunked`, or in HTTP/1.0.
    #[error("invalid Transfer-Encoding")]
    TransferEncoding,
    /// A transfer coding this server does not implement.
    #[error("unsupported transfer coding")]
    UnknownCoding,
    /// A declared body larger than the limit.
    #[error("request body too large")]
    BodyTooLarge,
    /// An `Expect` value other than `100-continue`.
    #[error("unsupported expectation")]
    Expectation,
}

impl HeadError {
    /// The status code that answers this error.
    pub fn status(self) -> StatusCode {
        match self {
            HeadError::Malformed
            | HeadError::ObsFold
            | HeadError::Host
            | HeadError::Target
            | HeadError::ContentLength
            | HeadError::LengthAndEncoding
            | HeadError::TransferEncoding => StatusCode::BAD_REQUEST,
            HeadError::Version => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            HeadError::HeadTooLarge | HeadError::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::TargetTooLong => StatusCode::URI_TOO_LONG,
            HeadError::UnknownCoding | HeadError::MethodTooLong => StatusCode::NOT_IMPLEMENTED,
            HeadError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            HeadError::Expectation => StatusCode::EXPECTATION_FAILED,
        }
    }
}

thread_local! {
    static FIELD_OFFSETS: RefCell<Vec<(u32, u32, u32, u32)>> = const { RefCell::new(Vec::new()) };
    /// Emptied header maps handed back by [`recycle_header_map`] (at most
    /// [`SPARE_MAPS`], each small), reused for the next request heads.
    static SPARE_HEADER_MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// Spare header maps kept per thread.
const SPARE_MAPS: usize = 4;
/// Larger maps are freed, not kept.
const SPARE_MAP_MAX_CAPACITY: usize = 32;

/// Hands back a header map that is no longer needed (typically a sent
/// response's), so that a later request head fills it instead of
/// allocating a new one (a map's two allocations and frees are about 250
/// instructions). Keeps a few small maps per thread; frees the rest.
pub fn recycle_header_map(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > SPARE_MAP_MAX_CAPACITY {
        return;
    }
    SPARE_HEADER_MAPS.with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut() {
            if spare.len() < SPARE_MAPS {
                map.clear();
                spare.push(map);
            }
        }
    });
}

/// An empty map with room for `fields` fields: a spare one if one is big
/// enough, else a new one.
fn header_map_for(fields: usize) -> HeaderMap {
    SPARE_HEADER_MAPS
        .with(|spare| {
            let mut spare = spare.try_borrow_mut().ok()?;
            match spare.last() {
                Some(map) if map.capacity() >= fields => spare.pop(),
                _ => None,
            }
        })
        .unwrap_or_else(|| HeaderMap::with_capacity(fields))
}

/// Parses a request head from the front of `buf`: `Ok(None)` while it is
/// incomplete (after checking the size limits); on success the head's bytes
/// are split off `buf` and header values are zero-copy slices of them.
pub fn parse_request(buf: &mut BytesMut, config: &Config) -> Result<Option<RequestHead>, HeadError> {
    // Left uninitialised: httparse fills what it parses (no 4 KiB memset per request).
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADER_CAPACITY];
    let cap = config.max_headers.clamp(1, HEADER_CAPACITY - 1);
    let mut req = httparse::Request::new(&mut []);
    // One spare slot so that exactly `max_headers` fields still parse and
    // one more reports TooManyHeaders.
    let n = match req.parse_with_uninit_headers(buf, &mut storage[..cap + 1]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            check_partial(buf, config)?;
            return Ok(None);
        }
        Err(e) => return Err(map_httparse_error(e, buf)),
    };
    if req.headers.len() > cap {
        return Err(HeadError::TooManyHeaders);
    }
    if n > config.max_head {
        return Err(HeadError::HeadTooLarge);
    }
    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let method_bytes = req.method.unwrap_or("").as_bytes();
    if method_bytes.len() > MAX_METHOD {
        return Err(HeadError::MethodTooLong);
    }
    let method = Method::from_bytes(method_bytes).map_err(|_| HeadError::Malformed)?;
    let path = range(req.path.unwrap_or("").as_bytes());
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(HeadError::Version),
    };
    // Where each field's name and value sit in the head, in a per-thread
    // scratch list (no allocation once warm).
    FIELD_OFFSETS.with(|fields| {
        let mut fields = fields.borrow_mut();
        fields.clear();
        fields.extend(req.headers.iter().map(|h| {
            let (ns, nl) = range(h.name.as_bytes());
            let (vs, vl) = range(h.value);
            (ns as u32, nl as u32, vs as u32, vl as u32)
        }));
    });
    let head = buf.split_to(n).freeze();
    let (start, len) = path;
    if len > config.max_target {
        return Err(HeadError::TargetTooLong);
    }
    if len == 0 {
        return Err(HeadError::Malformed);
    }
    let uri = Uri::from_maybe_shared(head.slice(start..start + len)).map_err(|_| HeadError::Malformed)?;
    check_target_form(&head[start..start + len], &method, &uri)?;
    let mut seen = FieldsSeen::default();
    let headers = FIELD_OFFSETS.with(|fields| {
        let fields = fields.borrow();
        let mut headers = header_map_for(fields.len());
        for &(ns, nl, vs, vl) in fields.iter() {
            let (ns, nl, vs, vl) = (ns as usize, nl as usize, vs as usize, vl as usize);
            let name = HeaderName::from_bytes(&head[ns..ns + nl]).map_err(|_| HeadError::Malformed)?;
            seen.note(&name, &head[vs..vs + vl]);
            let value = if vl == 0 {
                HeaderValue::from_static("")
            } else {
                header_value(head.slice(vs..vs + vl))
            };
            headers.append(name, value);
        }
        Ok(headers)
    })?;
    interpret(method, uri, version, headers, seen, config).map(Some)
}

/// A field value as httparse accepted it, without checking its bytes again.
#[allow(unsafe_code)]
fn header_value(bytes: bytes::Bytes) -> HeaderValue {
    debug_assert!(bytes.iter().all(|&b| is_field_value_byte(b)));
    // SAFETY: `from_maybe_shared_unchecked` requires what
    // `HeaderValue::from_maybe_shared` checks: every byte is HTAB, SP, VCHAR
    // or obs-text (not a control byte, not DEL). httparse returns a field
    // value only when every byte of it is in exactly that set (its
    // `HEADER_VALUE_MAP`, RFC 9110 §5.5 field-vchar); the test
    // `h1::tests::httparse_values_satisfy_header_value` checks this for all
    // 256 byte values, and debug builds assert it here. Checking again cost
    // about 75 instructions per field (callgrind), a thousand for a
    // browser's request.
    unsafe { HeaderValue::from_maybe_shared_unchecked(bytes) }
}

/// RFC 9110 §5.5: `field-vchar / SP / HTAB`, obs-text included.
pub(crate) fn is_field_value_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// Which fields that decide framing and persistence a head carries, noted
/// while its map is built (so the map is not searched for them again).
#[derive(Debug, Default, Clone, Copy)]
struct FieldsSeen {
    hosts: usize,
    /// Every `Host` value seen is `uri-host [ ":" port ]`.
    hosts_valid: bool,
    content_length: bool,
    transfer_encoding: bool,
    connection: bool,
    expect: bool,
    upgrade: bool,
}

impl FieldsSeen {
    fn note(&mut self, name: &HeaderName, value: &[u8]) {
        if name == header::HOST {
            self.hosts_valid = (self.hosts == 0 || self.hosts_valid) && is_valid_host(value);
            self.hosts += 1;
        } else if name == header::CONTENT_LENGTH {
            self.content_length = true;
        } else if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if name == header::CONNECTION {
            self.connection = true;
        } else if name == header::EXPECT {
            self.expect = true;
        } else if name == header::UPGRADE {
            self.upgrade = true;
        }
    }
}

fn check_partial(buf: &[u8], config: &Config) -> Result<(), HeadError> {
    // The method is still arriving and already longer than any we could
    // implement (empty lines before the request line are skipped).
    let line = &buf[buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buf.len())..];
    if line.len() > MAX_METHOD && !line[..=MAX_METHOD].contains(&b' ') {
        return Err(HeadError::MethodTooLong);
    }
    // The request line is not complete yet and already longer than any
    // acceptable one: the target is too long.
    let line_end = memchr(b'\n', buf);
    if line_end.is_none() && buf.len() > config.max_target + 64 {
        return Err(HeadError::TargetTooLong);
    }
    if buf.len() > config.max_head {
        return Err(HeadError::HeadTooLarge);
    }
    Ok(())
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

fn map_httparse_error(e: httparse::Error, buf: &[u8]) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        httparse::Error::Version => {
            // `HTTP/2.0`, `HTTP/3.0` are real versions we do not speak; any
            // other shape is a syntax error.
            if looks_like_other_version(buf) {
                HeadError::Version
            } else {
                HeadError::Malformed
            }
        }
        httparse::Error::HeaderName | httparse::Error::NewLine | httparse::Error::HeaderValue if has_obs_fold(buf) => {
            HeadError::ObsFold
        }
        _ => HeadError::Malformed,
    }
}

fn looks_like_other_version(buf: &[u8]) -> bool {
    let line_end = memchr(b'\n', buf).unwrap_or(buf.len());
    let line = &buf[..line_end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line.iter().rposition(|&b| b == b' ') {
        Some(sp) => {
            let v = &line[sp + 1..];
            v.len() == 8 && v.starts_with(b"HTTP/") && v[5].is_ascii_digit() && v[6] == b'.' && v[7].is_ascii_digit()
        }
        None => false,
    }
}

fn has_obs_fold(buf: &[u8]) -> bool {
    buf.windows(2).any(|w| w[0] == b'\n' && (w[1] == b' ' || w[1] == b'\t'))
}

/// Iterates the comma-separated tokens of every `name` header field,
/// trimmed, empties skipped.
pub fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

/// Whether the `name` token list contains `token` (ASCII case-insensitive).
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether one field value's comma-separated list holds `token` (ASCII
/// case-insensitive, optional whitespace trimmed).
pub(crate) fn list_has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim_ows(t).eq_ignore_ascii_case(token))
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn interpret(
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    seen: FieldsSeen,
    config: &Config,
) -> Result<RequestHead, HeadError> {
    // Only the framing and persistence fields the head carries are looked
    // up (most requests have none but `Host`).
    let FieldsSeen {
        hosts,
        hosts_valid: _,
        content_length: has_cl,
        transfer_encoding: has_te,
        connection: has_connection,
        expect: has_expect,
        upgrade: has_upgrade,
    } = seen;

    // Host: exactly one in HTTP/1.1, and a valid value (RFC 9112 §3.2).
    if (version == Version::HTTP_11 && hosts != 1) || hosts > 1 || (hosts == 1 && !seen.hosts_valid) {
        return Err(HeadError::Host);
    }

    // Content-Length: digits only; several values must agree.
    let mut content_length: Option<u64> = None;
    for value in has_cl
        .then(|| headers.get_all(header::CONTENT_LENGTH))
        .into_iter()
        .flatten()
    {
        let bytes = value.as_bytes();
        if bytes.is_empty() {
            return Err(HeadError::ContentLength);
        }
        for part in bytes.split(|&b| b == b',') {
            let n = parse_decimal(trim_ows(part)).ok_or(HeadError::ContentLength)?;
            match content_length {
                Some(prev) if prev != n => return Err(HeadError::ContentLength),
                _ => content_length = Some(n),
            }
        }
    }

    let body = if has_te {
        if content_length.is_some() {
            return Err(HeadError::LengthAndEncoding);
        }
        if version == Version::HTTP_10 {
            return Err(HeadError::TransferEncoding);
        }
        let mut codings = 0usize;
        let mut chunked_seen = false;
        let mut last_is_chunked = false;
        let mut unknown = false;
        for t in tokens(&headers, &header::TRANSFER_ENCODING) {
            codings += 1;
            // Parameters after `;` are not allowed on chunked; keep the name.
            let name = t.split(|&b| b == b';').next().map(trim_ows).unwrap_or(t);
            let is_chunked = name.eq_ignore_ascii_case(b"chunked");
            if is_chunked {
                if chunked_seen {
                    return Err(HeadError::TransferEncoding);
                }
                chunked_seen = true;
                if name.len() != t.len() {
                    return Err(HeadError::TransferEncoding);
                }
            } else if !is_token(name) {
                return Err(HeadError::TransferEncoding);
            } else {
                unknown = true;
            }
            last_is_chunked = is_chunked;
        }
        if codings == 0 || !last_is_chunked {
            return Err(HeadError::TransferEncoding);
        }
        if unknown {
            return Err(HeadError::UnknownCoding);
        }
        BodyFraming::Chunked
    } else {
        match content_length {
            None | Some(0) => BodyFraming::Empty,
            Some(n) if n > config.max_body => return Err(HeadError::BodyTooLarge),
            Some(n) => BodyFraming::Length(n),
        }
    };

    let (mut client_close, mut keep_alive_token, mut upgrade_token) = (false, false, false);
    if has_connection {
        for t in tokens(&headers, &header::CONNECTION) {
            client_close |= t.eq_ignore_ascii_case(b"close");
            keep_alive_token |= t.eq_ignore_ascii_case(b"keep-alive");
            upgrade_token |= t.eq_ignore_ascii_case(b"upgrade");
        }
    }
    let keep_alive = match version {
        Version::HTTP_11 => !client_close,
        _ => !client_close && keep_alive_token,
    };
    let upgrade = version == Version::HTTP_11 && upgrade_token && has_upgrade;

    let mut expect_continue = false;
    for value in has_expect
        .then(|| headers.get_all(header::EXPECT))
        .into_iter()
        .flatten()
    {
        if value.as_bytes().eq_ignore_ascii_case(b"100-continue") {
            expect_continue = version == Version::HTTP_11;
        } else {
            return Err(HeadError::Expectation);
        }
    }

    Ok(RequestHead {
        method,
        uri,
        version,
        headers,
        body,
        keep_alive,
        client_close,
        upgrade,
        expect_continue,
    })
}

/// Longest accepted method: the longest registered method
/// (`UPDATEREDIRECTREF`) is 17 bytes; a longer one is answered `501`
/// (RFC 9110 §9.1) and the connection closed.
pub const MAX_METHOD: usize = 20;

/// The request target is one of the forms of RFC 9112 §3.2 for `method`.
fn check_target_form(target: &[u8], method: &Method, uri: &Uri) -> Result<(), HeadError> {
    let ok = match target.first() {
        Some(b'/') => true,
        _ if target == b"*" => method == Method::OPTIONS,
        _ if method == Method::CONNECT => uri.scheme().is_none() && uri.authority().is_some(),
        _ => uri.scheme().is_some() && uri.authority().is_some(),
    };
    if ok {
        Ok(())
    } else {
        Err(HeadError::Target)
    }
}

/// `Host = uri-host [ ":" port ]` (RFC 9112 §3.2, RFC 3986 §3.2.2): a
/// reg-name (unreserved, pct-encoded, sub-delims), an IPv4 address (a
/// reg-name's characters cover it) or an IP literal in brackets, then an
/// optional port of digits. An empty value is valid (a target without an
/// authority). No userinfo (`user@host`), no spaces. One table look-up per
/// byte (a character-class test per byte cost about 40 instructions per
/// request, callgrind).
pub fn is_valid_host(value: &[u8]) -> bool {
    let rest = if value.first() == Some(&b'[') {
        match value.iter().position(|&b| b == b']') {
            Some(end) if is_ip_literal(&value[1..end]) => &value[end + 1..],
            _ => return false,
        }
    } else {
        let mut i = 0;
        while i < value.len() {
            let b = value[i];
            if REG_NAME[b as usize] {
                i += 1;
            } else if b == b'%'
                && value.len() > i + 2
                && value[i + 1].is_ascii_hexdigit()
                && value[i + 2].is_ascii_hexdigit()
            {
                i += 3;
            } else if b == b':' {
                break;
            } else {
                return false;
            }
        }
        &value[i..]
    };
    match rest {
        [] => true,
        [b':', port @ ..] => port.len() <= 5 && port.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// RFC 3986 reg-name characters but `%`: unreserved and sub-delims.
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
            );
        b += 1;
    }
    table
};

/// `IPv6address / IPvFuture` inside the brackets: checked for its
/// characters (the address's exact grammar is not a framing question).
fn is_ip_literal(s: &[u8]) -> bool {
    match s {
        [] => false,
        [b'v' | b'V', rest @ ..] => {
            !rest.is_empty()
                && rest
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:".contains(&b))
        }
        _ => s.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.'),
    }
}

/// `1*DIGIT` without sign, spaces or overflow.
pub(crate) fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// RFC 9110 token characters.
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<RequestHead, HeadError> {
        let mut buf = BytesMut::from(raw.as_bytes());
        Ok(parse_request(&mut buf, &Config::default())?.expect("complete head"))
    }

    fn find_head_end(raw: &[u8], cfg: &Config) -> Result<Option<RequestHead>, HeadError> {
        parse_request(&mut BytesMut::from(raw), cfg)
    }

    #[test]
    fn simple_get() {
        let h = parse("GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.uri.path(), "/a");
        assert_eq!(h.body, BodyFraming::Empty);
        assert!(h.keep_alive);
    }

    #[test]
    fn http10_persistence_needs_keep_alive_token() {
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(
            parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(
            parse("GET / HTTP/1.0\r\nConnection: foo, keep-alive\r\n\r\n")
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn connection_is_a_case_insensitive_token_list() {
        let h = parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, CLOSE\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        assert!(h.client_close);
        let h = parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        // `closed` is not `close`.
        assert!(
            parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: closed\r\n\r\n")
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn upgrade_needs_both_headers() {
        assert!(
            parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n")
                .unwrap()
                .upgrade
        );
        assert!(
            !parse("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
                .unwrap()
                .upgrade
        );
    }

    #[test]
    fn host_rules() {
        assert_eq!(parse("GET / HTTP/1.1\r\n\r\n").unwrap_err(), HeadError::Host);
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").unwrap_err(),
            HeadError::Host
        );
        assert!(parse("GET / HTTP/1.0\r\n\r\n").is_ok());
    }

    #[test]
    fn host_value_must_be_uri_host_and_port() {
        for good in [
            "x",
            "example.com",
            "example.com:8080",
            "127.0.0.1:18080",
            "[::1]",
            "[::1]:80",
            "[v1.fe80::a+en1]",
            "a%20b",
            "xn--bcher-kva.example",
            "",
            "host:",
        ] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n");
            assert!(parse(&raw).is_ok(), "{good:?}");
        }
        for bad in [
            "a b",
            "user@evil",
            "user:pw@evil",
            "a/b",
            "a?b",
            "a#b",
            "host:port",
            "host:123456",
            "[::1",
            "[::g]",
            "[]",
            "a%2",
            "a%zz",
            "host:80:80",
            "\"quoted\"",
        ] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            assert_eq!(parse(&raw).unwrap_err(), HeadError::Host, "{bad:?}");
        }
        // HTTP/1.0 may omit Host, but a present one must be valid.
        assert_eq!(
            parse("GET / HTTP/1.0\r\nHost: a b\r\n\r\n").unwrap_err(),
            HeadError::Host
        );
    }

    #[test]
    fn request_target_forms() {
        assert!(parse("GET /a HTTP/1.1\r\nHost: x\r\n\r\n").is_ok());
        assert!(parse("GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n").is_ok());
        assert!(parse("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").is_ok());
        assert!(parse("CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n").is_ok());
        for bad in [
            "GET healthz HTTP/1.1",
            "GET healthz?x=1 HTTP/1.1",
            "GET * HTTP/1.1",
            "GET x:443 HTTP/1.1",
            "GET http:/a HTTP/1.1",
            "GET a/b HTTP/1.1",
        ] {
            let raw = format!("{bad}\r\nHost: x\r\n\r\n");
            // `Target`, or `Malformed` where the URI parser refuses it first.
            let err = parse(&raw).unwrap_err();
            assert!(
                matches!(err, HeadError::Target | HeadError::Malformed),
                "{bad:?}: {err:?}"
            );
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn a_method_longer_than_any_is_not_implemented() {
        let long = "A".repeat(MAX_METHOD + 1);
        assert!(parse(&format!("{} / HTTP/1.1\r\nHost: x\r\n\r\n", "A".repeat(MAX_METHOD))).is_ok());
        assert_eq!(
            parse(&format!("{long} / HTTP/1.1\r\nHost: x\r\n\r\n")).unwrap_err(),
            HeadError::MethodTooLong
        );
        assert_eq!(HeadError::MethodTooLong.status(), StatusCode::NOT_IMPLEMENTED);
        // Still arriving: refused as soon as it is too long.
        let huge = "A".repeat(10_000);
        assert_eq!(
            find_head_end(huge.as_bytes(), &Config::default()).unwrap_err(),
            HeadError::MethodTooLong
        );
        assert_eq!(
            find_head_end(format!("\r\n{long}").as_bytes(), &Config::default()).unwrap_err(),
            HeadError::MethodTooLong
        );
        assert!(find_head_end(b"GET /partial", &Config::default()).unwrap().is_none());
    }

    #[test]
    fn content_length_rules() {
        assert_eq!(
            parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
                .unwrap()
                .body,
            BodyFraming::Length(5)
        );
        assert_eq!(
            parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n")
                .unwrap()
                .body,
            BodyFraming::Length(5)
        );
        for bad in ["5, 6", "+5", "-1", "5 5", "0x5", "", "99999999999999999999"] {
            let raw = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {bad}\r\n\r\n");
            assert_eq!(parse(&raw).unwrap_err(), HeadError::ContentLength, "{bad:?}");
        }
        assert_eq!(
            parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n").unwrap_err(),
            HeadError::ContentLength
        );
        assert_eq!(
            parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n").unwrap_err(),
            HeadError::BodyTooLarge
        );
    }

    #[test]
    fn transfer_encoding_rules() {
        let te = |v: &str| parse(&format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {v}\r\n\r\n"));
        assert_eq!(te("chunked").unwrap().body, BodyFraming::Chunked);
        assert_eq!(te("Chunked").unwrap().body, BodyFraming::Chunked);
        assert_eq!(te("gzip").unwrap_err(), HeadError::TransferEncoding);
        assert_eq!(te("chunked, gzip").unwrap_err(), HeadError::TransferEncoding);
        assert_eq!(te("gzip, chunked").unwrap_err(), HeadError::UnknownCoding);
        assert_eq!(te("chunked, chunked").unwrap_err(), HeadError::TransferEncoding);
        assert_eq!(te("chunked;a=b").unwrap_err(), HeadError::TransferEncoding);
        assert_eq!(te("").unwrap_err(), HeadError::TransferEncoding);
        assert_eq!(
            parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err(),
            HeadError::LengthAndEncoding
        );
        assert_eq!(
            parse("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err(),
            HeadError::TransferEncoding
        );
    }

    #[test]
    fn obs_fold_is_rejected() {
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n  b\r\n\r\n").unwrap_err(),
            HeadError::ObsFold
        );
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n\tb\r\n\r\n").unwrap_err(),
            HeadError::ObsFold
        );
    }

    #[test]
    fn malformed_heads() {
        for raw in [
            "GET\r\n\r\n",
            "GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            "GET / HTTP/1.1\r\nHo\x01st: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\rY\r\n\r\n",
            "GET / HTTP/x\r\nHost: x\r\n\r\n",
            "G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(parse(raw).is_err(), "{raw:?}");
        }
        assert_eq!(
            parse("GET / HTTP/2.0\r\nHost: x\r\n\r\n").unwrap_err(),
            HeadError::Version
        );
    }

    #[test]
    fn expect() {
        assert!(
            parse("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
                .unwrap()
                .expect_continue
        );
        assert_eq!(
            parse("POST / HTTP/1.1\r\nHost: x\r\nExpect: bananas\r\n\r\n").unwrap_err(),
            HeadError::Expectation
        );
    }

    #[test]
    fn limits() {
        let cfg = Config::default();
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(
            find_head_end(raw.as_bytes(), &cfg).unwrap_err(),
            HeadError::TooManyHeaders
        );
        let exactly: String = (0..99).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{exactly}\r\n");
        assert!(parse(&raw).is_ok());
        let long = "a".repeat(9000);
        let raw = format!("GET /{long} HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(parse(&raw).unwrap_err(), HeadError::TargetTooLong);
        // Still arriving, already too long.
        let raw = format!("GET /{long}");
        assert_eq!(
            find_head_end(raw.as_bytes(), &cfg).unwrap_err(),
            HeadError::TargetTooLong
        );
        let big = "b".repeat(70 * 1024);
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {big}");
        assert_eq!(
            find_head_end(raw.as_bytes(), &cfg).unwrap_err(),
            HeadError::HeadTooLarge
        );
    }

    #[test]
    fn bare_lf_line_ends_accepted_consistently() {
        let h = parse("GET / HTTP/1.1\nHost: x\n\n").unwrap();
        assert_eq!(h.uri.path(), "/");
    }
}
