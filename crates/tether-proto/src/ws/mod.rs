//! The WebSocket protocol engine: RFC 6455 with RFC 7692 permessage-deflate.
//!
//! # Theory of operation
//!
//! **What it owns.** Everything that decides what happens on a WebSocket
//! connection: whether an upgrade request is acceptable and what the 101
//! answer carries, and on the client whether the server's answer is
//! (`handshake`), which extension parameters are agreed (`deflate`), what
//! bytes are a frame (`frame`), unmasking (`mask`), UTF-8 validity across
//! fragments (`utf8`), how fragments become messages (`message`), close
//! codes (`close`), and the state machine tying them together
//! (`connection`): which close code answers which violation, the order in
//! which frames that arrived together take effect, the output queue's limit
//! and what overflowing it does (refuse, or close a slow consumer with
//! 1008), when reading should pause, the write, close, heartbeat and idle
//! timers, shutdown's 1001, and when the transport must close and why
//! ([`WsEnd`]).
//!
//! **What it never does.** It never touches a socket, a runtime, a clock or a
//! random number generator. It speaks the crate's call contract: bytes come
//! in through [`WsConnection::handle_input`], events go out through
//! [`WsConnection::poll_event`], bytes to write through
//! [`WsConnection::poll_transmit`] (and come back as
//! [`WsConnection::handle_written`]), time comes in as `Instant` arguments
//! and deadlines go out from [`WsConnection::poll_timeout`]. Client masking
//! keys and handshake nonces are supplied by the caller.
//!
//! **States** ([`WsState`]): `Open` → (`close()` or a peer violation) →
//! `Closing` → (peer's Close) → `Closed`; or `Open` → (peer's Close, echo
//! queued) → `CloseReceived` → (echo written) → `Closed`; EOF, the close
//! deadline or the write deadline end in `Closed` from anywhere. The server
//! closes TCP first after the handshake; the client waits for it, bounded
//! by the deadline.
//!
//! **A driver's loop**: after the handshake (`handshake::accept_head` on the
//! server, [`ClientHandshake::handle_response`] on the client), create the
//! connection with the negotiated [`DeflateParams`], feed any bytes read
//! past the HTTP head, then loop: take `poll_event()`s; write what
//! `poll_transmit(now)` offers and report it with `handle_written`; stop
//! once `poll_close()` says how it ended; wait for readable (if
//! `wants_read()`) / writable / a user send / `poll_timeout()`; then
//! `handle_input(bytes, now)`, `handle_eof(now)` or `handle_timeout(now)`.

pub mod close;
pub mod connection;
pub mod deflate;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod utf8;

#[cfg(test)]
mod connection_tests;

pub use close::{CloseCode, CloseFrame};
pub use connection::{
    Event, MaskKeySource, QueueOverflow, QueueRoom, Role, WsConfig, WsConnection, WsEnd, WsState, WsStats,
};
pub use deflate::{CompressionConfig, CompressionMode, DeflateParams};
pub use error::{ProtocolError, SendError};
pub use frame::{EncodedFrame, OpCode};
pub use handshake::{
    accept, accept_head, check_origin, Accepted, ClientAccepted, ClientHandshake, ClientHandshakeError,
    HandshakeConfig, HandshakeError,
};
pub use message::{Message, Utf8Bytes};
