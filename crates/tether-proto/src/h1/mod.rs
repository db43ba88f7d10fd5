//! HTTP/1.1 server connections, sans-I/O (RFC 9112, RFC 9110), and the
//! client side of a keep-alive connection ([`client`]).
//!
//! Theory of operation: a [`ServerConnection`] is fed bytes and time and
//! yields request [`Event`]s, response bytes, its next deadline and, in
//! the end, exactly one [`CloseCause`]. It owns parsing ([`parse`], on
//! `httparse`), body framing ([`decode`], [`encode`]) and the keep-alive
//! policy ([`Config`]); it never touches a socket or reads a clock. The
//! state machine and its transitions are documented in [`conn`]; one place
//! decides keep-alive: [`ServerConnection::send_response`].

pub mod client;
pub mod config;
pub mod conn;
pub mod decode;
pub mod encode;
pub mod parse;

#[cfg(test)]
mod tests;

pub use config::{Config, KeepAliveHeader};
pub use conn::{body_error_status, CloseCause, Event, Fault, ResponseBody, SendError, ServerConnection};
pub use decode::BodyError;
pub use parse::{has_token, recycle_header_map, BodyFraming, HeadError, RequestHead};
