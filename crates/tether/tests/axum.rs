//! An axum app (`examples/axum.rs`, included as it is) on tether's server,
//! over real sockets: path parameters, a JSON extractor, axum's 404, a
//! tower-http layer, keep-alive with tether's headers on one connection,
//! parking while idle and resuming, the idle timeout closing it, a client's
//! `Connection: close`, and a WebSocket route upgraded by tether.

#[allow(dead_code)]
#[path = "../examples/axum.rs"]
mod example;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tether::server::{Config, Server, ServerStats, TowerHandler};
use tether::ws::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(10);

async fn start(idle_timeout: Duration) -> (SocketAddr, Arc<ServerStats>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Config {
        idle_timeout,
        max_requests: 100,
        ..Config::default()
    };
    let server =
        Server::new(config, TowerHandler::new(example::app())).park_idle_after(Some(Duration::from_millis(200)));
    let stats = server.stats();
    tokio::spawn(server.serve(listener, std::future::pending()));
    (addr, stats)
}

/// One response: status line, lowercase headers, body (`Content-Length`).
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

async fn exchange(conn: &mut TcpStream, request: &str) -> Answer {
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = timeout(DEADLINE, conn.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed before a response: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 4096];
        let n = timeout(DEADLINE, conn.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed in a body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8(buf[head_end..head_end + len].to_vec()).unwrap();
    Answer { status, headers, body }
}

async fn closed_within(conn: &mut TcpStream, limit: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(timeout(limit, conn.read(&mut byte)).await, Ok(Ok(0)) | Ok(Err(_)))
}

#[tokio::test]
async fn an_axum_router_answers_on_one_keep_alive_connection_with_tethers_rules() {
    let (addr, stats) = start(Duration::from_secs(2)).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();

    let a = exchange(&mut conn, "GET /hello/ada HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((a.status, a.body.as_str()), (200, "hello, ada\n"));
    assert_eq!(a.header("x-served-by"), Some("tether"), "the tower-http layer ran");
    assert_eq!(
        a.header("keep-alive"),
        Some("timeout=2, max=100"),
        "tether's keep-alive"
    );

    let json = r#"{"text":"hi","n":[1,2]}"#;
    let req = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    );
    let a = exchange(&mut conn, &req).await;
    assert_eq!(a.status, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&a.body).unwrap()["n"][1], 2);
    assert_eq!(a.header("content-type"), Some("application/json"));

    let a = exchange(
        &mut conn,
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nnot",
    )
    .await;
    assert_eq!(a.status, 415, "axum's Json extractor refuses a missing content type");

    let a = exchange(&mut conn, "GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(a.status, 404);
    assert!(a.header("keep-alive").is_some(), "a 404 keeps the connection");

    // Idle past park_idle_after (200 ms): parked without a task, then resumed.
    let parked_at = tokio::time::Instant::now();
    while stats.parked.load(Ordering::Relaxed) == 0 && parked_at.elapsed() < DEADLINE {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats.parked.load(Ordering::Relaxed), 1, "the idle connection parked");
    let a = exchange(&mut conn, "GET /hello/parked HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((a.status, a.body.as_str()), (200, "hello, parked\n"));

    // The idle timeout (2 s) closes it, as for any tether handler.
    assert!(
        closed_within(&mut conn, Duration::from_secs(4)).await,
        "closed at the idle timeout"
    );
}

#[tokio::test]
async fn a_client_close_is_honoured() {
    let (addr, _) = start(Duration::from_secs(5)).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let a = exchange(
        &mut conn,
        "GET /hello/bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("connection"), Some("close"));
    assert!(closed_within(&mut conn, Duration::from_secs(2)).await);
}

#[tokio::test]
async fn a_websocket_route_in_the_axum_router_is_upgraded_by_tether() {
    let (addr, _) = start(Duration::from_secs(5)).await;
    let mut ws = timeout(
        DEADLINE,
        tether::client::ws::connect(&format!("ws://{addr}/ws"), Default::default()),
    )
    .await
    .unwrap()
    .unwrap();
    for text in ["one", "two"] {
        ws.send(Message::Text(text.into())).await.unwrap();
        match timeout(DEADLINE, ws.recv()).await.unwrap() {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), text),
            other => panic!("expected the echo, got {other:?}"),
        }
    }
    ws.close(tether::ws::CloseCode::NORMAL, "done").await.unwrap();
    // The handshake refused as tether refuses it (a plain GET on /ws).
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let a = exchange(&mut conn, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(a.status == 400 || a.status == 426, "{}", a.status);
}

#[tokio::test]
async fn a_streamed_body_goes_out_chunked_and_a_failing_service_gets_500() {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/stream",
        get(|| async {
            let pieces = ["first ", "second ", "third"].map(|p| Ok::<_, std::io::Error>(bytes::Bytes::from(p)));
            axum::body::Body::from_stream(futures_util::stream::iter(pieces))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Server::new(Config::default(), TowerHandler::new(app)).serve(listener, std::future::pending()));
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    timeout(DEADLINE, conn.read_to_end(&mut all)).await.unwrap().unwrap();
    let text = String::from_utf8(all).unwrap();
    assert!(
        text.to_ascii_lowercase().contains("transfer-encoding: chunked"),
        "{text}"
    );
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let unchunked: String = body
        .split("\r\n")
        .collect::<Vec<_>>()
        .chunks(2)
        .filter_map(|c| c.get(1).copied())
        .collect();
    assert_eq!(unchunked, "first second third");

    // A service that fails: 500, and the connection keeps its rules.
    #[derive(Clone)]
    struct Failing;
    impl tower_service::Service<http::Request<tether::server::RequestBody>> for Failing {
        type Response = http::Response<tether::server::Body>;
        type Error = std::io::Error;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<tether::server::RequestBody>) -> Self::Future {
            std::future::ready(Err(std::io::Error::other("broken")))
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Server::new(Config::default(), TowerHandler::new(Failing)).serve(listener, std::future::pending()));
    let mut conn = TcpStream::connect(addr).await.unwrap();
    for _ in 0..2 {
        let a = exchange(&mut conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(a.status, 500);
    }
}
