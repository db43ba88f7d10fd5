//! The keep-alive HTTP client: a connection pool that never sends a
//! request on a connection the server is about to close, or already has.
//!
//! Theory of operation. An [`HttpClient`] keeps idle connections per
//! origin (`scheme://host:port`: `http://x:443` and `https://x:443` are
//! two), at most [`max_idle_per_origin`] each and
//! [`max_idle_total`] in all (past either, the longest-idle one goes). Each
//! connection's protocol is the sans-I/O [`ClientConnection`]: it encodes
//! requests, frames responses, counts bytes and decides reuse from what
//! the server said (`Connection: close`, HTTP/1.0 without keep-alive,
//! `Keep-Alive: max=`, and `timeout=` less a safety margin). This module
//! only moves bytes and keeps the pool.
//!
//! A request takes the most recently used idle connection of its origin
//! that passes three checks, dropping those that fail: its own idle
//! timeout ([`idle_timeout`]), the engine's reuse rules at this instant,
//! and a look at the socket (a non-blocking `MSG_PEEK`): a server's FIN or
//! reset that already arrived retires it before any byte is sent. On a
//! TLS connection the look is a non-blocking read through TLS instead
//! (bytes on an idle TLS socket may be records that are not data: a
//! session ticket is taken in and the connection stays; a `close_notify`
//! or another alert, a FIN, a reset or stray data retire it).
//!
//! `https://` connections are TLS over TCP ([`super::tls`]): the handshake
//! (ALPN `http/1.1`, the URL's host as server name) runs within
//! [`connect_timeout`] after the TCP connect, trusting the system's roots
//! or [`HttpClientOptions::tls`]'s CA file; the configuration is built at
//! the first `https://` request and kept. A TLS connection is pooled,
//! reused, retired and retried like a plain one; a TCP close without
//! `close_notify` counts as the server's close. None
//! left: a new connection. A reaper task closes idle connections as they
//! expire and those the server closed, so the pool never holds dead
//! sockets for long (it wakes at the next expiry, at least once a second
//! while anything is idle).
//!
//! The race that remains (the server closes just as the request leaves)
//! is answered by the retry rule: a request that failed on a *reused*
//! connection before any byte of its response arrived is sent once more
//! on a *fresh* connection if its method is idempotent (RFC 9110 §9.2.2);
//! otherwise the error ([`ClientError::NotRetried`]) says why it was not
//! retried. A failure on a fresh connection is returned as it is.
//!
//! Pipelining ([`HttpClient::pipeline`]) sends several idempotent requests
//! to one origin on one connection before reading the answers; those the
//! server did not answer before closing are sent again, once, on a fresh
//! connection.
//!
//! [`max_idle_per_origin`]: HttpClientOptions::max_idle_per_origin
//! [`max_idle_total`]: HttpClientOptions::max_idle_total
//! [`idle_timeout`]: HttpClientOptions::idle_timeout
//! [`connect_timeout`]: HttpClientOptions::connect_timeout

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, Version};
use tether_proto::h1::client::{
    is_idempotent, ClientConfig, ClientConnection, ClientEvent, KeepAliveHints, RequestHead, ResponseHead, Retired,
};
use tether_proto::wire::Traffic;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::target::Target;
use super::tls::{is_unclean_eof, ClientStream, TlsConnector, TlsError, TlsOptions};

/// The pool's settings.
#[derive(Debug, Clone)]
pub struct HttpClientOptions {
    /// `HTTP/1.1` (persistent by default) or `HTTP/1.0` (asks for
    /// keep-alive with `Connection: keep-alive`). A request whose own
    /// version is `HTTP/1.0` is sent as such either way.
    pub version: Version,
    /// Whether to ask servers to keep connections open (`false`: every
    /// request on a new connection, HTTP/1.1 with `Connection: close`,
    /// HTTP/1.0 without `Connection`; nothing is pooled).
    pub keep_alive: bool,
    /// Idle connections kept per origin.
    pub max_idle_per_origin: usize,
    /// Idle connections kept in all.
    pub max_idle_total: usize,
    /// The client's own idle timeout: an idle connection older than this
    /// is closed, whatever the server advertised.
    pub idle_timeout: Duration,
    /// Retire a connection this long before the server's advertised
    /// `timeout=` (at most a quarter of it).
    pub timeout_margin: Duration,
    /// Deadline for the TCP connect, and again for the TLS handshake.
    pub connect_timeout: Duration,
    /// Deadline from the first byte written to the last byte of the
    /// response (of every response, when pipelining).
    pub response_timeout: Duration,
    /// The largest response body kept in memory.
    pub max_response_body: usize,
    /// Trust for `https://` (the system's roots unless a CA file is given).
    pub tls: TlsOptions,
}

impl Default for HttpClientOptions {
    fn default() -> Self {
        Self {
            version: Version::HTTP_11,
            keep_alive: true,
            max_idle_per_origin: 8,
            max_idle_total: 256,
            idle_timeout: Duration::from_secs(30),
            timeout_margin: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
            max_response_body: 16 * 1024 * 1024,
            tls: TlsOptions::default(),
        }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http[s]://host[:port]/path`.
    #[error("invalid URL {0:?} (expected http[s]://host[:port]/path)")]
    Url(String),
    /// TLS could not be set up, or the handshake failed (an untrusted
    /// certificate is [`TlsError::Certificate`]).
    #[error("TLS with {origin}: {source}")]
    Tls {
        origin: String,
        #[source]
        source: TlsError,
    },
    /// The TCP connect failed.
    #[error("connecting to {origin} failed: {source}")]
    Connect {
        origin: String,
        #[source]
        source: io::Error,
    },
    /// The TCP connect (or the TLS handshake) took longer than `connect_timeout`.
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    /// No complete response within `response_timeout`.
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
    /// A reused connection failed before any byte of the response came,
    /// and the method is not idempotent: it was not sent again.
    #[error(
        "the server closed a reused connection before answering ({cause}); {method} is not idempotent, \
         so it was not retried: the server may or may not have processed it"
    )]
    NotRetried { method: Method, cause: String },
    /// The connection failed before any byte of the response came (on a
    /// fresh connection, or on the retry).
    #[error("the connection failed before the response ({0})")]
    Closed(String),
    /// The connection failed in the middle of the response.
    #[error("the response was cut off ({0})")]
    Truncated(String),
    /// The response could not be read (malformed head or framing).
    #[error("malformed response")]
    BadResponse,
    /// The response body is larger than `max_response_body`.
    #[error("response body larger than {0} bytes")]
    BodyTooLarge(usize),
    /// `pipeline` was given requests it may not pipeline.
    #[error("cannot pipeline: {0}")]
    Pipeline(&'static str),
}

/// What the client knows about one exchange: an extension of every
/// [`Response`] it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    /// The connection it went over (numbered from 1 per client).
    pub connection: u64,
    /// Its place on that connection (1 for the first request).
    pub sequence: u64,
    /// Whether the connection had carried an earlier exchange.
    pub reused: bool,
    /// Whether this is the retry of a request a stale connection lost.
    pub retried: bool,
    /// The server's `Keep-Alive` hints in this response.
    pub hints: KeepAliveHints,
    /// This exchange's bytes on the wire (request out, response in).
    pub traffic: Traffic,
}

/// Why a pooled connection was closed by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolClose {
    /// The engine retired it (`Connection: close`, `max=`, the
    /// advertised timeout, the server's FIN, a malformed response).
    Retired(Retired),
    /// Idle longer than the client's own `idle_timeout`.
    IdleTimeout,
    /// The pool was full (per origin or in all), or keeps nothing
    /// (`keep_alive: false`).
    PoolFull,
    /// An I/O error, reset or deadline during an exchange.
    Failed,
}

impl PoolClose {
    const ALL: [PoolClose; 8] = [
        PoolClose::Retired(Retired::ServerClose),
        PoolClose::Retired(Retired::MaxRequests),
        PoolClose::Retired(Retired::IdleTimeout),
        PoolClose::Retired(Retired::PeerClosed),
        PoolClose::Retired(Retired::BadResponse),
        PoolClose::IdleTimeout,
        PoolClose::PoolFull,
        PoolClose::Failed,
    ];

    /// A short label (for logs and tables).
    pub fn label(self) -> &'static str {
        match self {
            PoolClose::Retired(Retired::ServerClose) => "server_close",
            PoolClose::Retired(Retired::MaxRequests) => "max_requests",
            PoolClose::Retired(Retired::IdleTimeout) => "advertised_timeout",
            PoolClose::Retired(Retired::PeerClosed) => "peer_closed",
            PoolClose::Retired(Retired::BadResponse) => "bad_response",
            PoolClose::IdleTimeout => "idle_timeout",
            PoolClose::PoolFull => "pool_full",
            PoolClose::Failed => "failed",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }
}

/// Counters of a client since it was made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// TCP connections opened.
    pub connections: u64,
    /// TLS handshakes completed (on `https://` connections).
    pub tls_handshakes: u64,
    /// Exchanges completed (a response received).
    pub responses: u64,
    /// Requests sent on a reused connection.
    pub reused: u64,
    /// Requests sent again after a stale connection lost them.
    pub retried: u64,
    /// Requests that failed (of every kind).
    pub failed: u64,
    /// Connections closed, by cause (`PoolClose::label`, count).
    pub closed: Vec<(&'static str, u64)>,
    /// Bytes on the wire, both ways, of every connection.
    pub traffic: Traffic,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    tls_handshakes: AtomicU64,
    responses: AtomicU64,
    reused: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    closed: [AtomicU64; 8],
    traffic: Mutex<Traffic>,
}

/// A keep-alive HTTP/1.x client with a connection pool (see the module
/// documentation). Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct HttpClient {
    pool: Arc<Pool>,
}

struct Pool {
    options: HttpClientOptions,
    idle: Mutex<IdleSet>,
    counters: Counters,
    /// Wakes the reaper when a connection becomes idle.
    reaper: Arc<Notify>,
    reaper_started: AtomicBool,
    /// The TLS configuration, built at the first `https://` request.
    tls: Mutex<Option<TlsConnector>>,
}

#[derive(Default)]
struct IdleSet {
    by_origin: HashMap<String, Vec<Conn>>,
    total: usize,
}

/// One connection and its engine.
struct Conn {
    id: u64,
    stream: ClientStream,
    engine: ClientConnection,
    /// Exchanges it carried.
    exchanges: u64,
    /// When it went idle (meaningful while pooled).
    idle_since: Instant,
    /// Its origin, the pool's key.
    origin: String,
}

/// One request ready to send: its head fields settled, its body.
struct Prepared {
    method: Method,
    version: Version,
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// How a batch of requests on one connection ended for one request.
enum Outcome {
    Done(Response<Bytes>),
    /// It was sent, and no byte of its response arrived.
    Unanswered(String),
    /// The connection retired before it was written: safe to send again,
    /// whatever the method.
    NotSent,
    Failed(ClientError),
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new(HttpClientOptions::default())
    }
}

impl HttpClient {
    pub fn new(options: HttpClientOptions) -> Self {
        Self {
            pool: Arc::new(Pool {
                options,
                idle: Mutex::new(IdleSet::default()),
                counters: Counters::default(),
                reaper: Arc::new(Notify::new()),
                reaper_started: AtomicBool::new(false),
                tls: Mutex::new(None),
            }),
        }
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> Result<Response<Bytes>, ClientError> {
        let req = Request::get(url)
            .body(Bytes::new())
            .map_err(|_| ClientError::Url(url.to_string()))?;
        self.request(req).await
    }

    /// Sends one request and reads its whole response (see the module
    /// documentation for reuse and the retry rule). The response carries
    /// an [`Exchange`] extension.
    pub async fn request(&self, req: Request<Bytes>) -> Result<Response<Bytes>, ClientError> {
        let (target, prepared) = self.prepare(req)?;
        let mut results = self.send_batch(&target, vec![prepared]).await;
        results.pop().unwrap_or(Err(ClientError::Closed("no response".into())))
    }

    /// Sends idempotent requests to one origin on one connection, all
    /// before reading the responses (HTTP/1.1 pipelining, RFC 9112 §9.3.2),
    /// and returns the results in order.
    pub async fn pipeline(&self, reqs: Vec<Request<Bytes>>) -> Vec<Result<Response<Bytes>, ClientError>> {
        let mut prepared = Vec::with_capacity(reqs.len());
        let mut origin: Option<Target> = None;
        for req in reqs {
            if !is_idempotent(req.method()) {
                return vec![Err(ClientError::Pipeline("only idempotent requests may be pipelined"))];
            }
            match self.prepare(req) {
                Ok((t, p)) => {
                    if origin.as_ref().is_some_and(|o| o.origin != t.origin) {
                        return vec![Err(ClientError::Pipeline("every request must go to one origin"))];
                    }
                    origin = Some(t);
                    prepared.push(p);
                }
                Err(e) => return vec![Err(e)],
            }
        }
        match origin {
            Some(target) => self.send_batch(&target, prepared).await,
            None => Vec::new(),
        }
    }

    /// The client's counters.
    pub fn stats(&self) -> ClientStats {
        let c = &self.pool.counters;
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            connections: read(&c.connections),
            tls_handshakes: read(&c.tls_handshakes),
            responses: read(&c.responses),
            reused: read(&c.reused),
            retried: read(&c.retried),
            failed: read(&c.failed),
            closed: PoolClose::ALL
                .iter()
                .map(|cause| (cause.label(), read(&c.closed[cause.index()])))
                .collect(),
            traffic: *lock(&c.traffic),
        }
    }

    /// Idle connections in the pool now.
    pub fn idle_connections(&self) -> usize {
        lock(&self.pool.idle).total
    }

    fn prepare(&self, req: Request<Bytes>) -> Result<(Target, Prepared), ClientError> {
        let url = req.uri().to_string();
        let target = Target::parse(&url, "http").map_err(|_| ClientError::Url(url.clone()))?;
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        if !headers.contains_key(http::header::HOST) {
            let host = HeaderValue::from_str(&target.host_header).map_err(|_| ClientError::Url(url))?;
            headers.insert(http::header::HOST, host);
        }
        let version = if parts.version == Version::HTTP_10 {
            Version::HTTP_10
        } else {
            self.pool.options.version
        };
        let path = target.path.clone();
        Ok((
            target,
            Prepared {
                method: parts.method,
                version,
                path,
                headers,
                body,
            },
        ))
    }

    /// Sends `batch` on a pooled connection if one passes the checks, else
    /// on a fresh one; what a reused connection lost unanswered goes once
    /// more on a fresh connection (idempotent requests only).
    async fn send_batch(&self, target: &Target, batch: Vec<Prepared>) -> Vec<Result<Response<Bytes>, ClientError>> {
        let pool = &self.pool;
        let (conn, reused) = match pool.checkout(&target.origin) {
            Some(conn) => (conn, true),
            None => match pool.connect(target).await {
                Ok(conn) => (conn, false),
                Err(e) => return fail_all(batch.len(), e),
            },
        };
        let outcomes = pool.exchange(target, conn, &batch, false).await;
        let mut results = Vec::with_capacity(batch.len());
        let mut again = Vec::new();
        for (i, (outcome, req)) in outcomes.into_iter().zip(batch).enumerate() {
            // RFC 9112 §9.3.2: requests behind the first of a pipeline that
            // got no answer before the close are retried too.
            let may_retry = (reused || i > 0) && is_idempotent(&req.method);
            match outcome {
                Outcome::Done(resp) => results.push(Some(Ok(resp))),
                Outcome::NotSent => {
                    results.push(None);
                    again.push(req);
                }
                Outcome::Unanswered(cause) if may_retry => {
                    tracing::debug!(method = %req.method, %cause, "a reused connection lost the request: retrying on a fresh one");
                    results.push(None);
                    again.push(req);
                }
                Outcome::Unanswered(cause) if reused => results.push(Some(Err(ClientError::NotRetried {
                    method: req.method,
                    cause,
                }))),
                Outcome::Unanswered(cause) => results.push(Some(Err(ClientError::Closed(cause)))),
                Outcome::Failed(e) => results.push(Some(Err(e))),
            }
        }
        let mut retried = if again.is_empty() {
            Vec::new()
        } else {
            pool.counters.retried.fetch_add(again.len() as u64, Ordering::Relaxed);
            match pool.connect(target).await {
                Ok(conn) => pool
                    .exchange(target, conn, &again, true)
                    .await
                    .into_iter()
                    .map(|o| match o {
                        Outcome::Done(resp) => Ok(resp),
                        Outcome::NotSent => Err(ClientError::Closed("a fresh connection retired at once".into())),
                        Outcome::Unanswered(cause) => Err(ClientError::Closed(cause)),
                        Outcome::Failed(e) => Err(e),
                    })
                    .collect(),
                Err(e) => fail_all(again.len(), e),
            }
        }
        .into_iter();
        let results: Vec<_> = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| retried.next().unwrap_or(Err(ClientError::Closed("lost".into())))))
            .collect();
        let failed = results.iter().filter(|r| r.is_err()).count() as u64;
        pool.counters.failed.fetch_add(failed, Ordering::Relaxed);
        results
    }
}

/// The same connect error for every request of a batch (the first keeps
/// the source; `io::Error` does not clone).
fn fail_all(n: usize, first: ClientError) -> Vec<Result<Response<Bytes>, ClientError>> {
    let text = first.to_string();
    let mut out = vec![Err(first)];
    out.extend((1..n).map(|_| Err(ClientError::Closed(text.clone()))));
    out
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes and returns the longest-idle connection of any origin.
fn take_oldest(idle: &mut IdleSet) -> Option<Conn> {
    let (origin, _) = idle
        .by_origin
        .iter()
        .filter_map(|(k, list)| list.first().map(|c| (k.clone(), c.idle_since)))
        .min_by_key(|(_, since)| *since)?;
    let list = idle.by_origin.get_mut(&origin)?;
    let conn = list.remove(0);
    if list.is_empty() {
        idle.by_origin.remove(&origin);
    }
    idle.total -= 1;
    Some(conn)
}

/// The reaper: closes idle connections as they expire or as their server
/// closes them (see `Pool::reap`).
async fn reaper(pool: Weak<Pool>, wake: Arc<Notify>) {
    loop {
        let next = match pool.upgrade() {
            Some(pool) => pool.reap(),
            None => return,
        };
        let second = tokio::time::Instant::now() + Duration::from_secs(1);
        let until = next.map_or(second, |at| tokio::time::Instant::from_std(at).min(second));
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = wake.notified(), if next.is_none() => {}
        }
    }
}

/// What a look at an idle socket found.
enum Peek {
    /// Nothing to read: the connection is as the server left it.
    Quiet,
    /// The server's FIN (or a reset, or stray bytes): not reusable.
    Gone(Retired),
}

/// Looks at an idle connection: the socket (`MSG_PEEK`), or, for TLS, a
/// read through TLS that never waits (see the module documentation).
fn look(stream: &mut ClientStream) -> Peek {
    match stream {
        ClientStream::Tcp(tcp) => peek(tcp),
        ClientStream::Tls(tls) => {
            // Not a peek: what rustls already holds (a `close_notify` that
            // came with the last response) counts as much as the socket.
            // With nothing to read this costs one `EAGAIN`, as a peek does.
            let mut byte = [0u8; 1];
            let mut buf = ReadBuf::new(&mut byte);
            let mut cx = Context::from_waker(Waker::noop());
            match Pin::new(&mut **tls).poll_read(&mut cx, &mut buf) {
                // A record that is not data (a session ticket): still idle.
                Poll::Pending => Peek::Quiet,
                // `close_notify`.
                Poll::Ready(Ok(())) if buf.filled().is_empty() => Peek::Gone(Retired::PeerClosed),
                Poll::Ready(Ok(())) => Peek::Gone(Retired::BadResponse),
                // An alert, a FIN without `close_notify`, a reset.
                Poll::Ready(Err(_)) => Peek::Gone(Retired::PeerClosed),
            }
        }
    }
}

/// Looks at an idle socket without reading from it (`MSG_PEEK`, which
/// on tokio's non-blocking socket returns at once).
fn peek(stream: &TcpStream) -> Peek {
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(stream).peek(&mut byte) {
        Ok(0) => Peek::Gone(Retired::PeerClosed),
        Ok(_) => Peek::Gone(Retired::BadResponse),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Peek::Quiet,
        Err(_) => Peek::Gone(Retired::PeerClosed),
    }
}

impl Pool {
    fn closed(&self, cause: PoolClose) {
        self.counters.closed[cause.index()].fetch_add(1, Ordering::Relaxed);
        tracing::trace!(cause = cause.label(), "client connection closed");
    }

    /// Why `conn` may not carry a request now, if it may not.
    fn unusable(&self, conn: &mut Conn, now: Instant) -> Option<PoolClose> {
        if now.saturating_duration_since(conn.idle_since) >= self.options.idle_timeout {
            return Some(PoolClose::IdleTimeout);
        }
        if let Err(tether_proto::h1::client::ReuseError::Retired(why)) = conn.engine.check_reusable(now) {
            return Some(PoolClose::Retired(why));
        }
        match look(&mut conn.stream) {
            Peek::Quiet => None,
            Peek::Gone(why) => Some(PoolClose::Retired(why)),
        }
    }

    /// The most recently used idle connection of `origin` that may carry
    /// a request now; those that may not are closed on the way.
    fn checkout(&self, origin: &str) -> Option<Conn> {
        let now = Instant::now();
        let mut dropped = Vec::new();
        let found = {
            let mut idle = lock(&self.idle);
            let mut found = None;
            if let Some(list) = idle.by_origin.get_mut(origin) {
                while let Some(mut conn) = list.pop() {
                    match self.unusable(&mut conn, now) {
                        None => {
                            found = Some(conn);
                            break;
                        }
                        Some(cause) => dropped.push((conn, cause)),
                    }
                }
                if list.is_empty() {
                    idle.by_origin.remove(origin);
                }
            }
            idle.total -= dropped.len() + usize::from(found.is_some());
            found
        };
        for (conn, cause) in dropped {
            self.retire(conn, cause);
        }
        found
    }

    /// Puts `conn` back in the pool, or closes it if the engine retired
    /// it; makes room by closing the longest-idle ones past the limits.
    fn checkin(self: &Arc<Self>, mut conn: Conn) {
        if let Some(why) = conn.engine.retired() {
            return self.retire(conn, PoolClose::Retired(why));
        }
        if !self.options.keep_alive || self.options.max_idle_per_origin == 0 || self.options.max_idle_total == 0 {
            return self.retire(conn, PoolClose::PoolFull);
        }
        conn.idle_since = Instant::now();
        let mut evicted = Vec::new();
        {
            let mut guard = lock(&self.idle);
            let idle = &mut *guard;
            let list = idle.by_origin.entry(conn.origin.clone()).or_default();
            if list.len() >= self.options.max_idle_per_origin {
                evicted.push(list.remove(0));
            }
            list.push(conn);
            idle.total = idle.total + 1 - evicted.len();
            while idle.total > self.options.max_idle_total {
                let Some(c) = take_oldest(idle) else { break };
                evicted.push(c);
            }
        }
        for conn in evicted {
            self.retire(conn, PoolClose::PoolFull);
        }
        self.start_reaper();
        self.reaper.notify_one();
    }

    fn retire(&self, conn: Conn, cause: PoolClose) {
        self.closed(cause);
        drop(conn);
    }

    async fn connect(&self, target: &Target) -> Result<Conn, ClientError> {
        let connect = TcpStream::connect(&target.connect);
        let stream = match tokio::time::timeout(self.options.connect_timeout, connect).await {
            Err(_) => return Err(ClientError::ConnectTimeout(target.connect.clone())),
            Ok(Err(source)) => {
                return Err(ClientError::Connect {
                    origin: target.connect.clone(),
                    source,
                })
            }
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        let id = self.counters.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let stream = if target.tls {
            let tls_error = |source| ClientError::Tls {
                origin: target.origin.clone(),
                source,
            };
            let connector = self.tls_connector().map_err(tls_error)?;
            let handshake = connector.connect(&target.server_name, stream);
            let (tls, info) = match tokio::time::timeout(self.options.connect_timeout, handshake).await {
                Err(_) => return Err(ClientError::ConnectTimeout(target.origin.clone())),
                Ok(result) => result.map_err(tls_error)?,
            };
            self.counters.tls_handshakes.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(origin = %target.origin, version = %info.version, alpn = ?info.alpn,
                handshake = ?info.handshake, "client TLS handshake");
            ClientStream::Tls(Box::new(tls))
        } else {
            ClientStream::Tcp(stream)
        };
        let config = ClientConfig {
            timeout_margin: self.options.timeout_margin,
            ..ClientConfig::default()
        };
        Ok(Conn {
            id,
            stream,
            engine: ClientConnection::new(config),
            exchanges: 0,
            idle_since: Instant::now(),
            origin: target.origin.clone(),
        })
    }

    /// The TLS configuration, built once (a failure, such as an unreadable
    /// CA file, is returned and tried again at the next request).
    fn tls_connector(&self) -> Result<TlsConnector, TlsError> {
        let mut slot = lock(&self.tls);
        if let Some(connector) = slot.as_ref() {
            return Ok(connector.clone());
        }
        let connector = TlsConnector::new(&self.options.tls)?;
        *slot = Some(connector.clone());
        Ok(connector)
    }

    /// Closes what expired or what the server closed; returns when the
    /// next idle connection expires (`None`: nothing idle).
    fn reap(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut dropped = Vec::new();
        let mut next: Option<Instant> = None;
        {
            let mut guard = lock(&self.idle);
            let idle = &mut *guard;
            for list in idle.by_origin.values_mut() {
                let mut i = 0;
                while i < list.len() {
                    if let Some(cause) = self.unusable(&mut list[i], now) {
                        dropped.push((list.remove(i), cause));
                        continue;
                    }
                    let own = list[i].idle_since + self.options.idle_timeout;
                    let expires = list[i].engine.retire_at().map_or(own, |at| at.min(own));
                    next = Some(next.map_or(expires, |n| n.min(expires)));
                    i += 1;
                }
            }
            idle.by_origin.retain(|_, list| !list.is_empty());
            idle.total -= dropped.len();
        }
        for (conn, cause) in dropped {
            self.retire(conn, cause);
        }
        next
    }

    /// Starts the reaper task once (it holds the pool only weakly, so it
    /// ends within a second of the last client handle's drop).
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool = Arc::downgrade(self);
        let wake = self.reaper.clone();
        tokio::spawn(reaper(pool, wake));
    }

    /// Writes `batch` on `conn` (all of it, while reading), then reads the
    /// responses in order; puts the connection back if it may be reused.
    async fn exchange(
        self: &Arc<Self>,
        target: &Target,
        mut conn: Conn,
        batch: &[Prepared],
        retried: bool,
    ) -> Vec<Outcome> {
        let reused = conn.exchanges > 0;
        if reused {
            self.counters.reused.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        let before = conn.engine.traffic();
        let mut out = BytesMut::new();
        let mut sent = 0;
        for req in batch {
            let head = RequestHead {
                method: &req.method,
                target: &req.path,
                version: req.version,
                headers: &req.headers,
                keep_alive: self.options.keep_alive,
            };
            match conn.engine.send_request(Instant::now(), &head, req.body.len()) {
                Ok(bytes) => {
                    out.extend_from_slice(&bytes);
                    out.extend_from_slice(&req.body);
                    sent += 1;
                }
                // Retired between checkout and now (the margin passed):
                // the rest goes unanswered, to be sent on a fresh one.
                Err(e) => {
                    tracing::debug!(origin = %target.connect, error = %e, "request not sent on a retiring connection");
                    break;
                }
            }
        }
        let deadline = tokio::time::Instant::now() + self.options.response_timeout;
        let (mut outcomes, healthy) = self.transfer(&mut conn, out, sent, reused, retried, deadline).await;
        outcomes.resize_with(batch.len(), || Outcome::NotSent);
        let spent = conn.engine.traffic().since(before);
        {
            let mut total = lock(&self.counters.traffic);
            *total = total.plus(spent);
        }
        if healthy {
            self.checkin(conn);
        } else {
            self.retire(conn, PoolClose::Failed);
        }
        outcomes
    }

    /// The I/O of one batch: `out` written while responses are read, all
    /// by `deadline`. Returns an outcome for each of the `sent` requests
    /// and whether the connection ended in good order (reusable, or
    /// retired by the engine after complete responses).
    async fn transfer(
        &self,
        conn: &mut Conn,
        out: BytesMut,
        sent: usize,
        reused: bool,
        retried: bool,
        deadline: tokio::time::Instant,
    ) -> (Vec<Outcome>, bool) {
        let max_body = self.options.max_response_body;
        let (written, read) = match &mut conn.stream {
            ClientStream::Tcp(tcp) => {
                let (rd, wr) = tcp.split();
                write_and_read(rd, wr, &out, &mut conn.engine, sent, max_body, deadline).await
            }
            ClientStream::Tls(tls) => {
                let (rd, wr) = tokio::io::split(&mut **tls);
                write_and_read(rd, wr, &out, &mut conn.engine, sent, max_body, deadline).await
            }
        };
        let ReadResult {
            mut outcomes,
            broken,
            partial,
        } = read;
        for (i, o) in outcomes.iter_mut().enumerate() {
            if let Outcome::Done(resp) = o {
                if let Some(x) = resp.extensions_mut().get_mut::<Exchange>() {
                    x.connection = conn.id;
                    x.sequence = conn.exchanges + 1 + i as u64;
                    x.reused = reused || i > 0;
                    x.retried = retried;
                }
            }
        }
        let done = outcomes.len() as u64;
        conn.exchanges += done;
        self.counters.responses.fetch_add(done, Ordering::Relaxed);
        let write_error = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("write timed out".to_string()),
        };
        let Some(broken) = broken.or(write_error.map(Broken::Closed)) else {
            return (outcomes, true);
        };
        if outcomes.len() < sent {
            let failed = match &broken {
                Broken::Timeout => Some(ClientError::Timeout(self.options.response_timeout)),
                Broken::TooLarge => Some(ClientError::BodyTooLarge(self.options.max_response_body)),
                Broken::Malformed => Some(ClientError::BadResponse),
                Broken::Closed(why) if partial => Some(ClientError::Truncated(why.clone())),
                Broken::Closed(_) => None,
            };
            outcomes.extend(failed.map(Outcome::Failed));
            let cause = broken.to_string();
            outcomes.resize_with(sent, || Outcome::Unanswered(cause.clone()));
        }
        (outcomes, false)
    }
}

/// Why a batch's reading stopped early.
#[derive(Debug)]
enum Broken {
    /// EOF, reset or a failed write (the text says which).
    Closed(String),
    Timeout,
    TooLarge,
    Malformed,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::Closed(why) => f.write_str(why),
            Broken::Timeout => f.write_str("timed out"),
            Broken::TooLarge => f.write_str("response body too large"),
            Broken::Malformed => f.write_str("malformed response"),
        }
    }
}

struct ReadResult {
    /// The complete responses, in order.
    outcomes: Vec<Outcome>,
    /// Why reading stopped before `sent` responses (`None`: it did not).
    broken: Option<Broken>,
    /// Whether bytes of the next response had arrived when it stopped.
    partial: bool,
}

/// Writes `out` (flushed: TLS may hold the last bytes) while reading `sent`
/// responses. A failed write is not the end: the server may have answered
/// before it closed, so reading goes on to EOF.
async fn write_and_read<R, W>(
    mut rd: R,
    mut wr: W,
    out: &[u8],
    engine: &mut ClientConnection,
    sent: usize,
    max_body: usize,
    deadline: tokio::time::Instant,
) -> (Result<io::Result<()>, tokio::time::error::Elapsed>, ReadResult)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let write = async {
        tokio::time::timeout_at(deadline, async {
            wr.write_all(out).await?;
            wr.flush().await
        })
        .await
    };
    let read = read_responses(&mut rd, engine, sent, max_body, deadline);
    tokio::join!(write, read)
}

/// Reads `sent` responses through `engine`, each body at most `max_body`.
async fn read_responses<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    engine: &mut ClientConnection,
    sent: usize,
    max_body: usize,
    deadline: tokio::time::Instant,
) -> ReadResult {
    let mut outcomes = Vec::with_capacity(sent);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut current: Option<(ResponseHead, BytesMut)> = None;
    let mut partial = false;
    let mut last = engine.traffic();
    let stop = |outcomes, broken, partial| ReadResult {
        outcomes,
        broken: Some(broken),
        partial,
    };
    while outcomes.len() < sent {
        buf.clear();
        let n = match tokio::time::timeout_at(deadline, rd.read_buf(&mut buf)).await {
            Err(_) => return stop(outcomes, Broken::Timeout, partial),
            // TLS: a TCP close without `close_notify` is the end too.
            Ok(Err(e)) if is_unclean_eof(&e) => 0,
            Ok(Err(e)) => return stop(outcomes, Broken::Closed(e.to_string()), partial),
            Ok(Ok(n)) => n,
        };
        let now = Instant::now();
        if n == 0 {
            engine.handle_eof(now);
        } else {
            partial = true;
            engine.handle_input(&buf, now);
        }
        while let Some(event) = engine.poll_event() {
            match event {
                ClientEvent::Head(head) => current = Some((head, BytesMut::new())),
                ClientEvent::Body(chunk) => {
                    let Some((_, body)) = current.as_mut() else { continue };
                    if body.len() + chunk.len() > max_body {
                        return stop(outcomes, Broken::TooLarge, true);
                    }
                    body.extend_from_slice(&chunk);
                }
                ClientEvent::End => {
                    let Some((head, body)) = current.take() else { continue };
                    let now = engine.traffic();
                    outcomes.push(Outcome::Done(response(head, body, engine.hints(), now.since(last))));
                    last = now;
                    partial = current.is_some();
                }
            }
        }
        if engine.retired() == Some(Retired::BadResponse) {
            return stop(outcomes, Broken::Malformed, partial);
        }
        if n == 0 && outcomes.len() < sent {
            return stop(
                outcomes,
                Broken::Closed("the server closed the connection".into()),
                partial,
            );
        }
    }
    ReadResult {
        outcomes,
        broken: None,
        partial: false,
    }
}

/// A complete response, with its [`Exchange`] (the connection's fields
/// are filled in by the caller).
fn response(head: ResponseHead, body: BytesMut, hints: KeepAliveHints, traffic: Traffic) -> Response<Bytes> {
    let mut resp = Response::new(body.freeze());
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    resp.extensions_mut().insert(Exchange {
        connection: 0,
        sequence: 0,
        reused: false,
        retried: false,
        hints,
        traffic,
    });
    resp
}
