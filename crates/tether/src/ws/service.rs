//! Callback-served WebSockets: a [`WsService`] answers each message, and
//! an idle connection waits without a task.
//!
//! Theory of operation. [`super::upgrade_service`] answers the handshake
//! like [`super::upgrade`]; after the `101` one task owns the connection by
//! value: a `WsDriver` (the one driver core, `super::driver`: the engine,
//! the transport, the stop signal, the timer) and the service. It loops:
//! hand each received text or binary message to [`WsService::on_message`],
//! which queues replies through [`Replies`] (pings are answered and the
//! close handshake is run by the engine), then let the driver take a turn
//! (write, read, deadlines, shutdown) until it ends. Replies never wait:
//! the engine's queue limit decides (with `QueueOverflow::Close`, which
//! `tether serve` uses, a peer that does not read is closed with 1008 as a
//! slow consumer; with `Refuse` the reply is refused and reading pauses
//! while the queue is full).
//!
//! Parking. On a server that parks idle connections
//! (`Server::park_idle_after`), a connection whose engine is quiescent
//! (`WsConnection::is_quiescent`: open, nothing buffered, queued or in
//! flight) and whose socket has been quiet that long leaves its task: the
//! engine and the service move, by value, into the server's parking lot
//! (`crate::server::park`) with the stream (TCP, TLS with its session, or
//! a Unix socket: any stream the server accepted), and come back on a new
//! task at the first input, engine deadline or shutdown. The engine cannot
//! tell. A transport the server did not accept (`serve_transport`'s) never
//! parks.
//!
//! States: `Running --quiet for park_after--> Parked --input | deadline |
//! shutdown--> Running --transport closes--> Ended`.
//!
//! What it never does: decide anything about the protocol, or push
//! messages that are not replies (the [`super::WebSocket`] handle, held by a
//! task of the application's, does that).

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tether_proto::ws::{CloseCode, EncodedFrame, Event, Message, SendError, WsConnection};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::driver::{Peer, Turn, WsDriver, WS_TOTALS};
use super::push::{Inlet, ParkAttempt};
use super::socket::WsError;
use crate::lifecycle::{OpenGuard, Stop, Transport};
use crate::server::serving::{Lot, Parkable};
use crate::server::sleeper::AtShutdown;
use crate::server::stream::{ParkedStream, ServerStream};
use crate::server::upgrade::Upgraded;
use crate::spans::ParkedSpan;

/// What a callback-served WebSocket endpoint does with each message.
///
/// Closures `FnMut(Message, &mut Replies<'_>)` are services.
pub trait WsService: Send + 'static {
    /// A text or binary message arrived; answer through `replies`.
    fn on_message(&mut self, message: Message, replies: &mut Replies<'_>);

    /// The connection ended (close handshake done, protocol error, peer
    /// gone or server stopped). Called once.
    fn on_end(&mut self) {}
}

impl<F> WsService for F
where
    F: FnMut(Message, &mut Replies<'_>) + Send + 'static,
{
    fn on_message(&mut self, message: Message, replies: &mut Replies<'_>) {
        self(message, replies)
    }
}

/// Queues replies on the connection a message came from.
pub struct Replies<'a> {
    engine: &'a mut WsConnection,
}

impl std::fmt::Debug for Replies<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replies")
            .field("queued", &self.engine.queued_bytes())
            .finish()
    }
}

impl Replies<'_> {
    /// Queues a message. `Message::Close` starts the close handshake (an
    /// absent frame closes with 1000). Never waits: with
    /// `QueueOverflow::Refuse` a reply is always queued and reading pauses
    /// while the queue is over its limit; with `QueueOverflow::Close` a
    /// reply that does not fit closes the connection with 1008 (slow
    /// consumer) and fails (see `WsConnection::send_reply`).
    pub fn send(&mut self, message: Message) -> Result<(), WsError> {
        self.engine.send_reply(message).map_err(send_error)
    }

    /// Starts the close handshake with `code` and `reason`.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), WsError> {
        self.engine
            .close(code, reason, Instant::now().into_std())
            .map_err(send_error)
    }

    /// Bytes queued on this connection and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.engine.queued_bytes()
    }

    /// This connection's bytes on the wire so far (its HTTP phase
    /// included; see `WsConnection::traffic`).
    pub fn traffic(&self) -> crate::traffic::Traffic {
        self.engine.traffic()
    }
}

fn send_error(e: SendError) -> WsError {
    match e {
        SendError::Closed => WsError::Closed,
        other => WsError::Invalid(other),
    }
}

/// Hands each message waiting in `engine` to `service`.
fn deliver<S: WsService>(engine: &mut WsConnection, service: &mut S, peer: Option<SocketAddr>) {
    while let Some(event) = engine.poll_event() {
        match event {
            Event::Message(m @ (Message::Text(_) | Message::Binary(_))) => {
                service.on_message(m, &mut Replies { engine });
            }
            // Pings are answered and the close is echoed by the engine.
            Event::Message(_) | Event::AbnormalClosure => {}
            Event::ProtocolError(e) => {
                tracing::debug!(peer = %Peer(peer), error = %e, code = e.close_code().0, "websocket protocol error")
            }
        }
    }
}

/// Runs an upgraded connection with `service` until it ends; with an
/// `inlet`, frames pushed to it are sent too (see `super::push`).
pub(crate) async fn run<S: WsService>(up: Upgraded, mut engine: WsConnection, service: S, inlet: Option<Arc<Inlet>>) {
    let Upgraded {
        io,
        read_buf,
        traffic,
        stop,
        guard,
        peer,
        lot,
        span,
    } = up;
    let span = crate::spans::websocket(&span);
    // The whole connection's count; the HTTP phase is in the HTTP totals.
    engine.count_handshake(traffic);
    if !read_buf.is_empty() {
        // Counted here: the driver starts from the engine's count.
        WS_TOTALS.tracked(&mut engine, |e| e.handle_input(&read_buf, std::time::Instant::now()));
    }
    drop(read_buf);
    WS_TOTALS.opened();
    let served = Served { service, inlet };
    let entered = span.clone();
    match (Upgraded::take_stream(io), lot) {
        (Ok(stream), Some(lot)) if stop.is_some() => {
            let to = Destination {
                peer,
                lot: Some(lot),
                span,
            };
            drive(stream, engine, served, stop, guard, to).instrument(entered).await
        }
        (Ok(stream), _) => {
            let to = Destination { peer, lot: None, span };
            drive(stream, engine, served, stop, guard, to).instrument(entered).await
        }
        (Err(io), _) => {
            let to = Destination { peer, lot: None, span };
            drive(io, engine, served, stop, guard, to).instrument(entered).await
        }
    }
}

/// The service and, for a connection others push to, its inlet.
struct Served<S> {
    service: S,
    inlet: Option<Arc<Inlet>>,
}

/// A transport that may be parked: only a stream the server accepted.
trait ParkableTransport: Transport + Sized {
    fn into_stream(self) -> Option<ServerStream>;
}

impl ParkableTransport for ServerStream {
    fn into_stream(self) -> Option<ServerStream> {
        Some(self)
    }
}

impl ParkableTransport for Box<dyn Transport> {
    fn into_stream(self) -> Option<ServerStream> {
        None
    }
}

/// Where a connection is served: its peer, the lot it parks in, its span.
struct Destination {
    peer: Option<SocketAddr>,
    lot: Option<Lot>,
    span: tracing::Span,
}

/// How one stretch on a task ended.
enum Outcome {
    Ended,
    Park,
}

/// Serves the connection on this task until it ends or parks.
async fn drive<IO: ParkableTransport, S: WsService>(
    io: IO,
    engine: WsConnection,
    mut served: Served<S>,
    stop: Option<watch::Receiver<Stop>>,
    mut guard: Option<OpenGuard>,
    to: Destination,
) {
    let Destination { peer, lot, span } = to;
    let park_after = lot.as_ref().map(Lot::park_after);
    let mut conn = WsDriver::new(io, engine, stop, peer, span);
    // Busy, the engine keeps its buffers; an idle connection parks, and
    // frees them first. Without parking it frees them after every message.
    conn.engine.set_retain_buffers(park_after.is_some());
    loop {
        let outcome = poll_fn(|cx| loop {
            deliver(&mut conn.engine, &mut served.service, conn.peer);
            if let Some(inlet) = &served.inlet {
                inlet.take_into(&mut conn.engine, cx.waker());
            }
            match conn.poll_turn(cx, |conn| park_at(conn, park_after)) {
                Poll::Ready(Turn::Input) => {}
                Poll::Ready(Turn::Ended) => return Poll::Ready(Outcome::Ended),
                Poll::Ready(Turn::Deadline) => {
                    if park_at(&conn, park_after).is_some_and(|at| Instant::now() >= at) {
                        return Poll::Ready(Outcome::Park);
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        })
        .await;
        match outcome {
            Outcome::Ended => {
                deliver(&mut conn.engine, &mut served.service, conn.peer);
                if let Some(inlet) = &served.inlet {
                    inlet.end();
                }
                served.service.on_end();
                drop(guard);
                return;
            }
            Outcome::Park => {
                let Some(lot) = lot.as_ref() else {
                    unreachable!("parks only with a lot")
                };
                match park(conn, served, guard, lot) {
                    None => return,
                    // Frames were pushed meanwhile: serve them first.
                    Some(back) => (conn, served, guard) = back,
                }
            }
        }
    }
}

/// What a connection that could not park takes back.
type NotParked<IO, S> = (WsDriver<IO>, Served<S>, Option<OpenGuard>);

/// Moves an idle connection into the lot, unless frames were pushed to
/// its inlet meanwhile (checked with the inlet locked, so none is
/// missed): then it is handed back.
fn park<IO: ParkableTransport, S: WsService>(
    conn: WsDriver<IO>,
    served: Served<S>,
    guard: Option<OpenGuard>,
    lot: &Lot,
) -> Option<NotParked<IO, S>> {
    let Some(inlet) = served.inlet.clone() else {
        park_now(conn, served, guard, lot);
        return None;
    };
    let mut parts = Some((conn, served, guard));
    let attempt = inlet.park_with(lot, || {
        let (conn, served, guard) = parts.take().expect("parks once");
        park_now(conn, served, guard, lot)
    });
    match attempt {
        ParkAttempt::Busy => parts,
        ParkAttempt::Parked => None,
    }
}

/// Hands the engine, the service and the socket to the lot; returns the
/// lot's token (`None`: resumed at once, or closed).
fn park_now<IO: ParkableTransport, S: WsService>(
    conn: WsDriver<IO>,
    served: Served<S>,
    guard: Option<OpenGuard>,
    lot: &Lot,
) -> Option<u64> {
    let Some(stop) = conn.stop_receiver() else {
        unreachable!("a lot comes with a stop signal")
    };
    let mut conn = conn;
    conn.report();
    let WsDriver {
        io,
        mut engine,
        span,
        peer,
        ..
    } = conn;
    engine.release_buffers();
    let Some(stream) = io.into_stream() else {
        unreachable!("a lot comes only with a stream the server accepted")
    };
    let Served { service, inlet } = served;
    let parked = ParkedWebSocket {
        engine,
        inlet,
        resume: Box::new(move |engine, inlet, io, stop, guard, lot, to| {
            spawn_resumed(engine, Served { service, inlet }, io, stop, guard, lot, to)
        }),
        span: ParkedSpan::new(span),
    };
    lot.park(stream, Parkable::WebSocket(parked), stop, guard, peer)
}

/// When the connection may park: quiet for `park_after` with nothing in
/// progress, and the server not stopping.
fn park_at<IO: Transport>(conn: &WsDriver<IO>, park_after: Option<Duration>) -> Option<Instant> {
    let after = park_after?;
    (!conn.stopping && conn.engine.is_quiescent()).then(|| conn.last_io + after)
}

/// A parked callback-served WebSocket: held by value in the parking lot's
/// slab. The service is type-erased inside `resume` (a stateless service,
/// like an echo, makes a zero-sized closure whose box allocates nothing).
pub(crate) struct ParkedWebSocket {
    engine: WsConnection,
    inlet: Option<Arc<Inlet>>,
    resume: ResumeOnTask,
    /// Its span, for its next task.
    span: ParkedSpan,
}

/// Puts a parked connection's engine, inlet and service back on a task of
/// their own, with its stream, serving it for the peer and in the span of
/// the `Destination`.
type ResumeOnTask = Box<
    dyn FnOnce(
            WsConnection,
            Option<Arc<Inlet>>,
            ServerStream,
            watch::Receiver<Stop>,
            Option<OpenGuard>,
            Lot,
            Destination,
        ) + Send,
>;

/// A resumed connection's task (a function of its own: `drive` cannot
/// name its own future type from inside).
fn spawn_resumed<S: WsService>(
    engine: WsConnection,
    served: Served<S>,
    io: ServerStream,
    stop: watch::Receiver<Stop>,
    guard: Option<OpenGuard>,
    lot: Lot,
    to: Destination,
) {
    let entered = to.span.clone();
    let to = Destination { lot: Some(lot), ..to };
    tokio::spawn(drive(io, engine, served, Some(stop), guard, to).instrument(entered));
}

impl ParkedWebSocket {
    pub(crate) fn resume(
        self,
        io: ServerStream,
        stop: watch::Receiver<Stop>,
        guard: Option<OpenGuard>,
        peer: Option<SocketAddr>,
        lot: &Lot,
    ) {
        let to = Destination {
            peer,
            lot: None,
            span: self.span.into_span(),
        };
        (self.resume)(self.engine, self.inlet, io, stop, guard, lot.clone(), to);
    }
}

/// What the parking lot asks of it (through `Parkable`).
impl ParkedWebSocket {
    pub(crate) fn deadline(&self) -> Option<std::time::Instant> {
        self.engine.poll_timeout()
    }

    pub(crate) fn handle_input(&mut self, bytes: &[u8], now: std::time::Instant) {
        WS_TOTALS.tracked(&mut self.engine, |engine| {
            if bytes.is_empty() {
                engine.handle_eof(now);
            } else {
                engine.handle_input(bytes, now);
            }
        });
    }

    pub(crate) fn handle_io_error(&mut self, now: std::time::Instant) {
        WS_TOTALS.tracked(&mut self.engine, |engine| engine.handle_eof(now));
    }

    /// Pushed frames, while parked: queued in the engine and written to
    /// `socket` at once (vectored). `Ok(true)`: all of it written (it stays
    /// parked); `Ok(false)`: the socket took less (its task must wait for
    /// it); `Err`: the engine refused one (closing, or a slow consumer) or
    /// the write failed; its task finishes the connection.
    pub(crate) fn send_now<'a>(
        &mut self,
        socket: &mut ParkedStream,
        frames: impl IntoIterator<Item = &'a EncodedFrame>,
    ) -> Result<bool, ()> {
        WS_TOTALS.tracked(&mut self.engine, |engine| {
            let now = std::time::Instant::now();
            for frame in frames {
                engine.send_encoded(frame).map_err(|_| ())?;
            }
            while engine.has_output() {
                match crate::io::write_now(socket, engine.poll_transmit(now)) {
                    Ok(Some(n)) if n > 0 => engine.handle_written(n, now),
                    Ok(_) => return Ok(false),
                    Err(_) => return Err(()),
                }
            }
            Ok(true)
        })
    }

    /// Heartbeat pings and the idle close must be written: always resume.
    pub(crate) fn expire(&mut self, _now: std::time::Instant, _peer: Option<SocketAddr>) -> bool {
        false
    }

    /// The close frame (1001) must be written: resume.
    pub(crate) fn shutdown(&mut self, _now: std::time::Instant, _peer: Option<SocketAddr>) -> AtShutdown {
        AtShutdown::Resume
    }

    /// Its task ends it and tells the service (`on_end`).
    pub(crate) fn forced_stop(&mut self, _peer: Option<SocketAddr>) -> AtShutdown {
        AtShutdown::Resume
    }

    /// An open WebSocket is never closed to make room: it has no idle
    /// state a client expects to lose.
    pub(crate) fn reclaim(&mut self, _now: std::time::Instant, _peer: Option<SocketAddr>) -> bool {
        false
    }
}
