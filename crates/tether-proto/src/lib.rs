//! tether-proto: the sans-I/O protocol engines of tether.
//!
//! Theory of operation: this crate decides everything that happens on a
//! persistent connection and nothing else. [`h1`] is the server side of an
//! HTTP/1.1 connection (RFC 9112/9110): parsing, body framing, the
//! keep-alive policy, pipelining and the one cause every connection closes
//! for. [`ws`] is a WebSocket connection (RFC 6455, RFC 7692): handshake,
//! frames, masking, UTF-8, message assembly, close handshake and
//! permessage-deflate.
//!
//! It never touches a socket, a runtime or a clock: bytes come in through
//! `feed`, time comes in as an `Instant` argument (`handle_timeout(now)`),
//! and what must happen goes out as values: events (`poll_event`), bytes to
//! write, the next deadline (`poll_timeout`) and close causes. So every rule
//! is tested byte by byte on virtual time, and any runtime can drive it
//! (the `tether` crate drives it on tokio).

pub mod h1;
mod output;
pub mod ws;
