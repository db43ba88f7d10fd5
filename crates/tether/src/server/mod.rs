//! The HTTP/1.1 server: listener, connection driver, handler API, router,
//! static files and graceful shutdown.
//!
//! Theory of operation: [`Server::serve_on`] accepts connections from its
//! [`Listener`]s (TCP: [`Server::serve`]; TLS over TCP:
//! [`Server::serve_tls`]; a Unix domain socket: [`Server::serve_unix`];
//! see `listener`) and runs each on its own task with
//! [`driver::serve_connection`], which moves bytes
//! between the socket and a `tether_proto::h1::ServerConnection` (where every
//! keep-alive decision is made) and calls the [`Handler`]. A connection idle
//! for [`Server::park_idle_after`] (keep-alive, or a WebSocket served by
//! `crate::ws::upgrade_service`) leaves its task for the server's parking
//! lot (`park`) and gets a task again on input, at its deadline or on
//! shutdown, over any listener (TCP, TLS with its session kept, a Unix
//! socket: `stream`; a TLS connection's handshake runs on its task, under
//! [`Server::tls_handshake_timeout`]). On shutdown the
//! server stops accepting, tells every connection (idle ones close at once,
//! in-flight ones finish with `Connection: close`), waits for them up to
//! the shutdown timeout, then aborts the rest.
//!
//! Each connection runs inside a `tracing` span of its own, each request
//! inside a child span (see `crate::spans`): the span goes along when the
//! connection parks, and the line a connection ends with is logged in it.

mod admission;
pub mod body;
pub mod date;
pub mod driver;
pub mod file_body;
pub mod handler;
pub mod held;
pub mod listener;
// Parking needs a 64-bit Unix (its own epoll through mio's Unix
// descriptors, 64-bit tokens); elsewhere the same interface never parks.
#[cfg(all(unix, target_pointer_width = "64"))]
pub(crate) mod park;
#[cfg(not(all(unix, target_pointer_width = "64")))]
#[path = "park_unsupported.rs"]
pub(crate) mod park;
pub mod router;
pub(crate) mod serving;
pub(crate) mod sleeper;
pub mod static_files;
pub(crate) mod stream;
pub mod tower;
pub mod upgrade;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tether_proto::h1;

use crate::lifecycle::OpenCount;
use crate::traffic::{AtomicTraffic, Traffic, TrafficByProtocol};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use body::{Body, BodyError, RequestBody};
pub use driver::ConnectionEnd;
pub use file_body::FileRange;
pub use handler::{Handler, Request, Response, SharedHandler};
pub use held::{Held, HeldSignal};
#[cfg(unix)]
pub use listener::bind_unix;
pub use listener::{HandshakeError, Listener};
pub use router::Router;
pub use static_files::StaticFiles;
/// The keep-alive policy and limits of a server's connections (the
/// engine's own configuration: one `Config` for every connection).
pub use tether_proto::h1::{CloseCause, Config, KeepAliveHeader};
pub use tower::TowerHandler;
pub use upgrade::{OnUpgrade, Upgraded};

/// Default for [`Server::park_idle_after`].
pub const DEFAULT_PARK_AFTER: Duration = Duration::from_secs(1);

/// The listen backlog [`bind`] uses by default: the system's cap
/// (`net.core.somaxconn`, 4096 on current Linux), which `listen` would
/// apply anyway; 4096 where it cannot be read. A backlog of 128 (std's)
/// overflows at a few hundred simultaneous connects: their SYNs are
/// retransmitted after a second, or answered with SYN cookies.
pub fn default_backlog() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(4096)
}

/// Binds a listener on `addr` with `SO_REUSEADDR` and a listen backlog of
/// `backlog` (the kernel caps it at `net.core.somaxconn`). Call it from
/// within a tokio runtime.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Counters a running server keeps.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections currently open, upgraded and parked ones included.
    pub open: Arc<OpenCount>,
    /// Idle connections (keep-alive, and callback-served WebSockets)
    /// currently parked without a task.
    pub parked: AtomicU64,
    /// Connections refused (`503`) at a connection limit.
    pub refused: AtomicU64,
    /// Writes to a parked connection, with no task woken, of the frames
    /// pushed to it (one, or a fan-out's batch: the hub's deliveries to
    /// idle subscribers).
    pub parked_writes: AtomicU64,
    /// Pushes to a parked connection whose socket did not take them all:
    /// the connection resumed on a task to finish writing.
    pub parked_write_resumes: AtomicU64,
    /// Of `parked`, the WebSockets.
    pub parked_websockets: AtomicU64,
    /// Responses sent (refused requests' included), added when a
    /// connection parks, upgrades or ends, and about once a second while it
    /// stays busy: not as they happen.
    pub requests: AtomicU64,
    /// HTTP connections with a request in progress (its handler running or
    /// its response streaming).
    pub http_active: AtomicU64,
    /// HTTP connections ended, by cause (indexed by `CloseCause as usize`).
    pub closed: [AtomicU64; CloseCause::ALL.len()],
    /// HTTP connections that switched protocols (WebSockets).
    pub upgraded: AtomicU64,
    /// TLS handshakes completed.
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes the client broke off or rustls refused, or that the
    /// server's shutdown interrupted.
    pub tls_handshake_failures: AtomicU64,
    /// TLS handshakes not completed within `Server::tls_handshake_timeout`.
    pub tls_handshake_timeouts: AtomicU64,
    /// Bytes on the wire of the HTTP connections (upgraded ones up to their
    /// `101`), added when `requests` is (see [`crate::traffic`]).
    pub http_traffic: AtomicTraffic,
}

impl ServerStats {
    /// Bytes on the wire so far: this server's HTTP connections', and
    /// every server-side WebSocket's of the process (`crate::ws::WS_TOTALS`;
    /// client WebSockets count apart, in `WS_CLIENT_TOTALS`), each
    /// split into overhead (heads, chunk framing, frame headers) and
    /// payload (bodies, frame payloads). Exact for connections that have
    /// ended; about a second behind, at most, for busy ones (see
    /// [`crate::traffic`]).
    pub fn traffic(&self) -> TrafficByProtocol {
        TrafficByProtocol {
            http: self.http_traffic.get(),
            websocket: crate::ws::WS_TOTALS.traffic.get(),
        }
    }

    /// Counts and logs the end of an HTTP connection (that carried
    /// `traffic`; from `peer`, `None` for a Unix socket's), and records it
    /// on the connection's span, inside which the line is logged.
    pub(crate) fn record_end(
        &self,
        peer: Option<SocketAddr>,
        end: ConnectionEnd,
        traffic: Traffic,
        span: &tracing::Span,
    ) {
        match end {
            ConnectionEnd::Closed(cause, ..) => self.closed[cause as usize].fetch_add(1, Ordering::Relaxed),
            ConnectionEnd::Upgraded(_) => self.upgraded.fetch_add(1, Ordering::Relaxed),
        };
        crate::spans::record_end(span, end.requests(), end.cause_str());
        span.in_scope(|| log_end(peer, end, traffic));
    }
}

/// An HTTP/1.1 server with exact keep-alive behaviour.
pub struct Server {
    config: Arc<h1::Config>,
    handler: SharedHandler,
    shutdown_timeout: Duration,
    park_after: Option<Duration>,
    tls_handshake_timeout: Duration,
    limits: admission::Limits,
    access_log: bool,
    stats: Arc<ServerStats>,
}

impl Server {
    /// A server answering with `handler` under `config`.
    pub fn new(config: h1::Config, handler: impl Handler) -> Self {
        Self {
            config: Arc::new(config),
            handler: Arc::new(handler),
            shutdown_timeout: Duration::from_secs(10),
            park_after: Some(DEFAULT_PARK_AFTER),
            tls_handshake_timeout: crate::tls::DEFAULT_HANDSHAKE_TIMEOUT,
            limits: admission::Limits::default(),
            access_log: false,
            stats: Arc::new(ServerStats::default()),
        }
    }

    /// How long shutdown waits for in-flight requests before force-closing.
    pub fn shutdown_timeout(mut self, t: Duration) -> Self {
        self.shutdown_timeout = t;
        self
    }

    /// Park keep-alive connections (and WebSockets served by
    /// `ws::upgrade_service`) idle this long: they leave their task, timer
    /// and reactor registration and wait in one lot per server (measured at
    /// 15,000 connections: about 0.7 KiB per keep-alive connection instead
    /// of 2.8 KiB, 0.5 KiB per WebSocket instead of 2 to 3 KiB), and resume
    /// on input, at their deadline or on shutdown. `None` keeps every
    /// connection on its task. Default: 1 s.
    pub fn park_idle_after(mut self, after: Option<Duration>) -> Self {
        self.park_after = after;
        self
    }

    /// How long a TLS client has to complete its handshake; one that has
    /// not by then is disconnected (it held a task, its socket and rustls's
    /// bounded state meanwhile, and counted as an open connection).
    /// Default: 10 s.
    pub fn tls_handshake_timeout(mut self, t: Duration) -> Self {
        self.tls_handshake_timeout = t;
        self
    }

    /// Most connections open at once (upgraded and parked ones included).
    /// At the limit, the longest-idle parked keep-alive connection is
    /// closed to make room; when none can be, a new connection is answered
    /// `503` (`Retry-After: 1`) and closed. `None` (the default): no limit
    /// but the process's file descriptors.
    pub fn max_connections(mut self, max: Option<usize>) -> Self {
        self.limits.max_connections = max;
        self
    }

    /// Most connections open at once from one client address; beyond it a
    /// new connection from that address is answered `503` and closed.
    /// `None` (the default): no limit.
    pub fn max_connections_per_client(mut self, max: Option<usize>) -> Self {
        self.limits.max_per_client = max;
        self
    }

    /// Log one line per request at `info` on target `tether::access`: the
    /// client, the request line, the status, the body's length and the time
    /// to the response head. Off by default.
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// The server's counters.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    /// Keeps its counters in `stats` (made before the server, e.g. for a
    /// `/metrics` handler the server itself serves).
    pub fn with_stats(mut self, stats: Arc<ServerStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Accepts and serves connections from a TCP listener until `shutdown`
    /// completes, then shuts down gracefully. Returns once every connection
    /// is closed or aborted.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        self.serve_on(vec![Listener::Tcp(listener)], shutdown).await
    }

    /// [`Server::serve`] over TLS: HTTPS (and `wss`) with `tls` (see
    /// [`crate::tls::server_config`]; its certificate may be reloaded while
    /// serving, see [`crate::tls::ReloadableCert`]).
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        self.serve_on(vec![Listener::Tls(listener, tls)], shutdown).await
    }

    /// [`Server::serve`] on a Unix domain socket (see [`bind_unix`]), e.g.
    /// behind a proxy on the same machine.
    #[cfg(unix)]
    pub async fn serve_unix(
        self,
        listener: tokio::net::UnixListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        self.serve_on(vec![Listener::Unix(listener)], shutdown).await
    }

    /// Accepts and serves connections from every one of `listeners` until
    /// `shutdown` completes, then shuts down gracefully (every listener is
    /// closed first). Returns once every connection is closed or aborted.
    pub async fn serve_on(self, listeners: Vec<Listener>, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(driver::Stop::Run);
        let lot = match self.park_after {
            Some(after) => match serving::Lot::start(after, self.stats.clone(), stop_rx.clone()) {
                Ok(lot) => Some(lot),
                Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                    tracing::warn!(error = %e, "idle connections stay on their tasks");
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        let mut admission = admission::Admission::new(self.limits, self.stats.open.clone(), lot.clone());
        let serving = Arc::new(serving::Serving {
            handler: self.handler.clone(),
            lot,
            access_log: self.access_log,
            stats: self.stats.clone(),
        });
        let mut next = 0;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = std::future::poll_fn(|cx| listener::poll_accept_any(&listeners, &mut next, cx)) => match accepted {
                    Ok(accepted) => {
                        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                        self.start(accepted, &mut admission, &serving, &stop_rx);
                    }
                    Err(e) => admission.accept_failed(e).await,
                }
            }
        }
        drop(listeners);
        let _ = stop_tx.send(driver::Stop::Graceful);
        tracing::info!(
            open = self.stats.open.get(),
            "shutting down: idle connections drain, in-flight requests finish with Connection: close, WebSockets close with 1001"
        );
        if tokio::time::timeout(self.shutdown_timeout, self.stats.open.all_closed())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.stats.open.get(),
                "shutdown timeout reached: force-closing connections"
            );
            let _ = stop_tx.send(driver::Stop::Force);
            let _ = tokio::time::timeout(Duration::from_secs(2), self.stats.open.all_closed()).await;
        }
        Ok(())
    }

    /// Admits a connection just accepted and puts it on a task of its own
    /// (or refuses it with `503`, on its task too). Never waits.
    fn start(
        &self,
        accepted: listener::Accepted,
        admission: &mut admission::Admission,
        serving: &Arc<serving::Serving>,
        stop: &watch::Receiver<driver::Stop>,
    ) {
        // An upgraded or parked connection takes the guard along: shutdown waits for it too.
        let admitted = |admission: &mut admission::Admission, peer| match admission.admit(peer) {
            admission::Verdict::Admit(open) => Some(open),
            admission::Verdict::Refuse => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        let engine = || h1::ServerConnection::new(self.config.clone(), std::time::Instant::now());
        match accepted {
            listener::Accepted::Tcp(stream, peer) => {
                let _ = stream.set_nodelay(true);
                match admitted(admission, Some(peer.ip())) {
                    Some(open) => {
                        let carry = serving::Carry::new(crate::spans::connection(Some(peer)));
                        serving.spawn_on(stream, engine(), stop.clone(), Some(open), Some(peer), carry)
                    }
                    None => drop(tokio::spawn(admission::refuse(stream))),
                }
            }
            listener::Accepted::Tls(stream, peer, acceptor) => {
                let _ = stream.set_nodelay(true);
                // Counted as open from now: its handshake too is bounded by the limits.
                let open = admitted(admission, Some(peer.ip()));
                tokio::spawn(serving.clone().serve_tls(
                    stream,
                    acceptor,
                    self.tls_handshake_timeout,
                    self.config.clone(),
                    open,
                    stop.clone(),
                    peer,
                ));
            }
            #[cfg(unix)]
            listener::Accepted::Unix(stream) => match admitted(admission, None) {
                Some(open) => {
                    let carry = serving::Carry::new(crate::spans::connection(None));
                    serving.spawn_on(stream, engine(), stop.clone(), Some(open), None, carry)
                }
                None => drop(tokio::spawn(admission::refuse(stream))),
            },
        }
    }
}

/// The one line every HTTP connection ends with (at `debug`): its cause,
/// the responses it carried, for a refused request the status sent and
/// why, and its bytes on the wire each way (`bytes_in`, `bytes_out`, split
/// into `head_*`: heads and chunk framing, and `body_*`). An upgraded
/// connection's line says so, with its HTTP phase's bytes; the new
/// protocol logs its own end (its bytes include these).
fn log_end(peer: Option<SocketAddr>, end: ConnectionEnd, t: Traffic) {
    let peer = crate::ws::driver::Peer(peer);
    let (bytes_in, bytes_out) = (t.received.total(), t.sent.total());
    let (head_in, body_in) = (t.received.overhead, t.received.payload);
    let (head_out, body_out) = (t.sent.overhead, t.sent.payload);
    match end {
        ConnectionEnd::Closed(cause, requests, Some(fault)) => {
            tracing::debug!(
                %peer,
                cause = cause.as_str(),
                requests,
                %fault,
                bytes_in,
                bytes_out,
                head_in,
                body_in,
                head_out,
                body_out,
                "connection closed"
            )
        }
        ConnectionEnd::Closed(cause, requests, None) => {
            tracing::debug!(
                %peer,
                cause = cause.as_str(),
                requests,
                bytes_in,
                bytes_out,
                head_in,
                body_in,
                head_out,
                body_out,
                "connection closed"
            )
        }
        ConnectionEnd::Upgraded(requests) => {
            tracing::debug!(
                %peer,
                requests,
                bytes_in,
                bytes_out,
                head_in,
                body_in,
                head_out,
                body_out,
                "connection upgraded: the new protocol takes over"
            )
        }
    }
}
