//! The server side of one HTTP/1.1 connection: the keep-alive state machine.
//!
//! Everything that decides what happens on a connection lives here: which
//! bytes are a request, whether the connection persists after a response,
//! when it must close and why. Time is an argument; deadlines are values.
//!
//! ```text
//!            bytes arrive                head complete
//!   Idle ─────────────────▶ Head ─────────────────────▶ Active ──┐
//!    ▲  (idle timer T,        (header timer H:           │ (body   │ response
//!    │   only once output      408 on expiry)            │  timer) │ finished
//!    │   is flushed)                                     │         ▼
//!    │◀──────────── keep-alive ◀──── Draining ◀── body unread ── decide
//!    │                                (discard ≤ max_drain)        │ close
//!    │                                                             ▼
//!    └─ idle expiry / EOF / shutdown ──▶ Closed ◀── Linger ◀── flush output,
//!                                                  (bounded)   shut down write
//!   Active ── 101 sent ──▶ Upgraded (the bytes belong to another protocol)
//! ```
//!
//! Transitions (`Phase`, and what moves it):
//!
//! | from | input | to |
//! |---|---|---|
//! | `Idle` | a byte arrives (`handle_read`) | `Head` |
//! | `Idle` | idle timer, lifetime, EOF, drain over, `reclaim` | `Closed` |
//! | `Head` | the head completes (`poll_event`) | `Active` |
//! | `Head` | a refused head, the header timer (408) | `Active`, closing after the error response |
//! | `Active` | the response completes, body read | `Idle` (or `Head` with pipelined bytes) |
//! | `Active` | the response completes, body unread | `Draining` |
//! | `Active` | the response completes, closing | `Linger` |
//! | `Active` | `101` sent | `Upgraded` |
//! | `Draining` | the body's end | `Idle` / `Head` |
//! | `Draining` | more than `max_drain`, the body timer | `Linger` |
//! | `Linger` | output flushed, then silence or `linger_time` | `Closed` |
//! | any | the write timer | `Closed` |
//!
//! Timers (one deadline at a time from [`ServerConnection::poll_timeout`]):
//!
//! | timer | runs while | expiry |
//! |---|---|---|
//! | idle `T` | `Idle`, output flushed | close, `IdleTimeout` |
//! | drain | `Idle` after `handle_shutdown` | close, `Shutdown` |
//! | header `H` | `Head`, unless our own unsent output blocks it | `408`, `HeaderTimeout` |
//! | body | `Active`/`Draining` with body bytes due from the peer: no progress for `body_timeout`, or below `body_min_rate` after its grace | `408`, `BodyTimeout` |
//! | write | output offered and unwritten: no progress for `write_timeout` | close, `WriteTimeout` |
//! | linger | `Linger` after the flush: `linger_idle` of silence or `linger_time` | close |
//! | lifetime | until `max_lifetime` | next response says close; idle: close, `Lifetime` |
//!
//! Output goes through one queue ([`ServerConnection::poll_transmit`]),
//! except a direct body: a `Content-Length` body the driver writes to the
//! socket itself (a file, with `sendfile`), allowed only once the queue is
//! empty so it follows its head, and counted and timed by the engine as if
//! it had been queued ([`ServerConnection::begin_direct_body`],
//! [`ServerConnection::handle_direct_written`]).
//!
//! Rules, each a unit test in `tests.rs`:
//! * HTTP/1.1 persists unless `Connection: close`; HTTP/1.0 only with
//!   `Connection: keep-alive`, and then the response says so.
//! * The M-th response carries `Connection: close`; nothing after it is
//!   processed, pipelined or not. Every persistent response carries
//!   `Keep-Alive: timeout=T, max=M` unless configured off, T never more than
//!   the connection will really wait (the idle timeout, or what is left of
//!   its lifetime), in whole seconds rounded down: a window under a second
//!   advertises `timeout=0` (reuse it only for a request already on its way).
//! * Requests are answered strictly in order: the next head is not parsed
//!   before the current response is complete, nor while more than
//!   `max_unsent_output` waits for a peer that does not read (nothing is
//!   read then either: TCP backpressure).
//! * An unread request body is drained (up to `max_drain`) before the next
//!   request; a longer one makes the response close the connection.
//! * A close after a response never destroys it: output is flushed, the
//!   write side shut down, and input discarded for a bounded time.
//! * Graceful shutdown drains idle connections for `shutdown_drain`.
//! * Every close has one [`CloseCause`]; one place decides whether a
//!   response keeps the connection (`close_decision`).
//!
//! Memory: an idle connection frees its read and output buffers, unless
//! its driver asked to keep them ([`ServerConnection::set_retain_buffers`])
//! to move them into a pool ([`ServerConnection::take_buffers`] /
//! [`ServerConnection::give_buffers`]). [`ServerConnection::idle_since`]
//! says when nothing but input, a deadline or shutdown can happen next, so
//! a driver may set the connection aside without a task.
//!
//! Bytes on the wire: [`ServerConnection::traffic`] counts what was read
//! and sent, heads and chunk framing apart from bodies ([`crate::wire`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Version};

use super::config::{Config, KeepAliveHeader};
use super::decode::{BodyDecoder, BodyError, Decoded};
use super::encode::{self, ConnectionHeader, EngineHeaders};
use super::parse::{self, BodyFraming, HeadError, RequestHead};
use crate::output::{Output, Part};
use crate::wire::{Traffic, WireBytes};

/// Why a connection ended. Every connection ends with exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCause {
    /// Idle for the keep-alive timeout T.
    IdleTimeout,
    /// The M-th response was sent.
    MaxRequests,
    /// The client asked (`Connection: close`, or HTTP/1.0 without keep-alive).
    ClientClose,
    /// The handler asked (`Connection: close` on its response), or the
    /// response could only be delimited by closing.
    ServerClose,
    /// The request broke the protocol or a limit; an error response was sent.
    ProtocolError,
    /// A request head did not arrive within the header timeout (408 sent).
    HeaderTimeout,
    /// A request body stalled longer than the body timeout.
    BodyTimeout,
    /// Output made no progress within the write timeout.
    WriteTimeout,
    /// The handler left more request body unread than the server drains.
    UnreadBody,
    /// The peer closed its side (EOF).
    PeerClosed,
    /// A read or write failed (reset, broken pipe).
    NetworkError,
    /// The connection reached its maximum lifetime.
    Lifetime,
    /// The server is shutting down.
    Shutdown,
    /// Closed while idle to make room for a new client (the server ran out
    /// of file descriptors or reached its connection limit); closing an
    /// idle persistent connection is always allowed (RFC 9112 §9.5).
    Reclaimed,
}

impl CloseCause {
    /// Every cause, in declaration order (`cause as usize` indexes it).
    pub const ALL: [CloseCause; 14] = [
        CloseCause::IdleTimeout,
        CloseCause::MaxRequests,
        CloseCause::ClientClose,
        CloseCause::ServerClose,
        CloseCause::ProtocolError,
        CloseCause::HeaderTimeout,
        CloseCause::BodyTimeout,
        CloseCause::WriteTimeout,
        CloseCause::UnreadBody,
        CloseCause::PeerClosed,
        CloseCause::NetworkError,
        CloseCause::Lifetime,
        CloseCause::Shutdown,
        CloseCause::Reclaimed,
    ];

    /// A short, stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseCause::IdleTimeout => "idle_timeout",
            CloseCause::MaxRequests => "max_requests",
            CloseCause::ClientClose => "client_close",
            CloseCause::ServerClose => "server_close",
            CloseCause::ProtocolError => "protocol_error",
            CloseCause::HeaderTimeout => "header_timeout",
            CloseCause::BodyTimeout => "body_timeout",
            CloseCause::WriteTimeout => "write_timeout",
            CloseCause::UnreadBody => "unread_body",
            CloseCause::PeerClosed => "peer_closed",
            CloseCause::NetworkError => "network_error",
            CloseCause::Lifetime => "lifetime",
            CloseCause::Shutdown => "shutdown",
            CloseCause::Reclaimed => "reclaimed",
        }
    }
}

impl std::fmt::Display for CloseCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What was wrong with a request that was refused (the reason a
/// `ProtocolError`, `HeaderTimeout` or `BodyTimeout` close came with), for
/// logs: the status sent, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The head was refused.
    Head(HeadError),
    /// The body broke (framing, size, a stall or too slow a rate).
    Body(BodyError),
    /// The head did not arrive within the header timeout.
    HeaderTimeout,
}

impl Fault {
    /// The status that answered it.
    pub fn status(self) -> StatusCode {
        match self {
            Fault::Head(e) => e.status(),
            Fault::Body(e) => body_error_status(e),
            Fault::HeaderTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Head(e) => write!(f, "{} {e}", e.status().as_u16()),
            Fault::Body(e) => write!(f, "{} {e}", body_error_status(*e).as_u16()),
            Fault::HeaderTimeout => f.write_str("408 request head timed out"),
        }
    }
}

/// What the connection has to tell its driver.
#[derive(Debug)]
pub enum Event {
    /// A request head; body events follow unless `head.body` is `Empty`.
    Request(RequestHead),
    /// A piece of the current request's body.
    Body(Bytes),
    /// The current request's body is complete, with its trailers if any.
    EndOfBody(Option<HeaderMap>),
    /// The current request's body cannot be completed. If no response has
    /// started, answer with [`BodyError`]'s status; the connection closes
    /// after the response.
    BodyFailed(BodyError),
    /// A request head was refused: answer with this status (via
    /// [`ServerConnection::send_response`]); the connection then closes.
    Reject(StatusCode),
}

/// 204 and 304 carry no body and no `Content-Length` of one.
fn is_bodiless_status(status: StatusCode) -> bool {
    status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
}

/// The status that answers a failed body, when no response has started.
pub fn body_error_status(e: BodyError) -> StatusCode {
    match e {
        BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        BodyError::TrailersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        BodyError::Timeout => StatusCode::REQUEST_TIMEOUT,
        BodyError::InvalidChunk | BodyError::Incomplete => StatusCode::BAD_REQUEST,
    }
}

/// How a response body will be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    /// No body (`Content-Length: 0` where a length is meaningful). The
    /// response is complete as soon as its head is sent.
    Empty,
    /// Exactly this many bytes through [`ServerConnection::send_body`].
    Length(u64),
    /// Unknown length: chunked for HTTP/1.1, delimited by closing for HTTP/1.0.
    Streaming,
}

impl ResponseBody {
    /// The framing of a body whose size the caller does not know itself (no
    /// body at hand, or a stream): the response's own `Content-Length`
    /// when it is one valid decimal value (a HEAD answer, a stream of known
    /// size), else `otherwise`.
    pub fn declared_or(headers: &HeaderMap, otherwise: ResponseBody) -> ResponseBody {
        let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => parse::parse_decimal(v.as_bytes()).map_or(otherwise, ResponseBody::Length),
            _ => otherwise,
        }
    }
}

/// Misuse of the response API; the connection state is unchanged unless noted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// There is no request waiting for a response.
    #[error("no request is waiting for a response")]
    NoRequest,
    /// The response head was already sent.
    #[error("the response has already started")]
    AlreadyStarted,
    /// No response head was sent yet.
    #[error("the response has not started")]
    NotStarted,
    /// `101` for a request that did not ask to upgrade.
    #[error("101 Switching Protocols for a request that did not ask to upgrade")]
    NotUpgrade,
    /// Interim (1xx) responses other than 101 are not supported.
    #[error("interim responses are not supported")]
    Informational,
    /// More body bytes than the declared length.
    #[error("response body longer than its Content-Length")]
    BodyTooLong,
    /// Fewer body bytes than the declared length; the connection is closed.
    #[error("response body shorter than its Content-Length")]
    BodyTooShort,
    /// The connection is closed.
    #[error("the connection is closed")]
    Closed,
    /// A body sent around the output queue while output is still queued
    /// (it would overtake its head), or with a framing other than
    /// `Content-Length`.
    #[error("a direct body needs a Content-Length body and the queued output written first")]
    NotDirect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request. `since` is set once output has flushed: the idle timer.
    Idle { since: Option<Instant> },
    /// Part of a request head has arrived, the first byte at `since`.
    Head { since: Instant },
    /// A request is being served.
    Active,
    /// The response is complete; discarding the unread rest of the request body.
    Draining { drained: u64 },
    /// Closing: flush output, then shut down writing and discard input.
    /// `since` is set once output has flushed.
    Linger { since: Option<Instant>, last_read: Instant },
    /// The connection belongs to another protocol now.
    Upgraded,
    /// Done.
    Closed,
}

/// The small events a timer or EOF can produce (kept small: an idle
/// connection carries this slot).
#[derive(Debug, Clone, Copy)]
enum PendingEvent {
    Reject(StatusCode),
    BodyFailed(BodyError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutFraming {
    /// Nothing is written (HEAD, 204, 304).
    Discard,
    Length(u64),
    Chunked,
    CloseDelimited,
}

#[derive(Debug)]
enum ResponseProgress {
    NotStarted,
    Sending { framing: OutFraming, keep: bool },
}

#[derive(Debug)]
struct InFlight {
    method_is_head: bool,
    version: Version,
    keep_alive: bool,
    upgrade: bool,
    /// `None`: no body, or already complete.
    body: Option<BodyDecoder>,
    body_failed: bool,
    /// When the head was complete (the body's clock for the minimum rate).
    body_started: Instant,
    body_progress: Instant,
    response: ResponseProgress,
}

/// The server side of one HTTP/1.1 connection. Sans-I/O: see the module docs.
#[derive(Debug)]
pub struct ServerConnection {
    config: Arc<Config>,
    read_buf: BytesMut,
    out: Output,
    phase: Phase,
    request: Option<InFlight>,
    /// An event decided by a timer or EOF, returned by the next `poll_event`.
    pending: Option<PendingEvent>,
    served: u32,
    opened_at: Instant,
    now: Instant,
    /// When queued output last made progress, or was first offered for
    /// writing ([`Self::poll_transmit`]); `None` while nothing is queued.
    write_since: Option<Instant>,
    lifetime_expired: bool,
    shutting_down: bool,
    /// While shutting down, an idle connection stays open until then (the
    /// drain), so a request its client sends meanwhile is answered (with
    /// `Connection: close`) instead of meeting a closed socket.
    drain_until: Option<Instant>,
    close_after: Option<CloseCause>,
    peer_eof: bool,
    closed: Option<CloseCause>,
    /// The last request refused, and why.
    fault: Option<Fault>,
    shutdown_write: bool,
    /// Keep buffer capacity across idle periods (see [`Self::set_retain_buffers`]).
    retain_buffers: bool,
    /// The most bytes the read buffer has held since its last release: its
    /// allocation is at least this big even when split-off requests make
    /// `capacity()` report less.
    /// (u32, saturating: it fits beside the small fields; the limit is 16 KiB.)
    read_high_water: u32,
    /// The buffers hold an allocation (capacity alone cannot tell: a buffer
    /// whose contents were split off reports less than it holds).
    buffers_held: bool,
    /// Bytes read from the transport (less those handed to an upgraded
    /// protocol): with `body_in` and the read buffer, what
    /// [`Self::traffic`] reports as received.
    read_total: u64,
    /// Request body bytes decoded (read or drained).
    body_in: u64,
}

/// Buffers larger than this are given back even when retention is on.
const RETAINED_BUFFER_LIMIT: usize = 16 * 1024;

impl ServerConnection {
    /// A new connection accepted at `now`.
    pub fn new(config: Arc<Config>, now: Instant) -> Self {
        Self {
            config,
            read_buf: BytesMut::new(),
            out: Output::default(),
            phase: Phase::Idle { since: Some(now) },
            request: None,
            pending: None,
            served: 0,
            opened_at: now,
            now,
            write_since: None,
            lifetime_expired: false,
            shutting_down: false,
            drain_until: None,
            close_after: None,
            peer_eof: false,
            closed: None,
            fault: None,
            shutdown_write: false,
            retain_buffers: false,
            read_high_water: 0,
            buffers_held: false,
            read_total: 0,
            body_in: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ----- input -----

    /// Appends received bytes (copying). See [`Self::read_buffer`] for the zero-copy path.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        self.read_buffer().extend_from_slice(data);
        self.handle_read(data.len(), now);
    }

    /// The buffer the driver reads into; call [`Self::handle_read`] after.
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        &mut self.read_buf
    }

    /// Records that `n` bytes were appended to the read buffer at `now`.
    pub fn handle_read(&mut self, n: usize, now: Instant) {
        self.now = now;
        if n == 0 {
            return;
        }
        self.read_total = self.read_total.saturating_add(n as u64);
        let held = u32::try_from(self.read_buf.len()).unwrap_or(u32::MAX);
        self.read_high_water = self.read_high_water.max(held);
        self.buffers_held = true;
        match &mut self.phase {
            Phase::Idle { .. } => self.phase = Phase::Head { since: now },
            Phase::Linger { last_read, .. } => {
                *last_read = now;
                self.read_buf.clear();
            }
            Phase::Closed => self.read_buf.clear(),
            _ => {}
        }
    }

    /// The peer closed its sending side.
    /// Whether the peer closed its side (EOF was handled): a response may
    /// still be written, but no request will follow.
    pub fn peer_closed(&self) -> bool {
        self.peer_eof
    }

    pub fn handle_eof(&mut self, now: Instant) {
        self.now = now;
        self.peer_eof = true;
        match self.phase {
            Phase::Idle { .. } if self.read_buf.is_empty() => {
                if self.out.is_empty() {
                    self.close_now(CloseCause::PeerClosed);
                } else {
                    self.close_after_flush(CloseCause::PeerClosed);
                }
            }
            Phase::Idle { .. } | Phase::Head { .. } => {
                // Complete pipelined requests still get answered; poll_event
                // closes once only a partial head is left.
            }
            Phase::Active => {
                let failed = match self.request.as_mut() {
                    Some(req) if req.body.is_some() && !req.body_failed => {
                        req.body_failed = true;
                        req.body = None;
                        true
                    }
                    _ => false,
                };
                if failed && self.pending.is_none() {
                    self.pending = Some(PendingEvent::BodyFailed(BodyError::Incomplete));
                }
                self.close_after.get_or_insert(CloseCause::PeerClosed);
                // A streamed response of unknown length (chunked or to the
                // close: an event stream, a long download) to a peer that
                // closed its side: the peer is gone, so the stream ends
                // now rather than at its next write (which for an idle SSE
                // stream is the next keep-alive comment). A response of
                // known length is still sent whole to a half-closed peer.
                if self.streaming_unknown_length() {
                    self.close_after_flush(CloseCause::PeerClosed);
                }
            }
            Phase::Draining { .. } => self.close_after_flush(CloseCause::PeerClosed),
            Phase::Linger { since, .. } => {
                if since.is_some() || self.out.is_empty() {
                    let cause = self.close_after.unwrap_or(CloseCause::PeerClosed);
                    self.close_now(cause);
                }
            }
            Phase::Upgraded | Phase::Closed => {}
        }
    }

    /// A read or write failed: the connection is gone.
    pub fn handle_io_error(&mut self, now: Instant) {
        self.now = now;
        if self.closed.is_none() {
            self.close_now(CloseCause::NetworkError);
        }
    }

    /// Whether the driver should read more bytes now. Not while unsent
    /// output is above `max_unsent_output` between requests or while
    /// lingering: those bytes could only be the next requests (whose
    /// responses would pile up behind a peer that does not read) or be
    /// discarded. The current request's body is still read (bounded by the
    /// read buffer and the drain limit).
    pub fn wants_read(&self) -> bool {
        match self.phase {
            Phase::Closed | Phase::Upgraded => false,
            Phase::Idle { .. } | Phase::Head { .. } | Phase::Linger { .. } if self.output_blocked() => false,
            _ => !self.peer_eof && self.read_buf.len() <= self.config.max_head,
        }
    }

    /// Unsent output is above `max_unsent_output`: no new request is
    /// parsed and no more is read until the peer takes some.
    fn output_blocked(&self) -> bool {
        self.out.len() > self.config.max_unsent_output
    }

    /// Whether a streamed response body may queue more now (unsent
    /// output is within `max_unsent_output`).
    pub fn has_output_capacity(&self) -> bool {
        !self.output_blocked()
    }

    // ----- events -----

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(ev) = self.pending.take() {
            return Some(match ev {
                PendingEvent::BodyFailed(e) => Event::BodyFailed(e),
                PendingEvent::Reject(status) => Event::Reject(status),
            });
        }
        loop {
            match self.phase {
                Phase::Closed | Phase::Upgraded | Phase::Linger { .. } => return None,
                // The next request waits until the peer reads what is queued.
                Phase::Idle { .. } | Phase::Head { .. } if self.output_blocked() => return None,
                Phase::Idle { .. } | Phase::Head { .. } => return self.poll_head(),
                Phase::Active => return self.poll_body(),
                Phase::Draining { drained } => {
                    let Some(dec) = self.request.as_mut().and_then(|r| r.body.as_mut()) else {
                        self.request = None;
                        self.next_request_phase();
                        continue;
                    };
                    match dec.decode(&mut self.read_buf) {
                        Ok(Decoded::Data(d)) => {
                            self.body_in = self.body_in.saturating_add(d.len() as u64);
                            let drained = drained + d.len() as u64;
                            if drained > self.config.max_drain {
                                self.close_after_flush(CloseCause::UnreadBody);
                                return None;
                            }
                            self.phase = Phase::Draining { drained };
                            if let Some(r) = self.request.as_mut() {
                                r.body_progress = self.now;
                            }
                        }
                        Ok(Decoded::End(_)) => {
                            self.request = None;
                            self.next_request_phase();
                        }
                        Ok(Decoded::NeedMore) => return None,
                        Err(_) => {
                            self.close_after_flush(CloseCause::ProtocolError);
                            return None;
                        }
                    }
                }
            }
        }
    }

    fn poll_head(&mut self) -> Option<Event> {
        if self.read_buf.is_empty() {
            return None;
        }
        match parse::parse_request(&mut self.read_buf, &self.config) {
            Err(e) => Some(self.reject(e)),
            Ok(None) => {
                if self.peer_eof {
                    // Only a partial head is left and nothing more will come.
                    self.read_buf.clear();
                    self.close_after_flush(CloseCause::PeerClosed);
                } else if let Phase::Idle { .. } = self.phase {
                    self.phase = Phase::Head { since: self.now };
                }
                None
            }
            Ok(Some(head)) => Some(self.start_request(head)),
        }
    }

    fn start_request(&mut self, head: RequestHead) -> Event {
        let body = match head.body {
            BodyFraming::Empty => None,
            BodyFraming::Length(n) => Some(BodyDecoder::length(n)),
            BodyFraming::Chunked => Some(BodyDecoder::chunked(
                self.config.max_body,
                self.config.max_head,
                self.config.max_headers,
            )),
        };
        if head.expect_continue && body.is_some() {
            self.push_out(Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"), Part::Overhead);
        }
        self.request = Some(InFlight {
            method_is_head: head.method == Method::HEAD,
            version: head.version,
            keep_alive: head.keep_alive,
            upgrade: head.upgrade,
            body,
            body_failed: false,
            body_started: self.now,
            body_progress: self.now,
            response: ResponseProgress::NotStarted,
        });
        self.phase = Phase::Active;
        Event::Request(head)
    }

    fn reject(&mut self, e: HeadError) -> Event {
        self.fault = Some(Fault::Head(e));
        self.reject_with(e.status(), CloseCause::ProtocolError)
    }

    fn reject_with(&mut self, status: StatusCode, cause: CloseCause) -> Event {
        // Nothing after a refused head is ever parsed as a request.
        self.read_buf.clear();
        self.close_after = Some(self.close_after.unwrap_or(cause));
        self.request = Some(InFlight {
            method_is_head: false,
            version: Version::HTTP_11,
            keep_alive: false,
            upgrade: false,
            body: None,
            body_failed: true,
            body_started: self.now,
            body_progress: self.now,
            response: ResponseProgress::NotStarted,
        });
        self.phase = Phase::Active;
        Event::Reject(status)
    }

    fn poll_body(&mut self) -> Option<Event> {
        let req = self.request.as_mut()?;
        let dec = req.body.as_mut()?;
        match dec.decode(&mut self.read_buf) {
            Ok(Decoded::Data(d)) => {
                req.body_progress = self.now;
                self.body_in = self.body_in.saturating_add(d.len() as u64);
                Some(Event::Body(d))
            }
            Ok(Decoded::End(trailers)) => {
                req.body = None;
                Some(Event::EndOfBody(trailers))
            }
            Ok(Decoded::NeedMore) => None,
            Err(e) => Some(self.fail_body(e)),
        }
    }

    fn fail_body(&mut self, e: BodyError) -> Event {
        self.fault = Some(Fault::Body(e));
        let cause = match e {
            BodyError::Timeout => CloseCause::BodyTimeout,
            BodyError::Incomplete => CloseCause::PeerClosed,
            _ => CloseCause::ProtocolError,
        };
        self.close_after = Some(self.close_after.unwrap_or(cause));
        self.read_buf.clear();
        if let Some(req) = self.request.as_mut() {
            req.body = None;
            req.body_failed = true;
        }
        Event::BodyFailed(e)
    }

    // ----- output -----

    /// Starts the response to the current request.
    ///
    /// The engine writes `Content-Length`/`Transfer-Encoding`, `Connection`
    /// and `Keep-Alive` itself; a `Connection: close` in `headers` asks the
    /// engine to close after this response. `Date` is the caller's to add
    /// (or see [`send_response_with_date`](Self::send_response_with_date)).
    pub fn send_response(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        body: ResponseBody,
    ) -> Result<(), SendError> {
        self.send_response_with_date(status, headers, None, body)
    }

    /// [`send_response`](Self::send_response), with a formatted `Date`
    /// value that the head carries unless `headers` has its own `Date`
    /// (the engine reads no clock; the caller formats, and may cache, it).
    pub fn send_response_with_date(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        date: Option<&[u8]>,
        body: ResponseBody,
    ) -> Result<(), SendError> {
        self.check_response_allowed(status)?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return self.send_switching_protocols(headers, date);
        }
        let framing = self.response_framing(status, body);
        let cause = self.close_decision(headers, framing);
        if let Some(c) = cause {
            self.close_after = Some(c);
        }
        let keep = cause.is_none();
        self.served += 1;
        let engine = self.engine_headers(keep, status, body, framing, date);
        self.push_head(status, headers, &engine, false);
        if let Some(req) = self.request.as_mut() {
            req.response = ResponseProgress::Sending { framing, keep };
        }
        if body == ResponseBody::Empty || framing == OutFraming::Length(0) && body != ResponseBody::Streaming {
            self.complete_response();
        }
        Ok(())
    }

    /// Whether a response with `status` may start now.
    fn check_response_allowed(&self, status: StatusCode) -> Result<(), SendError> {
        if self.closed.is_some() {
            return Err(SendError::Closed);
        }
        let Some(req) = self.request.as_ref() else {
            return Err(SendError::NoRequest);
        };
        if !matches!(req.response, ResponseProgress::NotStarted) {
            return Err(SendError::AlreadyStarted);
        }
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            return Err(SendError::Informational);
        }
        if status == StatusCode::SWITCHING_PROTOCOLS && (!req.upgrade || self.close_after.is_some()) {
            return Err(SendError::NotUpgrade);
        }
        Ok(())
    }

    /// `101`: the head goes out as the handler wrote it, and the connection
    /// belongs to the new protocol once it is flushed.
    fn send_switching_protocols(&mut self, headers: &HeaderMap, date: Option<&[u8]>) -> Result<(), SendError> {
        let engine = EngineHeaders {
            content_length: None,
            chunked: false,
            connection: ConnectionHeader::None,
            keep_alive: None,
            date,
        };
        self.push_head(StatusCode::SWITCHING_PROTOCOLS, headers, &engine, true);
        self.served += 1;
        self.request = None;
        self.phase = Phase::Upgraded;
        Ok(())
    }

    /// How the body is delimited: none for HEAD, 204 and 304; a length;
    /// chunked for a stream in HTTP/1.1, the close in HTTP/1.0.
    fn response_framing(&self, status: StatusCode, body: ResponseBody) -> OutFraming {
        let Some(req) = self.request.as_ref() else {
            return OutFraming::Discard;
        };
        if is_bodiless_status(status) || req.method_is_head {
            return OutFraming::Discard;
        }
        match body {
            ResponseBody::Empty => OutFraming::Length(0),
            ResponseBody::Length(n) => OutFraming::Length(n),
            ResponseBody::Streaming if req.version == Version::HTTP_11 => OutFraming::Chunked,
            ResponseBody::Streaming => OutFraming::CloseDelimited,
        }
    }

    /// The one place that decides keep-alive: whether the connection closes
    /// after this response, and for which cause (the first that applies).
    fn close_decision(&self, headers: &HeaderMap, framing: OutFraming) -> Option<CloseCause> {
        let req = self.request.as_ref()?;
        let max = self.config.max_requests;
        // A walk over the (few) fields a handler sets is cheaper than the
        // hashed lookup of `has_token` (about 100 instructions a response).
        let handler_close = || {
            headers
                .iter()
                .any(|(name, value)| name == header::CONNECTION && parse::list_has_token(value.as_bytes(), b"close"))
        };
        let unread_too_long = || {
            req.body
                .as_ref()
                .and_then(|b| b.remaining())
                .is_some_and(|left| left > self.config.max_drain)
        };
        if let Some(c) = self.close_after {
            Some(c)
        } else if !req.keep_alive {
            Some(CloseCause::ClientClose)
        } else if handler_close() {
            Some(CloseCause::ServerClose)
        } else if max != 0 && self.served + 1 >= max {
            Some(CloseCause::MaxRequests)
        } else if self.lifetime_expired {
            Some(CloseCause::Lifetime)
        } else if self.shutting_down {
            Some(CloseCause::Shutdown)
        } else if framing == OutFraming::CloseDelimited {
            Some(CloseCause::ServerClose)
        } else if unread_too_long() {
            Some(CloseCause::UnreadBody)
        } else {
            None
        }
    }

    /// The fields the engine writes: framing, `Connection`, `Keep-Alive`
    /// (never advertising more than the connection will get: the idle
    /// timeout, or what is left of its lifetime if less, in whole seconds
    /// rounded down), `Date`.
    fn engine_headers<'d>(
        &self,
        keep: bool,
        status: StatusCode,
        body: ResponseBody,
        framing: OutFraming,
        date: Option<&'d [u8]>,
    ) -> EngineHeaders<'d> {
        let version = self.request.as_ref().map_or(Version::HTTP_11, |r| r.version);
        let keep_alive = if keep && self.config.keep_alive_header != KeepAliveHeader::Off {
            let max_param = match (self.config.max_requests, self.config.keep_alive_header) {
                (0, _) => None,
                (m, KeepAliveHeader::Remaining) => Some(m - self.served),
                (m, _) => Some(m),
            };
            Some((self.advertised_timeout().as_secs(), max_param))
        } else {
            None
        };
        let connection = match (keep, version) {
            (false, _) => ConnectionHeader::Close,
            (true, Version::HTTP_10) => ConnectionHeader::KeepAlive,
            (true, _) => ConnectionHeader::None,
        };
        let content_length = match (is_bodiless_status(status), body) {
            (true, _) => None,
            (false, ResponseBody::Empty) => Some(0),
            (false, ResponseBody::Length(n)) => Some(n),
            (false, ResponseBody::Streaming) => None,
        };
        EngineHeaders {
            content_length,
            chunked: framing == OutFraming::Chunked,
            connection,
            keep_alive,
            date,
        }
    }

    /// How long the connection will wait for the next request: the idle
    /// timeout, or what is left of its lifetime when that is less.
    fn advertised_timeout(&self) -> Duration {
        match self.config.max_lifetime {
            Some(lifetime) => {
                let left = (self.opened_at + lifetime).saturating_duration_since(self.now);
                left.min(self.config.idle_timeout)
            }
            None => self.config.idle_timeout,
        }
    }

    /// Sends a piece of the response body.
    pub fn send_body(&mut self, chunk: Bytes) -> Result<(), SendError> {
        if self.closed.is_some() {
            return Err(SendError::Closed);
        }
        let Some(req) = self.request.as_mut() else {
            return Err(SendError::NotStarted);
        };
        let ResponseProgress::Sending { framing, .. } = &mut req.response else {
            return Err(SendError::NotStarted);
        };
        match framing {
            OutFraming::Discard => Ok(()),
            OutFraming::Length(left) => {
                if chunk.len() as u64 > *left {
                    return Err(SendError::BodyTooLong);
                }
                *left -= chunk.len() as u64;
                if !chunk.is_empty() {
                    self.push_out(chunk, Part::Payload);
                }
                Ok(())
            }
            OutFraming::Chunked => {
                if !chunk.is_empty() {
                    self.push_out(encode::chunk_size_line(chunk.len()), Part::Overhead);
                    self.push_out(chunk, Part::Payload);
                    self.push_out(Bytes::from_static(encode::CHUNK_END), Part::Overhead);
                }
                Ok(())
            }
            OutFraming::CloseDelimited => {
                if !chunk.is_empty() {
                    self.push_out(chunk, Part::Payload);
                }
                Ok(())
            }
        }
    }

    /// Starts sending the rest of a `Content-Length` body around the output
    /// queue: the driver writes it to the socket itself (a file, with
    /// `sendfile`). Allowed once every queued byte is written, so the body
    /// follows its head. Returns how many body bytes are left; the write
    /// timer runs from `now`, restarted by every
    /// [`Self::handle_direct_written`], and stops when none are left.
    pub fn begin_direct_body(&mut self, now: Instant) -> Result<u64, SendError> {
        let left = self.direct_left()?;
        self.now = now;
        if left > 0 && self.write_since.is_none() {
            self.write_since = Some(now);
        }
        Ok(left)
    }

    /// `n` bytes of the body went to the socket directly at `now` (see
    /// [`Self::begin_direct_body`]); they count as payload sent.
    pub fn handle_direct_written(&mut self, n: u64, now: Instant) -> Result<(), SendError> {
        let left = self.direct_left()?;
        if n > left {
            return Err(SendError::BodyTooLong);
        }
        if let Some(ResponseProgress::Sending {
            framing: OutFraming::Length(l),
            ..
        }) = self.request.as_mut().map(|r| &mut r.response)
        {
            *l -= n;
        }
        self.out.count_direct(n);
        self.now = now;
        self.write_since = (left > n).then_some(now);
        Ok(())
    }

    /// The body bytes a direct body has left to send, if one may be sent now.
    fn direct_left(&self) -> Result<u64, SendError> {
        if self.closed.is_some() {
            return Err(SendError::Closed);
        }
        if !self.out.is_empty() {
            return Err(SendError::NotDirect);
        }
        match self.request.as_ref().map(|r| &r.response) {
            Some(ResponseProgress::Sending {
                framing: OutFraming::Length(left),
                ..
            }) => Ok(*left),
            // HEAD, 204, 304: the body is not sent at all.
            Some(ResponseProgress::Sending {
                framing: OutFraming::Discard,
                ..
            }) => Ok(0),
            Some(ResponseProgress::Sending { .. }) => Err(SendError::NotDirect),
            _ => Err(SendError::NotStarted),
        }
    }

    /// Ends the response body.
    pub fn finish_response(&mut self) -> Result<(), SendError> {
        if self.closed.is_some() {
            return Err(SendError::Closed);
        }
        let Some(req) = self.request.as_mut() else {
            return Err(SendError::NotStarted);
        };
        let ResponseProgress::Sending { framing, .. } = req.response else {
            return Err(SendError::NotStarted);
        };
        match framing {
            OutFraming::Length(left) if left > 0 => {
                // The framing promised more: the only honest end is a close.
                self.close_after = Some(self.close_after.unwrap_or(CloseCause::ServerClose));
                self.complete_response();
                return Err(SendError::BodyTooShort);
            }
            OutFraming::Chunked => self.push_out(Bytes::from_static(encode::LAST_CHUNK), Part::Overhead),
            _ => {}
        }
        self.complete_response();
        Ok(())
    }

    /// Aborts the current response (the handler failed mid-body): the
    /// connection closes once what was written is flushed.
    pub fn abort_response(&mut self) {
        if self.out.is_empty() {
            // No write is waiting (a direct body's timer stops).
            self.write_since = None;
        }
        let cause = self.close_after.unwrap_or(CloseCause::ServerClose);
        self.close_after_flush(cause);
    }

    fn complete_response(&mut self) {
        let keep = match self.request.as_ref().map(|r| &r.response) {
            Some(ResponseProgress::Sending { keep, .. }) => *keep,
            _ => false,
        };
        if !keep || self.close_after.is_some() {
            let cause = self.close_after.unwrap_or(CloseCause::ServerClose);
            self.close_after_flush(cause);
            return;
        }
        let body_pending = self
            .request
            .as_ref()
            .is_some_and(|r| r.body.is_some() && !r.body_failed);
        if body_pending {
            self.phase = Phase::Draining { drained: 0 };
        } else {
            self.request = None;
            self.next_request_phase();
        }
    }

    fn next_request_phase(&mut self) {
        if !self.read_buf.is_empty() {
            self.phase = Phase::Head { since: self.now };
        } else if self.peer_eof {
            self.close_after_flush(CloseCause::PeerClosed);
        } else if self.out.is_empty() {
            self.enter_idle();
        } else {
            self.phase = Phase::Idle { since: None };
        }
    }

    fn enter_idle(&mut self) {
        if self.shutting_down && !self.draining() {
            self.close_now(CloseCause::Shutdown);
        } else if self.lifetime_expired {
            self.close_now(CloseCause::Lifetime);
        } else {
            self.phase = Phase::Idle { since: Some(self.now) };
            if self.retain_buffers
                && self.read_high_water as usize <= RETAINED_BUFFER_LIMIT
                && self.out.high_water() <= RETAINED_BUFFER_LIMIT
            {
                // Back-to-back requests reuse them; `release_buffers` frees them.
                self.read_buf.clear();
                self.out.clear();
            } else {
                self.release_buffers();
            }
        }
    }

    /// Whether the response in progress is a stream without a length.
    fn streaming_unknown_length(&self) -> bool {
        matches!(
            self.request.as_ref().map(|r| &r.response),
            Some(ResponseProgress::Sending {
                framing: OutFraming::Chunked | OutFraming::CloseDelimited,
                ..
            })
        )
    }

    fn close_after_flush(&mut self, cause: CloseCause) {
        self.close_after = Some(self.close_after.unwrap_or(cause));
        self.request = None;
        self.read_buf.clear();
        self.phase = Phase::Linger {
            since: None,
            last_read: self.now,
        };
        if self.out.is_empty() {
            self.output_flushed();
        }
    }

    fn close_now(&mut self, cause: CloseCause) {
        self.write_since = None;
        self.closed = Some(cause);
        self.phase = Phase::Closed;
        self.request = None;
        self.out.clear();
        self.read_buf = BytesMut::new();
    }

    fn push_out(&mut self, b: Bytes, part: Part) {
        self.out.push(b, part);
    }

    fn push_head(&mut self, status: StatusCode, headers: &HeaderMap, engine: &EngineHeaders, pass_through: bool) {
        let tail = self.out.tail_mut();
        let before = tail.len();
        encode::encode_head(tail, status, headers, engine, pass_through);
        let n = tail.len() - before;
        self.out.wrote_tail(n, Part::Overhead);
    }

    /// Called when the output queue became empty.
    fn output_flushed(&mut self) {
        match self.phase {
            Phase::Idle { since: None } => self.enter_idle(),
            Phase::Linger { since: None, .. } => {
                let cause = self.close_after.unwrap_or(CloseCause::ServerClose);
                if self.peer_eof {
                    self.close_now(cause);
                } else {
                    self.shutdown_write = true;
                    self.phase = Phase::Linger {
                        since: Some(self.now),
                        last_read: self.now,
                    };
                }
            }
            _ => {}
        }
    }

    // ----- transmit -----

    /// Whether output is waiting to be written.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Bytes waiting to be written.
    pub fn output_len(&self) -> usize {
        self.out.len()
    }

    /// The queued output, in order, for one vectored write; `now` starts
    /// the write timer if this output has not been offered before (a
    /// response carries no time of its own). Report what was written with
    /// [`Self::handle_written`]. A driver offers queued output whenever
    /// [`Self::has_output`].
    pub fn poll_transmit(&mut self, now: Instant) -> impl Iterator<Item = &[u8]> + '_ {
        if self.write_since.is_none() && !self.out.is_empty() {
            self.write_since = Some(now);
        }
        self.out.bufs()
    }

    /// Takes all queued output as one buffer (convenient for tests and
    /// simple drivers); counts as written at `now`.
    pub fn take_output(&mut self, now: Instant) -> Bytes {
        let mut all = BytesMut::with_capacity(self.out.len());
        for b in self.poll_transmit(now) {
            all.extend_from_slice(b);
        }
        let n = all.len();
        self.handle_written(n, now);
        all.freeze()
    }

    /// `n` bytes of [`Self::poll_transmit`]'s output were written at `now`.
    pub fn handle_written(&mut self, n: usize, now: Instant) {
        self.now = now;
        if n > 0 {
            self.write_since = Some(now);
        }
        let was_blocked = self.output_blocked();
        self.out.consume(n);
        if was_blocked && !self.output_blocked() {
            if let Phase::Head { since } = &mut self.phase {
                // The header timer runs only while the head waits on the peer.
                *since = now;
            }
        }
        if self.out.is_empty() {
            self.write_since = None;
            self.output_flushed();
        }
    }

    /// True once, when the driver should shut down the write side (after
    /// the last response was flushed) and keep reading to linger.
    #[must_use]
    pub fn poll_shutdown_write(&mut self) -> bool {
        std::mem::take(&mut self.shutdown_write)
    }

    // ----- time -----

    /// The next instant at which [`Self::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let c = &self.config;
        let phase_deadline = match self.phase {
            Phase::Closed | Phase::Upgraded => return None,
            Phase::Idle { since: Some(s) } => [Some(s + c.idle_timeout), self.drain_until].into_iter().flatten().min(),
            Phase::Idle { since: None } => None,
            // Blocked by our own unsent output: the write timeout governs.
            Phase::Head { .. } if self.output_blocked() => None,
            Phase::Head { since } => Some(since + c.header_timeout),
            Phase::Active | Phase::Draining { .. } => self.body_deadline(),
            Phase::Linger {
                since: Some(s),
                last_read,
            } => Some((s + c.linger_time).min(last_read + c.linger_idle)),
            Phase::Linger { since: None, .. } => None,
        };
        let write_deadline = self.write_since.map(|since| since + c.write_timeout);
        let lifetime = match (c.max_lifetime, self.lifetime_expired) {
            (Some(l), false) => Some(self.opened_at + l),
            _ => None,
        };
        [phase_deadline, write_deadline, lifetime].into_iter().flatten().min()
    }

    fn body_deadline(&self) -> Option<Instant> {
        let req = self.request.as_ref()?;
        let body = req.body.as_ref()?;
        if req.body_failed || body.is_done() || !self.read_buf.is_empty() {
            // Buffered bytes waiting for the handler: the stall is ours, not the peer's.
            return None;
        }
        let c = &self.config;
        let stalled = req.body_progress + c.body_timeout;
        // Below the minimum rate: after a grace of one body timeout, each
        // `rate` bytes received buy one more second (Apache's MinRate).
        let too_slow = c.body_min_rate.map(|rate| {
            let earned_ms = body.received().saturating_mul(1000) / u64::from(rate.get());
            req.body_started + c.body_timeout + Duration::from_millis(earned_ms)
        });
        Some(too_slow.map_or(stalled, |t| t.min(stalled)))
    }

    /// Acts on every deadline that has passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        let c = self.config.clone();
        if let Some(l) = c.max_lifetime {
            if !self.lifetime_expired && now >= self.opened_at + l {
                self.lifetime_expired = true;
                if let Phase::Idle { since: Some(_) } = self.phase {
                    self.close_now(CloseCause::Lifetime);
                    return;
                }
            }
        }
        if self.write_since.is_some_and(|since| now >= since + c.write_timeout) {
            self.close_now(CloseCause::WriteTimeout);
            return;
        }
        match self.phase {
            Phase::Idle { since: Some(_) } if self.shutting_down && !self.draining() => {
                self.close_now(CloseCause::Shutdown);
            }
            Phase::Idle { since: Some(s) } if now >= s + c.idle_timeout => {
                self.close_now(CloseCause::IdleTimeout);
            }
            Phase::Head { since } if !self.output_blocked() && now >= since + c.header_timeout => {
                self.fault = Some(Fault::HeaderTimeout);
                self.reject_with(StatusCode::REQUEST_TIMEOUT, CloseCause::HeaderTimeout);
                self.pending = Some(PendingEvent::Reject(StatusCode::REQUEST_TIMEOUT));
            }
            Phase::Active | Phase::Draining { .. } if self.body_deadline().is_some_and(|d| now >= d) => {
                if let Phase::Draining { .. } = self.phase {
                    self.close_after_flush(CloseCause::BodyTimeout);
                } else {
                    self.fail_body(BodyError::Timeout);
                    if self.pending.is_none() {
                        self.pending = Some(PendingEvent::BodyFailed(BodyError::Timeout));
                    }
                }
            }
            Phase::Linger {
                since: Some(s),
                last_read,
            } if now >= s + c.linger_time || now >= last_read + c.linger_idle => {
                let cause = self.close_after.unwrap_or(CloseCause::ServerClose);
                self.close_now(cause);
            }
            _ => {}
        }
    }

    /// Graceful shutdown. Every response from now on carries `Connection:
    /// close`. An idle connection is drained: it stays open for
    /// `Config::shutdown_drain`, so a request its client sends meanwhile (a
    /// busy client's next one, already on its way) is answered, with
    /// `Connection: close`; one still idle when the drain ends is closed
    /// ([`CloseCause::Shutdown`]). A request in progress is answered with
    /// `Connection: close`. With no drain, an idle connection closes at once.
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.now = now;
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.drain_until = Some(now + self.config.shutdown_drain);
        if let Phase::Idle { since: Some(_) } = self.phase {
            if !self.draining() {
                self.close_now(CloseCause::Shutdown);
            }
        }
    }

    /// Closes the connection if it is idle (waiting for a request with
    /// nothing received, queued or pending), to make room for a new one;
    /// returns whether it did ([`CloseCause::Reclaimed`]).
    pub fn reclaim(&mut self, now: Instant) -> bool {
        self.now = now;
        if self.idle_since().is_none() {
            return false;
        }
        self.close_now(CloseCause::Reclaimed);
        true
    }

    /// Shutting down and the drain has not ended.
    fn draining(&self) -> bool {
        self.drain_until.is_some_and(|until| self.now < until)
    }

    // ----- state -----

    /// Why the connection closed, once it has; the driver then drops the transport.
    #[must_use]
    pub fn poll_close(&self) -> Option<CloseCause> {
        self.closed
    }

    /// The last request refused on this connection, and why (for logs).
    pub fn fault(&self) -> Option<Fault> {
        self.fault
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Whether a `101` was sent: once output is flushed, the transport and
    /// [`Self::take_upgraded_bytes`] belong to the new protocol.
    pub fn is_upgraded(&self) -> bool {
        self.phase == Phase::Upgraded
    }

    /// Bytes that arrived after the upgrade request (the new protocol's:
    /// they leave this connection's [`traffic`](Self::traffic), for the new
    /// protocol to count).
    pub fn take_upgraded_bytes(&mut self) -> BytesMut {
        let bytes = std::mem::take(&mut self.read_buf);
        self.read_total = self.read_total.saturating_sub(bytes.len() as u64);
        bytes
    }

    /// The bytes this connection read and sent so far ([`crate::wire`]).
    ///
    /// Received: body bytes are payload (as decoded: `Content-Length`
    /// bodies and chunk data, drained ones included); everything else
    /// read is overhead: request heads, chunk-size lines and their CRLFs,
    /// trailers, and bytes discarded (after a refused request, while
    /// lingering, a partial head at the close). Bytes still in the read
    /// buffer count once they are parsed (or discarded); those handed to
    /// an upgraded protocol ([`take_upgraded_bytes`](Self::take_upgraded_bytes))
    /// are that protocol's. Sent: response heads (`100 Continue`
    /// included), chunk-size lines, CRLFs and the last chunk are overhead,
    /// body bytes payload, counted as they are queued: once the output is
    /// written (every connection that closes normally writes it all), the
    /// sum is exactly what went to the transport; on a connection that ends
    /// abruptly (reset, write timeout) it includes what was still queued.
    /// A few additions per read and per response piece; nothing per byte.
    pub fn traffic(&self) -> Traffic {
        let consumed = self.read_total.saturating_sub(self.read_buf.len() as u64);
        Traffic {
            received: WireBytes {
                overhead: consumed.saturating_sub(self.body_in),
                payload: self.body_in,
            },
            sent: self.out.sent(),
        }
    }

    /// Whether the connection is idle: waiting for a request with nothing pending.
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Idle { since: Some(_) })
    }

    /// Whether an idle connection keeps its read and output buffers (when
    /// they stayed within 16 KiB) instead of freeing them. Off by default:
    /// an idle connection holds no buffer. A driver that pools buffers turns
    /// it on and moves them out with [`Self::take_buffers`] as soon as the
    /// connection is idle, and back in with [`Self::give_buffers`] when
    /// bytes arrive, so back-to-back requests allocate no buffer.
    pub fn set_retain_buffers(&mut self, retain: bool) {
        self.retain_buffers = retain;
    }

    /// Frees the read and output buffers if they hold nothing.
    pub fn release_buffers(&mut self) {
        if self.read_buf.is_empty() && self.out.is_empty() {
            self.read_buf = BytesMut::new();
            self.read_high_water = 0;
            self.out.release();
            self.buffers_held = false;
        }
    }

    /// While idle, moves the (empty) read and output buffers out, for a
    /// driver's pool; `None` when there are none worth keeping.
    pub fn take_buffers(&mut self) -> Option<(BytesMut, BytesMut)> {
        self.idle_since()?;
        if !self.buffers_held {
            return None;
        }
        let read = std::mem::take(&mut self.read_buf);
        let out = self.out.take_buffer();
        self.read_high_water = 0;
        self.buffers_held = false;
        Some((read, out))
    }

    /// Gives the connection empty buffers to use, if it has none.
    pub fn give_buffers(&mut self, (mut read, out): (BytesMut, BytesMut)) {
        if self.buffers_held || !self.read_buf.is_empty() || !self.out.is_empty() {
            return;
        }
        read.clear();
        self.read_buf = read;
        self.out.give_buffer(out);
        self.buffers_held = true;
    }

    /// Whether the connection holds buffers (a driver lends some before feeding bytes).
    pub fn has_buffers(&self) -> bool {
        self.buffers_held
    }

    /// Heap capacity of the read and output buffers, for memory tests and metrics.
    pub fn buffer_capacity(&self) -> usize {
        self.read_buf.capacity() + self.out.capacity()
    }

    /// When the connection became idle, while it waits for its next request
    /// with nothing received, queued or pending, and is not shutting down.
    /// Only then may a driver set it aside without a task (parking): the
    /// next thing that can happen is input, a deadline from
    /// [`Self::poll_timeout`] or shutdown.
    pub fn idle_since(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle { since: Some(since) }
                if self.read_buf.is_empty()
                    && self.out.is_empty()
                    && self.pending.is_none()
                    && self.request.is_none()
                    && !self.shutting_down
                    && self.closed.is_none() =>
            {
                Some(since)
            }
            _ => None,
        }
    }

    /// Whether a request is waiting for its response head.
    pub fn awaiting_response(&self) -> bool {
        matches!(
            self.request.as_ref().map(|r| &r.response),
            Some(ResponseProgress::NotStarted)
        )
    }

    /// Responses started on this connection.
    pub fn requests_served(&self) -> u32 {
        self.served
    }

    /// Whether the connection will close after the current response.
    pub fn will_close(&self) -> Option<CloseCause> {
        self.close_after
    }
}
