//! The WebSocket connection state machine (RFC 6455 §5-§7), sans I/O.
//!
//! Theory of operation. Everything that decides what happens on an open
//! WebSocket connection lives here; the other modules are pure helpers.
//!
//! *Input.* The driver appends received bytes ([`WsConnection::handle_input`],
//! or [`WsConnection::read_buffer`] + [`WsConnection::handle_read`]).
//! Frames are processed up to the first complete data message; the rest
//! waits in the buffer until [`WsConnection::poll_event`] has handed that
//! message over, so what the user sends in reply is queued before the
//! effects of any later frame (the Close reply, a 1002): every message
//! received before a close is delivered and answered first. On end of
//! file the complete frames still buffered are delivered too.
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
//! encode frames into a queue of `Bytes` that stays the engine's until
//! written: the driver offers it with [`WsConnection::poll_transmit`]
//! (several chunks for one vectored write) and reports what the transport
//! took with [`WsConnection::handle_written`]. Small frames are coalesced
//! into one buffer; large server payloads are queued as their own `Bytes`
//! without copying. The queue is bounded: a data message that does not fit
//! `max_queued_bytes` (an empty queue takes any one message) is refused
//! ([`QueueOverflow::Refuse`]: [`SendError::QueueFull`], and
//! [`WsConnection::wants_read`] pauses reading while the queue is full) or
//! closes the connection with 1008 `slow consumer`
//! ([`QueueOverflow::Close`]). Close frames, automatic pongs and heartbeat
//! pings bypass the limit (reading pauses while the queue stays over it
//! after one, so they are bounded by what one read brings). Queued output that makes no progress for
//! `write_timeout` ends the connection ([`WsEnd::WriteTimeout`]); its timer
//! starts when the output is first offered for writing (a send carries no
//! time).
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
//! *Transport close.* [`WsConnection::poll_close`] says when the
//! driver should close TCP: the server does so once the close handshake is
//! done (or the connection failed) and the queue is drained; the client waits
//! for the server to close first (EOF) unless it failed the connection. Every
//! close start arms one deadline (`close_timeout`, default 5 s):
//! [`WsConnection::poll_timeout`] reports it and
//! [`WsConnection::handle_timeout`] past it makes the transport close anyway.
//! Methods that start the close take `now`, except a close from `send`
//! (`Message::Close`, a slow consumer), whose deadline is armed by the next
//! call that brings the time; the engine never reads a clock.
//! [`WsConnection::handle_shutdown`] closes an open connection with 1001.
//! [`WsConnection::poll_close`] says how it ended ([`WsEnd`]).
//!
//! *Liveness* (optional, [`WsConfig::ping_interval`] and
//! [`WsConfig::idle_timeout`]), decided here on the same clock: every ping
//! interval the engine queues a Ping; if the previous Ping got no Pong by then,
//! it closes with 1011 instead. With no input at all for the idle timeout it
//! closes with 1001. Both deadlines count from construction (`now`) and are
//! reported by `poll_timeout` only while the connection is open, so once the
//! close starts only the close deadline remains.
//!
//! *Bytes on the wire.* [`WsConnection::traffic`] counts what was read and
//! sent, frame headers (the masking key included) apart from payloads (as
//! on the wire, compressed if deflated): a header as it is decoded, a
//! payload as it arrives, a frame to send as it is queued (exact once the
//! queue is written). [`WsConnection::count_handshake`] adds the HTTP
//! exchange that opened the connection.
//!
//! *Memory.* Buffers are released when drained (read buffer, output queue,
//! event queue), so an idle connection holds no heap buffers; with
//! no-context-takeover compression it holds no zlib state either. A driver
//! that parks idle connections may instead keep the read and output
//! buffers (up to 16 KiB each) and the event queue while the connection is busy
//! (`set_retain_buffers`) and free them before it waits (`release_buffers`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use super::close::{encode_close_payload, parse_close_payload, CloseCode, CloseFrame, MAX_CLOSE_REASON};
use super::deflate::{CompressionConfig, DeflateParams, MessageCompressor, MessageDecompressor};
use super::error::{ProtocolError, SendError};
use super::frame::{encode_frame, EncodedFrame, FrameHeader, OpCode, MAX_CONTROL_PAYLOAD};
use super::mask::apply_mask;
use super::message::{Message, MessageAssembler, Utf8Bytes};
use crate::output::{Output, Part};
use crate::wire::{Traffic, WireBytes};

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
    /// Bytes queued for writing (frames not yet written to the transport)
    /// beyond which a data message is not accepted: it is refused or closes
    /// the connection, as [`WsConfig::queue_overflow`] says. A message always
    /// fits into an empty queue, so one message may exceed the limit.
    pub max_queued_bytes: usize,
    /// What a send that does not fit does.
    pub queue_overflow: QueueOverflow,
    /// Queued output that makes no progress for this long ends the
    /// connection ([`WsEnd::WriteTimeout`]): the peer stopped reading.
    pub write_timeout: Duration,
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
            max_queued_bytes: 4 << 20,
            queue_overflow: QueueOverflow::Refuse,
            write_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(5),
            auto_pong: true,
            compression: CompressionConfig::default(),
            ping_interval: None,
            idle_timeout: None,
        }
    }
}

/// What a send does when the queue has no room for its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueOverflow {
    /// The send fails with [`SendError::QueueFull`] and the connection stays
    /// as it is; reading pauses while the queue is full
    /// ([`WsConnection::wants_read`]), so automatic pongs cannot grow it
    /// without bound either. For senders that wait for room (backpressure).
    #[default]
    Refuse,
    /// The connection closes with 1008 (policy violation, reason `slow
    /// consumer`) and the send fails with [`SendError::SlowConsumer`]:
    /// a peer that does not read costs bounded memory and nobody waits for
    /// it. Reading goes on while the queue is full (so the next message
    /// finds it full), unless automatic pongs went over the limit.
    Close,
}

/// The queue as it was when a connection's driver took it away to process
/// input (outside any lock): a sender checks a message against it with the
/// engine's own rule ([`QueueRoom::admit`]) and hands it over later
/// ([`WsConnection::send_admitted`]), so it never waits for the processing.
#[derive(Debug, Clone, Copy)]
pub struct QueueRoom {
    queued: usize,
    limit: usize,
    overflow: QueueOverflow,
    open: bool,
}

impl QueueRoom {
    /// Whether a data message with a payload of `len` bytes fits (counting
    /// it if so): `Err(QueueFull)` under [`QueueOverflow::Refuse`],
    /// `Err(SlowConsumer)` under [`QueueOverflow::Close`] (then close the
    /// connection with [`WsConnection::close_slow_consumer`] when it is
    /// back), `Err(Closed)` if it was closing.
    pub fn admit(&mut self, len: usize) -> Result<(), SendError> {
        self.admit_frame(frame_len(len))
    }

    /// [`admit`](Self::admit) for a frame of `len` bytes already encoded
    /// ([`EncodedFrame::len`]).
    pub fn admit_frame(&mut self, len: usize) -> Result<(), SendError> {
        if !self.open {
            return Err(SendError::Closed);
        }
        if room_for(self.queued, len, self.limit) {
            self.queued = self.queued.saturating_add(len);
            return Ok(());
        }
        let (queued, limit) = (self.queued, self.limit);
        Err(match self.overflow {
            QueueOverflow::Refuse => SendError::QueueFull { queued, limit },
            QueueOverflow::Close => {
                self.open = false;
                SendError::SlowConsumer { queued, limit }
            }
        })
    }
}

/// The queue limit's rule: a message of `len` bytes fits `queued` bytes
/// under `limit`; an empty queue takes any one message.
fn room_for(queued: usize, len: usize, limit: usize) -> bool {
    queued == 0 || queued.saturating_add(len) <= limit
}

/// What went through a connection, and how its close went (for the line
/// a driver logs when it ends). Counts saturate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WsStats {
    /// Bytes on the wire each way, frame headers apart from payloads
    /// (see [`WsConnection::traffic`]).
    pub traffic: Traffic,
    /// Data messages delivered.
    pub messages_in: u32,
    /// Data messages queued to send.
    pub messages_out: u32,
    /// The code of the Close we sent (0: none sent).
    pub close_sent: u16,
    /// The code of the peer's Close (0: none received; 1005: one without a code).
    pub close_received: u16,
    /// Who sent the first Close: `Some(true)` this end, `Some(false)` the peer.
    pub closed_here_first: Option<bool>,
}

/// How a WebSocket connection ended, once it has
/// ([`WsConnection::poll_close`]). Exactly one per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WsEnd {
    /// The close handshake completed (either side started it).
    Closed,
    /// The peer violated the protocol (the engine sent 1002, 1007 or 1009).
    ProtocolError,
    /// The transport ended (EOF, reset) before the close handshake did (1006).
    Abnormal,
    /// The peer did not answer our Close within the close timeout.
    CloseTimeout,
    /// Queued output made no progress for the write timeout.
    WriteTimeout,
}

impl WsEnd {
    /// Every end, in declaration order (`end as usize` indexes it).
    pub const ALL: [WsEnd; 5] = [
        WsEnd::Closed,
        WsEnd::ProtocolError,
        WsEnd::Abnormal,
        WsEnd::CloseTimeout,
        WsEnd::WriteTimeout,
    ];

    /// A short, stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            WsEnd::Closed => "closed",
            WsEnd::ProtocolError => "protocol_error",
            WsEnd::Abnormal => "abnormal",
            WsEnd::CloseTimeout => "close_timeout",
            WsEnd::WriteTimeout => "write_timeout",
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

/// How far [`WsConnection::process`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Stop once an event is waiting to be taken.
    Event,
    /// Process every complete frame (the transport ended).
    Drained,
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
    /// Limits and timers, shared by the connections of one endpoint.
    config: Arc<WsConfig>,
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

    /// Frames not yet written (small ones coalesced, large payloads and
    /// shared frames as their own `Bytes`).
    out: Output,
    /// When queued output last made progress, or was first offered for
    /// writing (`poll_transmit`); `None` while nothing is queued.
    write_since: Option<Instant>,
    /// An answer to input (an automatic control frame, or a reply under
    /// `Refuse`) was queued over the limit: reading pauses until the queue
    /// is below it again.
    answers_over_limit: bool,

    close_sent: bool,
    close_received: bool,
    failed: bool,
    eof: bool,
    timed_out: bool,
    write_timed_out: bool,
    close_deadline: Option<Instant>,
    /// A close started without the time at hand (a slow-consumer close
    /// from a send): its deadline is armed at the next call that brings `now`.
    close_timer_due: bool,

    next_ping: Option<Instant>,
    awaiting_pong: bool,
    last_input: Instant,
    /// When the connection opened (the handshake).
    opened_at: Instant,
    stats: Counts,
}

/// What [`WsConnection::stats`] reports, as the engine keeps it (the bytes
/// received as two counts; those sent are the output queue's).
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    /// Bytes read from the transport (and counted before it: the handshake).
    read: u64,
    /// Of `read`, frame payload bytes (as they arrived, still compressed).
    payload_in: u64,
    messages_in: u32,
    messages_out: u32,
    close_sent: u16,
    close_received: u16,
    closed_here_first: Option<bool>,
}

/// A data frame's size on the wire for a payload of `len` bytes (a
/// server's frame; a client's adds a 4-byte mask, which the limit ignores).
fn frame_len(len: usize) -> usize {
    FrameHeader::new(OpCode::Binary, len as u64, None).encoded_len() + len
}

/// A close frame's code and reason; no frame means 1000 with no reason.
fn close_parts(frame: Option<&CloseFrame>) -> (CloseCode, &str) {
    frame.map_or((CloseCode::NORMAL, ""), |f| (f.code, f.reason.as_str()))
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
            .field("queued_bytes", &self.out.len())
            .field("close_deadline", &self.close_deadline)
            .finish_non_exhaustive()
    }
}

impl WsConnection {
    /// A server-side connection opened at `now`; `deflate` from
    /// `handshake::Accepted::deflate`.
    pub fn server(config: impl Into<Arc<WsConfig>>, deflate: Option<DeflateParams>, now: Instant) -> Self {
        Self::new(Role::Server, config.into(), deflate, None, now)
    }

    /// A client-side connection opened at `now`; `deflate` from
    /// `handshake::ClientAccepted::deflate`. `mask_keys` must return a fresh
    /// unpredictable key per frame.
    pub fn client(
        config: impl Into<Arc<WsConfig>>,
        deflate: Option<DeflateParams>,
        mask_keys: impl FnMut() -> [u8; 4] + Send + 'static,
        now: Instant,
    ) -> Self {
        Self::new(Role::Client, config.into(), deflate, Some(Box::new(mask_keys)), now)
    }

    fn new(
        role: Role,
        config: Arc<WsConfig>,
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
            deflate,
            mask_keys,
            read_buf: BytesMut::new(),
            retain_buffers: false,
            read_high_water: 0,
            pending: None,
            assembler: MessageAssembler::new(),
            events: VecDeque::new(),
            out: Output::default(),
            write_since: None,
            answers_over_limit: false,
            close_sent: false,
            close_received: false,
            failed: false,
            eof: false,
            timed_out: false,
            write_timed_out: false,
            close_deadline: None,
            close_timer_due: false,
            next_ping: config.ping_interval.map(|interval| now + interval),
            awaiting_pong: false,
            last_input: now,
            opened_at: now,
            stats: Counts::default(),
            config,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// What went through the connection so far, and how its close went.
    pub fn stats(&self) -> WsStats {
        let s = self.stats;
        WsStats {
            traffic: self.traffic(),
            messages_in: s.messages_in,
            messages_out: s.messages_out,
            close_sent: s.close_sent,
            close_received: s.close_received,
            closed_here_first: s.closed_here_first,
        }
    }

    /// The bytes this connection read and sent so far ([`crate::wire`]):
    /// frame headers (the masking key included) are overhead, frame
    /// payloads (as on the wire: masked, compressed) payload.
    ///
    /// Received: a payload counts as its bytes arrive; a header once it is
    /// decoded; bytes read and never part of a frame (after the peer's
    /// Close, after a violation, a partial header at the end) as overhead
    /// once dropped; bytes still waiting in the read buffer once they are
    /// one or the other. Sent: counted as frames are queued, so once the
    /// queue is written (every connection that closes normally writes it
    /// all) the sum is exactly what the transport took; on one that ends
    /// abruptly (reset, write or close timeout) it includes what was still
    /// queued. With [`count_handshake`](Self::count_handshake), the HTTP
    /// exchange that opened the connection is included. A few additions
    /// per read and per frame; nothing per byte.
    pub fn traffic(&self) -> Traffic {
        // Payload bytes of the frame being received are counted as they
        // arrive, but stay in the buffer until the frame is complete.
        let counted = match &self.pending {
            Some(p) if !p.discard => p.processed,
            _ => 0,
        };
        let waiting = self.read_buf.len().saturating_sub(counted) as u64;
        let consumed = self.stats.read.saturating_sub(waiting);
        Traffic {
            received: WireBytes {
                overhead: consumed.saturating_sub(self.stats.payload_in),
                payload: self.stats.payload_in,
            },
            sent: self.out.sent(),
        }
    }

    /// Counts bytes that crossed this connection before the WebSocket
    /// began: the HTTP upgrade request and its `101` (and whatever else the
    /// connection carried before), so [`traffic`](Self::traffic) is the
    /// whole connection's. Call it before feeding any bytes.
    pub fn count_handshake(&mut self, traffic: Traffic) {
        self.stats.read = self.stats.read.saturating_add(traffic.received.total());
        self.stats.payload_in = self.stats.payload_in.saturating_add(traffic.received.payload);
        self.out.count_earlier(traffic.sent);
    }

    /// When the connection opened (the instant given to its constructor).
    pub fn opened_at(&self) -> Instant {
        self.opened_at
    }

    /// The limits and timers this connection runs with.
    pub fn config(&self) -> &WsConfig {
        &self.config
    }

    /// The negotiated permessage-deflate parameters, if any.
    pub fn deflate_params(&self) -> Option<DeflateParams> {
        self.deflate.as_ref().map(|d| d.params)
    }

    /// The largest window of a deflated shared frame this connection can
    /// take ([`EncodedFrame::deflated_text`]): a server connection that
    /// agreed to permessage-deflate without server context takeover (a
    /// message compressed on its own then decodes the same on every such
    /// connection). `None`: send it plain frames only.
    pub fn shared_deflate_window(&self) -> Option<u8> {
        let params = self.deflate_params()?;
        (self.role == Role::Server && params.server_no_context_takeover).then_some(params.server_max_window_bits)
    }

    /// Whether a shared frame may go on this connection.
    fn check_encoded(&self, frame: &EncodedFrame) -> Result<(), SendError> {
        if self.role == Role::Client {
            return Err(SendError::EncodedFrameOnClient);
        }
        match frame.deflate_window() {
            Some(window) if self.shared_deflate_window().is_none_or(|w| w < window) => Err(SendError::DeflateNotAgreed),
            _ => Ok(()),
        }
    }

    // -----------------------------------------------------------------------
    // Input

    /// Takes received bytes and processes frames up to the first complete
    /// data message (the rest waits in the buffer until that message is
    /// taken: see [`poll_event`](Self::poll_event)).
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        // Read, even if ignored: it crossed the transport.
        self.stats.read = self.stats.read.saturating_add(bytes.len() as u64);
        if self.input_closed() {
            return;
        }
        self.note_time(now);
        if !bytes.is_empty() {
            self.last_input = now;
        }
        self.read_buf.extend_from_slice(bytes);
        self.note_read_capacity();
        self.process(now, Until::Event);
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
    /// into directly; call [`handle_read`](Self::handle_read) after.
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

    /// Processes the `n` bytes the driver read into
    /// [`read_buffer`](Self::read_buffer) (a read that returned bytes).
    pub fn handle_read(&mut self, n: usize, now: Instant) {
        self.stats.read = self.stats.read.saturating_add(n as u64);
        if self.input_closed() {
            self.free_read_buffer();
            return;
        }
        self.note_time(now);
        self.last_input = now;
        self.process(now, Until::Event);
    }

    /// The transport reached end of file (or failed). Complete frames still
    /// buffered are processed first: what arrived before the end is
    /// delivered. Queued output is dropped: the transport closes now.
    pub fn handle_eof(&mut self, now: Instant) {
        if self.eof {
            return;
        }
        self.note_time(now);
        if !self.input_closed() {
            self.process(self.last_input, Until::Drained);
        }
        if !self.close_received && !self.failed && !self.transport_gone() {
            self.events.push_back(Event::AbnormalClosure);
        }
        self.eof = true;
        self.abandon_transport();
        self.assembler.discard();
    }

    /// The next event, in order. Input is processed up to one data message
    /// at a time: a frame after a message (a Close, a violation) is acted
    /// on only once the message has been taken, so a reply sent to it goes
    /// out before the close reply.
    // Small, called once or twice per message by every face: inlined, it
    // saved about 90 instructions per echoed message (callgrind).
    #[inline]
    pub fn poll_event(&mut self) -> Option<Event> {
        if !self.message_waiting() && !self.input_closed() && !self.read_buf.is_empty() {
            self.process(self.last_input, Until::Event);
        }
        let event = self.events.pop_front();
        if event.is_none() && self.events.capacity() > 0 && !self.retain_buffers {
            self.events = VecDeque::new();
        }
        event
    }

    /// A data message waits to be taken: frames after it (a Close above
    /// all) are processed only once it is, so a reply to it precedes their
    /// effects on the wire.
    fn message_waiting(&self) -> bool {
        matches!(
            self.events.back(),
            Some(Event::Message(Message::Text(_) | Message::Binary(_)))
        )
    }

    fn input_closed(&self) -> bool {
        self.failed || self.close_received || self.eof || self.timed_out
    }

    fn process(&mut self, now: Instant, until: Until) {
        while !self.input_closed() && (until == Until::Drained || !self.message_waiting()) {
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
                self.stats.payload_in = self.stats.payload_in.saturating_add(take as u64);
                if pending.processed < len {
                    break;
                }
                self.pending = None;
                continue;
            }
            let available = len.min(self.read_buf.len());
            if available > pending.processed {
                let from = pending.processed;
                pending.processed = available;
                // Payload as it arrives (a failed frame's too: it crossed the wire).
                self.stats.payload_in = self.stats.payload_in.saturating_add((available - from) as u64);
                let chunk = &mut self.read_buf[from..available];
                if let Some(key) = pending.header.mask {
                    apply_mask(chunk, key, from);
                }
                if pending.plain_text && !self.close_sent {
                    if let Err(error) = self.assembler.validate_text(chunk) {
                        self.fail(error, now);
                        break;
                    }
                }
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
        if header.payload_len > self.config.max_frame_size as u64 {
            return Err(ProtocolError::FrameTooLarge {
                len: header.payload_len,
                limit: self.config.max_frame_size,
            });
        }
        if header.opcode.is_data() && !self.close_sent {
            let in_progress = self.assembler.in_progress();
            match header.opcode {
                OpCode::Continuation if !in_progress => return Err(ProtocolError::UnexpectedContinuation),
                OpCode::Text | OpCode::Binary if in_progress => return Err(ProtocolError::ExpectedContinuation),
                _ => {}
            }
            if self.assembler.buffered_len() as u64 + header.payload_len > self.config.max_message_size as u64 {
                return Err(ProtocolError::MessageTooLarge {
                    limit: self.config.max_message_size,
                });
            }
        }
        Ok(())
    }

    fn handle_frame(&mut self, header: FrameHeader, payload: Bytes, now: Instant) {
        match header.opcode {
            OpCode::Ping => {
                if self.config.auto_pong && !self.close_sent {
                    self.queue_control_unasked(OpCode::Pong, payload.clone());
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
                    self.config.max_message_size,
                    self.deflate.as_mut().map(|d| &mut d.decompressor),
                ) {
                    Ok(Some(message)) => {
                        self.stats.messages_in = self.stats.messages_in.saturating_add(1);
                        self.events.push_back(Event::Message(message));
                    }
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
                self.stats.close_received = frame.as_ref().map_or(1005, |f| f.code.0);
                self.stats.closed_here_first.get_or_insert(false);
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
            self.close_deadline = Some(now + self.config.close_timeout);
        }
    }

    // -----------------------------------------------------------------------
    // Output

    /// Sends a Text, Binary, Ping or Pong message; `Message::Close` starts
    /// the close handshake like [`close_with`](Self::close_with) (its close
    /// timer is armed at the next call that brings the time). A data message
    /// that does not fit the queue limit is refused or closes the
    /// connection ([`QueueOverflow`]).
    pub fn send(&mut self, message: Message) -> Result<(), SendError> {
        match message {
            Message::Text(text) => self.send_data(OpCode::Text, text.into_bytes()),
            Message::Binary(data) => self.send_data(OpCode::Binary, data),
            Message::Ping(payload) => self.send_control(OpCode::Ping, payload),
            Message::Pong(payload) => self.send_control(OpCode::Pong, payload),
            Message::Close(frame) => {
                let (code, reason) = close_parts(frame.as_ref());
                self.start_close(code, reason)?;
                self.close_timer_due = true;
                Ok(())
            }
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

    /// Sends a frame encoded once for many connections (server only; never
    /// compressed). Subject to the queue limit like any data message.
    pub fn send_encoded(&mut self, frame: &EncodedFrame) -> Result<(), SendError> {
        self.check_encoded(frame)?;
        self.check_open()?;
        self.check_room(frame.len())?;
        self.stats.messages_out = self.stats.messages_out.saturating_add(1);
        self.out.push_shared(
            frame.as_bytes().clone(),
            Part::Frame {
                header: frame.header_len(),
            },
        );
        Ok(())
    }

    /// Starts the close handshake with `code` (not 1005, 1006, 1015 or an
    /// unregistered code) and a reason of at most 123 bytes. Nothing can be
    /// sent afterwards; data frames still arriving are dropped. Bypasses the
    /// queue limit.
    pub fn close(&mut self, code: CloseCode, reason: &str, now: Instant) -> Result<(), SendError> {
        self.start_close(code, reason)?;
        self.arm_close_timer(now);
        Ok(())
    }

    /// [`close`](Self::close) with a peer-style frame: no frame means 1000
    /// (normal closure) with no reason.
    pub fn close_with(&mut self, frame: Option<&CloseFrame>, now: Instant) -> Result<(), SendError> {
        let (code, reason) = close_parts(frame);
        self.close(code, reason, now)
    }

    /// The server (or client) is going away: an open connection closes with
    /// 1001; one already closing finishes its handshake.
    pub fn handle_shutdown(&mut self, now: Instant) {
        if self.state() == WsState::Open {
            let reason = match self.role {
                Role::Server => "server shutting down",
                Role::Client => "going away",
            };
            let _ = self.close(CloseCode::GOING_AWAY, reason, now);
        }
    }

    fn start_close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
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
        Ok(())
    }

    /// The queued output, in order, for one vectored write; `now` starts
    /// the write timer if this output has not been offered before. Report
    /// what was written with [`handle_written`](Self::handle_written).
    /// A driver offers queued output whenever [`has_output`](Self::has_output).
    pub fn poll_transmit(&mut self, now: Instant) -> impl Iterator<Item = &[u8]> + '_ {
        self.note_time(now);
        self.out.bufs()
    }

    /// `n` bytes of [`poll_transmit`](Self::poll_transmit)'s output were written at `now`.
    pub fn handle_written(&mut self, n: usize, now: Instant) {
        debug_assert!(n <= self.out.len(), "wrote more than was queued");
        if n == 0 {
            return;
        }
        self.out.consume(n);
        self.write_since = Some(now);
        if self.out.len() < self.config.max_queued_bytes {
            self.answers_over_limit = false;
        }
        if self.out.is_empty() {
            self.output_drained();
        }
    }

    /// Takes all queued output as one buffer, counted as written at `now`
    /// (for tests and simple drivers).
    pub fn take_output(&mut self, now: Instant) -> Bytes {
        let mut all = BytesMut::with_capacity(self.out.len());
        for chunk in self.poll_transmit(now) {
            all.extend_from_slice(chunk);
        }
        self.handle_written(all.len(), now);
        all.freeze()
    }

    fn output_drained(&mut self) {
        self.write_since = None;
        if !(self.retain_buffers && self.out.capacity() <= RETAINED_LIMIT) {
            self.out.release();
        }
    }

    /// Whether output is queued (to be offered with `poll_transmit`).
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.out.len()
    }

    /// Whether a data message with a payload of `len` bytes would be
    /// accepted now (the connection is open and the queue has room for
    /// it). Senders that wait for room (backpressure) wait for this.
    pub fn can_send(&self, len: usize) -> bool {
        !self.send_closed() && self.has_room(frame_len(len))
    }

    /// Whether the driver should read now: until the transport ends (after
    /// the peer's Close, reads only discard, and tell a client when the
    /// server closed TCP), except while the queue is at its limit under
    /// [`QueueOverflow::Refuse`], or under either policy once an answer
    /// (automatic control frame, reply) went over it, or while our Close is
    /// still unwritten: a peer that sends without reading is then held back
    /// by TCP (and the close, write or idle timer ends it).
    pub fn wants_read(&self) -> bool {
        let full = self.out.len() >= self.config.max_queued_bytes;
        let held_back = full && (self.config.queue_overflow == QueueOverflow::Refuse || self.answers_over_limit);
        // Our Close still waits to be written: the peer has not read it, so
        // what it sends meanwhile would only be discarded.
        let close_unsent = self.close_sent && !self.out.is_empty();
        !self.transport_gone() && !held_back && !close_unsent
    }

    fn send_closed(&self) -> bool {
        self.close_sent || self.failed || self.eof || self.timed_out || self.write_timed_out
    }

    fn check_open(&self) -> Result<(), SendError> {
        if self.send_closed() {
            Err(SendError::Closed)
        } else {
            Ok(())
        }
    }

    /// A message always fits an empty queue.
    fn has_room(&self, len: usize) -> bool {
        room_for(self.out.len(), len, self.config.max_queued_bytes)
    }

    /// The queue as it is now, for senders to check messages against while
    /// the connection is away (see [`QueueRoom`]).
    pub fn queue_room(&self) -> QueueRoom {
        QueueRoom {
            queued: self.out.len(),
            limit: self.config.max_queued_bytes,
            overflow: self.config.queue_overflow,
            open: !self.send_closed(),
        }
    }

    /// Queues a message that [`QueueRoom::admit`] admitted: the limit is not
    /// checked again (answers queued meanwhile may have used some of the
    /// room). Fails only if the connection closed meanwhile.
    pub fn send_admitted(&mut self, message: Message) -> Result<(), SendError> {
        self.check_open()?;
        match message {
            Message::Text(text) => self.encode_data(OpCode::Text, text.into_bytes()),
            Message::Binary(data) => self.encode_data(OpCode::Binary, data),
            Message::Ping(payload) | Message::Pong(payload) if payload.len() > MAX_CONTROL_PAYLOAD => {
                return Err(SendError::ControlPayloadTooLong(payload.len()))
            }
            Message::Ping(payload) => self.queue_frame(OpCode::Ping, false, payload),
            Message::Pong(payload) => self.queue_frame(OpCode::Pong, false, payload),
            Message::Close(frame) => return self.send(Message::Close(frame)),
        }
        Ok(())
    }

    /// Queues a shared frame that [`QueueRoom::admit`] admitted.
    pub fn send_encoded_admitted(&mut self, frame: &EncodedFrame) -> Result<(), SendError> {
        self.check_encoded(frame)?;
        self.check_open()?;
        self.stats.messages_out = self.stats.messages_out.saturating_add(1);
        self.out.push_shared(
            frame.as_bytes().clone(),
            Part::Frame {
                header: frame.header_len(),
            },
        );
        Ok(())
    }

    /// Refuses, or closes the slow consumer, when `len` more bytes do not fit.
    fn check_room(&mut self, len: usize) -> Result<(), SendError> {
        if self.has_room(len) {
            return Ok(());
        }
        let (queued, limit) = (self.out.len(), self.config.max_queued_bytes);
        match self.config.queue_overflow {
            QueueOverflow::Refuse => Err(SendError::QueueFull { queued, limit }),
            QueueOverflow::Close => {
                self.close_slow_consumer();
                Err(SendError::SlowConsumer { queued, limit })
            }
        }
    }

    /// Closes with 1008 `slow consumer` (bypassing the queue limit): what a
    /// full queue does under [`QueueOverflow::Close`].
    pub fn close_slow_consumer(&mut self) {
        self.close_policy("slow consumer");
    }

    /// Closes with 1008 (policy violation) and `reason`, as
    /// [`close_slow_consumer`](Self::close_slow_consumer) does: for what the
    /// application refuses (e.g. a token that expired).
    pub fn close_policy(&mut self, reason: &str) {
        if self.start_close(CloseCode::POLICY_VIOLATION, reason).is_ok() {
            self.close_timer_due = true;
        }
    }

    /// Queues a reply to a message just received (what a callback-served
    /// endpoint answers). Under [`QueueOverflow::Close`] it is subject to
    /// the limit like any send (a peer that asks without reading the
    /// answers is a slow consumer); under [`QueueOverflow::Refuse`] it is
    /// never refused: like an automatic Pong it bypasses the limit, and
    /// reading pauses while the queue stays over it, so the peer's next
    /// message waits in TCP instead.
    pub fn send_reply(&mut self, message: Message) -> Result<(), SendError> {
        if self.config.queue_overflow == QueueOverflow::Close {
            return self.send(message);
        }
        let (opcode, payload) = match message {
            Message::Text(text) => (OpCode::Text, text.into_bytes()),
            Message::Binary(data) => (OpCode::Binary, data),
            Message::Ping(payload) => (OpCode::Ping, payload),
            Message::Pong(payload) => (OpCode::Pong, payload),
            Message::Close(_) => return self.send(message),
        };
        if opcode.is_control() && payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(SendError::ControlPayloadTooLong(payload.len()));
        }
        self.check_open()?;
        if opcode.is_control() {
            self.queue_frame(opcode, false, payload);
        } else {
            self.encode_data(opcode, payload);
        }
        self.note_answer_queued();
        Ok(())
    }

    fn send_data(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), SendError> {
        self.check_open()?;
        self.check_room(frame_len(payload.len()))?;
        self.encode_data(opcode, payload);
        Ok(())
    }

    /// Queues a message's frame, compressed when negotiated and worth it.
    fn encode_data(&mut self, opcode: OpCode, payload: Bytes) {
        self.stats.messages_out = self.stats.messages_out.saturating_add(1);
        match self.deflate.as_mut() {
            Some(deflate) if payload.len() >= self.config.compression.min_message_size => {
                let compressed = Bytes::from(deflate.compressor.compress(&payload));
                self.queue_frame(opcode, true, compressed);
            }
            _ => self.queue_frame(opcode, false, payload),
        }
    }

    fn send_control(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), SendError> {
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(SendError::ControlPayloadTooLong(payload.len()));
        }
        self.check_open()?;
        self.check_room(frame_len(payload.len()))?;
        self.queue_frame(opcode, false, payload);
        Ok(())
    }

    /// A control frame nobody asked to send (an automatic Pong, a heartbeat
    /// Ping): it bypasses the limit (a Pong behind a large reply is not a
    /// slow consumer's fault), and reading pauses while the queue stays
    /// over it, which bounds such frames by what one read brings.
    fn queue_control_unasked(&mut self, opcode: OpCode, payload: Bytes) {
        self.queue_frame(opcode, false, payload);
        self.note_answer_queued();
    }

    fn note_answer_queued(&mut self) {
        if self.out.len() >= self.config.max_queued_bytes {
            self.answers_over_limit = true;
        }
    }

    fn queue_close(&mut self, payload: Bytes) {
        self.close_sent = true;
        self.stats.close_sent = match payload[..] {
            [hi, lo, ..] => u16::from_be_bytes([hi, lo]),
            _ => 1005,
        };
        self.stats.closed_here_first.get_or_insert(true);
        self.queue_frame(OpCode::Close, false, payload);
    }

    fn queue_frame(&mut self, opcode: OpCode, rsv1: bool, payload: Bytes) {
        let mask = self.mask_keys.as_mut().map(|next_key| next_key());
        let mut header = FrameHeader::new(opcode, payload.len() as u64, mask);
        header.rsv1 = rsv1;
        if mask.is_some() || payload.len() <= INLINE_PAYLOAD_LIMIT {
            let tail = self.out.tail_mut();
            let before = tail.len();
            encode_frame(tail, &header, &payload);
            let n = tail.len() - before;
            self.out.wrote_tail(
                n,
                Part::Frame {
                    header: n - payload.len(),
                },
            );
        } else {
            let (head, head_len) = header.encode();
            self.out.push_slice(&head[..head_len], Part::Overhead);
            self.out.push_shared(payload, Part::Payload);
        }
    }

    // -----------------------------------------------------------------------
    // Time and state

    /// The next deadline, if any: call [`handle_timeout`](Self::handle_timeout) when it passes.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.transport_gone() {
            return None;
        }
        let write = self.write_deadline();
        if self.state() != WsState::Open {
            // Heartbeat and idle deadlines only matter while open: once the
            // close starts, only its own deadline remains (a past heartbeat
            // deadline must not keep firing).
            return [self.close_deadline, write].into_iter().flatten().min();
        }
        [self.next_ping, self.idle_deadline(), write]
            .into_iter()
            .flatten()
            .min()
    }

    fn write_deadline(&self) -> Option<Instant> {
        self.write_since.map(|since| since + self.config.write_timeout)
    }

    /// The transport is over for the engine: nothing more is read, written or timed.
    fn transport_gone(&self) -> bool {
        self.eof || self.timed_out || self.write_timed_out
    }

    /// Arms what waited for the time: the write timer of output not yet
    /// offered, the close timer of a close started without `now`.
    fn note_time(&mut self, now: Instant) {
        if self.write_since.is_none() && !self.out.is_empty() {
            self.write_since = Some(now);
        }
        if self.close_timer_due {
            self.close_timer_due = false;
            self.arm_close_timer(now);
        }
    }

    /// Drops what can no longer be delivered: the transport is over.
    fn abandon_transport(&mut self) {
        self.free_read_buffer();
        self.pending = None;
        self.out.release();
        self.write_since = None;
    }

    fn idle_deadline(&self) -> Option<Instant> {
        self.config.idle_timeout.map(|idle| self.last_input + idle)
    }

    /// Tells the engine the time. While open: past the ping deadline it sends
    /// a Ping (or closes with 1011 when the last one got no Pong), past the
    /// idle deadline it closes with 1001. Past the close deadline the
    /// transport should close.
    /// Past the write deadline (queued output made no progress for the
    /// write timeout) the transport should close, in any state.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.transport_gone() {
            return;
        }
        self.note_time(now);
        if self.write_deadline().is_some_and(|deadline| now >= deadline) {
            self.write_timed_out = true;
            self.abandon_transport();
            return;
        }
        if self.state() == WsState::Open {
            if self.idle_deadline().is_some_and(|deadline| now >= deadline) {
                let _ = self.close(CloseCode::GOING_AWAY, "idle timeout", now);
                return;
            }
            if let (Some(interval), Some(due)) = (self.config.ping_interval, self.next_ping) {
                if now >= due {
                    self.next_ping = Some(now + interval);
                    if self.awaiting_pong {
                        let _ = self.close(CloseCode::INTERNAL_ERROR, "ping timeout", now);
                    } else {
                        self.queue_control_unasked(OpCode::Ping, Bytes::from_static(HEARTBEAT_PAYLOAD));
                        self.awaiting_pong = true;
                    }
                }
            }
            return;
        }
        if self.close_deadline.is_some_and(|deadline| now >= deadline) {
            self.timed_out = true;
            self.abandon_transport();
        }
    }

    pub fn state(&self) -> WsState {
        if self.failed || self.transport_gone() {
            return WsState::Closed;
        }
        match (self.close_sent, self.close_received) {
            (false, false) => WsState::Open,
            (true, false) => WsState::Closing,
            (_, true) if !self.out.is_empty() => WsState::CloseReceived,
            (_, true) => WsState::Closed,
        }
    }

    /// Whether the driver should now close the TCP connection (after writing
    /// what `poll_transmit` yields, when it can: on EOF or timeout, it need not).
    fn should_close_transport(&self) -> bool {
        if self.transport_gone() {
            return true;
        }
        let finished = self.failed || (self.close_sent && self.close_received);
        if !finished || !self.out.is_empty() {
            return false;
        }
        match self.role {
            Role::Server => true,
            // A client waits for the server to close TCP first, unless it failed the connection.
            Role::Client => self.failed,
        }
    }

    /// How the connection ended, once the driver should close the transport
    /// (the server closes TCP first once the close handshake is done or the
    /// connection failed, and the queue is written; the client waits for
    /// the server's close unless it failed the connection; on end of file or
    /// a timeout at once). `None` while it goes on.
    #[must_use]
    pub fn poll_close(&self) -> Option<WsEnd> {
        if !self.should_close_transport() {
            return None;
        }
        Some(if self.write_timed_out {
            WsEnd::WriteTimeout
        } else if self.failed {
            WsEnd::ProtocolError
        } else if self.close_sent && self.close_received {
            WsEnd::Closed
        } else if self.timed_out {
            WsEnd::CloseTimeout
        } else {
            WsEnd::Abnormal
        })
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
        if self.out.is_empty() {
            self.out.release();
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
            && self.out.is_empty()
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
            + self.out.capacity()
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
