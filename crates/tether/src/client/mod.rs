//! Clients: HTTP/1.1 keep-alive with a connection pool ([`http`]) and
//! WebSocket ([`ws`]), over `http://` / `ws://` URLs, or `https://` /
//! `wss://` through TLS ([`tls`]: rustls, the system's roots or a CA file).

pub mod http;
mod target;
pub mod tls;
pub mod ws;

pub use tls::{ClientStream, TlsConnector, TlsError, TlsInfo, TlsOptions};
