//! WebSockets on tokio: server upgrade, the [`WebSocket`] handle with
//! independent sender and receiver halves, callback-served endpoints
//! ([`WsService`], [`upgrade_service`]: see `service`, whose idle
//! connections park without a task), and frame-once broadcast.
//!
//! Theory of operation: after the HTTP handshake a connection is one
//! `tether_proto::ws::WsConnection`, where every protocol decision is
//! made (framing, masking, UTF-8, close codes, deflate, the queue limit and
//! what overflowing it does, the write, close, heartbeat and idle timers,
//! shutdown's 1001), driven by one driver core (`driver::WsDriver`: the
//! engine, the transport, the server's stop signal, one timer) under two
//! faces:
//!
//! * the handle: the driver behind a lock shared by the [`WsSender`] and
//!   [`WsReceiver`] halves. There is no task and no channel per connection.
//!   Receiving drives the connection ([`WsReceiver::recv`]: reads, writes
//!   queued output, fires the engine's timers, closes TCP first on the
//!   server side once the close handshake is complete); keep a task
//!   receiving for as long as the connection should live. Sending queues
//!   frames in the engine and wakes the receiving task (or, with nobody
//!   receiving, writes itself): `send` waits while the queue has no room
//!   (`WsConfig::max_queued_bytes`), `try_send` and [`Broadcast`] report a
//!   full queue or, with `QueueOverflow::Close`, close the connection with
//!   1008. When the last handle is dropped the close handshake is finished
//!   in the background, bounded by the engine's close and write timeouts;
//! * the callback service: one task owns the driver and the service by
//!   value and parks when idle (see `service`).
//!
//! Both share their I/O steps: `incoming` reads (through a per-thread
//! scratch buffer, or straight into the engine's buffer for the rest of a
//! large frame) and the driver writes the engine's queue with one vectored
//! write at a time. On server shutdown the connection closes with 1001 and
//! counts as open until its close handshake ends (or the server's forced
//! stop drops it).
//!
//! Bytes on the wire: each engine counts its connection's, frame headers
//! apart from payloads, the HTTP phase of a server-side connection
//! included ([`WebSocket::traffic`], [`Replies::traffic`]); the driver adds
//! the WebSocket part to [`WS_TOTALS`] when the connection parks or ends,
//! at most once a second while it is busy, and at once for what a parked
//! connection reads or is sent without a task (see [`crate::traffic`]).
//!
//! Heartbeat and idle timeout are off by default: per RFC 6455 a WebSocket
//! has no idle timeout.

mod broadcast;
pub(crate) mod driver;
mod incoming;
pub(crate) mod push;
mod service;
mod socket;
mod upgrade;

pub use broadcast::Broadcast;
pub use driver::{WsTotals, WS_CLIENT_TOTALS, WS_TOTALS};
pub(crate) use service::ParkedWebSocket;
pub use service::{Replies, WsService};
pub use socket::{TrySendError, WebSocket, WsError, WsOptions, WsReceiver, WsSender};
pub use tether_proto::ws::{
    CloseCode, CloseFrame, CompressionConfig, CompressionMode, HandshakeConfig, Message, QueueOverflow, Utf8Bytes,
    WsConfig, WsEnd,
};
pub(crate) use upgrade::upgrade_pushed;
pub use upgrade::{is_websocket_request, upgrade, upgrade_service};
