//! Parking over real TCP: an idle keep-alive connection leaves its task
//! (socket off the reactor, engine in the server's lot) and comes back on
//! input, at its idle deadline, on peer close and on shutdown, with its
//! keep-alive state (requests served, deadlines) intact.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use tether::proto::h1;

const MS: Duration = Duration::from_millis(1);
const PARK: Duration = Duration::from_millis(100);

async fn start(config: h1::Config) -> TestServer {
    TestServer::start_parking(config, Duration::from_secs(10), Some(PARK)).await
}

/// Waits (bounded) until the server's counters reach `parked` and `open`.
async fn wait_counts(server: &TestServer, parked: u64, open: u64) {
    wait_stats(&server.stats, parked, open).await;
}

/// `n` connections, each with one request answered, left idle.
async fn open_served(server: &TestServer, n: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = server.connect().await;
        assert_eq!(c.send_and_read(&get("/healthz")).await.status, 200);
        clients.push(c);
    }
    clients
}

#[tokio::test]
async fn idle_connection_is_parked_and_served_again() {
    let server = start(config()).await;
    let mut a = server.connect().await;
    assert_eq!(a.send_and_read(&get("/healthz")).await.status, 200);
    wait_counts(&server, 1, 1).await;
    let mut b = server.connect().await;
    assert_eq!(b.send_and_read(&get("/healthz")).await.status, 200);
    wait_counts(&server, 2, 2).await;
    for round in 0..3 {
        let r = a.send_and_read(&post_echo(b"still here")).await;
        assert_eq!(r.status, 200, "round {round}");
        assert_eq!(r.body, b"still here");
        assert!(r.header("connection").is_none(), "{}", r.head);
        wait_counts(&server, 2, 2).await;
    }
}

#[tokio::test]
async fn parking_waits_for_park_after() {
    // Three servers idle side by side for longer than the default
    // park-after: the one that parks after 100 ms is the control (so the wait
    // is long enough to see parking); the one that parks after 30 s and the
    // one with parking off must not have parked, and still serve.
    let soon = start(config()).await;
    let late = TestServer::start_parking(config(), Duration::from_secs(10), Some(Duration::from_secs(30))).await;
    let off = TestServer::start_parking(config(), Duration::from_secs(10), None).await;
    let mut clients = Vec::new();
    for server in [&soon, &late, &off] {
        clients.extend(open_served(server, 1).await);
    }
    tokio::time::sleep(tether::server::DEFAULT_PARK_AFTER + 500 * MS).await;
    assert_eq!(soon.stats.parked.load(Ordering::Relaxed), 1, "parking after 100 ms");
    assert_eq!(late.stats.parked.load(Ordering::Relaxed), 0, "parking after 30 s");
    assert_eq!(off.stats.parked.load(Ordering::Relaxed), 0, "parking off");
    for c in &mut clients {
        assert_eq!(c.send_and_read(&get("/healthz")).await.status, 200);
    }
}

#[tokio::test]
async fn parked_connection_closes_at_its_idle_timeout() {
    let server = start(h1::Config {
        idle_timeout: 700 * MS,
        ..config()
    })
    .await;
    let mut c = server.connect().await;
    let sent = Instant::now();
    assert_eq!(c.send_and_read(&get("/healthz")).await.status, 200);
    wait_counts(&server, 1, 1).await;
    c.expect_eof(Duration::from_secs(5)).await;
    assert_between(
        "idle close of a parked connection",
        sent.elapsed(),
        600 * MS,
        Duration::from_secs(3),
    );
    wait_counts(&server, 0, 0).await;
}

#[tokio::test]
async fn max_requests_counts_across_parking() {
    let server = start(h1::Config {
        max_requests: 3,
        ..config()
    })
    .await;
    let mut c = server.connect().await;
    for i in 1..=3 {
        wait_counts(&server, u64::from(i > 1), 1).await;
        let r = c.send_and_read(&get("/healthz")).await;
        assert_eq!(r.status, 200, "request {i}");
        if i < 3 {
            assert!(r.header("connection").is_none(), "request {i}: {}", r.head);
        } else {
            r.assert_closes();
        }
    }
    c.expect_eof(IO_TIMEOUT).await;
}

#[tokio::test]
async fn head_split_across_parking_and_pipelined_requests_are_served() {
    let server = start(config()).await;
    let mut c = server.connect().await;
    assert_eq!(c.send_and_read(&get("/healthz")).await.status, 200);
    wait_counts(&server, 1, 1).await;
    // Half a head wakes it; it is not parked again while the head is partial.
    c.send(b"GET /healthz HTTP/1.1\r\nHo").await;
    wait_counts(&server, 0, 1).await;
    tokio::time::sleep(3 * PARK).await;
    assert_eq!(
        server.stats.parked.load(Ordering::Relaxed),
        0,
        "a partial head is not idle"
    );
    c.send(b"st: t\r\n\r\n").await;
    assert_eq!(c.response().await.status, 200);
    wait_counts(&server, 1, 1).await;
    // Two pipelined requests reach a parked connection at once.
    let mut both = get("/healthz");
    both.extend_from_slice(&post_echo(b"second"));
    c.send(&both).await;
    assert_eq!(c.response().await.status, 200);
    let second = c.response().await;
    assert_eq!((second.status, second.body.as_slice()), (200, &b"second"[..]));
}

#[tokio::test]
async fn peer_close_while_parked_is_noticed() {
    let server = start(config()).await;
    let mut c = server.connect().await;
    assert_eq!(c.send_and_read(&get("/healthz")).await.status, 200);
    wait_counts(&server, 1, 1).await;
    drop(c);
    wait_counts(&server, 0, 0).await;
    server.assert_healthy().await;
}

#[tokio::test]
async fn graceful_shutdown_drains_parked_connections_in_the_lot() {
    let mut config = config();
    config.shutdown_drain = 600 * MS;
    let mut server = start(config).await;
    let mut clients = open_served(&server, 20).await;
    wait_counts(&server, 20, 20).await;
    let t = Instant::now();
    server.trigger_shutdown();
    // Draining, they stay where they are: in the lot, without a task.
    tokio::time::sleep(200 * MS).await;
    assert_eq!(server.stats.parked.load(Ordering::Relaxed), 19 + 1);
    // A request that arrives in the drain is answered, with close.
    let r = clients[0].send_and_read(&get("/healthz")).await;
    assert_eq!(r.status, 200);
    r.assert_closes();
    clients[0].expect_eof(Duration::from_secs(2)).await;
    // The rest close when the drain ends, well before the idle timeout.
    for c in &mut clients[1..] {
        c.expect_eof(Duration::from_secs(3)).await;
    }
    assert!(
        t.elapsed() >= 500 * MS,
        "closed before the drain ended: {:?}",
        t.elapsed()
    );
    let took = server.wait_serve_returned(Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
}

#[tokio::test]
async fn many_parked_connections_are_all_served() {
    const N: usize = 300;
    let server = start(config()).await;
    let mut clients = open_served(&server, N).await;
    wait_counts(&server, N as u64, N as u64).await;
    for (i, c) in clients.iter_mut().enumerate().rev() {
        let body = format!("conn {i}");
        let r = c.send_and_read(&post_echo(body.as_bytes())).await;
        assert_eq!(r.body, body.as_bytes(), "connection {i}");
    }
    wait_counts(&server, N as u64, N as u64).await;
}

/// The same rules on a multi-threaded runtime (what `tether serve` uses with
/// more than one worker): connections park and resume from any worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parking_on_a_multi_threaded_runtime() {
    const N: usize = 50;
    let mut server = start(h1::Config {
        max_requests: 3,
        ..config()
    })
    .await;
    let clients = open_served(&server, N).await;
    wait_counts(&server, N as u64, N as u64).await;
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let r = c.send_and_read(&post_echo(format!("conn {i}").as_bytes())).await;
            assert_eq!(r.body, format!("conn {i}").as_bytes());
            assert!(r.header("connection").is_none(), "{}", r.head);
            c
        }));
    }
    let mut clients = Vec::with_capacity(N);
    for t in tasks {
        clients.push(t.await.expect("client task"));
    }
    wait_counts(&server, N as u64, N as u64).await;
    // The third request on each is the last (max 3), counted across parking.
    let last = clients[0].send_and_read(&get("/healthz")).await;
    last.assert_closes();
    clients[0].expect_eof(IO_TIMEOUT).await;
    server.trigger_shutdown();
    for c in clients.iter_mut().skip(1) {
        c.expect_eof(Duration::from_secs(3)).await;
    }
    server.wait_serve_returned(Duration::from_secs(5)).await;
}
