//! Callback-served WebSockets: a [`WsService`] answers each message, and
//! an idle connection waits without a task.
//!
//! Theory of operation. [`super::upgrade_service`] answers the handshake
//! like [`super::upgrade`]; after the `101` one task owns the connection by
//! value: the engine (`tether_proto::ws::WsConnection`, where every protocol
//! decision is made), the transport and the service. It loops:
//! 1. hands each received text or binary message to
//!    [`WsService::on_message`], which queues replies through [`Replies`]
//!    (pings are answered and the close handshake is run by the engine);
//! 2. writes the engine's output, several frames per vectored write;
//! 3. ends once the engine says the transport should close (close
//!    handshake done, protocol error, end of file, close timeout), or when
//!    queued output has made no progress for `write_timeout`;
//! 4. reads, unless `max_queued_bytes` of output wait for a peer that does
//!    not read (backpressure: the peer's sends stall in TCP);
//! 5. fires the engine's deadlines (heartbeat, idle timeout, close timeout);
//!    while it waits, server shutdown closes it with 1001 (a forced stop
//!    drops it).
//!
//! Parking. On a server that parks idle connections
//! (`Server::park_idle_after`), a connection whose engine is quiescent
//! (`WsConnection::is_quiescent`: open, nothing buffered, queued or in
//! flight) and whose socket has been quiet that long leaves its task: the
//! engine and the service move, by value, into the server's parking lot
//! (`crate::server::park`) with the socket, and come back on a new task at
//! the first input, engine deadline or shutdown. The engine cannot tell.
//!
//! States: `Running --quiet for park_after--> Parked --input | deadline |
//! shutdown--> Running --transport closes--> Ended`.
//!
//! What it never does: decide anything about the protocol, or push
//! messages that are not replies (the [`super::WebSocket`] handle, held by a
//! task of the application's, does that).

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tether_proto::ws::{CloseCode, Event, Message, SendError, WsConnection};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::outgoing::{close_for_shutdown, Flushed, Outgoing};
use super::socket::{WsError, WsOptions};
use crate::server::driver::{next_stop, OpenGuard, Stop};
use crate::server::park::{ParkingLot, Sleeper, Sleeping};
use crate::server::upgrade::{Transport, Upgraded};

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
    /// absent frame closes with 1000). Never waits: while much output is
    /// queued the connection stops reading instead.
    pub fn send(&mut self, message: Message) -> Result<(), WsError> {
        if let Message::Close(frame) = message {
            let (code, reason) = frame.map_or((CloseCode::NORMAL, String::new()), |f| (f.code, f.reason.to_string()));
            return self.close(code, &reason);
        }
        self.engine.send(message).map_err(send_error)
    }

    /// Starts the close handshake with `code` and `reason`.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), WsError> {
        self.engine
            .close(code, reason, Instant::now().into_std())
            .map_err(send_error)
    }

    /// Bytes queued on this connection and not yet taken for writing.
    pub fn queued_bytes(&self) -> usize {
        self.engine.queued_bytes()
    }
}

fn send_error(e: SendError) -> WsError {
    match e {
        SendError::Closed => WsError::Closed,
        other => WsError::Invalid(other),
    }
}

/// The connection's state that survives parking.
struct Engine<S> {
    engine: WsConnection,
    service: S,
    options: Arc<WsOptions>,
}

impl<S: WsService> Engine<S> {
    fn deliver(&mut self) {
        while let Some(event) = self.engine.poll_event() {
            match event {
                Event::Message(m @ (Message::Text(_) | Message::Binary(_))) => {
                    let mut replies = Replies {
                        engine: &mut self.engine,
                    };
                    self.service.on_message(m, &mut replies);
                }
                // Pings are answered and the close is echoed by the engine.
                Event::Message(_) | Event::AbnormalClosure => {}
                Event::ProtocolError(e) => {
                    tracing::debug!(error = %e, code = e.close_code().0, "websocket protocol error")
                }
            }
        }
    }
}

/// Runs an upgraded connection with `service` until it ends.
pub(crate) async fn run<S: WsService>(up: Upgraded, engine: WsConnection, service: S, options: Arc<WsOptions>) {
    let Upgraded {
        io,
        read_buf,
        stop,
        guard,
        lot,
    } = up;
    let mut state = Engine {
        engine,
        service,
        options,
    };
    if !read_buf.is_empty() {
        state.engine.feed(&read_buf, Instant::now().into_std());
    }
    drop(read_buf);
    match (Upgraded::take_tcp(io), lot, stop) {
        (Ok(tcp), Some(lot), Some(stop)) => drive(tcp, state, Some(stop), guard, Some(lot)).await,
        (Ok(tcp), _, stop) => drive(tcp, state, stop, guard, None).await,
        (Err(io), _, stop) => drive(io, state, stop, guard, None).await,
    }
}

/// A transport that may be parked: only a runtime TCP socket.
trait Parkable: Transport + Sized {
    fn into_tcp(self) -> Option<TcpStream>;
}

impl Parkable for TcpStream {
    fn into_tcp(self) -> Option<TcpStream> {
        Some(self)
    }
}

impl Parkable for Box<dyn Transport> {
    fn into_tcp(self) -> Option<TcpStream> {
        None
    }
}

/// The time, read at most once per pass of the driving loop (a pass takes
/// microseconds; deadlines here are seconds).
#[derive(Default)]
struct LazyNow(Option<Instant>);

impl LazyNow {
    fn get(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

/// How one stretch on a task ended.
enum Outcome {
    Ended,
    Park,
}

/// The connection on its task: the engine plus what only matters while
/// running (output being written, timers).
struct Running<IO, S> {
    io: IO,
    state: Engine<S>,
    /// Chunks taken from the engine, not yet written.
    out: Outgoing,
    input_done: bool,
    /// When the socket last carried bytes either way.
    last_io: Instant,
    /// Shutdown began: no more parking.
    stopping: bool,
    /// The deadline the timer is armed for.
    armed: Option<Instant>,
}

async fn drive<IO: Parkable, S: WsService>(
    io: IO,
    state: Engine<S>,
    stop: Option<watch::Receiver<Stop>>,
    guard: Option<OpenGuard>,
    lot: Option<ParkingLot>,
) {
    let now = Instant::now();
    let mut running = Running {
        io,
        state,
        out: Outgoing::new(now),
        input_done: false,
        last_io: now,
        stopping: false,
        armed: None,
    };
    let park_after = lot.as_ref().map(ParkingLot::park_after);
    // Busy, the engine keeps its buffers; an idle connection parks, and
    // frees them first. Without parking it frees them after every message.
    running.state.engine.set_retain_buffers(park_after.is_some());
    let outcome = {
        let mut stop_changed = pin!(stop.clone().map(next_stop));
        // Polled to register its waker, then only once the server has sent
        // something (a version check, cheaper than polling `changed`); it
        // is checked in the same poll as the connection, so a wake-up from
        // it is never missed.
        let mut stop_registered = false;
        let mut sleep = pin!(tokio::time::sleep_until(now + Duration::from_secs(86_400)));
        loop {
            // The stop signal is looked at only when the connection waits.
            let woke = poll_fn(|cx| match running.poll_drive(cx, sleep.as_mut(), park_after) {
                Poll::Ready(outcome) => Poll::Ready(Ok(outcome)),
                Poll::Pending => {
                    let due = !stop_registered || stop.as_ref().is_none_or(|s| s.has_changed().unwrap_or(true));
                    match stop_changed.as_mut().as_pin_mut().filter(|_| due).map(|f| f.poll(cx)) {
                        Some(Poll::Ready(signal)) => Poll::Ready(Err(signal)),
                        Some(Poll::Pending) => {
                            stop_registered = true;
                            Poll::Pending
                        }
                        None => Poll::Pending,
                    }
                }
            })
            .await;
            match woke {
                Ok(outcome) => break outcome,
                Err((Stop::Force, _)) => break Outcome::Ended,
                Err((signal, rx)) => {
                    stop_changed.set(Some(next_stop(rx)));
                    stop_registered = false;
                    if signal == Stop::Graceful {
                        running.going_away();
                    }
                }
            }
        }
    };
    match outcome {
        Outcome::Ended => running.state.service.on_end(),
        Outcome::Park => {
            let (Some(lot), Some(stop)) = (lot, stop) else {
                unreachable!("parks only with a lot, which comes with a stop signal")
            };
            let Running { io, mut state, .. } = running;
            state.engine.release_buffers();
            let Some(tcp) = io.into_tcp() else {
                unreachable!("a lot comes only with a TCP socket")
            };
            let peer = tcp.peer_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            let service = state.service;
            let parked = ParkedWebSocket {
                engine: state.engine,
                options: state.options,
                resume: Box::new(move |engine, options, io, stop, guard, lot| {
                    spawn_resumed(
                        Engine {
                            engine,
                            service,
                            options,
                        },
                        io,
                        stop,
                        guard,
                        lot,
                    )
                }),
            };
            lot.park(tcp, Sleeping::WebSocket(parked), stop, guard, peer);
        }
    }
}

impl<IO: Transport, S: WsService> Running<IO, S> {
    /// Server shutdown: close with 1001, and park no more.
    fn going_away(&mut self) {
        self.stopping = true;
        close_for_shutdown(&mut self.state.engine);
    }

    /// Drives the connection until it ends, should park, or must wait.
    fn poll_drive(
        &mut self,
        cx: &mut Context<'_>,
        mut sleep: Pin<&mut Sleep>,
        park_after: Option<Duration>,
    ) -> Poll<Outcome> {
        loop {
            let mut clock = LazyNow::default();
            // 1. Messages to the service.
            self.state.deliver();
            // 2. Output.
            let wrote = self.poll_flush(cx, &mut clock);
            // 3. The end.
            if self.state.engine.should_close_transport() && self.out.is_empty() {
                // The server closes TCP first; shutting down a TCP write side does not block.
                let _ = Pin::new(&mut self.io).poll_shutdown(cx);
                return Poll::Ready(Outcome::Ended);
            }
            // 4. Input, unless output piles up.
            let mut read = false;
            if !self.input_done
                && self.out.len() + self.state.engine.queued_bytes() < self.state.options.max_queued_bytes
            {
                let clock_ref = &mut clock;
                match super::incoming::poll_read(&mut self.io, cx, &mut self.state.engine, || {
                    clock_ref.get().into_std()
                }) {
                    Poll::Ready(r) => {
                        self.input_done |= matches!(r, super::incoming::Read::Ended);
                        read = true;
                        self.last_io = clock.get();
                    }
                    Poll::Pending => {}
                }
            }
            if read || wrote {
                continue;
            }
            // 5. Deadlines: the engine's, stalled writes, parking.
            if self.poll_timers(cx, sleep.as_mut(), park_after, &mut clock) {
                if self.park_due(park_after) {
                    return Poll::Ready(Outcome::Park);
                }
                continue;
            }
            return Poll::Pending;
        }
    }

    fn park_at(&self, park_after: Option<Duration>) -> Option<Instant> {
        let after = park_after?;
        (!self.stopping && self.out.is_empty() && self.state.engine.is_quiescent()).then(|| self.last_io + after)
    }

    fn park_due(&self, park_after: Option<Duration>) -> bool {
        self.park_at(park_after).is_some_and(|at| Instant::now() >= at)
    }

    /// Waits for the earliest deadline; returns whether one fired (handled
    /// here, except parking, which the caller checks).
    fn poll_timers(
        &mut self,
        cx: &mut Context<'_>,
        mut sleep: Pin<&mut Sleep>,
        park_after: Option<Duration>,
        clock: &mut LazyNow,
    ) -> bool {
        let write_deadline = self.out.stall_deadline(self.state.options.write_timeout);
        let deadline = [
            self.state.engine.poll_timeout().map(Instant::from_std),
            write_deadline,
            self.park_at(park_after),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(deadline) = deadline else { return false };
        // Moved only to an earlier deadline: a busy connection (whose park
        // deadline moves with every message) does not touch the timer wheel
        // per message; an early wake-up re-arms it.
        if self.armed.is_none_or(|a| deadline < a) {
            sleep.as_mut().reset(deadline);
            self.armed = Some(deadline);
        }
        if deadline > clock.get() && sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.armed = None;
        let now = Instant::now();
        if write_deadline.is_some_and(|d| now >= d) {
            tracing::debug!("websocket write stalled; dropping the connection");
            self.out.clear();
            self.state.engine.handle_eof();
            self.input_done = true;
            return true;
        }
        self.state.engine.handle_timeout(now.into_std());
        true
    }

    /// Takes the engine's output and writes what the transport accepts;
    /// returns whether anything was written (or the transport failed). The
    /// queue keeps its (small) capacity while the connection runs: freeing
    /// it when empty cost an allocation per message; a parked connection
    /// leaves it behind with its task.
    fn poll_flush(&mut self, cx: &mut Context<'_>, clock: &mut LazyNow) -> bool {
        match self
            .out
            .poll_flush(&mut self.state.engine, &mut self.io, cx, || clock.get())
        {
            Flushed::Wrote => {
                self.last_io = clock.get();
                true
            }
            Flushed::Failed => {
                self.input_done = true;
                true
            }
            Flushed::Nothing => false,
        }
    }
}

/// A parked callback-served WebSocket: held by value in the parking lot's
/// slab. The service is type-erased inside `resume` (a stateless service,
/// like an echo, makes a zero-sized closure whose box allocates nothing).
pub(crate) struct ParkedWebSocket {
    engine: WsConnection,
    options: Arc<WsOptions>,
    resume: ResumeOnTask,
}

/// Puts a parked connection's engine and service back on a task of their own.
type ResumeOnTask = Box<
    dyn FnOnce(WsConnection, Arc<WsOptions>, TcpStream, watch::Receiver<Stop>, Option<OpenGuard>, ParkingLot) + Send,
>;

/// A resumed connection's task (a function of its own: `drive` cannot
/// name its own future type from inside).
fn spawn_resumed<S: WsService>(
    state: Engine<S>,
    io: TcpStream,
    stop: watch::Receiver<Stop>,
    guard: Option<OpenGuard>,
    lot: ParkingLot,
) {
    tokio::spawn(drive(io, state, Some(stop), guard, Some(lot)));
}

impl ParkedWebSocket {
    pub(crate) fn resume(self, io: TcpStream, stop: watch::Receiver<Stop>, guard: Option<OpenGuard>, lot: &ParkingLot) {
        (self.resume)(self.engine, self.options, io, stop, guard, lot.clone());
    }
}

impl Sleeper for ParkedWebSocket {
    fn deadline(&self) -> Option<std::time::Instant> {
        self.engine.poll_timeout()
    }

    fn feed(&mut self, bytes: &[u8], now: std::time::Instant) {
        if bytes.is_empty() {
            self.engine.handle_eof();
        } else {
            self.engine.feed(bytes, now);
        }
    }

    fn io_error(&mut self, _now: std::time::Instant) {
        self.engine.handle_eof();
    }

    /// Heartbeat pings and the idle close must be written: always resume.
    fn expire(&mut self, _now: std::time::Instant, _peer: SocketAddr) -> bool {
        false
    }
}
