//! Bytes on the wire over real sockets: the test counts every byte it
//! writes and reads on raw TCP, and the server's counters
//! (`ServerStats::traffic`, `/metrics`' `tether_wire_bytes_total`,
//! `WebSocket::traffic`) must agree exactly, heads and chunk framing apart
//! from bodies, frame headers apart from payloads; across keep-alive,
//! parking and the upgrade to WebSocket.
//!
//! The WebSocket totals are process-wide: one test in this file opens
//! WebSockets, so nothing else moves them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Serving;
use http::StatusCode;
use tether::proto::h1;
use tether::server::router::{self, Router};
use tether::server::{Body, Request, Response, Server};
use tether::traffic::{Traffic, WireBytes};
use tether::ws::{self, Message, Replies, WsOptions, WS_TOTALS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

mod common;

const T: Duration = Duration::from_secs(10);
const PARK: Duration = Duration::from_millis(50);

fn wire(overhead: usize, payload: usize) -> WireBytes {
    WireBytes {
        overhead: overhead as u64,
        payload: payload as u64,
    }
}

/// Raw TCP that counts what it writes and reads (and reads exactly what
/// it asks for: nothing is read ahead).
struct Counted {
    tcp: TcpStream,
    written: usize,
    read: usize,
}

impl Counted {
    async fn connect(port: u16) -> Counted {
        let tcp = timeout(T, TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("connect in time")
            .expect("connect");
        Counted {
            tcp,
            written: 0,
            read: 0,
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        timeout(T, self.tcp.write_all(bytes))
            .await
            .expect("write in time")
            .expect("write");
        self.written += bytes.len();
    }

    async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        timeout(T, self.tcp.read_exact(&mut buf))
            .await
            .expect("read in time")
            .expect("read");
        self.read += n;
        buf
    }

    /// A line ending in CRLF, CRLF included.
    async fn line(&mut self) -> String {
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            line.extend(self.read_exact(1).await);
        }
        String::from_utf8(line).expect("ASCII")
    }

    /// A response head, up to and including its empty line.
    async fn head(&mut self) -> String {
        let mut head = String::new();
        loop {
            let line = self.line().await;
            head += &line;
            if line == "\r\n" {
                return head;
            }
        }
    }

    /// A whole response: its head and its body as decoded
    /// (`Content-Length` or chunked).
    async fn response(&mut self) -> (String, Vec<u8>) {
        let head = self.head().await;
        let field = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        if field("transfer-encoding:").as_deref() == Some("chunked") {
            let mut body = Vec::new();
            loop {
                let size = usize::from_str_radix(self.line().await.trim_end(), 16).expect("chunk size");
                if size == 0 {
                    assert_eq!(self.line().await, "\r\n", "no trailers");
                    return (head, body);
                }
                body.extend(self.read_exact(size).await);
                assert_eq!(self.read_exact(2).await, b"\r\n");
            }
        }
        let length: usize = field("content-length:").expect("a length").parse().unwrap();
        let body = self.read_exact(length).await;
        (head, body)
    }

    async fn expect_eof(&mut self) {
        let mut b = [0u8; 1];
        let n = timeout(T, self.tcp.read(&mut b))
            .await
            .expect("eof in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "the server closes");
    }

    /// A masked client frame, and its header's length.
    fn frame(opcode: u8, payload: &[u8]) -> (Vec<u8>, usize) {
        let key = [9u8, 8, 7, 6];
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        let header = f.len();
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        (f, header)
    }

    /// The next server frame: its opcode, payload and header length.
    async fn next_frame(&mut self) -> (u8, Vec<u8>, usize) {
        let h = self.read_exact(2).await;
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        let (len, header) = match h[1] & 0x7F {
            126 => (
                u16::from_be_bytes(self.read_exact(2).await.try_into().unwrap()) as usize,
                4,
            ),
            127 => (
                u64::from_be_bytes(self.read_exact(8).await.try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        (h[0] & 0x0F, self.read_exact(len).await, header)
    }
}

/// Waits (bounded) until `get()` equals `want`, then asserts it does.
async fn eventually(what: &str, want: Traffic, get: impl Fn() -> Traffic) {
    let until = Instant::now() + Duration::from_secs(5);
    while get() != want && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get(), want, "{what}");
}

fn app() -> Router {
    Router::new()
        .route("/echo", |req: Request| async move {
            let body = req.into_body().to_bytes(1 << 20).await.expect("a body");
            Response::new(Body::Full(body))
        })
        .route(
            "/stream",
            router::get(|_req: Request| async {
                let (tx, body) = Body::channel(4);
                tokio::spawn(async move {
                    for piece in ["first piece\n", "and a second, longer piece\n"] {
                        let _ = tx.send(Ok(Bytes::from_static(piece.as_bytes()))).await;
                    }
                });
                Response::new(body)
            }),
        )
        .route(
            "/hello",
            router::get(|_req: Request| async { router::text(StatusCode::OK, "hello") }),
        )
        // Answers without reading the request body.
        .route("/ignore", |_req: Request| async {
            router::text(StatusCode::OK, "ignored")
        })
}

/// A keep-alive connection: a chunked request body echoed, a streamed
/// (chunked) response after the connection parked and resumed, and a last
/// request that closes it. The server counts what the client wrote and
/// read, to the byte, split by part.
#[tokio::test]
async fn http_bytes_are_counted_exactly_across_keep_alive_and_parking() {
    let server = Serving::start(Server::new(h1::Config::default(), app()).park_idle_after(Some(PARK))).await;
    let mut c = Counted::connect(server.port).await;
    let (mut body_in, mut body_out) = (0, 0);

    let chunks = ["hello", ", wire", " bytes; and a chunk extension"];
    let mut req = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for (i, chunk) in chunks.iter().enumerate() {
        let ext = if i == 2 { ";name=value" } else { "" };
        req.extend_from_slice(format!("{:x}{ext}\r\n{chunk}\r\n", chunk.len()).as_bytes());
        body_in += chunk.len();
    }
    req.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    c.write(&req).await;
    let (head, body) = c.response().await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body, chunks.concat().as_bytes());
    body_out += body.len();

    // Idle: the connection parks; the next request wakes it.
    server.wait_counts(1, 1).await;
    c.write(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let (head, body) = c.response().await;
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    body_out += body.len();

    server.wait_counts(1, 1).await;
    c.write(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await;
    let (_, body) = c.response().await;
    assert_eq!(body, b"hello");
    body_out += body.len();
    c.expect_eof().await;

    let want = Traffic {
        received: wire(c.written - body_in, body_in),
        sent: wire(c.read - body_out, body_out),
    };
    let stats = server.stats.clone();
    eventually("the server's HTTP bytes", want, || stats.traffic().http).await;

    let metrics = tether::metrics::render(&server.stats, None);
    for (direction, part, n) in [
        ("in", "head", want.received.overhead),
        ("in", "body", want.received.payload),
        ("out", "head", want.sent.overhead),
        ("out", "body", want.sent.payload),
    ] {
        let line =
            format!("tether_wire_bytes_total{{protocol=\"http\",direction=\"{direction}\",part=\"{part}\"}} {n}\n");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    server.stop().await;
}

/// Requests pipelined in one write and a body the handler never reads
/// (drained): still every byte, once.
#[tokio::test]
async fn pipelined_requests_and_drained_bodies_are_counted_exactly() {
    let server = Serving::start(Server::new(h1::Config::default(), app()).park_idle_after(None)).await;
    let mut c = Counted::connect(server.port).await;
    let unread = "x".repeat(3000);
    let requests = format!(
        "POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{unread}\
         POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nabcd\
         GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        unread.len()
    );
    c.write(requests.as_bytes()).await;
    let mut body_out = 0;
    for expected in [&b"ignored"[..], b"abcd", b"hello"] {
        let (_, body) = c.response().await;
        assert_eq!(body, expected);
        body_out += body.len();
    }
    c.expect_eof().await;
    let body_in = unread.len() + 4;
    let want = Traffic {
        received: wire(c.written - body_in, body_in),
        sent: wire(c.read - body_out, body_out),
    };
    let stats = server.stats.clone();
    eventually("the server's HTTP bytes", want, || stats.traffic().http).await;
    server.stop().await;
}

/// An echo service for `upgrade_service` (its connections park).
fn echo(message: Message, replies: &mut Replies<'_>) {
    let _ = replies.send(message);
}

/// What one WebSocket exchange moved, as the client counted it.
#[derive(Default)]
struct Exchange {
    http: Traffic,
    ws: Traffic,
}

/// Upgrades `c` on `path`, with `first` (a frame) in the same write as the
/// request when given; counts the HTTP phase.
async fn upgrade(c: &mut Counted, path: &str, first: Option<&[u8]>, x: &mut Exchange) {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let mut bytes = request.clone().into_bytes();
    bytes.extend_from_slice(first.unwrap_or_default());
    c.write(&bytes).await;
    let head = c.head().await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    x.http.received.add_overhead(request.len());
    x.http.sent.add_overhead(head.len());
}

/// Sends a frame and reads the server's answer (an echo, a pong, the
/// close echo), counting both.
async fn round(c: &mut Counted, opcode: u8, payload: &[u8], x: &mut Exchange) {
    let (frame, header) = Counted::frame(opcode, payload);
    c.write(&frame).await;
    x.ws.received.add_overhead(header);
    x.ws.received.add_payload(payload.len());
    answer(c, payload, x).await;
}

async fn answer(c: &mut Counted, payload: &[u8], x: &mut Exchange) {
    let (_, got, header) = c.next_frame().await;
    assert_eq!(got, payload, "the echo");
    x.ws.sent.add_overhead(header);
    x.ws.sent.add_payload(got.len());
}

/// WebSockets, on a handle (`ws::upgrade`) and callback-served with
/// parking (`ws::upgrade_service`): the HTTP phase counts as HTTP, frames
/// (masked frames of 125, 126 and 65,536 bytes: 6, 8 and 14 header bytes
/// in; 2, 4 and 10 out) as WebSocket, and a connection's own traffic is
/// both. The frame sent with the upgrade request counts once, as WebSocket.
#[tokio::test]
async fn websocket_bytes_are_counted_exactly_by_phase_and_part() {
    let ws_before = WS_TOTALS.traffic.get();
    let seen: Arc<Mutex<Option<Traffic>>> = Arc::default();
    let options = Arc::new(WsOptions::default());
    let (handle_options, seen_by_handler) = (options.clone(), seen.clone());
    let router = Router::new()
        .route("/ws", move |req: Request| {
            let (options, seen) = (handle_options.clone(), seen_by_handler.clone());
            async move {
                ws::upgrade(&req, &options, move |mut socket| async move {
                    while let Some(Ok(m)) = socket.recv().await {
                        if matches!(m, Message::Text(_) | Message::Binary(_)) {
                            let _ = socket.send(m).await;
                        }
                    }
                    *seen.lock().unwrap() = Some(socket.traffic());
                })
            }
        })
        .route("/svc", move |req: Request| {
            let options = options.clone();
            async move { ws::upgrade_service(&req, &options, echo) }
        });
    let server = Serving::start(Server::new(h1::Config::default(), router).park_idle_after(Some(PARK))).await;
    let mut x = Exchange::default();

    // On a handle: the first frame rides with the upgrade request.
    let mut c = Counted::connect(server.port).await;
    let first = vec![b'a'; 125];
    let (frame, header) = Counted::frame(0x1, &first);
    assert_eq!(header, 6);
    upgrade(&mut c, "/ws", Some(&frame), &mut x).await;
    x.ws.received.add_overhead(header);
    x.ws.received.add_payload(first.len());
    answer(&mut c, &first, &mut x).await;
    round(&mut c, 0x2, &[1u8; 126], &mut x).await;
    round(&mut c, 0x2, &vec![2u8; 65_536], &mut x).await;
    round(&mut c, 0x9, b"ping", &mut x).await;
    round(&mut c, 0x8, &1000u16.to_be_bytes(), &mut x).await;
    c.expect_eof().await;
    let connection = x.http.plus(x.ws);
    assert_eq!(connection.received.total() as usize, c.written);
    assert_eq!(connection.sent.total() as usize, c.read);
    eventually("WebSocket::traffic: the whole connection", connection, || {
        seen.lock().unwrap().unwrap_or_default()
    })
    .await;

    // Callback-served: it parks between messages, is woken by input and
    // answers on a task again.
    let mut c = Counted::connect(server.port).await;
    upgrade(&mut c, "/svc", None, &mut x).await;
    for payload in [&b"one"[..], &[3u8; 300], b"three"] {
        server.wait_counts(1, 1).await;
        round(&mut c, 0x2, payload, &mut x).await;
    }
    server.wait_counts(1, 1).await;
    round(&mut c, 0x8, &1000u16.to_be_bytes(), &mut x).await;
    c.expect_eof().await;

    let stats = server.stats.clone();
    eventually("the server's HTTP bytes: the two upgrades", x.http, || {
        stats.traffic().http
    })
    .await;
    eventually("the WebSocket bytes", x.ws, || WS_TOTALS.traffic.get().since(ws_before)).await;
    assert_eq!(server.stats.traffic().websocket, WS_TOTALS.traffic.get());
    server.stop().await;
}
