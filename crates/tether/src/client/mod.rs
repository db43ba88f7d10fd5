//! Clients: HTTP/1.1 keep-alive with a connection pool ([`http`]) and
//! WebSocket ([`ws`]), both over `http://` / `ws://` URLs.

pub mod http;
mod target;
pub mod ws;
