//! Helpers for the socket-level server tests: a [`TestServer`] running
//! `tether::server::Server` on `127.0.0.1:0` with a small router, and a raw
//! HTTP/1.1 [`Client`] that writes bytes and parses responses strictly.
//!
//! Every read and write has a deadline ([`IO_TIMEOUT`] unless a test gives a
//! tighter one): a test fails with a message rather than hanging.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use tether::proto::h1;
use tether::server::router::{self, Router};
use tether::server::{Body, BodyError, Request, Response, Server, ServerStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// The deadline for any single read, write, connect or wait.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The most the echo handler reads (the engine's `max_body` is usually lower).
pub const ECHO_LIMIT: u64 = 32 * 1024 * 1024;
/// How long the `/slow` handler sleeps.
pub const SLOW: Duration = Duration::from_millis(300);
/// The pieces the `/stream` handler sends, in order.
pub const STREAM_PIECES: [&str; 3] = ["first piece\n", "second\n", "the third and last piece\n"];

/// A config whose every timeout is large: tests shorten the one they test.
pub fn config() -> h1::Config {
    h1::Config::default()
}

// ----- the router -----

fn app(started: mpsc::UnboundedSender<&'static str>, gate: Arc<Notify>) -> Router {
    let slow_started = started.clone();
    let hang_started = started.clone();
    let gate_started = started;
    Router::new()
        .route(
            "/healthz",
            router::get(|_req: Request| async { router::text(StatusCode::OK, "ok") }),
        )
        .route(
            "/echo",
            router::methods(&[Method::GET, Method::HEAD, Method::POST], |req: Request| async move {
                match req.into_body().to_bytes(ECHO_LIMIT).await {
                    Ok(body) => Response::new(Body::Full(body)),
                    Err(BodyError::TooLarge { .. }) => router::text(StatusCode::PAYLOAD_TOO_LARGE, "too large\n"),
                    Err(_) => router::text(StatusCode::BAD_REQUEST, "bad body\n"),
                }
            }),
        )
        // Answers without reading the request body (drops it).
        .route("/ignore", |_req: Request| async {
            router::text(StatusCode::OK, "ignored")
        })
        .route(
            "/stream",
            router::get(|_req: Request| async {
                let (tx, body) = Body::channel(4);
                tokio::spawn(async move {
                    for piece in STREAM_PIECES {
                        if tx.send(Ok(Bytes::from_static(piece.as_bytes()))).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                });
                let mut resp = Response::new(body);
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                resp
            }),
        )
        .route("/close", |_req: Request| async {
            let mut resp = router::text(StatusCode::OK, "bye");
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        })
        .route("/slow", move |_req: Request| {
            let started = slow_started.clone();
            async move {
                let _ = started.send("slow");
                tokio::time::sleep(SLOW).await;
                router::text(StatusCode::OK, "slow")
            }
        })
        .route("/hang", move |_req: Request| {
            let started = hang_started.clone();
            async move {
                let _ = started.send("hang");
                std::future::pending::<()>().await;
                router::text(StatusCode::OK, "unreachable")
            }
        })
        // Answers once the test opens the gate.
        .route("/gate", move |_req: Request| {
            let started = gate_started.clone();
            let gate = gate.clone();
            async move {
                let _ = started.send("gate");
                gate.notified().await;
                router::text(StatusCode::OK, "gated")
            }
        })
}

// ----- the server -----

/// A server running in the test's runtime until [`TestServer::shutdown`]
/// (or until dropped).
pub struct TestServer {
    pub addr: SocketAddr,
    pub stats: Arc<ServerStats>,
    shutdown: Option<oneshot::Sender<()>>,
    serve: Option<JoinHandle<std::io::Result<()>>>,
    started: mpsc::UnboundedReceiver<&'static str>,
    gate: Arc<Notify>,
}

impl TestServer {
    /// Starts a server with `config` and a 10 s shutdown timeout.
    pub async fn start(config: h1::Config) -> Self {
        Self::start_with(config, Duration::from_secs(10)).await
    }

    /// Starts a server with `config` and `shutdown_timeout`.
    pub async fn start_with(config: h1::Config, shutdown_timeout: Duration) -> Self {
        Self::start_parking(config, shutdown_timeout, Some(tether::server::DEFAULT_PARK_AFTER)).await
    }

    /// Starts a server that parks connections idle for `park_after`.
    pub async fn start_parking(config: h1::Config, shutdown_timeout: Duration, park_after: Option<Duration>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (started_tx, started) = mpsc::unbounded_channel();
        let gate = Arc::new(Notify::new());
        let server = Server::new(config, app(started_tx, gate.clone()))
            .shutdown_timeout(shutdown_timeout)
            .park_idle_after(park_after);
        let stats = server.stats();
        let (tx, rx) = oneshot::channel::<()>();
        let serve = tokio::spawn(server.serve(listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            stats,
            shutdown: Some(tx),
            serve: Some(serve),
            started,
            gate,
        }
    }

    /// A new raw connection to the server.
    pub async fn connect(&self) -> Client {
        let stream = timeout(IO_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        stream.set_nodelay(true).expect("nodelay");
        let (r, w) = stream.into_split();
        Client { r, w, buf: Vec::new() }
    }

    /// Triggers graceful shutdown (the future given to `serve` completes).
    pub fn trigger_shutdown(&mut self) {
        let tx = self.shutdown.take().expect("shutdown already triggered");
        tx.send(()).expect("the server is gone");
    }

    /// Waits up to `within` for `serve` to return; asserts it returned `Ok`.
    /// Returns how long it took.
    pub async fn wait_serve_returned(&mut self, within: Duration) -> Duration {
        let t0 = Instant::now();
        let handle = self.serve.as_mut().expect("serve already awaited");
        let res = timeout(within, handle)
            .await
            .unwrap_or_else(|_| panic!("Server::serve did not return within {within:?}"));
        self.serve = None;
        res.expect("serve task panicked").expect("serve returned an error");
        t0.elapsed()
    }

    /// Waits until the handler `name` (`slow`, `hang`, `gate`) has started.
    pub async fn wait_started(&mut self, name: &str) {
        let got = timeout(IO_TIMEOUT, self.started.recv())
            .await
            .unwrap_or_else(|_| panic!("handler {name} did not start within {IO_TIMEOUT:?}"))
            .expect("router gone");
        assert_eq!(got, name, "a different handler started");
    }

    /// Lets one `/gate` request answer.
    pub fn open_gate(&self) {
        self.gate.notify_one();
    }

    /// `GET /healthz` on a new connection answers 200 `ok`.
    pub async fn assert_healthy(&self) {
        let mut c = self.connect().await;
        c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "healthz on a new connection: {}", r.head);
        assert_eq!(r.body, b"ok");
    }
}

// ----- the client -----

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    /// The head as received, status line to the empty line (CRLFs included).
    pub head: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Chunk sizes when the body was chunked.
    pub chunks: Option<Vec<usize>>,
}

impl Resp {
    /// The value of the only field named `name` (case-insensitive); panics if repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut it = self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
        let first = it.next().map(|(_, v)| v.as_str());
        assert!(it.next().is_none(), "header {name} repeated in\n{}", self.head);
        first
    }

    /// Whether the head has exactly this header line (`name: value`) on the wire.
    pub fn has_line(&self, line: &str) -> bool {
        self.head.split("\r\n").any(|l| l == line)
    }

    /// Asserts the response keeps the connection: no `connection` field
    /// and exactly `keep-alive: timeout=T, max=M`.
    pub fn assert_keeps_alive(&self, timeout_s: u64, max: u32) {
        assert!(
            self.header("connection").is_none(),
            "unexpected connection header in\n{}",
            self.head
        );
        let want = format!("keep-alive: timeout={timeout_s}, max={max}");
        assert!(self.has_line(&want), "expected `{want}` in\n{}", self.head);
    }

    /// Asserts the response says `connection: close` and has no `keep-alive` field.
    pub fn assert_closes(&self) {
        assert!(
            self.has_line("connection: close"),
            "expected `connection: close` in\n{}",
            self.head
        );
        assert!(
            self.header("keep-alive").is_none(),
            "unexpected keep-alive header in\n{}",
            self.head
        );
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How the server ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// A clean FIN: read returned 0.
    Eof,
    /// Reset (or another read error).
    Reset,
}

/// A raw client connection.
pub struct Client {
    r: OwnedReadHalf,
    w: OwnedWriteHalf,
    /// Bytes received and not yet parsed.
    buf: Vec<u8>,
}

impl Client {
    /// The client's own address: the server's `peer`.
    pub fn local_addr(&self) -> SocketAddr {
        self.r.local_addr().expect("local addr")
    }

    /// A new raw connection to 127.0.0.1:`port`.
    pub async fn connect(port: u16) -> Client {
        let stream = timeout(IO_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        stream.set_nodelay(true).expect("nodelay");
        let (r, w) = stream.into_split();
        Client { r, w, buf: Vec::new() }
    }

    /// Reads until `pattern` has arrived (bounded by `within`); returns
    /// everything read up to and including it, leaving the rest buffered.
    pub async fn read_until(&mut self, pattern: &[u8], within: Duration) -> Vec<u8> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(at) = self.buf.windows(pattern.len()).position(|w| w == pattern) {
                return self.buf.drain(..at + pattern.len()).collect();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut tmp = [0u8; 16384];
            match timeout(left, self.r.read(&mut tmp)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&tmp[..n]),
                other => panic!(
                    "{:?} did not arrive within {within:?} ({other:?}); got {:?}",
                    String::from_utf8_lossy(pattern),
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    /// Writes all of `data`.
    pub async fn send(&mut self, data: &[u8]) {
        timeout(IO_TIMEOUT, self.w.write_all(data))
            .await
            .expect("write timed out")
            .expect("write failed");
    }

    /// Reads more bytes into the buffer; 0 at EOF. Panics on timeout or error.
    async fn fill(&mut self) -> usize {
        fill(&mut self.r, &mut self.buf).await
    }

    /// Reads one response to a non-HEAD request.
    pub async fn response(&mut self) -> Resp {
        read_response(&mut self.r, &mut self.buf, false).await
    }

    /// Reads one response to a HEAD request (no body whatever the framing says).
    pub async fn head_response(&mut self) -> Resp {
        read_response(&mut self.r, &mut self.buf, true).await
    }

    /// Writes `data` while reading one response (for bodies larger than the
    /// socket buffers).
    pub async fn send_and_read(&mut self, data: &[u8]) -> Resp {
        let write = async {
            timeout(IO_TIMEOUT * 4, self.w.write_all(data))
                .await
                .expect("write timed out")
                .expect("write failed");
        };
        let (_, resp) = tokio::join!(write, read_response(&mut self.r, &mut self.buf, false));
        resp
    }

    /// Writes `data` while (after `before_read` completes) reading one
    /// response; the write must complete without error.
    pub async fn send_and_read_after(
        &mut self,
        data: &[u8],
        before_read: impl std::future::Future<Output = ()>,
    ) -> Resp {
        let write = async {
            timeout(IO_TIMEOUT * 4, self.w.write_all(data))
                .await
                .expect("write timed out")
                .expect("write failed");
        };
        let read = async {
            before_read.await;
            read_response(&mut self.r, &mut self.buf, false).await
        };
        let (_, resp) = tokio::join!(write, read);
        resp
    }

    /// Asserts nothing more was received and the server closes the
    /// connection cleanly (read returns 0) within `within`; returns how long
    /// the wait took.
    pub async fn expect_eof(&mut self, within: Duration) -> Duration {
        let (closed, took) = self.expect_closed(within).await;
        assert_eq!(closed, Closed::Eof, "connection reset instead of a clean close");
        took
    }

    /// Asserts nothing more was received and the server closes the
    /// connection (FIN or reset) within `within`.
    pub async fn expect_closed(&mut self, within: Duration) -> (Closed, Duration) {
        assert!(
            self.buf.is_empty(),
            "unexpected bytes after the last response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let t0 = Instant::now();
        let mut tmp = [0u8; 4096];
        match timeout(within, self.r.read(&mut tmp)).await {
            Err(_) => panic!("the server did not close the connection within {within:?}"),
            Ok(Ok(0)) => (Closed::Eof, t0.elapsed()),
            Ok(Ok(n)) => panic!(
                "expected the connection to close, got {n} more bytes: {:?}",
                String::from_utf8_lossy(&tmp[..n])
            ),
            Ok(Err(_)) => (Closed::Reset, t0.elapsed()),
        }
    }

    /// Asserts nothing arrives (and the connection stays open) for `dur`.
    pub async fn expect_silence(&mut self, dur: Duration) {
        assert!(
            self.buf.is_empty(),
            "unexpected bytes: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut tmp = [0u8; 4096];
        match timeout(dur, self.r.read(&mut tmp)).await {
            Err(_) => {}
            Ok(Ok(0)) => panic!("the server closed the connection"),
            Ok(Ok(n)) => panic!("unexpected {n} bytes: {:?}", String::from_utf8_lossy(&tmp[..n])),
            Ok(Err(e)) => panic!("read failed: {e}"),
        }
    }
}

async fn fill(r: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> usize {
    let mut tmp = vec![0u8; 64 * 1024];
    let n = timeout(IO_TIMEOUT, r.read(&mut tmp))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no response bytes within {IO_TIMEOUT:?}; have so far: {:?}",
                String::from_utf8_lossy(&buf[..buf.len().min(500)])
            )
        })
        .unwrap_or_else(|e| {
            panic!(
                "read failed: {e}; have so far: {:?}",
                String::from_utf8_lossy(&buf[..buf.len().min(500)])
            )
        });
    buf.extend_from_slice(&tmp[..n]);
    n
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Takes one CRLF-terminated line (without the CRLF).
async fn take_line(r: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> String {
    loop {
        if let Some(i) = find(buf, b"\r\n") {
            let line = String::from_utf8(buf[..i].to_vec()).expect("line is not UTF-8");
            buf.drain(..i + 2);
            return line;
        }
        if fill(r, buf).await == 0 {
            panic!(
                "connection closed in the middle of a line: {:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }
}

async fn take_exact(r: &mut OwnedReadHalf, buf: &mut Vec<u8>, n: usize) -> Vec<u8> {
    while buf.len() < n {
        if fill(r, buf).await == 0 {
            panic!("connection closed after {} of {n} body bytes", buf.len());
        }
    }
    buf.drain(..n).collect()
}

async fn read_response(r: &mut OwnedReadHalf, buf: &mut Vec<u8>, head_request: bool) -> Resp {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if fill(r, buf).await == 0 {
            panic!(
                "connection closed before a complete response head; got {:?}",
                String::from_utf8_lossy(buf)
            );
        }
    };
    let head = String::from_utf8(buf.drain(..head_end).collect()).expect("response head is not UTF-8");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "bad status line {status_line:?}");
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap_or_else(|| panic!("bad header line {l:?}"));
            assert!(!n.is_empty() && !n.contains(' '), "bad header name in {l:?}");
            (n.to_string(), v.trim().to_string())
        })
        .collect();
    let mut resp = Resp {
        status,
        head,
        headers,
        body: Vec::new(),
        chunks: None,
    };
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return resp;
    }
    let te = resp.header("transfer-encoding").map(str::to_ascii_lowercase);
    let cl = resp
        .header("content-length")
        .map(|v| v.parse::<usize>().expect("bad content-length"));
    if let Some(te) = te {
        assert_eq!(te, "chunked", "unexpected transfer-encoding");
        assert!(
            cl.is_none(),
            "both content-length and transfer-encoding in\n{}",
            resp.head
        );
        let mut chunks = Vec::new();
        loop {
            let line = take_line(r, buf).await;
            assert!(
                !line.is_empty() && line.len() <= 16 && line.bytes().all(|b| b.is_ascii_hexdigit()),
                "bad chunk size line {line:?}"
            );
            let size = usize::from_str_radix(&line, 16).expect("chunk size");
            if size == 0 {
                // No trailers expected from this server: the empty line ends the body.
                let end = take_line(r, buf).await;
                assert_eq!(end, "", "unexpected trailer after the last chunk");
                break;
            }
            let data = take_exact(r, buf, size).await;
            resp.body.extend_from_slice(&data);
            let crlf = take_exact(r, buf, 2).await;
            assert_eq!(crlf, b"\r\n", "chunk data not followed by CRLF");
            chunks.push(size);
        }
        resp.chunks = Some(chunks);
    } else if let Some(n) = cl {
        resp.body = take_exact(r, buf, n).await;
    } else {
        // Delimited by close.
        while fill(r, buf).await > 0 {}
        resp.body = std::mem::take(buf);
    }
    resp
}

/// A GET request for `path` with `Host`.
pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

/// A POST /echo request with a Content-Length body.
pub fn post_echo(body: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

/// Asserts `elapsed` is within `[lo, hi]`.
pub fn assert_between(what: &str, elapsed: Duration, lo: Duration, hi: Duration) {
    assert!(
        elapsed >= lo && elapsed <= hi,
        "{what}: took {elapsed:?}, expected between {lo:?} and {hi:?}"
    );
}

/// Waits (bounded: 5 s) until a server's counters reach `parked` and `open`.
pub async fn wait_stats(stats: &ServerStats, parked: u64, open: u64) {
    use std::sync::atomic::Ordering;
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let (p, o) = (stats.parked.load(Ordering::Relaxed), stats.open.get());
        if (p, o) == (parked, open) {
            return;
        }
        assert!(
            Instant::now() < until,
            "expected {parked} parked / {open} open, have {p} / {o}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Any configured [`Server`] (its own router and settings) serving on
/// `127.0.0.1:0` until [`stop`](Serving::stop)ped.
pub struct Serving {
    pub port: u16,
    pub stats: Arc<ServerStats>,
    stop: Option<oneshot::Sender<()>>,
    done: JoinHandle<()>,
}

impl Serving {
    pub async fn start(server: Server) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let stats = server.stats();
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            server
                .serve(listener, async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            port,
            stats,
            stop: Some(tx),
            done,
        }
    }

    /// Starts graceful shutdown without waiting for it.
    pub fn begin_stop(&mut self) {
        let _ = self.stop.take().expect("stopped once").send(());
    }

    /// Waits (bounded by `within`) for `serve` to return.
    pub async fn finished(self, within: Duration) {
        timeout(within, self.done).await.expect("server stops").unwrap();
    }

    /// Graceful shutdown, waited for (bounded: 10 s).
    pub async fn stop(mut self) {
        self.begin_stop();
        self.finished(Duration::from_secs(10)).await;
    }

    /// Waits (bounded) until the server's counters reach `parked` and `open`.
    pub async fn wait_counts(&self, parked: u64, open: u64) {
        wait_stats(&self.stats, parked, open).await;
    }
}

/// Opens a TCP connection and sends a WebSocket upgrade request on `/ws`
/// (the response is the caller's to read).
pub async fn raw_upgrade(port: u16) -> TcpStream {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("write the upgrade request");
    tcp
}
