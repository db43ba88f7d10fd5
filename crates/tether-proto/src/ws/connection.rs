//! The WebSocket connection state machine (RFC 6455 §5-§7), sans I/O.
//!
//! Theory of operation. Everything that decides what happens on an open
//! WebSocket connection lives here; the other modules are pure helpers.
//!
//! *Input.* The driver appends received bytes ([`WsConnection::feed`], or
//! [`WsConnection::read_buffer`] + [`WsConnection::process_read_buffer`]).
//! For each frame the header is decoded and checked against the connection
//! (masking by role, RSV bits by negotiated extension, fragmentation
//! sequence, frame and message size limits from the *declared* length, before
//! any payload is buffered). Payload bytes are unmasked in place as they
//! arrive, and uncompressed text is UTF-8 validated as it arrives (fail fast).
//! A complete payload is split off the read buffer as `Bytes` (zero copy).
//! Control frames are handled at once, also between the fragments of a
//! message: Ping is answered by a Pong with the same payload (and surfaced),
//! Pong is surfaced, Close runs the close handshake.
//!
//! *Output.* `send_*`, `ping`, `pong`, `close` and [`WsConnection::send_encoded`]
//! encode frames into a queue of `Bytes` that the driver takes with
//! [`WsConnection::poll_transmit`] (several chunks can go in one vectored
//! write). Small frames are coalesced into one buffer; large server payloads
//! are queued as their own `Bytes` without copying. [`WsConnection::queued_bytes`]
//! and the `max_queued_bytes` limit give backpressure: data sends on a full
//! queue fail with [`SendError::QueueFull`]. Automatic pongs and Close frames
//! bypass the limit, so a driver should stop reading while the queue is full.
//!
//! *States* ([`WsState`]):
//! ```text
//!   Open --close()/violation--> Closing --peer Close--> Closed
//!   Open --peer Close (echo queued)--> CloseReceived --echo taken by poll_transmit--> Closed
//!   any --EOF / close timeout--> Closed
//! ```
//! After a Close is sent nothing else is sent; data frames received after it
//! are read and dropped (control frames are still surfaced, pings no longer
//! answered). After the peer's Close, input is ignored.
//!
//! *Failing.* A violation by the peer queues a Close with the code of the
//! [`ProtocolError`] (1002, 1007 or 1009) unless one was already sent, emits
//! [`Event::ProtocolError`] as the last event, and stops reading.
//!
//! *Transport close.* [`WsConnection::should_close_transport`] says when the
//! driver should close TCP: the server does so once the close handshake is
//! done (or the connection failed) and the queue is drained; the client waits
//! for the server to close first (EOF) unless it failed the connection. Every
//! close start arms one deadline (`close_timeout`, default 5 s):
//! [`WsConnection::poll_timeout`] reports it and
//! [`WsConnection::handle_timeout`] past it makes the transport close anyway.
//! Methods that can start the close take `now`; the engine never reads a clock.
//!
//! *Liveness* (optional, [`WsConfig::ping_interval`] and
//! [`WsConfig::idle_timeout`]), decided here on the same clock: every ping
//! interval the engine queues a Ping; if the previous Ping got no Pong by then,
//! it closes with 1011 instead. With no input at all for the idle timeout it
//! closes with 1001. Both deadlines count from construction (`now`) and are
//! reported by `poll_timeout` only while the connection is open, so once the
//! close starts only the close deadline remains.
//!
//! *Memory.* Buffers are released when drained (read buffer, output queue,
//! event queue), so an idle connection holds no heap buffers; with
//! no-context-takeover compression it holds no zlib state either. A driver
//! that parks idle connections may instead keep the read and output
//! buffers (up to 16 KiB each) and the event queue while the connection is busy
//! (`set_retain_buffers`) and free them before it waits (`release_buffers`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use super::close::{encode_close_payload, parse_close_payload, CloseCode, MAX_CLOSE_REASON};
use super::deflate::{CompressionConfig, DeflateParams, MessageCompressor, MessageDecompressor};
use super::error::{ProtocolError, SendError};
use super::frame::{encode_frame, EncodedFrame, FrameHeader, OpCode, MAX_CONTROL_PAYLOAD};
use super::mask::apply_mask;
use super::message::{Message, MessageAssembler, Utf8Bytes};

/// Payloads up to this size are copied into the coalescing output buffer;
/// larger server payloads are queued as their own `Bytes`.
const INLINE_PAYLOAD_LIMIT: usize = 2048;
const MIN_READ_RESERVE: usize = 4096;
/// With retention on, drained read and output buffers up to this size are kept.
const RETAINED_LIMIT: usize = 16 * 1024;
const MAX_READ_RESERVE: usize = 64 * 1024;

/// Which end of the connection this engine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Receives masked frames, sends unmasked ones, closes TCP first.
    Server,
    /// Receives unmasked frames, masks what it sends, waits for the server to close TCP.
    Client,
}

/// Per-connection limits and behaviour.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Largest accepted frame payload (declared length); over it: 1009.
    pub max_frame_size: usize,
    /// Largest accepted message (after inflating); over it: 1009.
    pub max_message_size: usize,
    /// Data sends fail with `QueueFull` while this many bytes are queued.
    pub max_queued_bytes: usize,
    /// How long to wait for the peer's Close (and, as a client, for the server's TCP close).
    pub close_timeout: Duration,
    /// Answer every Ping with a Pong automatically.
    pub auto_pong: bool,
    /// Compression level and minimum message size (negotiation is in the handshake).
    pub compression: CompressionConfig,
    /// Heartbeat: send a Ping this often; close with 1011 (internal error,
    /// "ping timeout") when the previous Ping got no Pong by the next one.
    pub ping_interval: Option<Duration>,
    /// Close with 1001 (going away, "idle timeout") after this long without
    /// receiving a single byte.
    pub idle_timeout: Option<Duration>,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            max_queued_bytes: 8 << 20,
            close_timeout: Duration::from_secs(5),
            auto_pong: true,
            compression: CompressionConfig::default(),
            ping_interval: None,
            idle_timeout: None,
        }
    }
}

/// The close-handshake state (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsState {
    /// Messages flow both ways.
    Open,
    /// We sent a Close and wait for the peer's.
    Closing,
    /// The peer sent a Close; our answer is queued but not yet taken by `poll_transmit`.
    CloseReceived,
    /// The close handshake is complete, or the connection failed, hit EOF or timed out.
    Closed,
}

/// What the connection reports to its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete message or control frame. `Message::Close` is the peer's Close.
    Message(Message),
    /// The peer violated the protocol; a Close with `error.close_code()` was
    /// queued (unless one was already sent). Nothing follows this event.
    ProtocolError(ProtocolError),
    /// The transport ended before the peer's Close (abnormal closure, 1006).
    AbnormalClosure,
}

/// Source of client masking keys (the crate has no random number generator).
pub type MaskKeySource = Box<dyn FnMut() -> [u8; 4] + Send>;

/// The frame whose payload is being received.
#[derive(Debug)]
struct PendingFrame {
    header: FrameHeader,
    /// Payload bytes already unmasked (and validated) or, when discarding, dropped.
    processed: usize,
    /// Uncompressed text: validate UTF-8 as bytes arrive.
    plain_text: bool,
    /// A data frame received after we sent Close: read and drop.
    discard: bool,
}

/// The negotiated parameters and the (de)compressor of each direction.
#[derive(Debug)]
struct DeflateEngines {
    params: DeflateParams,
    compressor: MessageCompressor,
    decompressor: MessageDecompressor,
}

/// A sans-I/O WebSocket connection (after the handshake).
pub struct WsConnection {
    role: Role,
    max_frame_size: usize,
    max_message_size: usize,
    max_queued_bytes: usize,
    close_timeout: Duration,
    auto_pong: bool,
    compress_min_size: usize,
    /// Boxed: zlib handles are large and most connections do not compress.
    deflate: Option<Box<DeflateEngines>>,
    mask_keys: Option<MaskKeySource>,

    read_buf: BytesMut,
    /// Keep drained buffers (see [`WsConnection::set_retain_buffers`]).
    retain_buffers: bool,
    /// The most capacity the read buffer has had since it was last freed:
    /// after a payload is split off, `capacity()` reports only what is
    /// left of the allocation, not what it holds.
    /// (u32, saturating: it fits beside the flags; the limit is 16 KiB.)
    read_high_water: u32,
    pending: Option<PendingFrame>,
    assembler: MessageAssembler,
    events: VecDeque<Event>,

    /// Chunks ready to write, in order, followed by `out_tail`.
    out_queue: VecDeque<Bytes>,
    /// Small frames coalesced here.
    out_tail: BytesMut,
    queued_bytes: usize,

    close_sent: bool,
    close_received: bool,
    failed: bool,
    eof: bool,
    timed_out: bool,
    close_deadline: Option<Instant>,

    ping_interval: Option<Duration>,
    next_ping: Option<Instant>,
    awaiting_pong: bool,
    idle_timeout: Option<Duration>,
    last_input: Instant,
}

/// The heartbeat Ping's payload (a Pong with any payload answers it).
const HEARTBEAT_PAYLOAD: &[u8] = b"tether";

impl std::fmt::Debug for WsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConnection")
            .field("role", &self.role)
            .field("state", &self.state())
            .field("deflate", &self.deflate_params())
            .field("buffered", &self.read_buf.len())
            .field("queued_bytes", &self.queued_bytes)
            .field("close_deadline", &self.close_deadline)
            .finish_non_exhaustive()
    }
}

impl WsConnection {
    /// A server-side connection opened at `now`; `deflate` from
    /// `handshake::Accepted::deflate`.
    pub fn server(config: &WsConfig, deflate: Option<DeflateParams>, now: Instant) -> Self {
        Self::new(Role::Server, config, deflate, None, now)
    }

    /// A client-side connection opened at `now`; `deflate` from
    /// `handshake::ClientAccepted::deflate`. `mask_keys` must return a fresh
    /// unpredictable key per frame.
    pub fn client(
        config: &WsConfig,
        deflate: Option<DeflateParams>,
        mask_keys: impl FnMut() -> [u8; 4] + Send + 'static,
        now: Instant,
    ) -> Self {
        Self::new(Role::Client, config, deflate, Some(Box::new(mask_keys)), now)
    }

    fn new(
        role: Role,
        config: &WsConfig,
        deflate: Option<DeflateParams>,
        mask_keys: Option<MaskKeySource>,
        now: Instant,
    ) -> Self {
        let deflate = deflate.map(|p| {
            let level = config.compression.level;
            let (send_bits, send_no_ctx, recv_bits, recv_no_ctx) = match role {
                Role::Server => (
                    p.server_max_window_bits,
                    p.server_no_context_takeover,
                    p.client_max_window_bits,
                    p.client_no_context_takeover,
                ),
                Role::Client => (
                    p.client_max_window_bits,
                    p.client_no_context_takeover,
                    p.server_max_window_bits,
                    p.server_no_context_takeover,
                ),
            };
            Box::new(DeflateEngines {
                params: p,
                compressor: MessageCompressor::new(send_bits, level, send_no_ctx),
                decompressor: MessageDecompressor::new(recv_bits, recv_no_ctx),
            })
        });
        WsConnection {
            role,
            max_frame_size: config.max_frame_size,
            max_message_size: config.max_message_size,
            max_queued_bytes: config.max_queued_bytes,
            close_timeout: config.close_timeout,
            auto_pong: config.auto_pong,
            compress_min_size: config.compression.min_message_size,
            deflate,
            mask_keys,
            read_buf: BytesMut::new(),
            retain_buffers: false,
            read_high_water: 0,
            pending: None,
            assembler: MessageAssembler::new(),
            events: VecDeque::new(),
            out_queue: VecDeque::new(),
            out_tail: BytesMut::new(),
            queued_bytes: 0,
            close_sent: false,
            close_received: false,
            failed: false,
            eof: false,
            timed_out: false,
            close_deadline: None,
            ping_interval: config.ping_interval,
            next_ping: config.ping_interval.map(|interval| now + interval),
            awaiting_pong: false,
            idle_timeout: config.idle_timeout,
            last_input: now,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The negotiated permessage-deflate parameters, if any.
    pub fn deflate_params(&self) -> Option<DeflateParams> {
        self.deflate.as_ref().map(|d| d.params)
    }

    // -----------------------------------------------------------------------
    // Input

    /// Takes received bytes and processes every complete frame.
    pub fn feed(&mut self, bytes: &[u8], now: Instant) {
        if self.input_closed() {
            return;
        }
        if !bytes.is_empty() {
            self.last_input = now;
        }
        self.read_buf.extend_from_slice(bytes);
        self.note_read_capacity();
        self.process(now);
    }

    /// Payload bytes of the frame being received that have not arrived yet
    /// (0 between frames). From 64 KiB or so, reading straight into
    /// [`read_buffer`](Self::read_buffer) saves a copy per byte.
    pub fn payload_remaining(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| {
            (p.header.payload_len as usize).saturating_sub(self.read_buf.len())
        })
    }

    /// The read buffer, with spare capacity reserved, for the driver to read
    /// into directly; call [`process_read_buffer`](Self::process_read_buffer) after.
    ///
    /// For the rest of a frame it asks for at most the larger of 64 KiB and
    /// what of the frame has arrived, so a peer that declares a large frame
    /// gets memory only as it sends the bytes (at least 4 KiB is reserved).
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        let remaining = self.payload_remaining();
        let arrived = self.read_buf.len();
        // `reserve` may double the capacity on top (and lets the allocator
        // grow a large buffer in place): at most about four times what of
        // the frame arrived.
        self.read_buf
            .reserve(remaining.min(MAX_READ_RESERVE.max(arrived)).max(MIN_READ_RESERVE));
        self.note_read_capacity();
        &mut self.read_buf
    }

    /// Processes what the driver read into [`read_buffer`](Self::read_buffer)
    /// (call it only after a read that returned bytes: it counts as input).
    pub fn process_read_buffer(&mut self, now: Instant) {
        if self.input_closed() {
            self.free_read_buffer();
            return;
        }
        self.last_input = now;
        self.process(now);
    }

    /// The transport reached end of file.
    pub fn handle_eof(&mut self) {
        if self.eof {
            return;
        }
        self.eof = true;
        if !self.close_received && !self.failed && !self.timed_out {
            self.events.push_back(Event::AbnormalClosure);
        }
        self.free_read_buffer();
        self.pending = None;
        self.assembler.discard();
    }

    /// The next event, in order.
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        if event.is_none() && self.events.capacity() > 0 && !self.retain_buffers {
            self.events = VecDeque::new();
        }
        event
    }

    fn input_closed(&self) -> bool {
        self.failed || self.close_received || self.eof || self.timed_out
    }

    fn process(&mut self, now: Instant) {
        while !self.input_closed() {
            if self.pending.is_none() {
                let (header, header_len) = match FrameHeader::decode(&self.read_buf) {
                    Ok(Some(decoded)) => decoded,
                    Ok(None) => break,
                    Err(error) => {
                        self.fail(error, now);
                        break;
                    }
                };
                if let Err(error) = self.check_header(&header) {
                    self.fail(error, now);
                    break;
                }
                self.read_buf.advance(header_len);
                let discard = self.close_sent && header.opcode.is_data();
                let plain_text = !discard && self.assembler.is_plain_text(&header);
                self.pending = Some(PendingFrame {
                    header,
                    processed: 0,
                    plain_text,
                    discard,
                });
            }
            let Some(pending) = self.pending.as_mut() else {
                break;
            };
            // check_header bounded the length by max_frame_size, a usize.
            let len = pending.header.payload_len as usize;
            if pending.discard {
                let take = (len - pending.processed).min(self.read_buf.len());
                self.read_buf.advance(take);
                pending.processed += take;
                if pending.processed < len {
                    break;
                }
                self.pending = None;
                continue;
            }
            let available = len.min(self.read_buf.len());
            if available > pending.processed {
                let chunk = &mut self.read_buf[pending.processed..available];
                if let Some(key) = pending.header.mask {
                    apply_mask(chunk, key, pending.processed);
                }
                if pending.plain_text && !self.close_sent {
                    if let Err(error) = self.assembler.validate_text(chunk) {
                        self.fail(error, now);
                        break;
                    }
                }
                pending.processed = available;
            }
            if available < len {
                break;
            }
            let header = pending.header;
            self.pending = None;
            let payload = self.read_buf.split_to(len).freeze();
            self.handle_frame(header, payload, now);
        }
        if self.read_buf.is_empty()
            && self.read_high_water > 0
            && !(self.retain_buffers && self.read_high_water as usize <= RETAINED_LIMIT)
        {
            // Idle: hold no read buffer (received payloads keep their own share).
            self.free_read_buffer();
        }
    }

    /// Connection-dependent header rules (the codec checked the rest).
    fn check_header(&self, header: &FrameHeader) -> Result<(), ProtocolError> {
        match (self.role, header.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedClientFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedServerFrame),
            _ => {}
        }
        if header.rsv2 || header.rsv3 || (header.rsv1 && self.deflate.is_none()) {
            return Err(ProtocolError::ReservedBitsSet);
        }
        if header.rsv1
            && matches!(
                header.opcode,
                OpCode::Continuation | OpCode::Close | OpCode::Ping | OpCode::Pong
            )
        {
            return Err(ProtocolError::Rsv1NotOnFirstDataFrame);
        }
        if header.payload_len > self.max_frame_size as u64 {
            return Err(ProtocolError::FrameTooLarge {
                len: header.payload_len,
                limit: self.max_frame_size,
            });
        }
        if header.opcode.is_data() && !self.close_sent {
            let in_progress = self.assembler.in_progress();
            match header.opcode {
                OpCode::Continuation if !in_progress => return Err(ProtocolError::UnexpectedContinuation),
                OpCode::Text | OpCode::Binary if in_progress => return Err(ProtocolError::ExpectedContinuation),
                _ => {}
            }
            if self.assembler.buffered_len() as u64 + header.payload_len > self.max_message_size as u64 {
                return Err(ProtocolError::MessageTooLarge {
                    limit: self.max_message_size,
                });
            }
        }
        Ok(())
    }

    fn handle_frame(&mut self, header: FrameHeader, payload: Bytes, now: Instant) {
        match header.opcode {
            OpCode::Ping => {
                if self.auto_pong && !self.close_sent {
                    self.queue_frame(OpCode::Pong, false, payload.clone());
                }
                self.events.push_back(Event::Message(Message::Ping(payload)));
            }
            OpCode::Pong => {
                self.awaiting_pong = false;
                self.events.push_back(Event::Message(Message::Pong(payload)));
            }
            OpCode::Close => self.handle_close(payload, now),
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                if self.close_sent {
                    return; // we closed while this frame was arriving: drop it
                }
                match self.assembler.push_frame(
                    &header,
                    payload,
                    self.max_message_size,
                    self.deflate.as_mut().map(|d| &mut d.decompressor),
                ) {
                    Ok(Some(message)) => self.events.push_back(Event::Message(message)),
                    Ok(None) => {}
                    Err(error) => self.fail(error, now),
                }
            }
        }
    }

    fn handle_close(&mut self, payload: Bytes, now: Instant) {
        match parse_close_payload(&payload) {
            Err(error) => self.fail(error, now),
            Ok(frame) => {
                self.close_received = true;
                self.assembler.discard();
                self.free_read_buffer(); // nothing may follow a Close
                if !self.close_sent {
                    // Echo the peer's code with no reason (or an empty Close if it had none).
                    let echo = frame.as_ref().map(|f| (f.code, ""));
                    self.queue_close(encode_close_payload(echo));
                }
                self.arm_close_timer(now);
                self.events.push_back(Event::Message(Message::Close(frame)));
            }
        }
    }

    fn fail(&mut self, error: ProtocolError, now: Instant) {
        self.failed = true;
        self.pending = None;
        self.free_read_buffer();
        self.assembler.discard();
        if !self.close_sent {
            let mut reason = error.to_string();
            while reason.len() > MAX_CLOSE_REASON {
                reason.pop();
            }
            self.queue_close(encode_close_payload(Some((error.close_code(), &reason))));
        }
        self.arm_close_timer(now);
        self.events.push_back(Event::ProtocolError(error));
    }

    fn arm_close_timer(&mut self, now: Instant) {
        if self.close_deadline.is_none() {
            self.close_deadline = Some(now + self.close_timeout);
        }
    }

    // -----------------------------------------------------------------------
    // Output

    /// Sends a Text, Binary, Ping or Pong message. Close goes through
    /// [`close`](Self::close) (it starts the close timer).
    pub fn send(&mut self, message: Message) -> Result<(), SendError> {
        match message {
            Message::Text(text) => self.send_data(OpCode::Text, text.into_bytes()),
            Message::Binary(data) => self.send_data(OpCode::Binary, data),
            Message::Ping(payload) => self.send_control(OpCode::Ping, payload),
            Message::Pong(payload) => self.send_control(OpCode::Pong, payload),
            Message::Close(_) => Err(SendError::CloseThroughSend),
        }
    }

    pub fn send_text(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), SendError> {
        self.send_data(OpCode::Text, text.into().into_bytes())
    }

    pub fn send_binary(&mut self, data: impl Into<Bytes>) -> Result<(), SendError> {
        self.send_data(OpCode::Binary, data.into())
    }

    pub fn ping(&mut self, payload: impl Into<Bytes>) -> Result<(), SendError> {
        self.send_control(OpCode::Ping, payload.into())
    }

    pub fn pong(&mut self, payload: impl Into<Bytes>) -> Result<(), SendError> {
        self.send_control(OpCode::Pong, payload.into())
    }

    /// Sends a frame encoded once for many connections (server only; never compressed).
    pub fn send_encoded(&mut self, frame: &EncodedFrame) -> Result<(), SendError> {
        if self.role == Role::Client {
            return Err(SendError::EncodedFrameOnClient);
        }
        self.check_can_send()?;
        self.flush_tail();
        self.queued_bytes += frame.len();
        self.out_queue.push_back(frame.as_bytes().clone());
        Ok(())
    }

    /// Starts the close handshake with `code` (not 1005, 1006, 1015 or an
    /// unregistered code) and a reason of at most 123 bytes. Nothing can be
    /// sent afterwards; data frames still arriving are dropped. Bypasses the
    /// queue limit.
    pub fn close(&mut self, code: CloseCode, reason: &str, now: Instant) -> Result<(), SendError> {
        if self.send_closed() {
            return Err(SendError::Closed);
        }
        if !code.is_valid_on_wire() {
            return Err(SendError::InvalidCloseCode(code.0));
        }
        if reason.len() > MAX_CLOSE_REASON {
            return Err(SendError::CloseReasonTooLong(reason.len()));
        }
        self.queue_close(encode_close_payload(Some((code, reason))));
        self.assembler.discard();
        self.arm_close_timer(now);
        Ok(())
    }

    /// The next chunk to write, in order. Take chunks only as fast as they
    /// can be written: what is taken no longer counts in `queued_bytes`.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        let chunk = match self.out_queue.pop_front() {
            Some(chunk) => chunk,
            // Retained, the tail's allocation is shared with the chunk and
            // reclaimed by the next frame once the chunk is written.
            None if !self.out_tail.is_empty() && self.retain_buffers && self.out_tail.capacity() <= RETAINED_LIMIT => {
                self.out_tail.split().freeze()
            }
            None if !self.out_tail.is_empty() => std::mem::take(&mut self.out_tail).freeze(),
            None => {
                if self.out_queue.capacity() > 0 {
                    self.out_queue = VecDeque::new();
                }
                return None;
            }
        };
        self.queued_bytes -= chunk.len();
        Some(chunk)
    }

    /// Bytes queued and not yet taken by `poll_transmit`.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Whether a data send would currently be accepted by the queue limit.
    pub fn has_send_capacity(&self) -> bool {
        self.queued_bytes < self.max_queued_bytes
    }

    fn send_closed(&self) -> bool {
        self.close_sent || self.failed || self.eof || self.timed_out
    }

    fn check_can_send(&self) -> Result<(), SendError> {
        if self.send_closed() {
            return Err(SendError::Closed);
        }
        if !self.has_send_capacity() {
            return Err(SendError::QueueFull {
                queued: self.queued_bytes,
                limit: self.max_queued_bytes,
            });
        }
        Ok(())
    }

    fn send_data(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), SendError> {
        self.check_can_send()?;
        match self.deflate.as_mut() {
            Some(deflate) if payload.len() >= self.compress_min_size => {
                let compressed = Bytes::from(deflate.compressor.compress(&payload));
                self.queue_frame(opcode, true, compressed);
            }
            _ => self.queue_frame(opcode, false, payload),
        }
        Ok(())
    }

    fn send_control(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), SendError> {
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(SendError::ControlPayloadTooLong(payload.len()));
        }
        self.check_can_send()?;
        self.queue_frame(opcode, false, payload);
        Ok(())
    }

    fn queue_close(&mut self, payload: Bytes) {
        self.close_sent = true;
        self.queue_frame(OpCode::Close, false, payload);
    }

    fn queue_frame(&mut self, opcode: OpCode, rsv1: bool, payload: Bytes) {
        let mask = self.mask_keys.as_mut().map(|next_key| next_key());
        let mut header = FrameHeader::new(opcode, payload.len() as u64, mask);
        header.rsv1 = rsv1;
        self.queued_bytes += header.encoded_len() + payload.len();
        if mask.is_some() || payload.len() <= INLINE_PAYLOAD_LIMIT {
            encode_frame(&mut self.out_tail, &header, &payload);
        } else {
            let (head, head_len) = header.encode();
            self.out_tail.extend_from_slice(&head[..head_len]);
            self.flush_tail();
            self.out_queue.push_back(payload);
        }
    }

    fn flush_tail(&mut self) {
        if !self.out_tail.is_empty() {
            self.out_queue.push_back(std::mem::take(&mut self.out_tail).freeze());
        }
    }

    // -----------------------------------------------------------------------
    // Time and state

    /// The next deadline, if any: call [`handle_timeout`](Self::handle_timeout) when it passes.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.timed_out || self.eof {
            return None;
        }
        if self.state() != WsState::Open {
            // Heartbeat and idle deadlines only matter while open: once the
            // close starts, only its own deadline remains (a past heartbeat
            // deadline must not keep firing).
            return self.close_deadline;
        }
        [self.next_ping, self.idle_deadline()].into_iter().flatten().min()
    }

    fn idle_deadline(&self) -> Option<Instant> {
        self.idle_timeout.map(|idle| self.last_input + idle)
    }

    /// Tells the engine the time. While open: past the ping deadline it sends
    /// a Ping (or closes with 1011 when the last one got no Pong), past the
    /// idle deadline it closes with 1001. Past the close deadline the
    /// transport should close.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state() == WsState::Open {
            if self.idle_deadline().is_some_and(|deadline| now >= deadline) {
                let _ = self.close(CloseCode::GOING_AWAY, "idle timeout", now);
                return;
            }
            if let (Some(interval), Some(due)) = (self.ping_interval, self.next_ping) {
                if now >= due {
                    self.next_ping = Some(now + interval);
                    if self.awaiting_pong {
                        let _ = self.close(CloseCode::INTERNAL_ERROR, "ping timeout", now);
                    } else {
                        // Like automatic pongs, the heartbeat bypasses the queue limit.
                        self.queue_frame(OpCode::Ping, false, Bytes::from_static(HEARTBEAT_PAYLOAD));
                        self.awaiting_pong = true;
                    }
                }
            }
            return;
        }
        if let Some(deadline) = self.close_deadline {
            if now >= deadline && !self.timed_out {
                self.timed_out = true;
                self.free_read_buffer();
                self.pending = None;
                self.out_queue = VecDeque::new();
                self.out_tail = BytesMut::new();
                self.queued_bytes = 0;
            }
        }
    }

    pub fn state(&self) -> WsState {
        if self.failed || self.eof || self.timed_out {
            return WsState::Closed;
        }
        match (self.close_sent, self.close_received) {
            (false, false) => WsState::Open,
            (true, false) => WsState::Closing,
            (_, true) if self.queued_bytes > 0 => WsState::CloseReceived,
            (_, true) => WsState::Closed,
        }
    }

    /// Whether the driver should now close the TCP connection (after writing
    /// what `poll_transmit` yields, when it can: on EOF or timeout, it need not).
    pub fn should_close_transport(&self) -> bool {
        if self.eof || self.timed_out {
            return true;
        }
        let finished = self.failed || (self.close_sent && self.close_received);
        if !finished || self.queued_bytes > 0 {
            return false;
        }
        match self.role {
            Role::Server => true,
            // A client waits for the server to close TCP first, unless it failed the connection.
            Role::Client => self.failed,
        }
    }

    /// Keeps drained buffers (the read buffer and the output coalescing
    /// buffer up to 16 KiB each, the event queue) instead of freeing them, so a busy connection does not
    /// allocate them anew for every message. Off by default: an idle
    /// connection then holds no buffer. A driver that turns it on calls
    /// [`release_buffers`](Self::release_buffers) before the connection
    /// waits for long (parking).
    pub fn set_retain_buffers(&mut self, retain: bool) {
        self.retain_buffers = retain;
    }

    /// Frees the buffers retention kept, when they hold nothing.
    pub fn release_buffers(&mut self) {
        if self.read_buf.is_empty() {
            self.free_read_buffer();
        }
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
        if self.out_tail.is_empty() {
            self.out_tail = BytesMut::new();
        }
    }

    /// Whether the connection is open with nothing in progress: no buffered
    /// input (partial frame or fragmented message), no undelivered event and
    /// nothing queued to send. Between two such moments the engine needs
    /// nothing but input or its [`poll_timeout`](Self::poll_timeout), so a
    /// driver may hold it without a task (parking).
    pub fn is_quiescent(&self) -> bool {
        self.state() == WsState::Open
            && self.read_buf.is_empty()
            && self.pending.is_none()
            && !self.assembler.in_progress()
            && self.events.is_empty()
            && self.queued_bytes == 0
    }

    fn note_read_capacity(&mut self) {
        let capacity = u32::try_from(self.read_buf.capacity()).unwrap_or(u32::MAX);
        self.read_high_water = self.read_high_water.max(capacity);
    }

    fn free_read_buffer(&mut self) {
        self.read_buf = BytesMut::new();
        self.read_high_water = 0;
    }

    /// Heap capacity held by the connection's own buffers (read, output,
    /// events; zlib state excluded), for memory tests and metrics.
    pub fn buffer_capacity(&self) -> usize {
        self.read_buf.capacity().max(self.read_high_water as usize)
            + self.out_tail.capacity()
            + self.out_queue.capacity() * std::mem::size_of::<Bytes>()
            + self.events.capacity() * std::mem::size_of::<Event>()
            + self.assembler.buffered_len()
    }

    /// Whether the connection owns zlib state (only with context takeover).
    pub fn holds_zlib_state(&self) -> bool {
        self.deflate
            .as_ref()
            .is_some_and(|d| d.compressor.holds_zlib_state() || d.decompressor.holds_zlib_state())
    }
}
