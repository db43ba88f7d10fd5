//! WebSockets on tokio: server upgrade, the [`WebSocket`] handle with
//! independent sender and receiver halves, callback-served endpoints
//! ([`WsService`], [`upgrade_service`]: see `service`, whose idle
//! connections park without a task), and frame-once broadcast.
//!
//! Theory of operation: after the HTTP handshake a connection is one
//! `tether_proto::ws::WsConnection` (where every protocol decision is made:
//! framing, masking, UTF-8, close codes, deflate) and the transport, behind
//! a lock shared by the [`WsSender`] and [`WsReceiver`] halves. There is no
//! task and no channel per connection, so an idle WebSocket costs about as
//! much memory as its engine and socket:
//!
//! * receiving drives the connection: [`WsReceiver::recv`] reads, feeds the
//!   engine, writes queued output (pongs, close replies, messages from other
//!   tasks), fires timers (heartbeat, idle timeout, close handshake
//!   deadline, stalled writes) and closes TCP first on the server side once
//!   the close handshake is complete. Keep a task receiving for as long as
//!   the connection should live;
//! * sending queues frames in the engine and wakes the receiving task (or,
//!   with nobody receiving, writes itself). The queue is counted in bytes:
//!   `send` waits while it holds `max_queued_bytes` or more (backpressure),
//!   `try_send` reports [`TrySendError::Full`] instead, and with
//!   [`OverflowPolicy::Close`] a full queue closes the connection with 1008
//!   rather than buffering without bound;
//! * while much output is waiting for a peer that does not read, reading
//!   pauses (TCP backpressure to the peer);
//! * when the last handle is dropped, the close handshake is finished in
//!   the background within a bounded time;
//! * on server shutdown the connection closes with 1001 and counts as open
//!   until its close handshake ends (or the server's forced stop drops it).
//!
//! Both drivers (the handle's and the callback service's) share their I/O
//! steps: `incoming` reads (through a per-thread scratch buffer, or straight
//! into the engine's buffer for the rest of a large frame) and `outgoing`
//! writes (one vectored write, stall deadline, close on shutdown).
//!
//! Heartbeat and idle timeout are off by default: per RFC 6455 a WebSocket
//! has no idle timeout.

mod broadcast;
mod incoming;
mod outgoing;
mod service;
mod socket;
mod upgrade;

pub use broadcast::Broadcast;
pub(crate) use service::ParkedWebSocket;
pub use service::{Replies, WsService};
pub use socket::{OverflowPolicy, TrySendError, WebSocket, WsError, WsOptions, WsReceiver, WsSender};
pub use tether_proto::ws::{CloseCode, CloseFrame, CompressionConfig, CompressionMode, Message, Utf8Bytes};
pub use upgrade::{is_websocket_request, upgrade, upgrade_service};
