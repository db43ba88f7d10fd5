//! tether-proto: the sans-I/O protocol engines of tether.
//!
//! Theory of operation: this crate decides everything that happens on a
//! persistent connection and nothing else. [`h1`] is the server side of an
//! HTTP/1.1 connection (RFC 9112/9110): parsing, body framing, the
//! keep-alive policy, pipelining and the one cause every connection closes
//! for. [`ws`] is a WebSocket connection (RFC 6455, RFC 7692): handshake
//! (both sides), frames, masking, UTF-8, message assembly, close handshake,
//! permessage-deflate, the output queue's limit, and every timer. [`wire`]
//! is how both count the bytes they read and write (overhead and payload).
//!
//! It never touches a socket, a runtime or a clock; any runtime can drive
//! it (the `tether` crate drives it on tokio), and every rule is tested byte
//! by byte on virtual time.
//!
//! # The call contract (both engines)
//!
//! What comes in is `handle_*`, with the time it happened:
//!
//! | call | when |
//! |---|---|
//! | `handle_input(bytes, now)` | bytes were read (or `read_buffer()` then `handle_read(.., now)` to read straight into the engine's buffer) |
//! | `handle_eof(now)` | the peer closed its side, or the transport failed |
//! | `handle_written(n, now)` | `n` bytes of `poll_transmit`'s output were written |
//! | `handle_timeout(now)` | the deadline from `poll_timeout` passed (calling it early is harmless) |
//! | `handle_shutdown(now)` | the server is going away (HTTP: drain and close; WebSocket: close 1001) |
//!
//! What goes out is `poll_*`, asked after every input:
//!
//! | call | gives |
//! |---|---|
//! | `poll_event()` | the next thing for the application (a request, a message), until `None` |
//! | `poll_transmit(now)` | the bytes to write, in order, for one vectored write (offered whenever `has_output()`; the first offer starts the write timer) |
//! | `poll_timeout()` | when to call `handle_timeout` next (`None`: nothing is timed) |
//! | `poll_close()` | `Some(cause)` once the driver should close the transport: exactly one per connection |
//! | `wants_read()` | whether to read now (not while output waits for a peer that does not read) |
//!
//! The application's own actions are plain methods (`send_response`,
//! `send_body`, `send`, `close`, ...). A driver's loop: feed what arrived,
//! take every event, write what `poll_transmit` offers, stop when
//! `poll_close` says so, then wait for readability (if `wants_read`),
//! writability (if `has_output`) or `poll_timeout`, whichever comes first.
//!
//! # Deliberate exceptions
//!
//! Two per-thread caches live here, not in a driver, because they are
//! parsing and compression details a driver should not see: spare header
//! maps and a field-offset scratch list for request heads (`h1::parse`,
//! tested by `recycled_header_maps_are_reused_only_when_they_fit`), and
//! zlib streams for no-context-takeover messages (`ws::deflate`, reset
//! before each use, tested by the RFC 7692 examples). Neither holds state
//! from one connection that another could observe.
//!
//! `unsafe` is denied but in two marked places: header values httparse
//! already checked (`h1::parse::header_value`) and text already validated
//! as UTF-8 (`ws::message::Utf8Bytes`), each with its reason and a test.

#![deny(unsafe_code)]

pub mod h1;
mod output;
pub mod wire;
pub mod ws;
