//! Typed errors of the WebSocket engine.
//!
//! Theory of operation: [`ProtocolError`] is something the *peer* did wrong on
//! an open connection; each maps to the close code the engine answers with
//! ([`ProtocolError::close_code`]). [`SendError`] is something the *local user*
//! asked for that cannot be done; it never changes the connection state.
//! Handshake errors live in `handshake.rs` because they carry HTTP responses.

use super::close::CloseCode;

/// A violation of RFC 6455 / RFC 7692 by the peer. The engine fails the
/// connection: it queues a Close frame with [`close_code`](Self::close_code)
/// (unless it already sent one) and processes no further input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    #[error("control frame payload over 125 bytes")]
    ControlFrameTooLong,
    #[error("64-bit payload length with the most significant bit set")]
    PayloadLengthMsbSet,
    #[error("unmasked frame from a client")]
    UnmaskedClientFrame,
    #[error("masked frame from a server")]
    MaskedServerFrame,
    #[error("reserved bits set without a negotiated extension")]
    ReservedBitsSet,
    #[error("RSV1 on a control or continuation frame")]
    Rsv1NotOnFirstDataFrame,
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    #[error("new data frame inside a fragmented message")]
    ExpectedContinuation,
    #[error("frame payload of {len} bytes over the limit of {limit}")]
    FrameTooLarge { len: u64, limit: usize },
    #[error("message over the limit of {limit} bytes")]
    MessageTooLarge { limit: usize },
    #[error("invalid UTF-8 in a text message")]
    InvalidUtf8,
    #[error("close frame with a one-byte payload")]
    OneByteClosePayload,
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    #[error("close reason is not UTF-8")]
    InvalidCloseReason,
    #[error("invalid compressed data")]
    InvalidCompressedData,
}

impl ProtocolError {
    /// The close code the engine sends for this violation.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::FrameTooLarge { .. } | ProtocolError::MessageTooLarge { .. } => CloseCode::MESSAGE_TOO_BIG,
            ProtocolError::InvalidUtf8 | ProtocolError::InvalidCloseReason | ProtocolError::InvalidCompressedData => {
                CloseCode::INVALID_PAYLOAD
            }
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// Why a local `send`/`close` call was refused. The connection is unchanged,
/// except after [`SendError::SlowConsumer`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// A Close frame was already sent (or the connection failed): nothing more may be sent.
    #[error("the connection is closing or closed")]
    Closed,
    /// The message does not fit: `queued` bytes wait to be written and the
    /// limit is `limit` ([`QueueOverflow::Refuse`](super::QueueOverflow)):
    /// wait for [`WsConnection::can_send`](super::WsConnection::can_send).
    #[error("output queue full ({queued} bytes queued, limit {limit})")]
    QueueFull { queued: usize, limit: usize },
    /// The message did not fit and the connection is closing with 1008
    /// (slow consumer) ([`QueueOverflow::Close`](super::QueueOverflow)).
    #[error("slow consumer: output queue full ({queued} bytes queued, limit {limit}); closing with 1008")]
    SlowConsumer { queued: usize, limit: usize },
    #[error("control frame payload of {0} bytes over 125")]
    ControlPayloadTooLong(usize),
    /// 1005, 1006, 1015 and unregistered codes may not be sent.
    #[error("close code {0} may not be sent")]
    InvalidCloseCode(u16),
    #[error("close reason of {0} bytes over 123")]
    CloseReasonTooLong(usize),
    /// Pre-encoded frames are unmasked server frames; a client must mask.
    #[error("pre-encoded frames can only be sent by a server")]
    EncodedFrameOnClient,
    /// A deflated shared frame on a connection that did not agree to
    /// permessage-deflate without server context takeover (or with a
    /// smaller window): send the plain frame there.
    #[error("a deflated shared frame needs permessage-deflate without server context takeover")]
    DeflateNotAgreed,
}
