//! The WebSocket protocol engine: RFC 6455 with RFC 7692 permessage-deflate.
//!
//! # Theory of operation
//!
//! **What it owns.** Everything that decides what happens on a WebSocket
//! connection: whether an upgrade request is acceptable and what the 101
//! answer carries (`handshake`), which extension parameters are agreed
//! (`deflate`), what bytes are a frame (`frame`), unmasking (`mask`), UTF-8
//! validity across fragments (`utf8`), how fragments become messages
//! (`message`), close codes (`close`), and the state machine tying them
//! together, including which close code answers which violation and when the
//! transport must close (`connection`).
//!
//! **What it never does.** It never touches a socket, a runtime, a clock or a
//! random number generator. Bytes come in through
//! [`WsConnection::feed`], events go out through [`WsConnection::poll_event`],
//! bytes to write through [`WsConnection::poll_transmit`], time comes in as
//! `Instant` arguments and deadlines go out from [`WsConnection::poll_timeout`].
//! Client masking keys and handshake nonces are supplied by the caller.
//!
//! **States** ([`WsState`]): `Open` → (`close()` or a peer violation) →
//! `Closing` → (peer's Close) → `Closed`; or `Open` → (peer's Close, echo
//! queued) → `CloseReceived` → (echo taken for writing) → `Closed`; EOF or the
//! close deadline end in `Closed` from anywhere. The server closes TCP first
//! after the handshake; the client waits for it, bounded by the deadline.
//!
//! **A driver's loop**: after the handshake (`handshake::accept` on the
//! server, `ClientHandshake` on the client), create the connection with the
//! negotiated [`DeflateParams`], feed any bytes read past the HTTP head, then
//! loop: write `poll_transmit()` chunks; stop if `should_close_transport()`;
//! wait for readable / a user send / `poll_timeout()`; `feed(bytes, now)` or
//! `handle_eof()` or `handle_timeout(now)`; dispatch `poll_event()`s.

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
pub use connection::{Event, MaskKeySource, QueueOverflow, Role, WsConfig, WsConnection, WsEnd, WsState};
pub use deflate::{CompressionConfig, CompressionMode, DeflateParams};
pub use error::{ProtocolError, SendError};
pub use frame::{EncodedFrame, OpCode};
pub use handshake::{
    accept, accept_head, check_origin, Accepted, ClientAccepted, ClientHandshake, ClientHandshakeError,
    HandshakeConfig, HandshakeError,
};
pub use message::{Message, Utf8Bytes};
