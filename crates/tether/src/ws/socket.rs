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

use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tether_proto::ws::{
    CloseCode, EncodedFrame, Event, HandshakeConfig, Message, ProtocolError, QueueOverflow, SendError, WsConfig,
    WsConnection, WsState,
};
use tokio::sync::watch;
use tokio::time::Instant;

use super::driver::{Turn, WsDriver};
use crate::lifecycle::{Stop, Transport};

/// Settings of a WebSocket connection (server or client side).
#[derive(Debug, Clone, Default)]
pub struct WsOptions {
    /// The engine's limits and timers: frame and message size, the queue
    /// limit (`max_queued_bytes`) and what overflowing it does
    /// (`queue_overflow`), write, close, heartbeat (`ping_interval`, 1011)
    /// and idle (1001) timeouts, compression level.
    pub engine: WsConfig,
    /// Server handshake: subprotocols, `Origin` allow-list, compression mode.
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
    /// close code), or the queue was full (see [`QueueOverflow`]).
    #[error("invalid message: {0}")]
    Invalid(#[from] SendError),
}

/// A non-waiting send that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TrySendError {
    /// The outgoing queue is full ([`QueueOverflow::Refuse`]); the message is handed back.
    #[error("the outgoing queue is full")]
    Full(Message),
    /// The connection is closed; with [`QueueOverflow::Close`] a full queue
    /// also closes it (1008).
    #[error("the WebSocket is closed")]
    Closed(Message),
}

struct Shared {
    inner: Mutex<Inner>,
}

struct Inner {
    conn: WsDriver<Box<dyn Transport>>,
    /// The task that receives: it drives reads, writes and timers.
    driver: Option<Waker>,
    /// Senders waiting for queue space.
    waiting_senders: Vec<Waker>,
    /// The transport is closed; only buffered events remain.
    finished: bool,
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

fn send_error(e: SendError) -> WsError {
    match e {
        SendError::Closed => WsError::Closed,
        other => WsError::Invalid(other),
    }
}

impl Inner {
    fn engine(&mut self) -> &mut WsConnection {
        &mut self.conn.engine
    }

    fn is_open(&self) -> bool {
        !self.finished && self.conn.engine.state() == WsState::Open
    }

    /// Wakes waiting senders once there is room (or nothing more can be sent).
    fn wake_senders(&mut self) {
        if !self.waiting_senders.is_empty() && (self.conn.engine.can_send(0) || !self.is_open()) {
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
        if self.is_driver(cx) {
            self.conn.poll_write(cx, &mut Default::default());
        } else if let Some(d) = &self.driver {
            d.wake_by_ref();
        }
    }

    /// Drives the connection until it has an event for the receiver.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, WsError>>> {
        if !self.driver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.driver = Some(cx.waker().clone());
        }
        loop {
            if let Some(event) = self.engine().poll_event() {
                // Answers (pongs, the close echo) go out before the event is handed over.
                if !self.finished {
                    self.conn.poll_write(cx, &mut Default::default());
                }
                self.wake_senders();
                return Poll::Ready(Some(map_event(event)));
            }
            if self.finished {
                self.wake_senders();
                return Poll::Ready(None);
            }
            match self.conn.poll_turn(cx, |_| None) {
                Poll::Ready(Turn::Ended) => self.finished = true,
                Poll::Ready(Turn::Input | Turn::Deadline) => {}
                Poll::Pending => {
                    self.wake_senders();
                    return Poll::Pending;
                }
            }
        }
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
            if !g.engine().can_send(len) {
                // Make room: write now if this task drives (it may be the
                // only one that would), else ask the driver.
                g.kick(cx);
                if !g.engine().can_send(len) {
                    g.waiting_senders.push(cx.waker().clone());
                    return Poll::Pending;
                }
            }
            let result = g.engine().send(message.take().expect("polled after completion"));
            g.kick(cx);
            Poll::Ready(result.map_err(send_error))
        })
        .await
    }

    /// Sends without waiting: [`TrySendError::Full`] when the queue has no
    /// room (with [`QueueOverflow::Close`] the connection is closed with
    /// 1008 instead, and the message comes back as `Closed`).
    pub fn try_send(&self, message: Message) -> Result<(), TrySendError> {
        if let Message::Close(ref frame) = message {
            let mut g = lock(&self.shared);
            let result = g.engine().close_with(frame.as_ref(), Instant::now().into_std());
            g.kick(&mut Context::from_waker(Waker::noop()));
            return result.map_err(|_| TrySendError::Closed(message));
        }
        let mut g = lock(&self.shared);
        if !g.is_open() {
            return Err(TrySendError::Closed(message));
        }
        if !g.engine().can_send(payload_len(&message)) && g.engine().config().queue_overflow == QueueOverflow::Refuse {
            return Err(TrySendError::Full(message));
        }
        let result = g.engine().send(message.clone());
        g.kick(&mut Context::from_waker(Waker::noop()));
        match result {
            Ok(()) => Ok(()),
            Err(SendError::QueueFull { .. }) => Err(TrySendError::Full(message)),
            Err(e) => {
                if matches!(e, SendError::SlowConsumer { .. }) {
                    tracing::debug!(error = %e, "closing slow websocket consumer");
                    g.wake_senders();
                }
                Err(TrySendError::Closed(message))
            }
        }
    }

    /// Sends a frame encoded once for many connections (see [`super::Broadcast`]).
    pub fn try_send_encoded(&self, frame: &EncodedFrame) -> Result<(), TrySendError> {
        let mut g = lock(&self.shared);
        if !g.is_open() {
            return Err(TrySendError::Closed(Message::Binary(Default::default())));
        }
        let result = g.engine().send_encoded(frame);
        g.kick(&mut Context::from_waker(Waker::noop()));
        match result {
            Ok(()) => Ok(()),
            Err(SendError::QueueFull { .. }) => Err(TrySendError::Full(Message::Binary(Default::default()))),
            Err(e) => {
                if matches!(e, SendError::SlowConsumer { .. }) {
                    tracing::debug!(error = %e, "closing slow websocket consumer");
                    g.wake_senders();
                }
                Err(TrySendError::Closed(Message::Binary(Default::default())))
            }
        }
    }

    /// Starts the close handshake with `code` and `reason`.
    pub async fn close(&self, code: CloseCode, reason: &str) -> Result<(), WsError> {
        self.close_with(Some(&tether_proto::ws::CloseFrame {
            code,
            reason: reason.to_owned().into(),
        }))
        .await
    }

    async fn close_with(&self, frame: Option<&tether_proto::ws::CloseFrame>) -> Result<(), WsError> {
        poll_fn(|cx| {
            let mut g = lock(&self.shared);
            if g.finished {
                return Poll::Ready(Err(WsError::Closed));
            }
            let result = g.engine().close_with(frame, Instant::now().into_std());
            g.kick(cx);
            g.wake_senders();
            Poll::Ready(result.map_err(send_error))
        })
        .await
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        lock(&self.shared).conn.engine.queued_bytes()
    }

    /// Whether the connection is closed for sending.
    pub fn is_closed(&self) -> bool {
        !lock(&self.shared).is_open()
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
        poll_fn(|cx| lock(&self.shared).poll_recv(cx)).await
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
        protocol: Option<String>,
        stop: Option<watch::Receiver<Stop>>,
    ) -> Self {
        if !buffered.is_empty() {
            engine.handle_input(&buffered, std::time::Instant::now());
        }
        let inner = Inner {
            conn: WsDriver::new(io, engine, stop),
            driver: None,
            waiting_senders: Vec::new(),
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

    /// Splits into halves usable from different tasks.
    pub fn split(self) -> (WsSender, WsReceiver) {
        (self.sender, self.receiver)
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
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let placeholder = Inner {
            conn: WsDriver::new(
                Box::new(tokio::io::empty()),
                WsConnection::server(WsConfig::default(), None, std::time::Instant::now()),
                None,
            ),
            driver: None,
            waiting_senders: Vec::new(),
            finished: true,
        };
        let mut inner = std::mem::replace(inner, placeholder);
        runtime.spawn(async move {
            let _ = inner.engine().close(CloseCode::NORMAL, "", Instant::now().into_std());
            while poll_fn(|cx| inner.poll_recv(cx)).await.is_some() {}
        });
    }
}
