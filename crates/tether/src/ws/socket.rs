//! The [`WebSocket`] handle: one [`WsDriver`] behind a lock, driven by
//! whoever receives.
//!
//! There is no task per connection and no channel: [`WsReceiver::recv`]
//! drives the connection (`WsDriver::poll_turn`: reads, writes queued
//! output, fires timers), and senders put frames into the engine's queue
//! and wake the receiver (or, when nobody receives, write themselves). The
//! queue limit, what a full queue does and every timer are the engine's
//! (`WsConfig`); this face only waits: `send` for room in the queue,
//! `recv` for the next event. An idle connection is the engine (no buffers
//! while idle), the transport and two wakers.
//!
//! The same halves are a `futures` [`Stream`] of messages ([`WsReceiver`],
//! polled as `recv` is) and a [`Sink`] of messages ([`WsSender`]), and
//! [`WebSocket`] is both, so `StreamExt`/`SinkExt` combinators (`next`,
//! `send`, `forward`, `split`, codecs over them) work as they do on any
//! other stream. The sink's four steps map onto the queue:
//! - `poll_ready` waits while the engine's queue is at its limit
//!   (`max_queued_bytes`), as `send` does, whatever the overflow policy;
//! - `start_send` queues the message without checking the limit again, so
//!   the queue exceeds its limit by at most the one message `poll_ready`
//!   admitted (as an empty queue takes any one message); a
//!   `Message::Close` starts the close handshake;
//! - `poll_flush` waits until the queue is written to the transport (and
//!   the transport flushed: TLS may buffer);
//! - `poll_close` starts the close handshake with 1000 (if nothing started
//!   it). On a whole [`WebSocket`], or a [`WsSender`] whose [`WsReceiver`]
//!   is gone, it then reads until the connection has ended (the peer's
//!   close answered, the transport closed), discarding any message that
//!   arrives meanwhile. While the receiver lives it is the receiving task
//!   that sees the close through (its stream ends), so a sender's close
//!   completes once its close frame is written: a sender waiting for a
//!   receiver that nobody polls any more (one moved into a finished
//!   `forward`) would wait for ever.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use futures_core::Stream;
use futures_sink::Sink;
use tether_proto::ws::{
    CloseCode, CloseFrame, EncodedFrame, Event, HandshakeConfig, Message, ProtocolError, QueueRoom, SendError,
    WsConfig, WsConnection, WsState,
};
use tokio::sync::watch;
use tokio::time::Instant;

use super::driver::{Peer, Turn, WsDriver, WsTotals};
use crate::lifecycle::{Stop, Transport};
use crate::traffic::Traffic;

/// Settings of a WebSocket connection (server or client side).
#[derive(Debug, Clone, Default)]
pub struct WsOptions {
    /// The engine's limits and timers: frame and message size, the queue
    /// limit (`max_queued_bytes`) and what overflowing it does
    /// (`queue_overflow`), write, close, heartbeat (`ping_interval`, 1011)
    /// and idle (1001) timeouts, compression level. One allocation shared
    /// by every connection made with these options (a copy per connection
    /// would stay in the heap while the connection is parked and pin the
    /// pages its task freed: 2.9 KiB per idle WebSocket instead of 0.7);
    /// change it with `Arc::make_mut(&mut options.engine)`.
    pub engine: Arc<WsConfig>,
    /// Server handshake: subprotocols and the `Origin` allow-list. (What
    /// permessage-deflate mode is agreed is `engine.compression`'s, the one
    /// compression setting of both sides.)
    pub handshake: HandshakeConfig,
}

/// Why a WebSocket operation failed or the connection ended.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The connection is closed (or closing: nothing more may be sent).
    #[error("the WebSocket is closed")]
    Closed,
    /// The peer broke the protocol; the engine closed with the matching code.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The transport ended without a close handshake (1006).
    #[error("the connection ended without a close frame")]
    AbnormalClosure,
    /// The message cannot be sent as asked (control payload too long, bad
    /// close code), or the queue was full (see [`QueueOverflow`](super::QueueOverflow)).
    #[error("invalid message: {0}")]
    Invalid(#[from] SendError),
}

/// A non-waiting send that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TrySendError {
    /// The outgoing queue is full ([`QueueOverflow::Refuse`](super::QueueOverflow::Refuse)); the message is handed back.
    #[error("the outgoing queue is full")]
    Full(Message),
    /// The connection is closed; with [`QueueOverflow::Close`](super::QueueOverflow::Close) a full queue
    /// also closes it (1008).
    #[error("the WebSocket is closed")]
    Closed(Message),
}

struct Shared {
    inner: Mutex<Inner>,
}

struct Inner {
    /// The connection; `None` while the receiving task processes input
    /// with it outside the lock (see `Away`).
    conn: Option<WsDriver<Box<dyn Transport>>>,
    /// While the connection is away: its queue as it was, and the sends
    /// that came meanwhile, handed over when it is back.
    away: Option<Away>,
    /// The task that receives: it drives reads, writes and timers.
    driver: Option<Waker>,
    /// Senders waiting for queue space.
    waiting_senders: Vec<Waker>,
    /// Sinks waiting for the queue to be written (`poll_flush`, a
    /// sender's `poll_close`).
    flush_waiters: Vec<Waker>,
    /// The [`WsReceiver`] exists (someone may drive).
    receiver_alive: bool,
    /// The transport is closed; only buffered events remain.
    finished: bool,
}

/// Adds `cx`'s waker to `list` unless it is there already.
fn register(list: &mut Vec<Waker>, cx: &Context<'_>) {
    if !list.iter().any(|w| w.will_wake(cx.waker())) {
        list.push(cx.waker().clone());
    }
}

/// Sends made while the receiving task had the connection out of the lock
/// (reading, inflating, validating a message: up to 16 MiB of work). A
/// sender, or a broadcast to many connections, never waits for that: the
/// engine's queue rule is checked against the queue as it was
/// (`QueueRoom`), and what it admits is queued when the connection is back.
struct Away {
    room: QueueRoom,
    /// The connection's bytes on the wire when it left.
    traffic: Traffic,
    staged: Vec<Staged>,
    /// A staged send overflowed under `QueueOverflow::Close`.
    slow_consumer: bool,
}

impl Away {
    /// A close is staged: nothing more may be sent.
    fn closing(&self) -> bool {
        self.staged.iter().any(|s| matches!(s, Staged::Close(_)))
    }
}

enum Staged {
    Message(Message),
    Encoded(EncodedFrame),
    /// A sink's `Message::Close` (or `poll_close`): the close handshake
    /// starts when the connection is back.
    Close(Option<CloseFrame>),
}

/// What the receiving task did with the connection out of the lock.
enum Step {
    Event(Event),
    Again,
    Ended,
    Pending,
}

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    shared.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Payload bytes a message puts in the queue (its frame header aside).
fn payload_len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.as_bytes().len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(_) => 0,
    }
}

fn map_event(event: Event, peer: Option<std::net::SocketAddr>) -> Result<Message, WsError> {
    match event {
        Event::Message(m) => Ok(m),
        Event::ProtocolError(e) => {
            tracing::debug!(peer = %Peer(peer), error = %e, code = e.close_code().0, "websocket protocol error");
            Err(WsError::Protocol(e))
        }
        Event::AbnormalClosure => Err(WsError::AbnormalClosure),
    }
}

fn send_error(e: SendError) -> WsError {
    match e {
        SendError::Closed => WsError::Closed,
        other => WsError::Invalid(other),
    }
}

/// What a non-waiting send did.
enum Sent {
    Queued,
    Full,
    Closed,
}

impl Inner {
    fn is_open(&self) -> bool {
        !self.finished
            && match (&self.conn, &self.away) {
                (Some(conn), _) => conn.engine.state() == WsState::Open,
                (None, Some(away)) => !away.slow_consumer && !away.closing(),
                (None, None) => false,
            }
    }

    /// Whether everything queued is written and flushed (`false` while the
    /// connection is away: not known).
    fn flushed(&self) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| !c.engine.has_output() && !c.unflushed)
    }

    /// Wakes senders that wait for room and sinks that wait for the queue
    /// to be written, as each is due.
    fn wake_waiters(&mut self) {
        self.wake_senders();
        if !self.flush_waiters.is_empty() && (self.finished || self.flushed()) {
            for w in self.flush_waiters.drain(..) {
                w.wake();
            }
        }
    }

    /// Queues a message a sink's `poll_ready` made room for: the limit is
    /// not checked again (see the module documentation).
    fn queue_admitted(&mut self, message: Message) -> Result<(), WsError> {
        let len = payload_len(&message);
        if let Some(conn) = self.conn.as_mut() {
            let result = match message {
                Message::Close(frame) => conn.engine.close_with(frame.as_ref(), Instant::now().into_std()),
                other => conn.engine.send_admitted(other),
            };
            return result.map_err(send_error);
        }
        let Some(away) = self.away.as_mut() else {
            return Err(WsError::Closed);
        };
        if away.slow_consumer || away.closing() {
            return Err(WsError::Closed);
        }
        match message {
            Message::Close(frame) => away.staged.push(Staged::Close(frame)),
            other => {
                // Counted against the room when it fits; staged either way.
                let mut room = away.room;
                if room.admit(len).is_ok() {
                    away.room = room;
                }
                away.staged.push(Staged::Message(other));
            }
        }
        Ok(())
    }

    /// Whether a message of `len` payload bytes would be accepted now.
    fn can_send(&self, len: usize) -> bool {
        match (&self.conn, &self.away) {
            (Some(conn), _) => conn.engine.can_send(len),
            (None, Some(away)) => away.room.clone().admit(len).is_ok(),
            (None, None) => false,
        }
    }

    /// Queues without waiting: in the engine, or, while the connection is
    /// away, staged against its queue as it was.
    fn try_queue(&mut self, message: Staged, len: usize) -> Sent {
        if let Some(conn) = self.conn.as_mut() {
            let result = match &message {
                Staged::Message(m) => conn.engine.send(m.clone()),
                Staged::Encoded(f) => conn.engine.send_encoded(f),
                Staged::Close(frame) => conn.engine.close_with(frame.as_ref(), Instant::now().into_std()),
            };
            return match result {
                Ok(()) => Sent::Queued,
                Err(SendError::QueueFull { .. }) => Sent::Full,
                Err(e) => {
                    if matches!(e, SendError::SlowConsumer { .. }) {
                        tracing::debug!(error = %e, "closing slow websocket consumer");
                    }
                    Sent::Closed
                }
            };
        }
        let Some(away) = self.away.as_mut() else {
            return Sent::Closed;
        };
        let admitted = match &message {
            Staged::Message(_) => away.room.admit(len),
            Staged::Encoded(frame) => away.room.admit_frame(frame.len()),
            Staged::Close(_) => Ok(()),
        };
        match admitted {
            Ok(()) => {
                away.staged.push(message);
                Sent::Queued
            }
            Err(SendError::QueueFull { .. }) => Sent::Full,
            Err(SendError::SlowConsumer { .. }) => {
                away.slow_consumer = true;
                Sent::Closed
            }
            Err(_) => Sent::Closed,
        }
    }

    /// Wakes waiting senders once there is room (or nothing more can be sent).
    fn wake_senders(&mut self) {
        if !self.waiting_senders.is_empty() && (self.can_send(0) || !self.is_open()) {
            for w in self.waiting_senders.drain(..) {
                w.wake();
            }
            self.waiting_senders = Vec::new();
        }
    }

    /// Whether the task behind `cx` is the one that drives (or nobody does).
    fn is_driver(&self, cx: &Context<'_>) -> bool {
        self.driver.as_ref().is_none_or(|d| d.will_wake(cx.waker()))
    }

    /// Gets queued output moving. The driving task (or any task, when
    /// nobody receives) writes it now and is woken when the socket takes
    /// more; another task wakes the driver, so a single task stays the
    /// socket's writer.
    fn kick(&mut self, cx: &mut Context<'_>) {
        if self.finished {
            return;
        }
        let driving = self.is_driver(cx);
        match self.conn.as_mut() {
            Some(conn) if driving => {
                conn.poll_write(cx, &mut Default::default());
                if !self.flush_waiters.is_empty() && self.flushed() {
                    for w in self.flush_waiters.drain(..) {
                        w.wake();
                    }
                }
            }
            _ => {
                if let Some(d) = &self.driver {
                    d.wake_by_ref();
                }
            }
        }
    }

    /// Takes the connection out of the lock for the receiving task.
    fn check_out(&mut self) -> Option<WsDriver<Box<dyn Transport>>> {
        let conn = self.conn.take()?;
        self.away = Some(Away {
            room: conn.engine.queue_room(),
            traffic: conn.engine.traffic(),
            staged: Vec::new(),
            slow_consumer: false,
        });
        Some(conn)
    }

    /// Puts it back and queues what was staged meanwhile; returns whether
    /// anything was (the connection then needs another turn).
    fn check_in(&mut self, mut conn: WsDriver<Box<dyn Transport>>, cx: &mut Context<'_>) -> bool {
        let away = self.away.take();
        let mut changed = false;
        if let Some(away) = away {
            changed = !away.staged.is_empty() || away.slow_consumer;
            for staged in away.staged {
                let _ = match staged {
                    Staged::Message(m) => conn.engine.send_admitted(m),
                    Staged::Encoded(f) => conn.engine.send_encoded_admitted(&f),
                    Staged::Close(frame) => conn.engine.close_with(frame.as_ref(), Instant::now().into_std()),
                };
            }
            if away.slow_consumer {
                tracing::debug!("closing slow websocket consumer");
                conn.engine.close_slow_consumer();
            }
            if changed {
                conn.poll_write(cx, &mut Default::default());
            }
        }
        self.conn = Some(conn);
        changed
    }
}

/// The receiving task's work with the connection out of the lock: the next
/// event (processing input: unmasking, UTF-8, inflating), else a turn.
fn drive_away(conn: &mut WsDriver<Box<dyn Transport>>, finished: bool, cx: &mut Context<'_>) -> Step {
    if let Some(event) = conn.engine.poll_event() {
        // Answers (pongs, the close echo) go out before the event is handed over.
        if !finished {
            conn.poll_write(cx, &mut Default::default());
        }
        return Step::Event(event);
    }
    if finished {
        return Step::Ended;
    }
    match conn.poll_turn(cx, |_| None) {
        Poll::Ready(Turn::Ended) => Step::Ended,
        Poll::Ready(Turn::Input | Turn::Deadline) => Step::Again,
        Poll::Pending => Step::Pending,
    }
}

/// Drives the connection until it has an event for the receiver.
fn poll_recv(shared: &Shared, cx: &mut Context<'_>) -> Poll<Option<Result<Message, WsError>>> {
    let mut g = lock(shared);
    if !g.driver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        g.driver = Some(cx.waker().clone());
    }
    loop {
        let finished = g.finished;
        let Some(mut conn) = g.check_out() else {
            return Poll::Ready(None);
        };
        drop(g);
        let step = drive_away(&mut conn, finished, cx);
        g = lock(shared);
        let staged = g.check_in(conn, cx);
        match step {
            Step::Event(event) => {
                g.wake_waiters();
                let peer = g.conn.as_ref().and_then(|c| c.peer);
                return Poll::Ready(Some(map_event(event, peer)));
            }
            Step::Ended if g.finished => {
                g.wake_waiters();
                return Poll::Ready(None);
            }
            Step::Ended => g.finished = true,
            Step::Again => {}
            Step::Pending if staged => {}
            Step::Pending => {
                g.wake_waiters();
                return Poll::Pending;
            }
        }
    }
}

/// The sending half: cheap to clone, usable from any task. Also a
/// `futures` `Sink<Message>` (see the module documentation).
#[derive(Clone)]
pub struct WsSender {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WsSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsSender")
            .field("queued", &self.queued_bytes())
            .finish()
    }
}

impl WsSender {
    /// Sends a message, waiting while the outgoing queue has no room for it.
    /// `Message::Close` starts the close handshake (an absent frame closes with 1000).
    pub async fn send(&self, message: Message) -> Result<(), WsError> {
        if let Message::Close(frame) = message {
            return self.close_with(frame.as_ref()).await;
        }
        let len = payload_len(&message);
        let mut message = Some(message);
        poll_fn(|cx| {
            let mut g = lock(&self.shared);
            if !g.is_open() {
                return Poll::Ready(Err(WsError::Closed));
            }
            if !g.can_send(len) {
                // Make room: write now if this task drives (it may be the
                // only one that would), else ask the driver.
                g.kick(cx);
                if !g.can_send(len) {
                    g.waiting_senders.push(cx.waker().clone());
                    return Poll::Pending;
                }
            }
            let message = message.take().expect("polled after completion");
            let result = match g.conn.as_mut() {
                Some(conn) => conn.engine.send(message).map_err(send_error),
                None => match g.try_queue(Staged::Message(message), len) {
                    Sent::Queued => Ok(()),
                    Sent::Full | Sent::Closed => Err(WsError::Closed),
                },
            };
            g.kick(cx);
            Poll::Ready(result)
        })
        .await
    }

    /// Sends without waiting: [`TrySendError::Full`] when the queue has no
    /// room (with [`QueueOverflow::Close`](super::QueueOverflow::Close) the connection is closed with
    /// 1008 instead, and the message comes back as `Closed`). Never waits
    /// for the connection's input processing either.
    pub fn try_send(&self, message: Message) -> Result<(), TrySendError> {
        let mut g = lock(&self.shared);
        if let Message::Close(ref frame) = message {
            let result = match g.conn.as_mut() {
                Some(conn) => conn.engine.close_with(frame.as_ref(), Instant::now().into_std()),
                None => Err(SendError::Closed),
            };
            g.kick(&mut Context::from_waker(Waker::noop()));
            return result.map_err(|_| TrySendError::Closed(message));
        }
        if !g.is_open() {
            return Err(TrySendError::Closed(message));
        }
        let len = payload_len(&message);
        let sent = g.try_queue(Staged::Message(message.clone()), len);
        g.kick(&mut Context::from_waker(Waker::noop()));
        match sent {
            Sent::Queued => Ok(()),
            Sent::Full => Err(TrySendError::Full(message)),
            Sent::Closed => {
                g.wake_senders();
                Err(TrySendError::Closed(message))
            }
        }
    }

    /// Sends a frame encoded once for many connections (see
    /// [`super::Broadcast`]); never waits, not even for the connection's
    /// input processing.
    pub fn try_send_encoded(&self, frame: &EncodedFrame) -> Result<(), TrySendError> {
        let mut g = lock(&self.shared);
        if !g.is_open() {
            return Err(TrySendError::Closed(Message::Binary(Default::default())));
        }
        let sent = g.try_queue(Staged::Encoded(frame.clone()), frame.len());
        g.kick(&mut Context::from_waker(Waker::noop()));
        match sent {
            Sent::Queued => Ok(()),
            Sent::Full => Err(TrySendError::Full(Message::Binary(Default::default()))),
            Sent::Closed => {
                g.wake_senders();
                Err(TrySendError::Closed(Message::Binary(Default::default())))
            }
        }
    }

    /// Starts the close handshake with `code` and `reason`.
    pub async fn close(&self, code: CloseCode, reason: &str) -> Result<(), WsError> {
        self.close_with(Some(&CloseFrame {
            code,
            reason: reason.to_owned().into(),
        }))
        .await
    }

    async fn close_with(&self, frame: Option<&CloseFrame>) -> Result<(), WsError> {
        poll_fn(|cx| {
            let mut g = lock(&self.shared);
            if g.finished {
                return Poll::Ready(Err(WsError::Closed));
            }
            let Some(conn) = g.conn.as_mut() else {
                // The receiving task has it out: wait until it is back.
                g.waiting_senders.push(cx.waker().clone());
                if let Some(d) = &g.driver {
                    d.wake_by_ref();
                }
                return Poll::Pending;
            };
            let result = conn.engine.close_with(frame, Instant::now().into_std());
            g.kick(cx);
            g.wake_senders();
            Poll::Ready(result.map_err(send_error))
        })
        .await
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        lock(&self.shared).conn.as_ref().map_or(0, |c| c.engine.queued_bytes())
    }

    /// This connection's bytes on the wire so far, each way: frame headers
    /// (the masking key included) as overhead, payloads (as sent: masked,
    /// compressed) as payload; a server-side connection's HTTP phase (the
    /// upgrade request and its `101`, and any requests before) included,
    /// heads as overhead. Frames count as they are queued, so once the
    /// queue is written (every connection that closes normally writes it
    /// all) this is exactly what crossed the transport. While the receiving
    /// task processes input, what it was when that began.
    pub fn traffic(&self) -> Traffic {
        let g = lock(&self.shared);
        match (&g.conn, &g.away) {
            (Some(conn), _) => conn.engine.traffic(),
            (None, Some(away)) => away.traffic,
            (None, None) => Traffic::default(),
        }
    }

    /// Whether the connection is closed for sending.
    pub fn is_closed(&self) -> bool {
        !lock(&self.shared).is_open()
    }
}

/// The receiving half. Receiving drives the connection (reads, writes,
/// pongs, timers, the close handshake): keep a task calling
/// [`recv`](Self::recv) (or polling it as a `futures` `Stream`) for as
/// long as the connection should live.
pub struct WsReceiver {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WsReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WsReceiver")
    }
}

impl WsReceiver {
    /// The next message; `None` once the connection is closed. Pings and
    /// pongs are delivered too (pongs are sent automatically). A
    /// `Message::Close` is the peer's close frame; `None` follows it.
    pub async fn recv(&mut self) -> Option<Result<Message, WsError>> {
        poll_fn(|cx| poll_recv(&self.shared, cx)).await
    }
}

impl Drop for WsReceiver {
    fn drop(&mut self) {
        // Nobody drives any more: senders write themselves.
        let mut g = lock(&self.shared);
        g.driver = None;
        g.receiver_alive = false;
        let mut waiters = std::mem::take(&mut g.waiting_senders);
        waiters.append(&mut g.flush_waiters);
        drop(g);
        for w in waiters {
            w.wake();
        }
    }
}

/// A WebSocket connection: send and receive, or [`split`](Self::split) into
/// halves. Also a `futures` `Stream` and `Sink` of messages (see the
/// module documentation).
#[derive(Debug)]
pub struct WebSocket {
    sender: WsSender,
    receiver: WsReceiver,
    protocol: Option<String>,
}

impl WebSocket {
    /// Wraps an established transport (after the handshake).
    pub(crate) fn start(
        io: Box<dyn Transport>,
        buffered: BytesMut,
        mut engine: WsConnection,
        protocol: Option<String>,
        stop: Option<watch::Receiver<Stop>>,
        peer: Option<std::net::SocketAddr>,
        span: tracing::Span,
    ) -> Self {
        if !buffered.is_empty() {
            // Counted here: the driver starts from the engine's count.
            WsTotals::of(engine.role()).tracked(&mut engine, |e| e.handle_input(&buffered, std::time::Instant::now()));
        }
        WsTotals::of(engine.role()).opened();
        let inner = Inner {
            conn: Some(WsDriver::new(io, engine, stop, peer, span)),
            away: None,
            driver: None,
            waiting_senders: Vec::new(),
            flush_waiters: Vec::new(),
            receiver_alive: true,
            finished: false,
        };
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
        });
        Self {
            sender: WsSender { shared: shared.clone() },
            receiver: WsReceiver { shared },
            protocol,
        }
    }

    /// The next message; see [`WsReceiver::recv`].
    pub async fn recv(&mut self) -> Option<Result<Message, WsError>> {
        self.receiver.recv().await
    }

    /// Sends a message; see [`WsSender::send`].
    pub async fn send(&self, message: Message) -> Result<(), WsError> {
        self.sender.send(message).await
    }

    /// Sends without waiting; see [`WsSender::try_send`].
    pub fn try_send(&self, message: Message) -> Result<(), TrySendError> {
        self.sender.try_send(message)
    }

    /// Starts the close handshake.
    pub async fn close(&self, code: CloseCode, reason: &str) -> Result<(), WsError> {
        self.sender.close(code, reason).await
    }

    /// The subprotocol agreed in the handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// A sender handle sharing this connection.
    pub fn sender(&self) -> WsSender {
        self.sender.clone()
    }

    /// This connection's bytes on the wire so far; see [`WsSender::traffic`].
    pub fn traffic(&self) -> Traffic {
        self.sender.traffic()
    }

    /// Splits into halves usable from different tasks.
    pub fn split(self) -> (WsSender, WsReceiver) {
        (self.sender, self.receiver)
    }
}

/// `Sink::poll_ready`: waits while the queue is at its limit.
fn sink_ready(shared: &Shared, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
    let mut g = lock(shared);
    if !g.is_open() {
        return Poll::Ready(Err(WsError::Closed));
    }
    if !g.can_send(0) {
        // Make room as `send` does: write now if this task drives.
        g.kick(cx);
        if !g.can_send(0) {
            register(&mut g.waiting_senders, cx);
            return Poll::Pending;
        }
    }
    Poll::Ready(Ok(()))
}

/// `Sink::start_send`: queues what `poll_ready` made room for.
fn sink_start(shared: &Shared, message: Message) -> Result<(), WsError> {
    let mut g = lock(shared);
    if !g.is_open() {
        return Err(WsError::Closed);
    }
    g.queue_admitted(message)?;
    // Gets it moving without waiting (the flush waits).
    g.kick(&mut Context::from_waker(Waker::noop()));
    Ok(())
}

/// `Sink::poll_flush`: waits until the queue is written and flushed.
fn sink_flush(shared: &Shared, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
    let mut g = lock(shared);
    if g.flushed() {
        return Poll::Ready(Ok(()));
    }
    if g.finished {
        return Poll::Ready(Err(WsError::Closed));
    }
    g.kick(cx);
    if g.flushed() {
        return Poll::Ready(Ok(()));
    }
    register(&mut g.flush_waiters, cx);
    Poll::Pending
}

/// `Sink::poll_close`: starts the close handshake (1000) unless one
/// started; then, with `to_end` or without a receiver, reads until the
/// connection has ended, else waits until the close frame is written.
fn sink_close(shared: &Shared, cx: &mut Context<'_>, to_end: bool) -> Poll<Result<(), WsError>> {
    {
        let mut g = lock(shared);
        if g.finished {
            return Poll::Ready(Ok(()));
        }
        if g.is_open() {
            let _ = g.queue_admitted(Message::Close(None));
            g.kick(cx);
        }
        if !to_end && g.receiver_alive {
            if g.flushed() {
                return Poll::Ready(Ok(()));
            }
            g.kick(cx);
            if g.flushed() {
                return Poll::Ready(Ok(()));
            }
            register(&mut g.flush_waiters, cx);
            return Poll::Pending;
        }
    }
    loop {
        match poll_recv(shared, cx) {
            Poll::Ready(None) => return Poll::Ready(Ok(())),
            // What the peer sent before its close: nobody wants it now.
            Poll::Ready(Some(_)) => {}
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// The messages, as [`WsReceiver::recv`] gives them; the stream ends
/// (`None`) after the peer's `Message::Close`, once the connection is closed.
impl Stream for WsReceiver {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        poll_recv(&self.shared, cx)
    }
}

/// Messages into the outgoing queue (see the module documentation for
/// what each step waits for).
impl Sink<Message> for WsSender {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        sink_ready(&self.shared, cx)
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), WsError> {
        sink_start(&self.shared, message)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        sink_flush(&self.shared, cx)
    }

    /// Completes once the close frame is written while the [`WsReceiver`]
    /// exists (it sees the close through), else when the connection has
    /// ended (this reads until then).
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        sink_close(&self.shared, cx, false)
    }
}

/// See [`WsReceiver`]'s `Stream`.
impl Stream for WebSocket {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        poll_recv(&self.receiver.shared, cx)
    }
}

/// See [`WsSender`]'s `Sink`; closing reads until the end itself,
/// discarding messages that arrive before the peer's close.
impl Sink<Message> for WebSocket {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        sink_ready(&self.sender.shared, cx)
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), WsError> {
        sink_start(&self.sender.shared, message)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        sink_flush(&self.sender.shared, cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        sink_close(&self.sender.shared, cx, true)
    }
}

impl Drop for Shared {
    /// The last handle is gone: finish the close handshake in the
    /// background rather than resetting the connection. The engine bounds
    /// it (close timeout, write timeout), as it bounds every close.
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        if inner.finished {
            return;
        }
        let (Some(mut conn), Ok(runtime)) = (inner.conn.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        runtime.spawn(async move {
            let _ = conn.engine.close(CloseCode::NORMAL, "", Instant::now().into_std());
            // Events are of no use to anyone now; the engine ends it.
            poll_fn(|cx| loop {
                while conn.engine.poll_event().is_some() {}
                match conn.poll_turn(cx, |_| None) {
                    Poll::Ready(Turn::Ended) => return Poll::Ready(()),
                    Poll::Ready(_) => {}
                    Poll::Pending => return Poll::Pending,
                }
            })
            .await;
        });
    }
}
