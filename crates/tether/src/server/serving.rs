//! What the connections of one server share, and the kinds of connection
//! that park.
//!
//! Theory of operation. [`Serving`] is the handler and the parking lot;
//! [`Serving::spawn`] runs a keep-alive connection on a task of its own
//! until it ends or is idle long enough to park. The parking lot
//! (`super::park`) knows nothing of protocols: it holds anything that is a
//! [`Sleeper`]. [`Parkable`] is the one such type this server parks, by
//! value (an idle keep-alive engine, or a callback-served WebSocket's engine
//! and service), and hands each call to the kind it is. What a parked HTTP
//! connection's engine counts meanwhile (bytes it reads, or drops as it
//! closes) goes to the server's totals at once (`tracked`): its driver added
//! everything before it parked, and the next one starts from there.
//! A parked connection keeps its `tracing` span (boxed: `ParkedSpan`), so
//! the task that resumes it runs in the same span, and an end met in the
//! lot is logged and recorded in it.
//!
//! Every kind of server stream parks (`super::stream`: TCP, TLS over TCP,
//! a Unix socket). A connection runs on its task as its own type (a TCP
//! socket, a boxed TLS stream, a Unix socket: [`Serving::serve`]); parking
//! turns it into a [`ServerStream`], and resuming spawns the kind it is
//! again ([`Serving::spawn`]). A TLS connection first completes its
//! handshake on the task it was accepted on ([`Serving::serve_tls`]) and is
//! served on the same task until it parks.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tether_proto::h1::{self, CloseCause, ServerConnection};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;

pub(crate) use super::driver::Carry;
use super::driver::{self, ConnectionEnd, Driven, Paused};
use super::held::Held;
use super::listener::HandshakeError;
use super::park::ParkingLot;
pub(crate) use super::sleeper::Visit;
use super::sleeper::{AtShutdown, Sleeper};
use super::stream::{ServerStream, TlsSocket};
use super::{ServerStats, SharedHandler};
use crate::lifecycle::{OpenGuard, Stop, Transport};
use crate::spans::{ParkedSpan, ParkedSpans};
use crate::ws::ParkedWebSocket;

/// The parking lot of one server.
pub(crate) type Lot = ParkingLot<Parkable>;

/// What every connection of one server shares.
pub(crate) struct Serving {
    pub handler: SharedHandler,
    /// Present when connections park.
    pub lot: Option<Lot>,
    /// One log line per request.
    pub access_log: bool,
    pub stats: Arc<ServerStats>,
}

impl Serving {
    /// Runs a connection on a task of its own, inside its span, until it
    /// ends or parks (resuming a held response, if it carries one).
    pub(crate) fn spawn(
        self: &Arc<Self>,
        stream: ServerStream,
        conn: ServerConnection,
        stop: watch::Receiver<Stop>,
        guard: Option<OpenGuard>,
        peer: Option<SocketAddr>,
        carry: Carry,
    ) {
        match stream {
            ServerStream::Tcp(io) => self.spawn_on(io, conn, stop, guard, peer, carry),
            ServerStream::Tls(io) => self.spawn_on(io, conn, stop, guard, peer, carry),
            #[cfg(unix)]
            ServerStream::Unix(io) => self.spawn_on(io, conn, stop, guard, peer, carry),
        }
    }

    /// [`Serving::spawn`] for a stream of one kind.
    pub(crate) fn spawn_on<IO: Transport + Into<ServerStream>>(
        self: &Arc<Self>,
        io: IO,
        conn: ServerConnection,
        stop: watch::Receiver<Stop>,
        guard: Option<OpenGuard>,
        peer: Option<SocketAddr>,
        carry: Carry,
    ) {
        let span = carry.span.clone();
        tokio::spawn(self.clone().serve(io, conn, stop, guard, peer, carry).instrument(span));
    }

    /// Serves a connection on the current task until it ends (or upgrades)
    /// or parks.
    async fn serve<IO: Transport + Into<ServerStream>>(
        self: Arc<Self>,
        io: IO,
        conn: ServerConnection,
        stop: watch::Receiver<Stop>,
        guard: Option<OpenGuard>,
        peer: Option<SocketAddr>,
        carry: Carry,
    ) {
        let lot = self.lot.as_ref();
        let context = driver::Context {
            handler: self.handler.clone(),
            lot,
            peer,
            access_log: self.access_log,
            stats: Some(self.stats.clone()),
            carry,
        };
        match driver::drive(io, conn, context, stop, guard).await {
            Driven::Ended(end, traffic, span) => self.stats.record_end(peer, end, traffic, &span),
            // `drive` parks only when given a lot.
            Driven::Idle(paused) => {
                if let Some(lot) = lot {
                    self.park(lot, paused, peer);
                }
            }
        }
    }

    /// A TLS connection's task: its handshake (under `timeout`, abandoned
    /// on shutdown), then the connection, or the `503` of a refused one.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn serve_tls(
        self: Arc<Self>,
        stream: TcpStream,
        acceptor: tokio_rustls::TlsAcceptor,
        timeout: std::time::Duration,
        config: Arc<h1::Config>,
        admitted: Option<OpenGuard>,
        stop: watch::Receiver<Stop>,
        peer: SocketAddr,
    ) {
        let socket = TlsSocket::Attached(stream);
        let tls = match super::listener::handshake(acceptor, socket, timeout, stop.clone()).await {
            Ok(tls) => tls,
            Err(e) => {
                let counter = match e {
                    HandshakeError::TimedOut => &self.stats.tls_handshake_timeouts,
                    HandshakeError::ShuttingDown | HandshakeError::Failed(_) => &self.stats.tls_handshake_failures,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, error = %e, "TLS connection closed before its handshake completed");
                return;
            }
        };
        self.stats.tls_handshakes.fetch_add(1, Ordering::Relaxed);
        match admitted {
            Some(guard) => {
                let conn = ServerConnection::new(config, std::time::Instant::now());
                let span = crate::spans::connection(Some(peer));
                let carry = Carry::new(span.clone());
                let io = Box::new(tls);
                self.serve(io, conn, stop, Some(guard), Some(peer), carry)
                    .instrument(span)
                    .await;
            }
            None => super::admission::refuse(tls).await,
        }
    }

    /// Parks an idle connection, or one holding a response (whose signal
    /// then resumes it; fired already, it resumes at once).
    fn park<IO: Into<ServerStream>>(self: &Arc<Self>, lot: &Lot, paused: Paused<IO>, peer: Option<SocketAddr>) {
        let Paused {
            io,
            conn,
            shutdown,
            guard,
            carry,
        } = paused;
        let serving = self.clone();
        match carry.held {
            None => {
                let span = ParkedSpan::new(carry.span);
                let _ = lot.park(
                    io.into(),
                    Parkable::KeepAlive(KeepAlive { conn, serving, span }),
                    shutdown,
                    guard,
                    peer,
                );
            }
            Some(held) => {
                let signal = held.signal.clone();
                let parked = Parkable::Held(HeldRequest {
                    conn,
                    held,
                    serving,
                    spans: ParkedSpans::new(carry.span, carry.request_span),
                });
                if let Some(token) = lot.park(io.into(), parked, shutdown, guard, peer) {
                    if !signal.park(lot, token) {
                        lot.wake(token);
                    }
                }
            }
        }
    }
}

/// The connections this server parks, held by value in the lot's slab.
pub(crate) enum Parkable {
    KeepAlive(KeepAlive),
    WebSocket(ParkedWebSocket),
    Held(HeldRequest),
}

/// Hands a call to the kind of connection parked.
macro_rules! each_kind {
    ($self:expr, $k:ident => $call:expr) => {
        match $self {
            Parkable::KeepAlive($k) => $call,
            Parkable::WebSocket($k) => $call,
            Parkable::Held($k) => $call,
        }
    };
}

impl Sleeper for Parkable {
    fn is_websocket(&self) -> bool {
        matches!(self, Parkable::WebSocket(_))
    }

    fn deadline(&self) -> Option<std::time::Instant> {
        each_kind!(self, k => k.deadline())
    }

    fn handle_input(&mut self, bytes: &[u8], now: std::time::Instant) {
        each_kind!(self, k => k.handle_input(bytes, now))
    }

    fn handle_io_error(&mut self, now: std::time::Instant) {
        each_kind!(self, k => k.handle_io_error(now))
    }

    fn expire(&mut self, now: std::time::Instant, peer: Option<SocketAddr>) -> bool {
        each_kind!(self, k => k.expire(now, peer))
    }

    fn shutdown(&mut self, now: std::time::Instant, peer: Option<SocketAddr>) -> AtShutdown {
        each_kind!(self, k => k.shutdown(now, peer))
    }

    fn forced_stop(&mut self, peer: Option<SocketAddr>) -> AtShutdown {
        each_kind!(self, k => k.forced_stop(peer))
    }

    fn reclaim(&mut self, now: std::time::Instant, peer: Option<SocketAddr>) -> bool {
        each_kind!(self, k => k.reclaim(now, peer))
    }

    fn resume(
        self,
        io: ServerStream,
        stop: watch::Receiver<Stop>,
        guard: Option<OpenGuard>,
        peer: Option<SocketAddr>,
        lot: &ParkingLot<Self>,
    ) {
        match self {
            Parkable::KeepAlive(KeepAlive { conn, serving, span }) => {
                serving.spawn(io, conn, stop, guard, peer, Carry::new(span.into_span()))
            }
            Parkable::WebSocket(w) => w.resume(io, stop, guard, peer, lot),
            Parkable::Held(HeldRequest {
                conn,
                held,
                serving,
                spans,
            }) => {
                let (span, request_span) = spans.into_spans();
                let carry = Carry {
                    span,
                    request_span,
                    held: Some(held),
                };
                serving.spawn(io, conn, stop, guard, peer, carry)
            }
        }
    }
}

/// A parked connection holding a response (a long poll): a request in
/// flight, its answer waiting for a signal or a deadline.
pub(crate) struct HeldRequest {
    conn: ServerConnection,
    held: Held,
    serving: Arc<Serving>,
    /// The connection's and the request's spans.
    spans: ParkedSpans,
}

impl HeldRequest {
    fn deadline(&self) -> Option<std::time::Instant> {
        let held = self.held.deadline;
        Some(self.conn.poll_timeout().map_or(held, |d| d.min(held)))
    }

    fn handle_input(&mut self, bytes: &[u8], now: std::time::Instant) {
        tracked(&mut self.conn, &self.serving, |conn| feed(conn, bytes, now));
    }

    fn handle_io_error(&mut self, now: std::time::Instant) {
        tracked(&mut self.conn, &self.serving, |conn| conn.handle_io_error(now));
    }

    /// Its deadline (or the engine's): its task answers.
    fn expire(&mut self, _now: std::time::Instant, _peer: Option<SocketAddr>) -> bool {
        false
    }

    /// A request is in flight: never closed to make room.
    fn reclaim(&mut self, _now: std::time::Instant, _peer: Option<SocketAddr>) -> bool {
        false
    }

    /// Answered now, with `Connection: close`, by its task.
    fn shutdown(&mut self, now: std::time::Instant, _peer: Option<SocketAddr>) -> AtShutdown {
        tracked(&mut self.conn, &self.serving, |conn| conn.handle_shutdown(now));
        AtShutdown::Resume
    }

    fn forced_stop(&mut self, peer: Option<SocketAddr>) -> AtShutdown {
        forced_stop(&self.conn, &self.serving, peer, self.spans.connection())
    }
}

/// A parked keep-alive connection.
pub(crate) struct KeepAlive {
    conn: ServerConnection,
    serving: Arc<Serving>,
    /// The connection's span, kept for its next task (or its end here).
    span: ParkedSpan,
}

impl KeepAlive {
    fn deadline(&self) -> Option<std::time::Instant> {
        self.conn.poll_timeout()
    }

    fn handle_input(&mut self, bytes: &[u8], now: std::time::Instant) {
        tracked(&mut self.conn, &self.serving, |conn| feed(conn, bytes, now));
    }

    fn handle_io_error(&mut self, now: std::time::Instant) {
        tracked(&mut self.conn, &self.serving, |conn| conn.handle_io_error(now));
    }

    /// The engine decides; when it closes (the idle timeout, the usual
    /// case) no task is needed.
    fn expire(&mut self, now: std::time::Instant, peer: Option<SocketAddr>) -> bool {
        tracked(&mut self.conn, &self.serving, |conn| conn.handle_timeout(now));
        self.closed(peer)
    }

    /// An idle keep-alive connection may always be closed (RFC 9112 §9.5).
    fn reclaim(&mut self, now: std::time::Instant, peer: Option<SocketAddr>) -> bool {
        tracked(&mut self.conn, &self.serving, |conn| conn.reclaim(now)) && self.closed(peer)
    }

    fn forced_stop(&mut self, peer: Option<SocketAddr>) -> AtShutdown {
        forced_stop(&self.conn, &self.serving, peer, self.span.get())
    }

    /// The engine drains it (or, without a drain, closes it).
    fn shutdown(&mut self, now: std::time::Instant, peer: Option<SocketAddr>) -> AtShutdown {
        tracked(&mut self.conn, &self.serving, |conn| conn.handle_shutdown(now));
        if self.closed(peer) {
            AtShutdown::Closed
        } else {
            AtShutdown::Stay
        }
    }

    /// Whether the engine closed it (logged here, as no task will).
    fn closed(&self, peer: Option<SocketAddr>) -> bool {
        match self.conn.poll_close() {
            Some(cause) => {
                self.serving.stats.record_end(
                    peer,
                    ConnectionEnd::Closed(cause, self.conn.requests_served(), self.conn.fault()),
                    self.conn.traffic(),
                    self.span.get(),
                );
                true
            }
            None => false,
        }
    }
}

/// Runs `f` on a parked HTTP connection's engine and adds what it counted
/// meanwhile to the server's bytes on the wire (no driver will: the next
/// one starts from the engine's count as it finds it).
fn tracked<R>(conn: &mut ServerConnection, serving: &Serving, f: impl FnOnce(&mut ServerConnection) -> R) -> R {
    let before = conn.traffic();
    let result = f(conn);
    serving.stats.http_traffic.add(conn.traffic().since(before));
    result
}

/// Bytes read from a parked HTTP connection's socket into its engine
/// (none: the peer closed).
fn feed(conn: &mut ServerConnection, bytes: &[u8], now: std::time::Instant) {
    if bytes.is_empty() {
        conn.handle_eof(now);
    } else {
        conn.handle_input(bytes, now);
    }
}

/// A parked HTTP connection closed by the server's forced stop, logged
/// here (no task will).
fn forced_stop(
    conn: &ServerConnection,
    serving: &Serving,
    peer: Option<SocketAddr>,
    span: &tracing::Span,
) -> AtShutdown {
    serving.stats.record_end(
        peer,
        ConnectionEnd::Closed(CloseCause::Shutdown, conn.requests_served(), None),
        conn.traffic(),
        span,
    );
    AtShutdown::Closed
}

#[cfg(test)]
mod tests {
    /// A parked connection is held by value in the lot's slab: every
    /// parked connection, of any kind, costs the largest kind's size. Kept
    /// under a bound so idle connections stay about half a KiB (measured
    /// in `tether-cli/tests/parking_memory.rs`).
    #[test]
    fn a_parked_connection_is_small() {
        use std::mem::size_of;
        let (parkable, websocket) = (size_of::<super::Parkable>(), size_of::<super::ParkedWebSocket>());
        let engine = size_of::<tether_proto::ws::WsConnection>();
        assert!(
            parkable <= 448,
            "Parkable is {parkable} B (WebSocket {websocket}, its engine {engine}; keep-alive {}, held {})",
            size_of::<super::KeepAlive>(),
            size_of::<super::HeldRequest>()
        );
    }
}
