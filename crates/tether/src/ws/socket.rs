//! The [`WebSocket`] handle: one engine and one transport behind a lock,
//! driven by whoever receives.
//!
//! There is no task per connection and no channel: [`WsReceiver::recv`]
//! drives the connection (reads, writes queued output, fires timers), and
//! senders put frames into the engine's queue and wake the receiver (or,
//! when nobody receives, write themselves). An idle connection is the
//! engine (no buffers while idle), the transport and two wakers.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tether_proto::ws::{
    CloseCode, EncodedFrame, Event, HandshakeConfig, Message, ProtocolError, SendError, WsConfig, WsConnection, WsState,
};
use tokio::time::{Instant, Sleep};

use super::outgoing::{close_for_shutdown, Flushed, Outgoing};
use crate::server::driver::{next_stop, Stop};
use crate::server::upgrade::Transport;
use tokio::sync::watch;

/// Reading pauses while this much output waits for a peer that does not read.
const READ_STOP: usize = 1 << 20;
/// How long a dropped connection may take to finish its close handshake.
const LINGER: Duration = Duration::from_secs(5);

/// What to do when a non-waiting send finds the outgoing queue full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// Report it ([`TrySendError::Full`]) and let the caller decide.
    #[default]
    Report,
    /// Close the connection with 1008 (policy violation): a slow consumer
    /// does not get unbounded memory.
    Close,
}

/// Settings of a WebSocket connection (server or client side).
#[derive(Debug, Clone)]
pub struct WsOptions {
    /// Engine limits and liveness: frame and message size, close timeout,
    /// compression level, heartbeat (`ping_interval`, 1011) and idle timeout (1001).
    pub engine: WsConfig,
    /// Server handshake: subprotocols, `Origin` allow-list, compression mode.
    pub handshake: HandshakeConfig,
    /// Outgoing bytes queued before `send` waits and `try_send` reports full.
    pub max_queued_bytes: usize,
    /// What `try_send` and [`super::Broadcast`] do on a full queue.
    pub overflow: OverflowPolicy,
    /// Drop the connection when queued output makes no progress this long.
    pub write_timeout: Duration,
}

impl Default for WsOptions {
    fn default() -> Self {
        Self {
            // The handle enforces `max_queued_bytes`; the engine must not refuse first.
            engine: WsConfig {
                max_queued_bytes: usize::MAX / 2,
                ..WsConfig::default()
            },
            handshake: HandshakeConfig::default(),
            max_queued_bytes: 4 << 20,
            overflow: OverflowPolicy::Report,
            write_timeout: Duration::from_secs(30),
        }
    }
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
    /// The message cannot be sent as asked (control payload too long, bad close code).
    #[error("invalid message: {0}")]
    Invalid(#[from] SendError),
}

/// A non-waiting send that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TrySendError {
    /// The outgoing queue is full; the message is handed back.
    #[error("the outgoing queue is full")]
    Full(Message),
    /// The connection is closed; with [`OverflowPolicy::Close`] a full queue
    /// also closes it (1008).
    #[error("the WebSocket is closed")]
    Closed(Message),
}

struct Shared {
    inner: Mutex<Inner>,
    limit: usize,
    overflow: OverflowPolicy,
}

struct Inner {
    io: Box<dyn Transport>,
    engine: WsConnection,
    /// Chunks taken from the engine, not yet written.
    out: Outgoing,
    /// The task that receives: it drives reads, writes and timers.
    driver: Option<Waker>,
    /// Senders waiting for queue space.
    waiting_senders: Vec<Waker>,
    input_done: bool,
    /// The transport is closed; only buffered events remain.
    finished: bool,
    timers: Timers,
    /// The server's stop signal: on shutdown the connection closes with 1001.
    stop: Option<StopSignal>,
    /// A second receiver of the same channel, to see cheaply whether it
    /// moved: `stop` is polled (about 230 instructions) only then, or when
    /// the receiving task changed (see [`Inner::poll_stop`]).
    stop_probe: Option<watch::Receiver<Stop>>,
    /// The waker `stop` last registered, while it is pending.
    stop_waker: Option<Waker>,
}

type StopSignal = Pin<Box<dyn Future<Output = (Stop, watch::Receiver<Stop>)> + Send>>;

/// The engine decides every protocol deadline (heartbeat, idle, close);
/// the handle adds only the transport's write-progress deadline.
struct Timers {
    write_timeout: Duration,
    /// Armed only while a deadline exists.
    sleep: Option<Pin<Box<Sleep>>>,
}

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    shared.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn cost(m: &Message) -> usize {
    let payload = match m {
        Message::Text(t) => t.as_bytes().len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(_) => 0,
    };
    payload + 14
}

fn map_event(event: Event) -> Result<Message, WsError> {
    match event {
        Event::Message(m) => Ok(m),
        Event::ProtocolError(e) => {
            tracing::debug!(error = %e, code = e.close_code().0, "websocket protocol error");
            Err(WsError::Protocol(e))
        }
        Event::AbnormalClosure => Err(WsError::AbnormalClosure),
    }
}

impl Inner {
    fn queued(&self) -> usize {
        self.out.len() + self.engine.queued_bytes()
    }

    fn can_send(&self) -> bool {
        !self.finished && self.engine.state() == WsState::Open
    }

    /// Takes the engine's output and writes what the transport accepts;
    /// returns whether anything was written (or the transport failed).
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> bool {
        let flushed = self.out.poll_flush(&mut self.engine, &mut *self.io, cx, Instant::now);
        if flushed == Flushed::Failed {
            self.input_done = true;
        }
        // An idle handle holds no queue.
        self.out.shrink_when_empty();
        flushed != Flushed::Nothing
    }

    fn wake_senders(&mut self, limit: usize) {
        if !self.waiting_senders.is_empty() && (self.queued() < limit || !self.can_send()) {
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
        if self.is_driver(cx) {
            self.poll_flush(cx);
        } else if let Some(d) = &self.driver {
            d.wake_by_ref();
        }
    }

    /// Drives the connection until it has an event for the receiver.
    fn poll_recv(&mut self, cx: &mut Context<'_>, limit: usize) -> Poll<Option<Result<Message, WsError>>> {
        if !self.driver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.driver = Some(cx.waker().clone());
        }
        loop {
            if let Some(event) = self.engine.poll_event() {
                // Answers (pongs, the close echo) go out before the event is handed over.
                self.poll_flush(cx);
                self.wake_senders(limit);
                return Poll::Ready(Some(map_event(event)));
            }
            if self.finished {
                self.wake_senders(limit);
                return Poll::Ready(None);
            }
            let wrote = self.poll_flush(cx);
            if wrote {
                self.wake_senders(limit);
            }
            if self.engine.should_close_transport() && self.out.is_empty() {
                // The server closes TCP first; shutting down a TCP write side does not block.
                let _ = Pin::new(&mut *self.io).poll_shutdown(cx);
                self.finished = true;
                self.timers.sleep = None;
                continue;
            }
            let mut read = false;
            if !self.input_done && self.queued() < READ_STOP {
                if let Poll::Ready(r) =
                    super::incoming::poll_read(&mut *self.io, cx, &mut self.engine, std::time::Instant::now)
                {
                    self.input_done |= matches!(r, super::incoming::Read::Ended);
                    read = true;
                }
            }
            if read || wrote {
                continue;
            }
            if self.poll_timers(cx) {
                continue;
            }
            if self.poll_stop(cx) {
                continue;
            }
            return Poll::Pending;
        }
    }

    /// Closes with 1001 when the server shuts down; returns whether it did.
    fn poll_stop(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(stop) = self.stop.as_mut() else { return false };
        // Its waker is registered and the channel has not moved: polling it
        // again would only register the same waker again. A different
        // receiving task must register its own.
        let moved = self.stop_probe.as_ref().is_none_or(|p| p.has_changed().unwrap_or(true));
        if !moved && self.stop_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return false;
        }
        let Poll::Ready((signal, rx)) = stop.as_mut().poll(cx) else {
            self.stop_waker = Some(cx.waker().clone());
            return false;
        };
        self.stop_waker = None;
        if let Some(probe) = self.stop_probe.as_mut() {
            probe.mark_unchanged();
        }
        match signal {
            Stop::Run => {
                self.stop = Some(Box::pin(next_stop(rx)));
                false
            }
            Stop::Graceful => {
                // Keep watching: the forced stop at the deadline ends it.
                self.stop = Some(Box::pin(next_stop(rx)));
                self.going_away();
                true
            }
            Stop::Force => {
                self.stop = None;
                self.out.clear();
                self.input_done = true;
                self.finished = true;
                true
            }
        }
    }

    fn going_away(&mut self) {
        close_for_shutdown(&mut self.engine);
    }

    /// Fires due timers; returns whether anything happened.
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> bool {
        let stall = self.out.stall_deadline(self.timers.write_timeout);
        let deadline = [self.engine.poll_timeout().map(Instant::from_std), stall]
            .into_iter()
            .flatten()
            .min();
        let Some(deadline) = deadline else {
            self.timers.sleep = None;
            return false;
        };
        let now = Instant::now();
        if deadline > now {
            let sleep = self
                .timers
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
        }
        let now = Instant::now();
        if stall.is_some_and(|d| now >= d) {
            tracing::debug!("websocket write stalled; dropping the connection");
            self.out.clear();
            self.engine.handle_eof();
            self.input_done = true;
            self.finished = true;
            return true;
        }
        self.engine.handle_timeout(now.into_std());
        true
    }
}

/// The sending half: cheap to clone, usable from any task.
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
    /// Sends a message, waiting while the outgoing queue is full.
    /// `Message::Close` starts the close handshake (an absent frame closes with 1000).
    pub async fn send(&self, message: Message) -> Result<(), WsError> {
        if let Message::Close(frame) = message {
            let (code, reason) = frame.map_or((CloseCode::NORMAL, String::new()), |f| (f.code, f.reason.to_string()));
            return self.close(code, &reason).await;
        }
        let cost = cost(&message);
        let mut message = Some(message);
        poll_fn(|cx| {
            let mut g = lock(&self.shared);
            if !g.can_send() {
                return Poll::Ready(Err(WsError::Closed));
            }
            let queued = g.queued();
            if queued != 0 && queued + cost > self.shared.limit {
                // Make room: write now if this task drives (it may be the
                // only one that would), else ask the driver.
                g.kick(cx);
                let queued = g.queued();
                if queued != 0 && queued + cost > self.shared.limit {
                    g.waiting_senders.push(cx.waker().clone());
                    return Poll::Pending;
                }
            }
            let result = g.engine.send(message.take().expect("polled after completion"));
            g.kick(cx);
            Poll::Ready(result.map_err(WsError::from))
        })
        .await
    }

    /// Sends without waiting: [`TrySendError::Full`] when the queue is full
    /// (and, with [`OverflowPolicy::Close`], the connection is closed with 1008).
    pub fn try_send(&self, message: Message) -> Result<(), TrySendError> {
        let mut g = lock(&self.shared);
        if !g.can_send() {
            return Err(TrySendError::Closed(message));
        }
        if !self.fits(&g, cost(&message)) {
            return Err(self.overflow(&mut g, message));
        }
        g.engine
            .send(message)
            .map_err(|_| TrySendError::Closed(Message::Binary(Bytes::new())))?;
        g.kick(&mut Context::from_waker(Waker::noop()));
        Ok(())
    }

    /// Sends a frame encoded once for many connections (see [`super::Broadcast`]).
    pub fn try_send_encoded(&self, frame: &EncodedFrame) -> Result<(), TrySendError> {
        let mut g = lock(&self.shared);
        if !g.can_send() {
            return Err(TrySendError::Closed(Message::Binary(Bytes::new())));
        }
        if !self.fits(&g, frame.len()) {
            return Err(self.overflow(&mut g, Message::Binary(Bytes::new())));
        }
        g.engine
            .send_encoded(frame)
            .map_err(|_| TrySendError::Closed(Message::Binary(Bytes::new())))?;
        g.kick(&mut Context::from_waker(Waker::noop()));
        Ok(())
    }

    /// Starts the close handshake with `code` and `reason`.
    pub async fn close(&self, code: CloseCode, reason: &str) -> Result<(), WsError> {
        poll_fn(|cx| {
            let mut g = lock(&self.shared);
            if g.finished {
                return Poll::Ready(Err(WsError::Closed));
            }
            let result = g.engine.close(code, reason, Instant::now().into_std());
            g.kick(cx);
            g.wake_senders(self.shared.limit);
            Poll::Ready(result.map_err(|e| match e {
                SendError::Closed => WsError::Closed,
                other => WsError::Invalid(other),
            }))
        })
        .await
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        lock(&self.shared).queued()
    }

    /// Whether the connection is closed for sending.
    pub fn is_closed(&self) -> bool {
        !lock(&self.shared).can_send()
    }

    fn fits(&self, g: &Inner, cost: usize) -> bool {
        let queued = g.queued();
        queued == 0 || queued + cost <= self.shared.limit
    }

    fn overflow(&self, g: &mut Inner, message: Message) -> TrySendError {
        match self.shared.overflow {
            OverflowPolicy::Report => TrySendError::Full(message),
            OverflowPolicy::Close => {
                tracing::debug!(queued = g.queued(), "closing slow websocket consumer with 1008");
                let _ = g
                    .engine
                    .close(CloseCode::POLICY_VIOLATION, "slow consumer", Instant::now().into_std());
                g.kick(&mut Context::from_waker(Waker::noop()));
                g.wake_senders(self.shared.limit);
                TrySendError::Closed(message)
            }
        }
    }
}

/// The receiving half. Receiving drives the connection (reads, writes,
/// pongs, timers, the close handshake): keep a task calling
/// [`recv`](Self::recv) for as long as the connection should live.
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
        poll_fn(|cx| lock(&self.shared).poll_recv(cx, self.shared.limit)).await
    }
}

impl Drop for WsReceiver {
    fn drop(&mut self) {
        // Nobody drives any more: senders write themselves.
        let mut g = lock(&self.shared);
        g.driver = None;
        for w in g.waiting_senders.drain(..) {
            w.wake();
        }
    }
}

/// A WebSocket connection: send and receive, or [`split`](Self::split) into halves.
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
        options: &WsOptions,
        protocol: Option<String>,
        stop: Option<watch::Receiver<Stop>>,
    ) -> Self {
        let now = Instant::now();
        if !buffered.is_empty() {
            engine.feed(&buffered, now.into_std());
        }
        let inner = Inner {
            io,
            engine,
            out: Outgoing::new(now),
            driver: None,
            waiting_senders: Vec::new(),
            input_done: false,
            finished: false,
            stop: None,
            stop_probe: None,
            stop_waker: None,
            timers: Timers {
                write_timeout: options.write_timeout,
                sleep: None,
            },
        };
        let mut inner = inner;
        if let Some(mut rx) = stop {
            if *rx.borrow_and_update() == Stop::Run {
                inner.stop_probe = Some(rx.clone());
                inner.stop = Some(Box::pin(next_stop(rx)));
            } else {
                inner.going_away();
            }
        }
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
            limit: options.max_queued_bytes.max(1),
            overflow: options.overflow,
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

    /// Splits into halves usable from different tasks.
    pub fn split(self) -> (WsSender, WsReceiver) {
        (self.sender, self.receiver)
    }
}

impl Drop for Shared {
    /// The last handle is gone: finish the close handshake in the
    /// background (bounded), rather than resetting the connection.
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        if inner.finished {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let placeholder = Inner {
            io: Box::new(tokio::io::duplex(1).0),
            engine: WsConnection::server(&WsConfig::default(), None, std::time::Instant::now()),
            out: Outgoing::new(Instant::now()),
            driver: None,
            waiting_senders: Vec::new(),
            input_done: true,
            finished: true,
            stop: None,
            stop_probe: None,
            stop_waker: None,
            timers: Timers {
                write_timeout: Duration::ZERO,
                sleep: None,
            },
        };
        let mut inner = std::mem::replace(inner, placeholder);
        runtime.spawn(async move {
            if inner.engine.state() == WsState::Open {
                let _ = inner.engine.close(CloseCode::NORMAL, "", Instant::now().into_std());
            }
            let _ = tokio::time::timeout(LINGER, async {
                while poll_fn(|cx| inner.poll_recv(cx, usize::MAX)).await.is_some() {}
            })
            .await;
        });
    }
}
