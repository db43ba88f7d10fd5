//! `tracing` spans: one per connection, one per request, one per WebSocket.
//!
//! Theory of operation. Every connection the server accepts gets a `conn`
//! span (fields `peer` and `conn`, a process-wide connection number;
//! recorded at its end: `requests`, the responses it carried, and `cause`,
//! why it closed, or `upgraded`). Its driver runs inside it, so whatever a
//! handler logs while it runs, and the line the connection ends with
//! (`connection closed`), sit under it. Each request is a `request` span
//! under it (`method`, `path`, and `status` once the handler answered),
//! entered while its handler is polled and closed once its response is
//! queued (streamed: once the stream ends). A connection upgraded to a
//! WebSocket goes on as a `websocket` span under the `conn` span (its end
//! recorded as `end`; `websocket closed` is logged inside it). So a
//! subscriber sees a connection's life as one tree:
//!
//! ```text
//! conn{peer=127.0.0.1:50000 conn=7 requests=3 cause=idle_timeout}
//! ├── request{method=GET path=/a status=200}
//! ├── request{method=GET path=/b status=200}
//! └── request{method=GET path=/c status=404}
//! ```
//!
//! A connection that parks leaves its task but not its span: the span
//! travels with the parked engine ([`ParkedSpan`]) and the task that
//! resumes it enters the same span again. A connection that ends while
//! parked (its idle timeout, fired in the lot) logs and records its end in
//! that span too.
//!
//! Cost. The spans are at `DEBUG` level (targets `tether::conn`,
//! `tether::request`, `tether::websocket`): with no subscriber interested
//! (`tether serve` at its default `info`), creating one is a check of the
//! maximum level (a load and a compare), and entering, recording and
//! dropping a disabled span test one `Option`; the connection number is
//! not even taken. A parked connection holds its span boxed, 8 bytes, and
//! allocates no box for a disabled one (a held request's two spans share
//! one box). With a subscriber interested, each
//! span costs what that subscriber makes it cost (a registry entry, an
//! allocation or two).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::Empty;
use tracing::Span;

/// A peer address as a field (`-` when the transport has none).
struct Peer(Option<SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(peer) => peer.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// The number the next connection's span gets (only enabled spans take one).
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

fn next_connection() -> u64 {
    NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed)
}

/// The span of a connection accepted from `peer`.
pub(crate) fn connection(peer: Option<SocketAddr>) -> Span {
    tracing::debug_span!(
        target: "tether::conn",
        "conn",
        peer = %Peer(peer),
        conn = next_connection(),
        requests = Empty,
        cause = Empty,
    )
}

/// The span of one request on the connection of `parent`.
pub(crate) fn request(parent: &Span, method: &http::Method, uri: &http::Uri) -> Span {
    tracing::debug_span!(
        target: "tether::request",
        parent: parent,
        "request",
        method = %method,
        path = %uri.path(),
        status = Empty,
    )
}

/// The span of a WebSocket that an upgraded connection (of span `parent`) became.
pub(crate) fn websocket(parent: &Span) -> Span {
    tracing::debug_span!(target: "tether::websocket", parent: parent, "websocket", end = Empty)
}

/// Records a connection's end on its span: the responses it carried and
/// why it ended (`upgraded` for an upgrade).
pub(crate) fn record_end(span: &Span, requests: u32, cause: &str) {
    // `record` on a disabled span still looks its field up by name.
    if !span.is_disabled() {
        span.record("requests", requests);
        span.record("cause", cause);
    }
}

/// Records `value` as `field` of `span`, when the span is enabled.
pub(crate) fn record(span: &Span, field: &str, value: impl tracing::Value) {
    if !span.is_disabled() {
        span.record(field, value);
    }
}

/// A span kept while its connection is parked: boxed (8 bytes in the
/// lot's slot instead of 40), and nothing at all for a disabled span.
#[derive(Default)]
pub(crate) struct ParkedSpan(Option<Box<Span>>);

impl ParkedSpan {
    pub(crate) fn new(span: Span) -> Self {
        Self((!span.is_disabled()).then(|| Box::new(span)))
    }

    /// The span, by reference (a disabled one when none was kept).
    pub(crate) fn get(&self) -> &Span {
        match &self.0 {
            Some(span) => span,
            None => Self::default_ref(),
        }
    }

    /// A disabled span, by reference.
    fn default_ref() -> &'static Span {
        static NONE: std::sync::OnceLock<Span> = std::sync::OnceLock::new();
        NONE.get_or_init(Span::none)
    }

    /// The span, to enter again on a task.
    pub(crate) fn into_span(self) -> Span {
        self.0.map_or_else(Span::none, |span| *span)
    }
}

/// A parked held request's two spans, its connection's and its request's,
/// in one box (8 bytes in the lot's slot: the held request is the largest
/// kind parked), and nothing at all when both are disabled.
#[derive(Default)]
pub(crate) struct ParkedSpans(Option<Box<(Span, Span)>>);

impl ParkedSpans {
    pub(crate) fn new(connection: Span, request: Span) -> Self {
        let keep = !connection.is_disabled() || !request.is_disabled();
        Self(keep.then(|| Box::new((connection, request))))
    }

    /// The connection's span (a disabled one when none was kept).
    pub(crate) fn connection(&self) -> &Span {
        match &self.0 {
            Some(spans) => &spans.0,
            None => ParkedSpan::default_ref(),
        }
    }

    /// The connection's and the request's spans, to enter again on a task.
    pub(crate) fn into_spans(self) -> (Span, Span) {
        self.0.map_or_else(|| (Span::none(), Span::none()), |spans| *spans)
    }
}
