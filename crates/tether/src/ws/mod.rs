//! WebSockets on tokio: server upgrade, the [`WebSocket`] handle with
//! independent sender and receiver halves, and frame-once broadcast.
//!
//! Theory of operation: after the HTTP handshake, one driver task owns the
//! transport and a `tether_proto::ws::WsConnection` (where every protocol
//! decision is made: framing, masking, UTF-8, close codes, deflate). Users
//! talk to the driver through two queues:
//!
//! * outgoing: a command queue whose size in bytes is counted in the
//!   [`WsSender`]; `send` waits while it holds `max_queued_bytes` or more
//!   (backpressure), `try_send` reports [`TrySendError::Full`] instead, and
//!   with [`OverflowPolicy::Close`] a full queue closes the connection with
//!   1008 rather than buffering without bound. The driver only takes more
//!   commands while its own write buffer is below a small high-water mark,
//!   so a slow peer fills the queue instead of memory.
//! * incoming: a small bounded channel of messages; while it is full the
//!   driver stops reading the socket (TCP backpressure to the peer).
//!
//! The driver answers pings (in the engine), sends heartbeat pings and
//! enforces an idle timeout when configured (both off by default: per RFC
//! 6455 a WebSocket has no idle timeout), gives every wait a deadline (close
//! handshake, stalled writes), and closes the TCP connection first on the
//! server side once the close handshake is complete.

mod broadcast;
mod socket;
mod upgrade;

pub use broadcast::Broadcast;
pub use socket::{OverflowPolicy, TrySendError, WebSocket, WsError, WsOptions, WsReceiver, WsSender};
pub use tether_proto::ws::{CloseCode, CloseFrame, CompressionConfig, CompressionMode, Message, Utf8Bytes};
pub use upgrade::{is_websocket_request, upgrade};
