//! The client side of a keep-alive connection, sans-I/O (RFC 9112 §6.3,
//! §9.3; the `Keep-Alive` header of RFC 2068 §19.7.1, as servers send it).
//!
//! Theory of operation. A [`ClientConnection`] encodes each request head
//! ([`send_request`](ClientConnection::send_request): the caller writes
//! the returned head, then the body), is fed the server's bytes and the
//! end of input, and yields each response's head, body chunks and end
//! ([`ClientEvent`]). It owns response framing (no body for `HEAD`, 1xx,
//! 204 and 304; chunked; `Content-Length`; otherwise until the server
//! closes), the count of bytes both ways ([`Traffic`]: heads and chunk
//! framing as overhead, bodies as payload) and the reuse decision: whether
//! the connection may carry another request, and until when. It honours
//! what the server said: `Connection: close`, an HTTP/1.0 response without
//! `keep-alive`, the `max=` of `Keep-Alive` (no request after the M-th
//! response) and its `timeout=` (retired a safety margin before the
//! server's idle timeout would close it). It never touches a socket or
//! reads a clock.
//!
//! States: `Idle` (no request in flight) → `send_request` →
//! `AwaitingHead` → `ReadingBody` → `Idle` (or `AwaitingHead` for the next
//! pipelined request), or `Retired` with one [`Retired`] cause, after
//! which it is never reused. Pipelining is the caller's choice: while
//! requests are in flight, [`send_request`](ClientConnection::send_request)
//! queues another (RFC 9112 §9.3.2: only idempotent ones should be), and
//! responses are matched to requests in order; if the connection retires
//! first, [`unanswered`](ClientConnection::unanswered) says how many got
//! no response.

use std::time::{Duration, Instant};

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, Version};

use super::decode::{BodyDecoder, Decoded};
use super::encode::put_decimal;
use super::parse::has_token;
use crate::wire::Traffic;

/// Why a connection may no longer carry a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retired {
    /// The server said `Connection: close` (or answered in HTTP/1.0
    /// without `keep-alive`).
    ServerClose,
    /// The `max=` of the server's `Keep-Alive` was reached.
    MaxRequests,
    /// Idle too close to the server's advertised `timeout=`.
    IdleTimeout,
    /// The server closed the connection (EOF), or the body ends at close.
    PeerClosed,
    /// The response could not be read (malformed head or body).
    BadResponse,
}

/// The server's `Keep-Alive: timeout=T, max=M`, where it sent one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepAliveHints {
    pub timeout: Option<Duration>,
    pub max: Option<u64>,
}

impl KeepAliveHints {
    /// Reads every `Keep-Alive` field: comma-separated `name=value`
    /// parameters, names case-insensitive, values whole numbers (quoted or
    /// not); anything else is ignored, as is a repeated parameter after
    /// the first.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut hints = Self::default();
        for value in headers.get_all("keep-alive") {
            let Ok(value) = value.to_str() else { continue };
            for param in value.split(',') {
                let Some((name, v)) = param.split_once('=') else {
                    continue;
                };
                let Ok(n) = v.trim().trim_matches('"').parse::<u64>() else {
                    continue;
                };
                match name.trim().to_ascii_lowercase().as_str() {
                    "timeout" if hints.timeout.is_none() => hints.timeout = Some(Duration::from_secs(n)),
                    "max" if hints.max.is_none() => hints.max = Some(n),
                    _ => {}
                }
            }
        }
        hints
    }
}

/// A response's status line and fields.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
}

/// What the connection yields.
#[derive(Debug)]
pub enum ClientEvent {
    /// The final response's head (1xx heads are skipped).
    Head(ResponseHead),
    /// Body bytes.
    Body(Bytes),
    /// The response is complete.
    End,
}

/// Why a request may not be sent on this connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReuseError {
    #[error("the connection is retired: {0:?}")]
    Retired(Retired),
    #[error("a request is already in flight")]
    Busy,
}

/// A request head to encode: the caller gives the fields it wants sent
/// (`Host` among them); the engine adds `Content-Length` when the request
/// has a body and none was given, and, unless the caller set `Connection`
/// itself, what `keep_alive` needs in that version: `Connection:
/// keep-alive` in HTTP/1.0, `Connection: close` in HTTP/1.1 without it.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// The request target: origin form (`/path?query`).
    pub target: &'a str,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: Version,
    pub headers: &'a HeaderMap,
    /// Whether to ask for the connection to persist.
    pub keep_alive: bool,
}

/// The client's limits and margins.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Retire this long before the server's advertised idle timeout.
    pub timeout_margin: Duration,
    /// The largest response head.
    pub max_head: usize,
    /// The largest chunked trailer section.
    pub max_trailer_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            timeout_margin: Duration::from_millis(500),
            max_head: 64 * 1024,
            max_trailer_bytes: 16 * 1024,
        }
    }
}

enum State {
    Idle,
    AwaitingHead,
    ReadingBody(Body),
    Retired(Retired),
}

enum Body {
    Framed(BodyDecoder),
    UntilClose,
}

/// One client connection (see the module documentation).
pub struct ClientConnection {
    config: ClientConfig,
    state: State,
    buf: BytesMut,
    events: VecDeque<ClientEvent>,
    /// Requests sent and not yet answered, oldest first: whether each was
    /// a `HEAD` (its response has no body whatever it says).
    in_flight: VecDeque<bool>,
    traffic: Traffic,
    /// Responses completed on this connection.
    responses: u64,
    hints: KeepAliveHints,
    /// Whether the last response allowed another request.
    persistent: bool,
    /// When the last response completed (the server's idle timer starts).
    idle_since: Option<Instant>,
    /// The `max=` of the first response that sent one, and whether every
    /// response since sent the same (see `finish`).
    first_max: Option<u64>,
    max_unchanged: bool,
}

impl ClientConnection {
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            state: State::Idle,
            buf: BytesMut::new(),
            events: VecDeque::new(),
            in_flight: VecDeque::new(),
            traffic: Traffic::default(),
            responses: 0,
            hints: KeepAliveHints::default(),
            persistent: true,
            idle_since: None,
            first_max: None,
            max_unchanged: true,
        }
    }

    /// Responses completed so far.
    pub fn responses(&self) -> u64 {
        self.responses
    }

    /// The server's last `Keep-Alive` hints.
    pub fn hints(&self) -> KeepAliveHints {
        self.hints
    }

    /// Bytes both ways so far (requests as encoded by `send_request`
    /// plus the body lengths it was told; responses as fed).
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// Requests sent that got no response (yet, or ever, once retired).
    pub fn unanswered(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether a new request may be sent now on an idle connection (no
    /// request in flight), and if not, why.
    pub fn check_reusable(&mut self, now: Instant) -> Result<(), ReuseError> {
        match self.state {
            State::Retired(why) => return Err(ReuseError::Retired(why)),
            State::AwaitingHead | State::ReadingBody(_) => return Err(ReuseError::Busy),
            State::Idle => {}
        }
        if let Some(deadline) = self.retire_at() {
            if now >= deadline {
                self.state = State::Retired(Retired::IdleTimeout);
                return Err(ReuseError::Retired(Retired::IdleTimeout));
            }
        }
        Ok(())
    }

    /// When an idle connection stops being reusable: the server's
    /// advertised timeout minus the margin after the last response. The
    /// margin is at most a quarter of the timeout, so a short timeout
    /// (`timeout=1`) still leaves most of it usable.
    pub fn retire_at(&self) -> Option<Instant> {
        let since = self.idle_since?;
        let timeout = self.hints.timeout?;
        let margin = self.config.timeout_margin.min(timeout / 4);
        Some(since + timeout.saturating_sub(margin))
    }

    /// Encodes a request head and records the request as sent: the caller
    /// writes the returned bytes, then `body_len` body bytes. On an idle
    /// connection the reuse rules apply first; with requests in flight the
    /// request is pipelined behind them.
    pub fn send_request(
        &mut self,
        now: Instant,
        head: &RequestHead<'_>,
        body_len: usize,
    ) -> Result<BytesMut, ReuseError> {
        if self.in_flight.is_empty() {
            self.check_reusable(now)?;
        } else if let State::Retired(why) = self.state {
            return Err(ReuseError::Retired(why));
        }
        let out = encode_request(head, body_len);
        self.traffic.sent.add_overhead(out.len());
        self.traffic.sent.add_payload(body_len);
        self.in_flight.push_back(head.method == Method::HEAD);
        if matches!(self.state, State::Idle) {
            self.state = State::AwaitingHead;
        }
        Ok(out)
    }

    /// Bytes from the server.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if matches!(self.state, State::Retired(_)) {
            return;
        }
        self.buf.extend_from_slice(bytes);
        self.advance(now);
    }

    /// The server closed its side.
    pub fn handle_eof(&mut self, now: Instant) {
        if let State::ReadingBody(Body::UntilClose) = self.state {
            self.events.push_back(ClientEvent::End);
            self.responses += 1;
            self.idle_since = Some(now);
            self.in_flight.pop_front();
        }
        if !matches!(self.state, State::Retired(_)) {
            self.state = State::Retired(Retired::PeerClosed);
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Why the connection is retired, once it is.
    pub fn retired(&self) -> Option<Retired> {
        match self.state {
            State::Retired(why) => Some(why),
            _ => None,
        }
    }

    fn advance(&mut self, now: Instant) {
        loop {
            match &mut self.state {
                State::AwaitingHead => {
                    let head_request = self.in_flight.front().copied().unwrap_or(false);
                    match self.parse_head() {
                        Ok(None) => return,
                        Ok(Some(head)) => self.start_body(head, head_request, now),
                        Err(()) => {
                            self.state = State::Retired(Retired::BadResponse);
                            return;
                        }
                    }
                }
                State::ReadingBody(Body::UntilClose) => {
                    if !self.buf.is_empty() {
                        let chunk = self.buf.split().freeze();
                        self.traffic.received.add_payload(chunk.len());
                        self.events.push_back(ClientEvent::Body(chunk));
                    }
                    return;
                }
                State::ReadingBody(Body::Framed(decoder)) => {
                    let before = self.buf.len();
                    let step = decoder.decode(&mut self.buf);
                    let consumed = before - self.buf.len();
                    match step {
                        Ok(Decoded::Data(data)) => {
                            self.traffic.received.add_payload(data.len());
                            self.traffic.received.add_overhead(consumed - data.len());
                            self.events.push_back(ClientEvent::Body(data));
                        }
                        Ok(Decoded::NeedMore) => {
                            self.traffic.received.add_overhead(consumed);
                            return;
                        }
                        Ok(Decoded::End(_)) => {
                            self.traffic.received.add_overhead(consumed);
                            self.finish(now);
                        }
                        Err(_) => {
                            self.state = State::Retired(Retired::BadResponse);
                            return;
                        }
                    }
                }
                // Bytes with no request in flight: the server broke framing.
                State::Idle if !self.buf.is_empty() => {
                    self.state = State::Retired(Retired::BadResponse);
                    return;
                }
                State::Idle | State::Retired(_) => return,
            }
        }
    }

    /// A complete head (1xx heads are consumed and skipped), `None` for
    /// more bytes, `Err` for a malformed or oversized one.
    fn parse_head(&mut self) -> Result<Option<ResponseHead>, ()> {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 100];
            let mut resp = httparse::Response::new(&mut fields);
            let len = match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) if self.buf.len() > self.config.max_head => return Err(()),
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(_) => return Err(()),
            };
            let status = StatusCode::from_u16(resp.code.ok_or(())?).map_err(|_| ())?;
            let version = if resp.version == Some(0) {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            let mut headers = HeaderMap::with_capacity(resp.headers.len());
            for f in resp.headers.iter() {
                let name = http::HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| ())?;
                let value = http::HeaderValue::from_bytes(f.value).map_err(|_| ())?;
                headers.append(name, value);
            }
            let _ = self.buf.split_to(len);
            self.traffic.received.add_overhead(len);
            // 101 ends HTTP on this connection; other 1xx precede the answer.
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            return Ok(Some(ResponseHead {
                status,
                version,
                headers,
            }));
        }
    }

    fn start_body(&mut self, head: ResponseHead, head_request: bool, now: Instant) {
        let h = &head.headers;
        let close = has_token(h, &http::header::CONNECTION, "close");
        let keep_alive = has_token(h, &http::header::CONNECTION, "keep-alive");
        self.persistent = match head.version {
            Version::HTTP_10 => keep_alive && !close,
            _ => !close,
        } && head.status != StatusCode::SWITCHING_PROTOCOLS;
        self.hints = KeepAliveHints::parse(h);
        let no_body = head_request
            || head.status == StatusCode::NO_CONTENT
            || head.status == StatusCode::NOT_MODIFIED
            || head.status == StatusCode::SWITCHING_PROTOCOLS;
        let framing = if no_body {
            None
        } else if h.contains_key(http::header::TRANSFER_ENCODING) {
            // Chunked must be the last coding; anything else is read to close.
            if has_token(h, &http::header::TRANSFER_ENCODING, "chunked") {
                Some(Body::Framed(BodyDecoder::chunked(
                    u64::MAX,
                    self.config.max_trailer_bytes,
                    100,
                )))
            } else {
                Some(Body::UntilClose)
            }
        } else {
            let lengths: Vec<&http::HeaderValue> = h.get_all(http::header::CONTENT_LENGTH).iter().collect();
            match lengths.as_slice() {
                [] => Some(Body::UntilClose),
                [one] => match one.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
                    Some(n) => Some(Body::Framed(BodyDecoder::length(n))),
                    None => {
                        self.state = State::Retired(Retired::BadResponse);
                        return;
                    }
                },
                // Several Content-Length fields: a framing ambiguity.
                _ => {
                    self.state = State::Retired(Retired::BadResponse);
                    return;
                }
            }
        };
        self.events.push_back(ClientEvent::Head(head));
        match framing {
            None => self.finish(now),
            Some(Body::UntilClose) => {
                self.persistent = false;
                self.state = State::ReadingBody(Body::UntilClose);
            }
            Some(body) => self.state = State::ReadingBody(body),
        }
    }

    /// The response is complete: idle, or retired for the cause the
    /// server gave.
    fn finish(&mut self, now: Instant) {
        self.events.push_back(ClientEvent::End);
        self.responses += 1;
        self.idle_since = Some(now);
        self.in_flight.pop_front();
        if let Some(max) = self.hints.max {
            let first = *self.first_max.get_or_insert(max);
            self.max_unchanged &= max == first;
        }
        self.state = if !self.persistent {
            State::Retired(Retired::ServerClose)
        } else if self.max_reached() {
            State::Retired(Retired::MaxRequests)
        } else if self.in_flight.is_empty() {
            State::Idle
        } else {
            State::AwaitingHead
        };
    }
}

/// Whether a method is idempotent (RFC 9110 §9.2.2): repeating it has the
/// effect of sending it once, so a client may resend it when a connection
/// failed before the answer, and may pipeline it.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// Methods whose requests carry `Content-Length: 0` even without a body
/// (RFC 9110 §8.6: a user agent should send it when a body is expected).
fn expects_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

fn encode_request(head: &RequestHead<'_>, body_len: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(64 + head.target.len() + head.headers.len() * 32);
    out.put_slice(head.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(head.target.as_bytes());
    out.put_slice(if head.version == Version::HTTP_10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    for (name, value) in head.headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if !head.headers.contains_key(http::header::CONTENT_LENGTH) && (body_len > 0 || expects_body(head.method)) {
        out.put_slice(b"content-length: ");
        put_decimal(&mut out, body_len as u64);
        out.put_slice(b"\r\n");
    }
    if !head.headers.contains_key(http::header::CONNECTION) {
        match (head.version == Version::HTTP_10, head.keep_alive) {
            (true, true) => out.put_slice(b"connection: keep-alive\r\n"),
            (false, false) => out.put_slice(b"connection: close\r\n"),
            _ => {}
        }
    }
    out.put_slice(b"\r\n");
    out
}

impl ClientConnection {
    /// Whether the server's `max=` allows no more requests. Servers send it
    /// two ways: what is left, this response included (Apache, tether's
    /// `remaining` mode: it falls by one per response), or the limit
    /// itself (nginx-like, tether's `fixed` mode: the same every time).
    /// `max=1` (or 0) is the last either way; a value that stayed the same
    /// on every response is a limit, reached after that many responses.
    fn max_reached(&self) -> bool {
        match self.hints.max {
            None => false,
            Some(max) if max <= 1 => true,
            Some(max) => self.max_unchanged && self.responses > 1 && self.responses >= max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `GET /` (or `HEAD /`), returning what `send_request` says.
    fn send(c: &mut ClientConnection, now: Instant, head: bool) -> Result<BytesMut, ReuseError> {
        let method = if head { Method::HEAD } else { Method::GET };
        let headers = HeaderMap::new();
        let req = RequestHead {
            method: &method,
            target: "/",
            version: Version::HTTP_11,
            headers: &headers,
            keep_alive: true,
        };
        c.send_request(now, &req, 0)
    }

    /// The events as text, consecutive body chunks joined (how the body
    /// is split follows the reads).
    fn events(c: &mut ClientConnection) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        while let Some(e) = c.poll_event() {
            match e {
                ClientEvent::Head(h) => out.push(format!("head {}", h.status.as_u16())),
                ClientEvent::Body(b) => match out.last_mut() {
                    Some(last) if last.starts_with("body ") => last.push_str(&String::from_utf8_lossy(&b)),
                    _ => out.push(format!("body {}", String::from_utf8_lossy(&b))),
                },
                ClientEvent::End => out.push("end".into()),
            }
        }
        out
    }

    #[test]
    fn keep_alive_hints_are_read_leniently() {
        let mut h = HeaderMap::new();
        h.append("keep-alive", "Timeout=5, MAX=\"100\", other=x".parse().unwrap());
        h.append("keep-alive", "timeout=9".parse().unwrap());
        let hints = KeepAliveHints::parse(&h);
        assert_eq!(hints.timeout, Some(Duration::from_secs(5)));
        assert_eq!(hints.max, Some(100));
        let mut bad = HeaderMap::new();
        bad.append("keep-alive", "timeout=-1, max=abc, timeout".parse().unwrap());
        assert_eq!(KeepAliveHints::parse(&bad), KeepAliveHints::default());
    }

    #[test]
    fn a_connection_is_retired_a_margin_before_the_advertised_timeout() {
        let t0 = Instant::now();
        let mut c = ClientConnection::new(ClientConfig::default());
        send(&mut c, t0, false).unwrap();
        // Split anywhere: the head and body arrive in pieces.
        let resp = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=2, max=50\r\nContent-Length: 2\r\n\r\nok";
        for piece in resp.chunks(7) {
            c.handle_input(piece, t0);
        }
        assert_eq!(events(&mut c), ["head 200", "body ok", "end"]);
        assert_eq!(c.retire_at(), Some(t0 + Duration::from_millis(1500)));
        assert_eq!(c.check_reusable(t0 + Duration::from_millis(1499)), Ok(()));
        assert_eq!(
            send(&mut c, t0 + Duration::from_millis(1500), false),
            Err(ReuseError::Retired(Retired::IdleTimeout))
        );
    }

    #[test]
    fn connection_close_http10_and_max_retire_after_the_response() {
        let now = Instant::now();
        let cases: [(&[u8], Retired); 3] = [
            (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                Retired::ServerClose,
            ),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", Retired::ServerClose),
            (
                b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=1\r\nContent-Length: 0\r\n\r\n",
                Retired::MaxRequests,
            ),
        ];
        for (resp, why) in cases {
            let mut c = ClientConnection::new(ClientConfig::default());
            send(&mut c, now, false).unwrap();
            c.handle_input(resp, now);
            assert_eq!(events(&mut c), ["head 200", "end"]);
            assert_eq!(c.retired(), Some(why), "{}", String::from_utf8_lossy(resp));
            assert_eq!(send(&mut c, now, false), Err(ReuseError::Retired(why)));
        }
        // HTTP/1.0 with keep-alive stays reusable.
        let mut c = ClientConnection::new(ClientConfig::default());
        send(&mut c, now, false).unwrap();
        c.handle_input(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            now,
        );
        assert_eq!(c.check_reusable(now), Ok(()));
    }

    #[test]
    fn max_is_honoured_whether_it_counts_down_or_stays_fixed() {
        let now = Instant::now();
        for (maxes, name) in [([3, 3, 3], "fixed"), ([3, 2, 1], "remaining")] {
            let mut c = ClientConnection::new(ClientConfig::default());
            for (i, max) in maxes.into_iter().enumerate() {
                send(&mut c, now, false).unwrap_or_else(|e| panic!("{name}: request {}: {e}", i + 1));
                let resp = format!("HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max={max}\r\nContent-Length: 0\r\n\r\n");
                c.handle_input(resp.as_bytes(), now);
            }
            assert_eq!(c.retired(), Some(Retired::MaxRequests), "{name}");
            assert_eq!(c.responses(), 3, "{name}");
        }
    }

    #[test]
    fn bodies_are_framed_as_rfc_9112_says() {
        let now = Instant::now();
        // Chunked, a 1xx first, then a HEAD whose Content-Length has no body.
        let mut c = ClientConnection::new(ClientConfig::default());
        send(&mut c, now, false).unwrap();
        c.handle_input(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            now,
        );
        assert_eq!(events(&mut c), ["head 200", "body hi", "end"]);
        send(&mut c, now, true).unwrap();
        c.handle_input(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", now);
        assert_eq!(events(&mut c), ["head 200", "end"]);
        for status in ["204 No Content", "304 Not Modified"] {
            send(&mut c, now, false).unwrap();
            c.handle_input(format!("HTTP/1.1 {status}\r\n\r\n").as_bytes(), now);
            assert_eq!(events(&mut c).len(), 2, "{status}");
        }
        // No length: read until the server closes, then not reusable.
        send(&mut c, now, false).unwrap();
        c.handle_input(b"HTTP/1.1 200 OK\r\n\r\nall", now);
        c.handle_input(b" of it", now);
        c.handle_eof(now);
        assert_eq!(events(&mut c), ["head 200", "body all of it", "end"]);
        assert_eq!(c.retired(), Some(Retired::PeerClosed));
    }

    #[test]
    fn framing_ambiguities_and_stray_bytes_retire_the_connection() {
        let now = Instant::now();
        for resp in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            let mut c = ClientConnection::new(ClientConfig::default());
            send(&mut c, now, false).unwrap();
            c.handle_input(resp, now);
            assert_eq!(
                c.retired(),
                Some(Retired::BadResponse),
                "{}",
                String::from_utf8_lossy(resp)
            );
        }
        // A response's worth more than asked for: the server broke framing.
        let mut c = ClientConnection::new(ClientConfig::default());
        send(&mut c, now, false).unwrap();
        c.handle_input(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab", now);
        assert_eq!(c.retired(), Some(Retired::BadResponse));
        // The server's FIN on an idle connection is noticed before reuse.
        let mut c = ClientConnection::new(ClientConfig::default());
        send(&mut c, now, false).unwrap();
        c.handle_input(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", now);
        c.handle_eof(now);
        assert_eq!(send(&mut c, now, false), Err(ReuseError::Retired(Retired::PeerClosed)));
        assert_eq!(c.responses(), 1);
    }

    #[test]
    fn requests_are_encoded_with_the_fields_the_version_needs() {
        let now = Instant::now();
        let mut headers = HeaderMap::new();
        headers.insert("host", "example.test".parse().unwrap());
        let post = Method::POST;
        let mut c = ClientConnection::new(ClientConfig::default());
        let req = RequestHead {
            method: &post,
            target: "/publish/a?x=1",
            version: Version::HTTP_10,
            headers: &headers,
            keep_alive: true,
        };
        let out = c.send_request(now, &req, 5).unwrap();
        assert_eq!(
            &out[..],
            b"POST /publish/a?x=1 HTTP/1.0\r\nhost: example.test\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\n"
        );
        assert_eq!(c.traffic().sent.overhead, out.len() as u64);
        assert_eq!(c.traffic().sent.payload, 5);
        // HTTP/1.1 GET: no Content-Length, no Connection.
        let get = Method::GET;
        let req = RequestHead {
            method: &get,
            target: "/",
            version: Version::HTTP_11,
            headers: &headers,
            keep_alive: true,
        };
        let mut c = ClientConnection::new(ClientConfig::default());
        assert_eq!(
            &c.send_request(now, &req, 0).unwrap()[..],
            b"GET / HTTP/1.1\r\nhost: example.test\r\n\r\n"
        );
        // Without keep-alive: HTTP/1.1 says close, HTTP/1.0 says nothing.
        let mut c = ClientConnection::new(ClientConfig::default());
        let close = RequestHead {
            keep_alive: false,
            ..req
        };
        assert!(c
            .send_request(now, &close, 0)
            .unwrap()
            .ends_with(b"connection: close\r\n\r\n"));
        let mut c = ClientConnection::new(ClientConfig::default());
        let bare = RequestHead {
            version: Version::HTTP_10,
            ..close
        };
        assert_eq!(
            &c.send_request(now, &bare, 0).unwrap()[..],
            b"GET / HTTP/1.0\r\nhost: example.test\r\n\r\n"
        );
        assert!(is_idempotent(&get) && !is_idempotent(&post) && !is_idempotent(&Method::PATCH));
    }

    #[test]
    fn received_bytes_split_into_heads_and_chunk_framing_against_bodies() {
        let now = Instant::now();
        let mut c = ClientConnection::new(ClientConfig::default());
        send(&mut c, now, false).unwrap();
        let head = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n";
        let all = [&head[..], &body[..]].concat();
        for piece in all.chunks(3) {
            c.handle_input(piece, now);
        }
        assert_eq!(events(&mut c), ["head 200", "body helloabc", "end"]);
        let got = c.traffic().received;
        assert_eq!(got.payload, 8);
        assert_eq!(got.total(), all.len() as u64);
        // Content-Length then read-to-close bodies.
        send(&mut c, now, false).unwrap();
        c.handle_input(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", now);
        send(&mut c, now, false).unwrap();
        c.handle_input(b"HTTP/1.1 200 OK\r\n\r\nuntil close", now);
        c.handle_eof(now);
        let got = c.traffic().received;
        assert_eq!(got.payload, 8 + 2 + 11);
        assert_eq!(got.overhead, (all.len() - 8 + 38 + 19) as u64);
    }

    #[test]
    fn pipelined_responses_match_requests_in_order_and_a_close_leaves_the_rest_unanswered() {
        let now = Instant::now();
        let mut c = ClientConnection::new(ClientConfig::default());
        send(&mut c, now, false).unwrap();
        send(&mut c, now, true).unwrap();
        send(&mut c, now, false).unwrap();
        assert_eq!(c.unanswered(), 3);
        assert_eq!(c.check_reusable(now), Err(ReuseError::Busy));
        // The HEAD's Content-Length has no body; all arrive in one read.
        c.handle_input(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc",
            now,
        );
        assert_eq!(
            events(&mut c),
            ["head 200", "body a", "end", "head 200", "end", "head 200", "body c", "end"]
        );
        assert_eq!(c.unanswered(), 0);
        assert_eq!(c.check_reusable(now), Ok(()));
        // The server closes after the first of two: one is left unanswered.
        send(&mut c, now, false).unwrap();
        send(&mut c, now, false).unwrap();
        c.handle_input(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            now,
        );
        c.handle_eof(now);
        assert_eq!(c.retired(), Some(Retired::ServerClose));
        assert_eq!(c.unanswered(), 1);
        assert_eq!(send(&mut c, now, false), Err(ReuseError::Retired(Retired::ServerClose)));
    }

    #[test]
    fn the_timeout_margin_is_at_most_a_quarter_of_a_short_timeout() {
        let t0 = Instant::now();
        let mut c = ClientConnection::new(ClientConfig::default());
        send(&mut c, t0, false).unwrap();
        c.handle_input(
            b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1\r\nContent-Length: 0\r\n\r\n",
            t0,
        );
        assert_eq!(c.retire_at(), Some(t0 + Duration::from_millis(750)));
    }
}
