//! Callback-served WebSockets (`ws::upgrade_service`) over real TCP: echo
//! and service state across parking, heartbeat pings and the idle timeout
//! reaching parked connections, shutdown, a vanished peer, partial frames
//! (never parked) and backpressure (reading pauses while replies pile up).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{raw_upgrade, Serving};
use tether::client::ws::{connect, ClientOptions};
use tether::proto::h1;
use tether::server::{Request, Router, Server};
use tether::ws::{self, CloseCode, Message, Replies, WsConfig, WsOptions, WsService};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

mod common;

const T: Duration = Duration::from_secs(10);
const PARK: Duration = Duration::from_millis(100);

/// A service that counts its messages and answers each with the count and
/// the message: its state must survive parking.
struct Counting {
    seen: u64,
    ended: Arc<AtomicUsize>,
}

impl WsService for Counting {
    fn on_message(&mut self, message: Message, replies: &mut Replies<'_>) {
        self.seen += 1;
        let reply = match message {
            Message::Text(t) => Message::Text(format!("{} {}", self.seen, t.as_str()).into()),
            other => other,
        };
        replies.send(reply).expect("open");
    }

    fn on_end(&mut self) {
        self.ended.fetch_add(1, Ordering::SeqCst);
    }
}

async fn start(options: WsOptions, park_after: Option<Duration>, ended: Arc<AtomicUsize>) -> Serving {
    let options = Arc::new(options);
    let router = Router::new().route("/ws", move |req: Request| {
        let options = options.clone();
        let ended = ended.clone();
        async move { ws::upgrade_service(&req, &options, Counting { seen: 0, ended }) }
    });
    Serving::start(
        Server::new(h1::Config::default(), router)
            .shutdown_timeout(Duration::from_secs(5))
            .park_idle_after(park_after),
    )
    .await
}

/// A WebSocket client on raw TCP, so a test decides every byte (and
/// whether pings are answered).
struct Raw {
    tcp: TcpStream,
}

impl Raw {
    async fn connect(port: u16) -> Raw {
        let mut tcp = raw_upgrade(port).await;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            timeout(T, tcp.read_exact(&mut byte))
                .await
                .expect("head in time")
                .unwrap();
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101 "), "{}", String::from_utf8_lossy(&head));
        Raw { tcp }
    }

    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
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
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.tcp.write_all(&Self::frame(opcode, payload)).await.unwrap();
    }

    /// The next server frame: (opcode, payload).
    async fn next(&mut self) -> (u8, Vec<u8>) {
        timeout(T, async {
            let mut h = [0u8; 2];
            self.tcp.read_exact(&mut h).await.expect("a frame");
            assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
            let len = match h[1] & 0x7F {
                126 => {
                    let mut l = [0u8; 2];
                    self.tcp.read_exact(&mut l).await.unwrap();
                    u16::from_be_bytes(l) as usize
                }
                127 => {
                    let mut l = [0u8; 8];
                    self.tcp.read_exact(&mut l).await.unwrap();
                    u64::from_be_bytes(l) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            self.tcp.read_exact(&mut payload).await.unwrap();
            (h[0] & 0x0F, payload)
        })
        .await
        .expect("a frame in time")
    }

    async fn expect_close(&mut self, code: u16) {
        let (op, payload) = self.next().await;
        assert_eq!(op, 0x8, "a close frame, got opcode {op}");
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
    }

    async fn expect_eof(&mut self) {
        let mut b = [0u8; 1];
        let n = timeout(T, self.tcp.read(&mut b))
            .await
            .expect("eof in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "the server closes TCP");
    }
}

fn close_payload(code: u16) -> Vec<u8> {
    code.to_be_bytes().to_vec()
}

#[tokio::test]
async fn service_state_and_echo_survive_parking() {
    let ended = Arc::new(AtomicUsize::new(0));
    let server = start(WsOptions::default(), Some(PARK), ended.clone()).await;
    let url = format!("ws://127.0.0.1:{}/ws", server.port);
    let mut socket = connect(&url, ClientOptions::default()).await.expect("connect");
    server.wait_counts(1, 1).await;
    for i in 1..=3 {
        socket.send(Message::Text(format!("m{i}").into())).await.unwrap();
        let got = timeout(T, socket.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(got, Message::Text(format!("{i} m{i}").into()), "counted across parking");
        server.wait_counts(1, 1).await;
    }
    let big = Bytes::from(vec![5u8; 3 << 20]);
    socket.send(Message::Binary(big.clone())).await.unwrap();
    let got = timeout(T, socket.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(got, Message::Binary(big));
    socket.close(CloseCode::NORMAL, "bye").await.unwrap();
    loop {
        match timeout(T, socket.recv()).await.expect("close in time") {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::NORMAL),
            Some(Ok(_)) => continue,
            None => break,
            Some(Err(e)) => panic!("{e}"),
        }
    }
    server.wait_counts(0, 0).await;
    assert_eq!(ended.load(Ordering::SeqCst), 1, "on_end once");
    server.stop().await;
}

#[tokio::test]
async fn heartbeat_reaches_a_parked_connection_and_a_missing_pong_closes_1011() {
    let mut options = WsOptions::default();
    Arc::make_mut(&mut options.engine).ping_interval = Some(Duration::from_millis(400));
    let server = start(options, Some(PARK), Arc::default()).await;
    let mut raw = Raw::connect(server.port).await;
    server.wait_counts(1, 1).await;
    let (op, payload) = raw.next().await;
    assert_eq!((op, &payload[..]), (0x9, &b"tether"[..]), "the heartbeat ping");
    raw.send(0xA, &payload).await;
    server.wait_counts(1, 1).await;
    let (op, _) = raw.next().await;
    assert_eq!(op, 0x9, "the next ping, after parking again");
    // Unanswered: the next interval closes with 1011.
    raw.expect_close(1011).await;
    raw.send(0x8, &close_payload(1011)).await;
    raw.expect_eof().await;
    server.wait_counts(0, 0).await;
    server.stop().await;
}

#[tokio::test]
async fn idle_timeout_closes_a_parked_connection_with_1001() {
    let mut options = WsOptions::default();
    Arc::make_mut(&mut options.engine).idle_timeout = Some(Duration::from_millis(600));
    let server = start(options, Some(PARK), Arc::default()).await;
    let mut raw = Raw::connect(server.port).await;
    server.wait_counts(1, 1).await;
    let started = Instant::now();
    raw.expect_close(1001).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    raw.send(0x8, &close_payload(1001)).await;
    raw.expect_eof().await;
    server.wait_counts(0, 0).await;
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_parked_websockets_with_1001() {
    shutdown_closes_websockets_with_1001(Some(PARK)).await;
}

#[tokio::test]
async fn shutdown_closes_websockets_on_their_tasks_with_1001() {
    shutdown_closes_websockets_with_1001(None).await;
}

async fn shutdown_closes_websockets_with_1001(park: Option<Duration>) {
    let ended = Arc::new(AtomicUsize::new(0));
    let server = start(WsOptions::default(), park, ended.clone()).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(Raw::connect(server.port).await);
    }
    let parked = if park.is_some() { 20 } else { 0 };
    server.wait_counts(parked, 20).await;
    if park.is_none() {
        // Busy connections notice the shutdown too.
        for c in &mut clients {
            c.send(0x1, b"busy").await;
            assert_eq!(c.next().await, (0x1, b"1 busy".to_vec()));
        }
    }
    let port = server.port;
    let stopped = tokio::spawn(server.stop());
    for c in &mut clients {
        c.expect_close(1001).await;
        c.send(0x8, &close_payload(1001)).await;
        c.expect_eof().await;
    }
    timeout(T, stopped).await.expect("serve returns").unwrap();
    assert_eq!(ended.load(Ordering::SeqCst), 20);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn a_peer_gone_while_parked_frees_its_connection() {
    let ended = Arc::new(AtomicUsize::new(0));
    let server = start(WsOptions::default(), Some(PARK), ended.clone()).await;
    let raw = Raw::connect(server.port).await;
    let mut kept = Raw::connect(server.port).await;
    server.wait_counts(2, 2).await;
    drop(raw);
    server.wait_counts(1, 1).await;
    assert_eq!(ended.load(Ordering::SeqCst), 1);
    kept.send(0x1, b"still").await;
    assert_eq!(kept.next().await, (0x1, b"1 still".to_vec()));
    server.stop().await;
}

#[tokio::test]
async fn a_partial_frame_is_never_parked() {
    let server = start(WsOptions::default(), Some(PARK), Arc::default()).await;
    let mut raw = Raw::connect(server.port).await;
    server.wait_counts(1, 1).await;
    let frame = Raw::frame(0x1, b"split across parking");
    raw.tcp.write_all(&frame[..3]).await.unwrap();
    // The connection resumes on the bytes and must stay on its task.
    server.wait_counts(0, 1).await;
    tokio::time::sleep(4 * PARK).await;
    assert_eq!(
        server.stats.parked.load(Ordering::Relaxed),
        0,
        "parked with a partial frame"
    );
    raw.tcp.write_all(&frame[3..]).await.unwrap();
    assert_eq!(raw.next().await, (0x1, b"1 split across parking".to_vec()));
    server.wait_counts(1, 1).await;
    server.stop().await;
}

#[tokio::test]
async fn reading_pauses_while_replies_pile_up() {
    let options = WsOptions {
        engine: Arc::new(WsConfig {
            max_queued_bytes: 64 * 1024,
            ..WsConfig::default()
        }),
        ..WsOptions::default()
    };
    let server = start(options, None, Arc::default()).await;
    let mut raw = Raw::connect(server.port).await;
    let frame = Raw::frame(0x2, &vec![1u8; 256 * 1024]);
    // Send without reading until the writes stall (bounded: 256 MiB).
    let mut sent = 0usize;
    while sent < 1024 {
        match timeout(Duration::from_millis(500), raw.tcp.write_all(&frame)).await {
            Ok(r) => r.unwrap(),
            Err(_) => break,
        }
        sent += 1;
    }
    assert!(sent < 1024, "the server kept reading while its replies piled up");
    // Reading the replies lets it go on: every whole message comes back.
    for _ in 0..sent {
        let (op, payload) = raw.next().await;
        assert_eq!((op, payload.len()), (0x2, 256 * 1024));
    }
    drop(raw);
    server.stop().await;
}

/// An echo endpoint served by callback, under `options`.
async fn start_echo(options: WsOptions) -> Serving {
    let options = Arc::new(options);
    let router = Router::new().route("/ws", move |req: Request| {
        let options = options.clone();
        async move {
            ws::upgrade_service(&req, &options, |m: Message, replies: &mut Replies<'_>| {
                let _ = replies.send(m);
            })
        }
    });
    Serving::start(Server::new(h1::Config::default(), router).shutdown_timeout(Duration::from_secs(5))).await
}

/// Issue 10, defect 3: `hi` and a Close in one segment. The echo of `hi`
/// goes out before the close reply (it was lost before), in every run.
#[tokio::test]
async fn a_message_and_a_close_in_one_segment_get_the_echo_then_the_close() {
    let server = start_echo(WsOptions::default()).await;
    for _ in 0..20 {
        let mut raw = Raw::connect(server.port).await;
        raw.tcp
            .write_all(b"\x81\x82\0\0\0\0hi\x88\x82\0\0\0\0\x03\xe8")
            .await
            .unwrap();
        assert_eq!(raw.next().await, (0x1, b"hi".to_vec()));
        raw.expect_close(1000).await;
        raw.expect_eof().await;
    }
    server.stop().await;
}

/// Issue 10, defect 2: under `QueueOverflow::Close` (what `tether serve`
/// uses) a peer that sends without reading is closed with 1008 `slow
/// consumer` instead of being held open until the write timeout.
#[tokio::test]
async fn a_peer_that_does_not_read_its_echoes_is_closed_as_a_slow_consumer() {
    let options = WsOptions {
        engine: Arc::new(WsConfig {
            max_queued_bytes: 64 * 1024,
            queue_overflow: ws::QueueOverflow::Close,
            ..WsConfig::default()
        }),
        ..WsOptions::default()
    };
    let server = start_echo(options).await;
    let mut raw = Raw::connect(server.port).await;
    let frame = Raw::frame(0x2, &vec![7u8; 256 * 1024]);
    let started = Instant::now();
    // Send without reading (bounded: 64 MiB); the server stops reading once
    // it has closed, so the writes stall.
    let mut sent = 0usize;
    while sent < 256 {
        match timeout(Duration::from_millis(500), raw.tcp.write_all(&frame)).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    assert!(sent < 256, "the server read {sent} messages of 256 KiB without closing");
    // The echoes that fitted, then the close with 1008.
    let mut echoes = 0;
    loop {
        let (op, payload) = raw.next().await;
        if op == 0x8 {
            assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1008);
            assert_eq!(&payload[2..], b"slow consumer");
            break;
        }
        assert_eq!((op, payload.len()), (0x2, 256 * 1024));
        echoes += 1;
    }
    assert!(echoes >= 1 && echoes < sent, "{echoes} echoes of {sent} messages");
    // Well before the 30 s write timeout.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    drop(raw);
    server.wait_counts(0, 0).await;
    server.stop().await;
}
