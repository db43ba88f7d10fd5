//! The keep-alive client's pool over real sockets: reuse, retirement by
//! the server's `timeout=` and `max=` hints, `Connection: close`, a
//! server's FIN noticed before reuse, the retry rule, pipelining, the
//! pool's limits and its own idle timeout. Half of them run against
//! tether's server; the others against a scripted server that does what
//! tether never would (close without answering, hints without closing).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{config, TestServer};
use http::{Method, Request, StatusCode, Version};
use tether::client::http::{ClientError, Exchange, HttpClient, HttpClientOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(10);

fn exchange(resp: &http::Response<Bytes>) -> Exchange {
    *resp
        .extensions()
        .get::<Exchange>()
        .expect("every response has an Exchange")
}

fn closed(client: &HttpClient, cause: &str) -> u64 {
    client
        .stats()
        .closed
        .iter()
        .find(|(c, _)| *c == cause)
        .map_or(0, |(_, n)| *n)
}

async fn get(client: &HttpClient, url: &str) -> http::Response<Bytes> {
    timeout(DEADLINE, client.get(url))
        .await
        .expect("request within the deadline")
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

// ----- a scripted server -----

/// What the scripted server does with the n-th request (from 1) of a
/// connection.
#[derive(Clone, Copy)]
enum Act {
    /// Answers with these extra header lines.
    Answer(&'static str),
    /// Answers, then closes the connection.
    AnswerAndClose(&'static str),
    /// Reads the request and closes without answering.
    Drop,
}

/// A server that answers each connection's requests by `script(n)` and
/// counts connections.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(script: fn(usize) -> Act) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_script(stream, script));
            }
        });
        Self { addr, connections }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve_script(mut stream: TcpStream, script: fn(usize) -> Act) {
    let mut buf = Vec::new();
    for n in 1.. {
        // One request: a head and its Content-Length body.
        let (head_len, body_len) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut fields);
            if let Ok(httparse::Status::Complete(len)) = req.parse(&buf) {
                let body = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .unwrap_or(0);
                break (len, body);
            }
            let mut chunk = [0u8; 4096];
            match timeout(DEADLINE, stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        while buf.len() < head_len + body_len {
            let mut chunk = [0u8; 4096];
            match timeout(DEADLINE, stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        buf.drain(..head_len + body_len);
        let (extra, close) = match script(n) {
            Act::Drop => return,
            Act::Answer(extra) => (extra, false),
            Act::AnswerAndClose(extra) => (extra, true),
        };
        let resp = format!("HTTP/1.1 200 OK\r\n{extra}Content-Length: 2\r\n\r\nok");
        if stream.write_all(resp.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

// ----- against tether's server -----

#[tokio::test]
async fn requests_reuse_one_connection_and_count_its_bytes() {
    let server = TestServer::start(config()).await;
    let client = HttpClient::default();
    let url = format!("http://{}/healthz", server.addr);
    for i in 1..=3u64 {
        let resp = get(&client, &url).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.body(), "ok");
        let x = exchange(&resp);
        assert_eq!((x.connection, x.sequence, x.reused), (1, i, i > 1));
        assert_eq!(x.traffic.received.payload, 2);
        assert!(x.hints.timeout.is_some(), "tether advertises Keep-Alive");
    }
    let stats = client.stats();
    assert_eq!((stats.connections, stats.responses, stats.reused), (1, 3, 2));
    assert_eq!(stats.traffic.received.payload, 6);
    assert_eq!(client.idle_connections(), 1);
}

#[tokio::test]
async fn the_max_hint_retires_a_connection_after_the_mth_response() {
    let mut cfg = config();
    cfg.max_requests = 3;
    let server = TestServer::start(cfg).await;
    let client = HttpClient::default();
    let url = format!("http://{}/healthz", server.addr);
    let mut connections = Vec::new();
    for _ in 0..7 {
        connections.push(exchange(&get(&client, &url).await).connection);
    }
    assert_eq!(connections, [1, 1, 1, 2, 2, 2, 3]);
    // tether's M-th response also says `Connection: close`, which wins.
    assert_eq!(closed(&client, "server_close") + closed(&client, "max_requests"), 2);
    assert_eq!(client.stats().failed, 0);

    // A server that advertises max=2 and keeps the connection open anyway
    // (a fixed limit): the client stops after two.
    let server = Scripted::start(|_| Act::Answer("Keep-Alive: timeout=5, max=2\r\n")).await;
    let client = HttpClient::default();
    for _ in 0..4 {
        get(&client, &server.url("/")).await;
    }
    assert_eq!(closed(&client, "max_requests"), 2);
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn connection_close_and_http_1_0_without_keep_alive_are_never_reused() {
    let server = TestServer::start(config()).await;
    let client = HttpClient::default();
    for _ in 0..3 {
        get(&client, &format!("http://{}/close", server.addr)).await;
    }
    assert_eq!(client.stats().connections, 3);
    assert_eq!(closed(&client, "server_close"), 3);

    // HTTP/1.0 mode asks for keep-alive, and tether grants it.
    let client = HttpClient::new(HttpClientOptions {
        version: Version::HTTP_10,
        ..HttpClientOptions::default()
    });
    for _ in 0..3 {
        get(&client, &format!("http://{}/healthz", server.addr)).await;
    }
    assert_eq!(client.stats().connections, 1);
}

#[tokio::test]
async fn pipelined_requests_share_one_connection_and_come_back_in_order() {
    let server = TestServer::start(config()).await;
    let client = HttpClient::default();
    let reqs = (0..5)
        .map(|i| {
            Request::builder()
                .method(if i == 2 { Method::HEAD } else { Method::GET })
                .uri(format!("http://{}/echo", server.addr))
                .body(Bytes::new())
                .unwrap()
        })
        .collect();
    let results = timeout(DEADLINE, client.pipeline(reqs)).await.unwrap();
    let sequences: Vec<u64> = results.iter().map(|r| exchange(r.as_ref().unwrap()).sequence).collect();
    assert_eq!(sequences, [1, 2, 3, 4, 5]);
    assert_eq!(client.stats().connections, 1);
    let post = Request::post(format!("http://{}/echo", server.addr))
        .body(Bytes::new())
        .unwrap();
    let refused = client.pipeline(vec![post]).await;
    assert!(matches!(refused[0], Err(ClientError::Pipeline(_))));
}

#[tokio::test]
async fn the_pool_keeps_its_limits_and_closes_what_idles_past_its_own_timeout() {
    let server = TestServer::start(config()).await;
    let client = HttpClient::new(HttpClientOptions {
        max_idle_per_origin: 2,
        idle_timeout: Duration::from_millis(300),
        ..HttpClientOptions::default()
    });
    let url = format!("http://{}/slow", server.addr);
    let all = futures_util::future::join_all((0..4).map(|_| client.get(&url)));
    for r in timeout(DEADLINE, all).await.unwrap() {
        r.unwrap();
    }
    assert_eq!(client.stats().connections, 4);
    assert_eq!(client.idle_connections(), 2);
    assert_eq!(closed(&client, "pool_full"), 2);
    // The reaper closes the two idle ones at 300 ms, without a request.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(client.idle_connections(), 0);
    assert_eq!(closed(&client, "idle_timeout"), 2);

    let total = HttpClient::new(HttpClientOptions {
        max_idle_total: 1,
        ..HttpClientOptions::default()
    });
    let other = TestServer::start(config()).await;
    get(&total, &format!("http://{}/healthz", server.addr)).await;
    get(&total, &format!("http://{}/healthz", other.addr)).await;
    assert_eq!(total.idle_connections(), 1);
    assert_eq!(closed(&total, "pool_full"), 1);
}

// ----- against the scripted server -----

#[tokio::test]
async fn the_timeout_hint_retires_a_connection_before_the_server_would_close_it() {
    // timeout=1: reusable for 1 s less the margin (a quarter: 250 ms).
    let server = Scripted::start(|_| Act::Answer("Keep-Alive: timeout=1, max=100\r\n")).await;
    let client = HttpClient::default();
    let url = server.url("/");
    get(&client, &url).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(exchange(&get(&client, &url).await).reused, "300 ms idle: reused");
    tokio::time::sleep(Duration::from_millis(900)).await;
    let x = exchange(&get(&client, &url).await);
    assert_eq!(
        (x.connection, x.reused),
        (2, false),
        "900 ms idle: past 750 ms, a new one"
    );
    assert_eq!(closed(&client, "advertised_timeout"), 1);
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn a_fin_on_an_idle_connection_is_noticed_before_reuse() {
    // Answers, then closes at once: no hint, only the FIN tells.
    let server = Scripted::start(|_| Act::AnswerAndClose("")).await;
    let client = HttpClient::new(HttpClientOptions {
        idle_timeout: Duration::from_secs(60),
        ..HttpClientOptions::default()
    });
    for _ in 0..3 {
        get(&client, &server.url("/")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = client.stats();
    assert_eq!((stats.connections, stats.retried, stats.failed), (3, 0, 0));
    assert!(closed(&client, "peer_closed") >= 2, "{:?}", stats.closed);
}

#[tokio::test]
async fn a_lost_idempotent_request_is_retried_once_and_a_post_is_not() {
    // Every connection answers its first request and drops the second
    // unanswered: the race a reused connection can lose.
    let server = Scripted::start(|n| if n == 1 { Act::Answer("") } else { Act::Drop }).await;
    let client = HttpClient::default();
    let url = server.url("/");
    get(&client, &url).await;
    let resp = get(&client, &url).await;
    let x = exchange(&resp);
    assert!(x.retried && !x.reused, "{x:?}");
    assert_eq!(client.stats().retried, 1);

    // The retry's connection is idle in the pool now: a POST on it is lost
    // the same way, and must not be sent twice.
    let post = Request::post(&url).body(Bytes::from_static(b"once")).unwrap();
    let err = timeout(DEADLINE, client.request(post)).await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::NotRetried { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("POST is not idempotent"), "{text}");
    assert_eq!(client.stats().retried, 1);
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn pipelined_requests_the_server_did_not_answer_are_sent_again() {
    // The second response says close: requests 3 and 4 go on a new one.
    let server = Scripted::start(|n| {
        if n == 2 {
            Act::AnswerAndClose("Connection: close\r\n")
        } else {
            Act::Answer("")
        }
    })
    .await;
    let client = HttpClient::default();
    let reqs = (0..4)
        .map(|_| Request::get(server.url("/")).body(Bytes::new()).unwrap())
        .collect();
    let results = timeout(DEADLINE, client.pipeline(reqs)).await.unwrap();
    let placed: Vec<(u64, u64)> = results
        .iter()
        .map(|r| {
            let x = exchange(r.as_ref().unwrap());
            (x.connection, x.sequence)
        })
        .collect();
    assert_eq!(placed, [(1, 1), (1, 2), (2, 1), (2, 2)]);
    assert_eq!(client.stats().retried, 2);
}

#[tokio::test]
async fn a_fresh_connection_that_fails_is_an_error_not_a_retry() {
    let server = Scripted::start(|_| Act::Drop).await;
    let client = HttpClient::default();
    let err = timeout(DEADLINE, client.get(&server.url("/")))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ClientError::Closed(_)), "{err:?}");
    assert_eq!((client.stats().retried, server.connections()), (0, 1));
    let refused = HttpClient::default().get("http://127.0.0.1:1/").await.unwrap_err();
    assert!(matches!(refused, ClientError::Connect { .. }), "{refused:?}");
    assert!(matches!(
        HttpClient::default().get("ftp://127.0.0.1/").await,
        Err(ClientError::Url(_))
    ));
    // https:// is TLS over TCP: a refused connect is the same error.
    let refused = HttpClient::default().get("https://127.0.0.1:1/").await.unwrap_err();
    assert!(matches!(refused, ClientError::Connect { .. }), "{refused:?}");
}
