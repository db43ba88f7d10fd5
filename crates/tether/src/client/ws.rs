//! The WebSocket client: `ws://` and `wss://` URLs, the handshake,
//! masking with unpredictable keys, and the same [`WebSocket`] API as the
//! server side.
//!
//! `wss://` is TLS ([`super::tls`], ALPN `http/1.1`, the URL's host as
//! server name, the system's roots or [`ClientOptions::tls`]'s CA file)
//! between the TCP connect and the upgrade request, all within
//! [`ClientOptions::handshake_timeout`]. [`connect_on`] runs the TLS
//! handshake on the caller's transport for a `wss://` URL, so a transport
//! that counts bytes counts TLS records too.

use std::time::Duration;

use bytes::BytesMut;
use http::HeaderMap;
use tether_proto::wire::Traffic;
use tether_proto::ws::{ClientHandshake, ClientHandshakeError, WsConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::target::Target;
use super::tls::{TlsConnector, TlsError, TlsOptions};
use crate::lifecycle::Transport;
use crate::ws::{WebSocket, WsOptions};

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Connection settings (limits, heartbeat, queue).
    pub ws: WsOptions,
    /// Subprotocols to offer, in preference order.
    pub subprotocols: Vec<String>,
    /// Extra request headers (e.g. `Origin`).
    pub headers: HeaderMap,
    /// Deadline for TCP connect plus handshake (TLS's included).
    pub handshake_timeout: Duration,
    /// Trust for `wss://` (the system's roots unless a CA file is given).
    pub tls: TlsOptions,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            ws: WsOptions::default(),
            subprotocols: Vec::new(),
            headers: HeaderMap::new(),
            handshake_timeout: Duration::from_secs(10),
            tls: TlsOptions::default(),
        }
    }
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not `ws[s]://host[:port][/path]`.
    #[error("invalid WebSocket URL {0:?} (expected ws[s]://host[:port]/path)")]
    Url(String),
    /// TLS could not be set up, or its handshake failed (an untrusted
    /// certificate is [`TlsError::Certificate`]).
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// TCP or I/O failure.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Connect plus handshake took longer than the deadline.
    #[error("handshake timed out")]
    Timeout,
    /// The server refused or answered wrongly.
    #[error("handshake failed: {0}")]
    Handshake(#[from] ClientHandshakeError),
}

fn parse_url(url: &str) -> Result<Target, ConnectError> {
    Target::parse(url, "ws").map_err(|_| ConnectError::Url(url.to_string()))
}

/// Connects to a `ws://` or `wss://` URL and completes the handshake.
pub async fn connect(url: &str, options: ClientOptions) -> Result<WebSocket, ConnectError> {
    let target = parse_url(url)?;
    tokio::time::timeout(options.handshake_timeout, async {
        let stream = TcpStream::connect(&target.connect).await?;
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().ok();
        secure(stream, target, &options, peer).await
    })
    .await
    .map_err(|_| ConnectError::Timeout)?
}

/// Completes the handshake for `url` on a transport the caller opened
/// (e.g. one that counts or records its bytes); the URL gives the `Host`
/// and the path, and for `wss://` TLS runs over `stream` first.
pub async fn connect_on<S: Transport>(stream: S, url: &str, options: ClientOptions) -> Result<WebSocket, ConnectError> {
    let target = parse_url(url)?;
    let peer = (&stream as &dyn std::any::Any)
        .downcast_ref::<TcpStream>()
        .and_then(|s| s.peer_addr().ok());
    tokio::time::timeout(options.handshake_timeout, secure(stream, target, &options, peer))
        .await
        .map_err(|_| ConnectError::Timeout)?
}

/// TLS first for `wss://`, then the upgrade.
async fn secure<S: Transport>(
    stream: S,
    target: Target,
    options: &ClientOptions,
    peer: Option<std::net::SocketAddr>,
) -> Result<WebSocket, ConnectError> {
    if !target.tls {
        return handshake(stream, target, options, peer).await;
    }
    let connector = TlsConnector::new(&options.tls)?;
    let (tls, info) = connector.connect(&target.server_name, stream).await?;
    tracing::trace!(origin = %target.origin, version = %info.version, alpn = ?info.alpn,
        handshake = ?info.handshake, "client TLS handshake");
    handshake(tls, target, options, peer).await
}

async fn handshake<S: Transport>(
    mut stream: S,
    target: Target,
    options: &ClientOptions,
    peer: Option<std::net::SocketAddr>,
) -> Result<WebSocket, ConnectError> {
    let hs = ClientHandshake::new(
        rand::random::<[u8; 16]>(),
        options.subprotocols.clone(),
        // One setting: what is offered here is what the engine then uses.
        options.ws.engine.compression,
    );
    let mut request = Vec::with_capacity(256);
    hs.write_request(&target.host_header, &target.path, &options.headers, &mut request)?;
    stream.write_all(&request).await?;
    // TLS may hold the last bytes until flushed.
    stream.flush().await?;

    // The engine reads the answer; this only brings it the bytes.
    let mut buf = BytesMut::with_capacity(1024);
    let (accepted, head_len) = loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(ConnectError::Handshake(ClientHandshakeError::MalformedResponse));
        }
        if let Some(done) = hs.handle_response(&buf)? {
            break done;
        }
    };
    let rest = buf.split_off(head_len);
    let mut engine = WsConnection::client(
        options.ws.engine.clone(),
        accepted.deflate,
        rand::random::<[u8; 4]>,
        std::time::Instant::now(),
    );
    // The upgrade's bytes are the connection's too (`WebSocket::traffic`).
    let mut handshake = Traffic::default();
    handshake.sent.add_overhead(request.len());
    handshake.received.add_overhead(head_len);
    engine.count_handshake(handshake);
    Ok(WebSocket::start(
        Box::new(stream),
        rest,
        engine,
        accepted.subprotocol,
        None,
        peer,
        tracing::Span::none(),
    ))
}
