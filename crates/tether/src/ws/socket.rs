//! The [`WebSocket`] handle and its driver task.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tether_proto::ws::{
    CloseCode, EncodedFrame, Event, HandshakeConfig, Message, ProtocolError, SendError, WsConfig, WsConnection, WsState,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::server::upgrade::Transport;

/// The driver stops taking queued messages while this much is waiting to be written.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Messages delivered to the receiver but not yet taken.
const INCOMING_CAPACITY: usize = 16;
/// Reading pauses while this much output waits for a peer that does not read.
const READ_STOP: usize = 1 << 20;

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
    /// Engine limits: frame and message size, close timeout, compression level.
    pub engine: WsConfig,
    /// Server handshake: subprotocols, `Origin` allow-list, compression mode.
    pub handshake: HandshakeConfig,
    /// Send a ping this often; close (1011) if the previous one got no pong.
    pub ping_interval: Option<Duration>,
    /// Close (1001) after this long without receiving anything.
    pub idle_timeout: Option<Duration>,
    /// Outgoing bytes queued before `send` waits and `try_send` reports full.
    pub max_queued_bytes: usize,
    /// What `try_send` and [`super::Broadcast`] do on a full queue.
    pub overflow: OverflowPolicy,
    /// Drop the connection when queued output makes no progress this long.
    pub write_timeout: Duration,
}

impl Default for WsOptions {
    fn default() -> Self {
        let mut engine = WsConfig::default();
        // The handle counts queued bytes; the engine's own queue stays small.
        engine.max_queued_bytes = usize::MAX / 2;
        Self {
            engine,
            handshake: HandshakeConfig::default(),
            ping_interval: None,
            idle_timeout: None,
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

enum Command {
    Send(Message, usize),
    Encoded(EncodedFrame),
    Close(CloseCode, String),
}

struct Shared {
    queued: AtomicUsize,
    limit: usize,
    space: Notify,
    closed: AtomicBool,
    overflow: OverflowPolicy,
    slow_consumer: AtomicBool,
    wake_driver: Notify,
}

/// The sending half: cheap to clone, usable from any task.
#[derive(Clone)]
pub struct WsSender {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for WsSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsSender")
            .field("queued", &self.queued_bytes())
            .finish()
    }
}

fn cost(m: &Message) -> usize {
    let payload = match m {
        Message::Text(t) => t.as_bytes().len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(_) => 0,
    };
    payload + 14
}

impl WsSender {
    /// Sends a message, waiting while the outgoing queue is full.
    /// `Message::Close` starts the close handshake (code 1005-free: an
    /// absent frame closes with 1000).
    pub async fn send(&self, message: Message) -> Result<(), WsError> {
        if let Message::Close(frame) = message {
            let (code, reason) = frame.map_or((CloseCode::NORMAL, String::new()), |f| (f.code, f.reason.to_string()));
            return self.close(code, &reason).await;
        }
        let cost = cost(&message);
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(WsError::Closed);
            }
            let notified = self.shared.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.try_reserve(cost) {
                break;
            }
            notified.await;
        }
        self.push(Command::Send(message, cost))
    }

    /// Sends without waiting: [`TrySendError::Full`] when the queue is full
    /// (and, with [`OverflowPolicy::Close`], the connection is closed with 1008).
    pub fn try_send(&self, message: Message) -> Result<(), TrySendError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(TrySendError::Closed(message));
        }
        let cost = cost(&message);
        if !self.try_reserve(cost) {
            return Err(self.overflow(message));
        }
        self.push(Command::Send(message, cost))
            .map_err(|_| TrySendError::Closed(Message::Binary(Bytes::new())))
    }

    /// Sends a frame encoded once for many connections (see [`super::Broadcast`]).
    pub fn try_send_encoded(&self, frame: &EncodedFrame) -> Result<(), TrySendError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(TrySendError::Closed(Message::Binary(Bytes::new())));
        }
        if !self.try_reserve(frame.len()) {
            return Err(self.overflow(Message::Binary(Bytes::new())));
        }
        self.push(Command::Encoded(frame.clone()))
            .map_err(|_| TrySendError::Closed(Message::Binary(Bytes::new())))
    }

    /// Starts the close handshake with `code` and `reason`.
    pub async fn close(&self, code: CloseCode, reason: &str) -> Result<(), WsError> {
        if !code.is_valid_on_wire() {
            return Err(WsError::Invalid(SendError::InvalidCloseCode(code.0)));
        }
        if reason.len() > 123 {
            return Err(WsError::Invalid(SendError::CloseReasonTooLong(reason.len())));
        }
        self.push(Command::Close(code, reason.to_string()))
    }

    /// Bytes queued and not yet taken by the driver.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// Whether the connection is closed for sending.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    fn overflow(&self, message: Message) -> TrySendError {
        match self.shared.overflow {
            OverflowPolicy::Report => TrySendError::Full(message),
            OverflowPolicy::Close => {
                self.shared.slow_consumer.store(true, Ordering::Release);
                self.shared.wake_driver.notify_one();
                TrySendError::Closed(message)
            }
        }
    }

    /// Adds `cost` to the queue if it fits (one message may always go into an empty queue).
    fn try_reserve(&self, cost: usize) -> bool {
        let q = &self.shared.queued;
        let mut current = q.load(Ordering::Acquire);
        loop {
            if current != 0 && current + cost > self.shared.limit {
                return false;
            }
            match q.compare_exchange_weak(current, current + cost, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }

    fn push(&self, command: Command) -> Result<(), WsError> {
        self.commands.send(command).map_err(|_| WsError::Closed)
    }
}

/// The receiving half.
#[derive(Debug)]
pub struct WsReceiver {
    incoming: mpsc::Receiver<Result<Message, WsError>>,
}

impl WsReceiver {
    /// The next message; `None` once the connection is closed. Pings and
    /// pongs are delivered too (pongs are sent automatically). A
    /// `Message::Close` is the peer's close frame; `None` follows it.
    pub async fn recv(&mut self) -> Option<Result<Message, WsError>> {
        self.incoming.recv().await
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
    /// Starts the driver over an established transport (after the handshake).
    pub(crate) fn start(
        io: Box<dyn Transport>,
        buffered: BytesMut,
        engine: WsConnection,
        options: &WsOptions,
        protocol: Option<String>,
    ) -> Self {
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            limit: options.max_queued_bytes.max(1),
            space: Notify::new(),
            closed: AtomicBool::new(false),
            overflow: options.overflow,
            slow_consumer: AtomicBool::new(false),
            wake_driver: Notify::new(),
        });
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (in_tx, in_rx) = mpsc::channel(INCOMING_CAPACITY);
        let driver = Driver {
            io,
            engine,
            shared: shared.clone(),
            commands: cmd_rx,
            incoming: in_tx,
            ping_interval: options.ping_interval,
            idle_timeout: options.idle_timeout,
            write_timeout: options.write_timeout,
        };
        tokio::spawn(driver.run(buffered));
        Self {
            sender: WsSender {
                shared,
                commands: cmd_tx,
            },
            receiver: WsReceiver { incoming: in_rx },
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

struct Driver {
    io: Box<dyn Transport>,
    engine: WsConnection,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    incoming: mpsc::Sender<Result<Message, WsError>>,
    ping_interval: Option<Duration>,
    idle_timeout: Option<Duration>,
    write_timeout: Duration,
}

enum Wake {
    Io,
    Command(Option<Command>),
    Slot,
    Timer,
    SlowConsumer,
}

impl Driver {
    async fn run(mut self, buffered: BytesMut) {
        let start = Instant::now();
        if !buffered.is_empty() {
            self.engine.feed(&buffered, start.into_std());
        }
        drop(buffered);
        let mut out: VecDeque<Bytes> = VecDeque::new();
        let mut out_len = 0usize;
        let mut blocked: Option<Result<Message, WsError>> = None;
        let mut commands_open = true;
        let mut input_done = false;
        let mut last_recv = start;
        let mut write_progress = start;
        let mut next_ping = self.ping_interval.map(|p| start + p);
        let mut awaiting_pong = false;

        loop {
            // Engine events to the user, while the receiver has room.
            while blocked.is_none() {
                let Some(event) = self.engine.poll_event() else { break };
                let item = match event {
                    Event::Message(Message::Pong(p)) => {
                        awaiting_pong = false;
                        Ok(Message::Pong(p))
                    }
                    Event::Message(m) => Ok(m),
                    Event::ProtocolError(e) => {
                        tracing::debug!(error = %e, "websocket protocol error; closing with {}", e.close_code().0);
                        Err(WsError::Protocol(e))
                    }
                    Event::AbnormalClosure => Err(WsError::AbnormalClosure),
                };
                match self.incoming.try_send(item) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(item)) => blocked = Some(item),
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            if self.engine.state() != WsState::Open && self.engine.state() != WsState::Closing {
                // Nothing more may be sent: wake waiting senders.
                self.mark_closed();
            }
            while let Some(chunk) = self.engine.poll_transmit() {
                if out.is_empty() {
                    write_progress = Instant::now();
                }
                out_len += chunk.len();
                out.push_back(chunk);
            }
            if self.engine.should_close_transport() && out.is_empty() {
                break;
            }
            // Everyone let go of the connection: close it normally.
            if !commands_open && self.incoming.is_closed() && self.engine.state() == WsState::Open {
                let _ = self.engine.close(CloseCode::NORMAL, "", Instant::now().into_std());
                continue;
            }

            let now = Instant::now();
            let deadline = [
                self.engine.poll_timeout().map(Instant::from_std),
                next_ping,
                self.idle_timeout.map(|t| last_recv + t),
                (!out.is_empty()).then(|| write_progress + self.write_timeout),
            ]
            .into_iter()
            .flatten()
            .min();
            let take_commands = commands_open && out_len + self.engine.queued_bytes() < WRITE_HIGH_WATER;
            // A peer that sends (pings, say) without reading what we queue
            // gets no more reads until our output drains.
            let wants_read = blocked.is_none() && !input_done && out_len + self.engine.queued_bytes() < READ_STOP;
            let wake = {
                let io = &mut self.io;
                let engine = &mut self.engine;
                let out_ref = &mut out;
                let out_len_ref = &mut out_len;
                let io_fut = poll_fn(|cx| {
                    poll_io(
                        io,
                        engine,
                        out_ref,
                        out_len_ref,
                        wants_read,
                        &mut input_done,
                        cx,
                        &mut last_recv,
                        &mut write_progress,
                    )
                });
                let commands = &mut self.commands;
                let incoming = &self.incoming;
                let shared = &self.shared;
                tokio::select! {
                    biased;
                    w = io_fut => w,
                    c = commands.recv(), if take_commands => Wake::Command(c),
                    _ = shared.wake_driver.notified() => Wake::SlowConsumer,
                    _ = incoming.reserve(), if blocked.is_some() => Wake::Slot,
                    _ = tokio::time::sleep_until(deadline.unwrap_or(now)), if deadline.is_some() => Wake::Timer,
                }
            };
            match wake {
                Wake::Io => {
                    if input_done
                        && self.engine.state() != WsState::Closed
                        && out.is_empty()
                        && !self.engine.should_close_transport()
                    {
                        // Read side ended: the engine was told; loop to deliver events.
                    }
                }
                Wake::Command(None) => commands_open = false,
                Wake::Command(Some(cmd)) => self.command(cmd),
                Wake::Slot => {
                    if let Some(item) = blocked.take() {
                        if let Err(mpsc::error::TrySendError::Full(item)) = self.incoming.try_send(item) {
                            blocked = Some(item);
                        }
                    }
                }
                Wake::SlowConsumer => {
                    if self.shared.slow_consumer.load(Ordering::Acquire) && self.engine.state() == WsState::Open {
                        tracing::debug!("closing slow websocket consumer with 1008");
                        let _ =
                            self.engine
                                .close(CloseCode::POLICY_VIOLATION, "slow consumer", Instant::now().into_std());
                        self.mark_closed();
                    }
                }
                Wake::Timer => {
                    let now = Instant::now();
                    if !out.is_empty() && now >= write_progress + self.write_timeout {
                        tracing::debug!("websocket write stalled; dropping the connection");
                        break;
                    }
                    self.engine.handle_timeout(now.into_std());
                    if let Some(t) = self.idle_timeout {
                        if now >= last_recv + t && self.engine.state() == WsState::Open {
                            let _ = self.engine.close(CloseCode::GOING_AWAY, "idle timeout", now.into_std());
                        }
                    }
                    if let (Some(p), Some(due)) = (self.ping_interval, next_ping) {
                        if now >= due {
                            next_ping = Some(now + p);
                            if self.engine.state() == WsState::Open {
                                if awaiting_pong {
                                    let _ =
                                        self.engine
                                            .close(CloseCode::INTERNAL_ERROR, "ping timeout", now.into_std());
                                } else {
                                    awaiting_pong = self.engine.ping(Bytes::from_static(b"tether")).is_ok();
                                }
                            }
                        }
                    }
                    if self.engine.should_close_transport() && self.engine.state() == WsState::Closed && out.is_empty()
                    {
                        break;
                    }
                }
            }
            if input_done && self.engine.should_close_transport() && out.is_empty() {
                // Deliver the final events, then stop.
                while let Some(event) = self.engine.poll_event() {
                    let item = match event {
                        Event::Message(m) => Ok(m),
                        Event::ProtocolError(e) => Err(WsError::Protocol(e)),
                        Event::AbnormalClosure => Err(WsError::AbnormalClosure),
                    };
                    let _ = self.incoming.try_send(item);
                }
                break;
            }
        }
        if let Some(item) = blocked.take() {
            let _ = self.incoming.try_send(item);
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
        self.mark_closed();
    }

    fn mark_closed(&self) {
        if !self.shared.closed.swap(true, Ordering::AcqRel) {
            self.shared.space.notify_waiters();
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Send(message, cost) => {
                self.shared.queued.fetch_sub(cost, Ordering::AcqRel);
                self.shared.space.notify_waiters();
                if let Err(e) = self.engine.send(message) {
                    tracing::trace!(error = %e, "websocket send dropped");
                }
            }
            Command::Encoded(frame) => {
                self.shared.queued.fetch_sub(frame.len(), Ordering::AcqRel);
                self.shared.space.notify_waiters();
                let _ = self.engine.send_encoded(&frame);
            }
            Command::Close(code, reason) => {
                let _ = self.engine.close(code, &reason, Instant::now().into_std());
                self.mark_closed();
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn poll_io(
    io: &mut Box<dyn Transport>,
    engine: &mut WsConnection,
    out: &mut VecDeque<Bytes>,
    out_len: &mut usize,
    wants_read: bool,
    input_done: &mut bool,
    cx: &mut std::task::Context<'_>,
    last_recv: &mut Instant,
    write_progress: &mut Instant,
) -> Poll<Wake> {
    let mut progressed = false;
    if !out.is_empty() {
        match crate::io::poll_write_bufs(&mut **io, cx, out.iter().map(|b| &b[..])) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                out.clear();
                *out_len = 0;
                engine.handle_eof();
                *input_done = true;
                return Poll::Ready(Wake::Io);
            }
            Poll::Ready(Ok(mut written)) => {
                *out_len -= written;
                *write_progress = Instant::now();
                while written > 0 {
                    let front = out.front_mut().expect("written bytes were queued");
                    if written >= front.len() {
                        written -= front.len();
                        out.pop_front();
                    } else {
                        let _ = front.split_to(written);
                        written = 0;
                    }
                }
                progressed = true;
            }
            Poll::Pending => {}
        }
    }
    if wants_read && !progressed {
        let read = crate::io::poll_read_with(&mut **io, cx, |bytes| {
            let now = Instant::now();
            if bytes.is_empty() {
                engine.handle_eof();
                *input_done = true;
            } else {
                *last_recv = now;
                engine.feed(bytes, now.into_std());
            }
        });
        match read {
            Poll::Ready(Ok(())) => progressed = true,
            Poll::Ready(Err(_)) => {
                engine.handle_eof();
                *input_done = true;
                progressed = true;
            }
            Poll::Pending => {}
        }
    }
    if progressed {
        Poll::Ready(Wake::Io)
    } else {
        Poll::Pending
    }
}
