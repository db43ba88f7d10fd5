//! The push hub over real TCP: the `/ws` protocol (answers, replay and
//! recovery, epochs, presence, bad input), fan-out to many subscribers
//! (parked ones included), slow consumers, and the HTTP transports
//! (publish, poll, long-poll, SSE with `Last-Event-ID`).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tether::client::ws::{connect, ClientOptions};
use tether::hub::{ChannelName, HistoryLimits, Hub, HubConfig};
use tether::proto::h1;
use tether::server::{Router, Server};
use tether::ws::{Message, QueueOverflow, WebSocket, WsOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use common::{Client, Serving};

const T: Duration = Duration::from_secs(10);

struct Setup {
    hub_config: HubConfig,
    ws: WsOptions,
    park_after: Option<Duration>,
}

impl Default for Setup {
    fn default() -> Self {
        let mut ws = WsOptions::default();
        std::sync::Arc::make_mut(&mut ws.engine).queue_overflow = QueueOverflow::Close;
        Self {
            hub_config: HubConfig::default(),
            ws,
            park_after: None,
        }
    }
}

async fn start(setup: Setup) -> (Serving, Hub) {
    let (hub, _) = Hub::in_memory(setup.hub_config);
    let router = tether::hub::http::routes(Router::new(), &hub, &Arc::new(setup.ws));
    let server = Server::new(h1::Config::default(), router)
        .shutdown_timeout(Duration::from_secs(2))
        .park_idle_after(setup.park_after);
    (Serving::start(server).await, hub)
}

/// A `/ws` client speaking JSON.
struct Peer {
    ws: WebSocket,
}

impl Peer {
    async fn open(port: u16) -> Peer {
        let ws = connect(&format!("ws://127.0.0.1:{port}/ws"), ClientOptions::default())
            .await
            .expect("connect to /ws");
        Peer { ws }
    }

    async fn send(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.expect("send");
    }

    /// The next JSON message (pings skipped).
    async fn next(&mut self) -> Value {
        loop {
            match timeout(T, self.ws.recv()).await.expect("a message in time") {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).expect("JSON"),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// The next message of `kind`, skipping others of `skip` kinds.
    async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == kind {
                return v;
            }
            assert!(
                matches!(v["type"].as_str(), Some("published" | "join" | "leave")),
                "expected {kind}, got {v}"
            );
        }
    }

    async fn subscribe(&mut self, cmd: Value) -> Value {
        self.send(cmd).await;
        self.next_of("subscribed").await
    }

    /// Receives `count` messages of `channel` and returns their offsets and data.
    async fn messages(&mut self, count: usize) -> Vec<(u64, Value)> {
        let mut got = Vec::with_capacity(count);
        while got.len() < count {
            let v = self.next_of("message").await;
            got.push((v["offset"].as_u64().expect("offset"), v["data"].clone()));
        }
        got
    }
}

fn channel(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

async fn publish(hub: &Hub, name: &str, n: u64) {
    hub.publish_json(&channel(name), &json!({ "n": n }).to_string())
        .await
        .expect("publish");
}

/// Waits (at most `T`) until `n` connections are parked; fails naming `what`.
async fn wait_parked(server: &Serving, n: u64, what: &str) {
    let deadline = Instant::now() + T;
    while server.stats.parked.load(Ordering::Relaxed) < n {
        let parked = server.stats.parked.load(Ordering::Relaxed);
        assert!(Instant::now() < deadline, "{what}: {parked} of {n} parked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `n` subscribers of `channel`, each with its `subscribed` answer, all
/// parked.
async fn parked_subscribers(server: &Serving, channel: &str, n: usize) -> Vec<Peer> {
    let mut peers = Vec::new();
    for _ in 0..n {
        let mut p = Peer::open(server.port).await;
        p.subscribe(json!({"type":"subscribe","channel":channel})).await;
        peers.push(p);
    }
    wait_parked(server, n as u64, "subscribers").await;
    peers
}

fn offsets(messages: &[(u64, Value)]) -> Vec<u64> {
    messages.iter().map(|(o, _)| *o).collect()
}

#[tokio::test]
async fn subscribers_get_answers_and_every_message_in_order() {
    let (server, _hub) = start(Setup::default()).await;
    let mut a = Peer::open(server.port).await;
    let mut b = Peer::open(server.port).await;
    let s = a.subscribe(json!({"type":"subscribe","channel":"c","id":7})).await;
    assert_eq!(s["offset"], 0);
    assert_eq!(s["recovered"], false, "no since: nothing to recover");
    assert_eq!(s["id"], 7);
    assert!(s["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    for i in 1..=3 {
        b.send(json!({"type":"publish","channel":"c","data":{"i":i},"id":format!("p{i}")}))
            .await;
        let ack = b.next_of("published").await;
        assert_eq!(ack["offset"], i);
        assert_eq!(ack["id"], format!("p{i}"));
    }
    let got = a.messages(3).await;
    assert_eq!(offsets(&got), [1, 2, 3]);
    assert_eq!(got[2].1, json!({"i":3}));
    a.send(json!({"type":"unsubscribe","channel":"c","id":"u"})).await;
    let u = a.next_of("unsubscribed").await;
    assert_eq!((u["channel"].as_str(), u["id"].as_str()), (Some("c"), Some("u")));
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_comes_back_with_since_gets_exactly_what_it_missed() {
    let (server, hub) = start(Setup::default()).await;
    let mut a = Peer::open(server.port).await;
    let s = a.subscribe(json!({"type":"subscribe","channel":"c"})).await;
    let epoch = s["epoch"].clone();
    for n in 1..=3 {
        publish(&hub, "c", n).await;
    }
    assert_eq!(offsets(&a.messages(3).await), [1, 2, 3]);
    drop(a);
    for n in 4..=6 {
        publish(&hub, "c", n).await;
    }
    let mut a = Peer::open(server.port).await;
    let s = a
        .subscribe(json!({"type":"subscribe","channel":"c","since":3,"epoch":epoch}))
        .await;
    assert_eq!((s["recovered"].as_bool(), s["offset"].as_u64()), (Some(true), Some(6)));
    publish(&hub, "c", 7).await;
    assert_eq!(offsets(&a.messages(4).await), [4, 5, 6, 7]);
    server.stop().await;
}

#[tokio::test]
async fn replay_racing_live_publications_leaves_no_gap_and_no_repeat() {
    let (server, hub) = start(Setup::default()).await;
    const N: u64 = 600;
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            for n in 1..=N {
                publish(&hub, "race", n).await;
                if n % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    // Subscribers join while the publisher runs, each asking for all.
    let mut peers = Vec::new();
    for _ in 0..8 {
        let mut p = Peer::open(server.port).await;
        p.send(json!({"type":"subscribe","channel":"race","since":0})).await;
        peers.push(p);
        tokio::task::yield_now().await;
    }
    publisher.await.unwrap();
    for p in &mut peers {
        let s = p.next_of("subscribed").await;
        assert_eq!(s["recovered"], true, "{s}");
        let got = offsets(&p.messages(N as usize).await);
        assert_eq!(got, (1..=N).collect::<Vec<_>>());
    }
    server.stop().await;
}

#[tokio::test]
async fn history_that_no_longer_reaches_back_says_so() {
    let setup = Setup {
        hub_config: HubConfig {
            history: HistoryLimits {
                size: 5,
                ..HistoryLimits::default()
            },
            ..HubConfig::default()
        },
        ..Setup::default()
    };
    let (server, hub) = start(setup).await;
    // A burst larger than history.
    for n in 1..=20 {
        publish(&hub, "c", n).await;
    }
    let mut a = Peer::open(server.port).await;
    let s = a.subscribe(json!({"type":"subscribe","channel":"c","since":3})).await;
    assert_eq!(
        (s["recovered"].as_bool(), s["offset"].as_u64()),
        (Some(false), Some(20))
    );
    assert_eq!(offsets(&a.messages(5).await), [16, 17, 18, 19, 20], "what is kept");
    // Within history: recovered.
    let mut b = Peer::open(server.port).await;
    let s = b.subscribe(json!({"type":"subscribe","channel":"c","since":17})).await;
    assert_eq!(s["recovered"], true);
    assert_eq!(offsets(&b.messages(3).await), [18, 19, 20]);
    server.stop().await;
}

#[tokio::test]
async fn another_epoch_is_not_recovered_and_a_restart_changes_the_epoch() {
    let (first, hub) = start(Setup::default()).await;
    for n in 1..=4 {
        publish(&hub, "c", n).await;
    }
    let mut a = Peer::open(first.port).await;
    let old = a.subscribe(json!({"type":"subscribe","channel":"c","since":2})).await;
    assert_eq!(old["recovered"], true);
    first.stop().await;
    // "Restart": a new server with a new in-process hub.
    let (second, hub) = start(Setup::default()).await;
    publish(&hub, "c", 1).await;
    let mut b = Peer::open(second.port).await;
    let s = b
        .subscribe(json!({"type":"subscribe","channel":"c","since":4,"epoch":old["epoch"]}))
        .await;
    assert_ne!(s["epoch"], old["epoch"], "history was lost: a new epoch");
    assert_eq!(s["recovered"], false);
    // What the new epoch has is replayed.
    assert_eq!(offsets(&b.messages(1).await), [1]);
    second.stop().await;
}

#[tokio::test]
async fn presence_announces_joins_and_leaves_with_the_member_count() {
    let (server, _hub) = start(Setup::default()).await;
    let mut a = Peer::open(server.port).await;
    let s = a
        .subscribe(json!({"type":"subscribe","channel":"room","presence":true}))
        .await;
    assert_eq!(s["members"], 1);
    let me = s["client"].as_str().unwrap().to_string();
    let mut b = Peer::open(server.port).await;
    let sb = b
        .subscribe(json!({"type":"subscribe","channel":"room","presence":true}))
        .await;
    assert_eq!(sb["members"], 2);
    let join = a.next().await;
    assert_eq!(
        (join["type"].as_str(), join["members"].as_u64()),
        (Some("join"), Some(2))
    );
    assert_eq!(join["client"], sb["client"]);
    assert_ne!(join["client"].as_str(), Some(me.as_str()));
    drop(b);
    let leave = a.next().await;
    assert_eq!(
        (leave["type"].as_str(), leave["members"].as_u64()),
        (Some("leave"), Some(1))
    );
    assert_eq!(leave["client"], sb["client"]);
    server.stop().await;
}

#[tokio::test]
async fn bad_commands_get_an_error_and_the_connection_stays_open() {
    let setup = Setup {
        hub_config: HubConfig {
            max_data: 16,
            max_subscriptions: 2,
            ..HubConfig::default()
        },
        ..Setup::default()
    };
    let (server, _hub) = start(setup).await;
    let mut a = Peer::open(server.port).await;
    for (command, code) in [
        ("{oops".to_string(), "bad_json"),
        (json!({"type":"dance","id":1}).to_string(), "unknown_type"),
        (json!({"type":"subscribe"}).to_string(), "bad_request"),
        (
            json!({"type":"subscribe","channel":"no spaces"}).to_string(),
            "bad_channel",
        ),
        (
            json!({"type":"publish","channel":"c","data":"more than sixteen bytes"}).to_string(),
            "too_large",
        ),
        (
            json!({"type":"unsubscribe","channel":"c"}).to_string(),
            "not_subscribed",
        ),
    ] {
        a.ws.send(Message::Text(command.clone().into())).await.unwrap();
        let e = a.next().await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some(code)),
            "{command}"
        );
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    a.ws.send(Message::Binary(bytes::Bytes::from_static(b"\x00")))
        .await
        .unwrap();
    assert_eq!(a.next().await["code"], "bad_request");
    a.subscribe(json!({"type":"subscribe","channel":"c1"})).await;
    a.send(json!({"type":"subscribe","channel":"c1"})).await;
    assert_eq!(a.next().await["code"], "already_subscribed");
    a.subscribe(json!({"type":"subscribe","channel":"c2"})).await;
    a.send(json!({"type":"subscribe","channel":"c3","id":"x"})).await;
    let e = a.next().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("too_many_subscriptions"), Some("x"))
    );
    // Still a working connection.
    a.send(json!({"type":"publish","channel":"c1","data":1})).await;
    assert_eq!(a.next_of("message").await["offset"], 1);
    server.stop().await;
}

#[tokio::test]
async fn a_thousand_subscribers_parked_or_not_each_get_every_message_in_order() {
    let setup = Setup {
        park_after: Some(Duration::from_millis(100)),
        ..Setup::default()
    };
    let (server, hub) = start(setup).await;
    const SUBSCRIBERS: usize = 1000;
    const MESSAGES: u64 = 30;
    let mut peers = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        let mut p = Peer::open(server.port).await;
        p.send(json!({"type":"subscribe","channel":"fan"})).await;
        peers.push(p);
    }
    for p in &mut peers {
        p.next_of("subscribed").await;
    }
    // Idle long enough to park.
    wait_parked(&server, SUBSCRIBERS as u64 / 2, "subscribers").await;
    for n in 1..=MESSAGES {
        publish(&hub, "fan", n).await;
    }
    let receivers: Vec<_> = peers
        .into_iter()
        .map(|mut p| tokio::spawn(async move { offsets(&p.messages(MESSAGES as usize).await) }))
        .collect();
    for r in receivers {
        assert_eq!(r.await.unwrap(), (1..=MESSAGES).collect::<Vec<_>>());
    }
    let stats = hub.stats();
    assert_eq!(stats.deliveries.load(Ordering::Relaxed), SUBSCRIBERS as u64 * MESSAGES);
    // Parked subscribers were written to without a task.
    let parked_writes = server.stats.parked_writes.load(Ordering::Relaxed);
    assert!(
        parked_writes >= SUBSCRIBERS as u64 / 2,
        "{parked_writes} writes to parked subscribers"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_slow_consumer_is_closed_and_the_others_keep_receiving() {
    let mut setup = Setup {
        hub_config: HubConfig {
            subscriber_queue: 256 << 10,
            ..HubConfig::default()
        },
        ..Setup::default()
    };
    std::sync::Arc::make_mut(&mut setup.ws.engine).max_queued_bytes = 256 << 10;
    let (server, hub) = start(setup).await;
    // A raw subscriber that never reads after subscribing.
    let mut slow = common::raw_upgrade(server.port).await;
    let mut head = vec![0u8; 4096];
    let n = timeout(T, slow.read(&mut head)).await.unwrap().unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 101"));
    let subscribe = json!({"type":"subscribe","channel":"big"}).to_string();
    slow.write_all(&client_text_frame(subscribe.as_bytes())).await.unwrap();
    let mut fast = Peer::open(server.port).await;
    fast.subscribe(json!({"type":"subscribe","channel":"big"})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let big = "x".repeat(16 << 10);
    let reader = tokio::spawn(async move { offsets(&fast.messages(400).await) });
    for _ in 0..400 {
        hub.publish_json(&channel("big"), &json!(big).to_string())
            .await
            .unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(
        reader.await.unwrap(),
        (1..=400).collect::<Vec<_>>(),
        "the fast one got everything"
    );
    assert!(hub.stats().slow_consumers.load(Ordering::Relaxed) >= 1);
    // The slow one: its buffered frames, then a close 1008 "slow consumer" (or a reset).
    let mut all = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + T;
    loop {
        assert!(Instant::now() < deadline, "the slow consumer was not closed");
        match timeout(T, slow.read(&mut buf)).await.expect("read in time") {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    let close = b"\x88\x0f\x03\xf0slow consumer";
    assert!(
        all.windows(close.len()).any(|w| w == close),
        "no 1008 slow consumer in the {} bytes received",
        all.len()
    );
    server.stop().await;
}

/// A masked client text frame (mask 0: the payload as is).
fn client_text_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

fn http(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn body_json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn publish_over_http_takes_json_or_text_and_says_what_is_wrong() {
    let setup = Setup {
        hub_config: HubConfig {
            max_data: 64,
            ..HubConfig::default()
        },
        ..Setup::default()
    };
    let (server, hub) = start(setup).await;
    let mut c = Client::connect(server.port).await;
    let r = c
        .send_and_read(&http("POST", "/publish/news", &[], b"{ \"a\" : [1, 2] }"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(body_json(&r.body), json!({"channel":"news","offset":1}));
    let r = c
        .send_and_read(&http("POST", "/publish/news", &[], b"plain text"))
        .await;
    assert_eq!(body_json(&r.body)["offset"], 2);
    let h = hub.history(&channel("news"), Some(0), 10).await.unwrap();
    let data: Vec<&[u8]> = h.publications.iter().map(|p| &p.data[..]).collect();
    assert_eq!(data, [&b"{\"a\":[1,2]}"[..], b"\"plain text\""]);
    for (path, headers, body, status, code) in [
        ("/publish/a%20b", &[][..], &b"1"[..], 400, "bad_channel"),
        (
            "/publish/news",
            &[("Content-Type", "application/json")][..],
            b"{oops",
            400,
            "bad_json",
        ),
        ("/publish/news", &[][..], &[b'7'; 100][..], 413, "too_large"),
        ("/publish/news", &[][..], b"\xff\xfe", 400, "bad_request"),
    ] {
        let r = c.send_and_read(&http("POST", path, headers, body)).await;
        assert_eq!(r.status, status, "{path} {:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(body_json(&r.body)["error"]["code"], code);
        if r.header("connection") == Some("close") {
            c = Client::connect(server.port).await;
        }
    }
    let r = Client::connect(server.port)
        .await
        .send_and_read(&http("GET", "/publish/news", &[], b""))
        .await;
    assert_eq!(r.status, 405);
    server.stop().await;
}

#[tokio::test]
async fn polling_pages_through_history_and_a_long_poll_waits_for_the_next_message() {
    let (server, hub) = start(Setup::default()).await;
    for n in 1..=5 {
        publish(&hub, "p", n).await;
    }
    let mut c = Client::connect(server.port).await;
    let r = c.send_and_read(&common::get("/poll/p?since=0&limit=2")).await;
    let v = body_json(&r.body);
    assert_eq!(
        v["messages"],
        json!([{"offset":1,"data":{"n":1}},{"offset":2,"data":{"n":2}}])
    );
    assert_eq!((v["next"].as_u64(), v["recovered"].as_bool()), (Some(2), Some(true)));
    let v = body_json(&c.send_and_read(&common::get("/poll/p?since=2&limit=10")).await.body);
    assert_eq!(v["messages"].as_array().unwrap().len(), 3);
    assert_eq!(v["next"], 5);
    // Nothing new, no wait: at once, empty.
    let v = body_json(&c.send_and_read(&common::get("/poll/p?since=5")).await.body);
    assert_eq!(
        (v["messages"].as_array().unwrap().len(), v["next"].as_u64()),
        (0, Some(5))
    );
    // Held until the next publication.
    let started = Instant::now();
    let later = {
        let hub = hub.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            publish(&hub, "p", 6).await;
        })
    };
    let v = body_json(&c.send_and_read(&common::get("/poll/p?since=5&wait=10")).await.body);
    later.await.unwrap();
    assert_eq!(v["messages"], json!([{"offset":6,"data":{"n":6}}]));
    assert!(started.elapsed() >= Duration::from_millis(250) && started.elapsed() < Duration::from_secs(8));
    // Held for the whole wait when nothing comes.
    let started = Instant::now();
    let v = body_json(&c.send_and_read(&common::get("/poll/p?since=6&wait=0.5")).await.body);
    assert_eq!(v["messages"], json!([]));
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    let r = c.send_and_read(&common::get("/poll/p?since=x")).await;
    assert_eq!(r.status, 400);
    server.stop().await;
}

#[tokio::test]
async fn sse_streams_publications_and_resumes_after_last_event_id() {
    let (server, hub) = start(Setup::default()).await;
    let mut c = Client::connect(server.port).await;
    c.send(&common::get("/sse/s")).await;
    let head = c.read_until(b"event: subscribed\n", T).await;
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("retry: 1000"), "{head}");
    for n in 1..=3 {
        publish(&hub, "s", n).await;
    }
    let events = c.read_until(b"id: 3\ndata: {\"n\":3}\n\n", T).await;
    let events = String::from_utf8_lossy(&events);
    assert!(
        events.contains("id: 1\ndata: {\"n\":1}\n\n") && events.contains("id: 2\n"),
        "{events}"
    );
    drop(c);
    publish(&hub, "s", 4).await;
    // The browser's reconnection: Last-Event-ID is the last id it saw.
    let mut c = Client::connect(server.port).await;
    c.send(b"GET /sse/s HTTP/1.1\r\nHost: t\r\nLast-Event-ID: 2\r\n\r\n")
        .await;
    let replay = c.read_until(b"id: 4\ndata: {\"n\":4}\n\n", T).await;
    let replay = String::from_utf8_lossy(&replay);
    assert!(replay.contains("\"recovered\":true"), "{replay}");
    assert!(replay.contains("id: 3\n") && !replay.contains("id: 2\n"), "{replay}");
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_connections_deliveries_and_ends() {
    let setup = Setup {
        park_after: Some(Duration::from_millis(100)),
        ..Setup::default()
    };
    let (server, hub) = start(setup).await;
    let mut peers = parked_subscribers(&server, "m", 3).await;
    let text = tether::metrics::render(&server.stats, Some(&hub));
    for line in [
        "tether_connections{kind=\"websocket\",state=\"parked\"} 3",
        "tether_hub_subscribers 3",
        "tether_hub_channels 1",
        "tether_hub_websocket_sessions 3",
        "tether_hub_broker_up{broker=\"memory\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    for n in 1..=2 {
        publish(&hub, "m", n).await;
    }
    for p in &mut peers {
        p.messages(2).await;
    }
    drop(peers);
    let deadline = Instant::now() + T;
    loop {
        let text = tether::metrics::render(&server.stats, Some(&hub));
        let has = |line: &str| text.lines().any(|l| l == line);
        if has("tether_hub_subscribers 0") && has("tether_hub_channels 0") {
            assert!(has("tether_hub_publishes_total 2"), "{text}");
            assert!(has("tether_hub_deliveries_total 6"), "{text}");
            // The two publications, made without yielding, reached each
            // parked subscriber in one write (fan-out batches).
            assert!(has("tether_parked_writes_total 3"), "{text}");
            assert!(has("tether_http_connections_upgraded_total 3"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "the subscriptions did not end:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_held_long_poll_waits_parked_without_a_task() {
    let setup = Setup {
        park_after: Some(Duration::from_millis(100)),
        ..Setup::default()
    };
    let (server, hub) = start(setup).await;
    publish(&hub, "lp", 1).await;
    let mut polls = Vec::new();
    for _ in 0..20 {
        let mut c = Client::connect(server.port).await;
        c.send(&common::get("/poll/lp?since=1&wait=20")).await;
        polls.push(c);
    }
    // Held, and parked at once: no task per waiting poll.
    wait_parked(&server, 20, "held polls").await;
    assert_eq!(hub.stats().long_polls.load(Ordering::Relaxed), 20);
    assert_eq!(
        server.stats.http_active.load(Ordering::Relaxed),
        0,
        "parked, not active"
    );
    let started = Instant::now();
    publish(&hub, "lp", 2).await;
    for c in &mut polls {
        let r = c.response().await;
        assert_eq!(body_json(&r.body)["messages"], json!([{"offset":2,"data":{"n":2}}]));
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // The connections stay usable, and a parked poll ends at its deadline.
    let c = &mut polls[0];
    let started = Instant::now();
    c.send(&common::get("/poll/lp?since=2&wait=0.6")).await;
    let r = c.response().await;
    assert_eq!(body_json(&r.body)["messages"], json!([]));
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(hub.stats().long_polls.load(Ordering::Relaxed), 0);
    // A poll whose client goes away while it is held is forgotten.
    let mut gone = Client::connect(server.port).await;
    gone.send(&common::get("/poll/lp?since=2&wait=20")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(gone);
    drop(polls);
    hub.upkeep();
    let deadline = Instant::now() + T;
    while hub.stats().long_polls.load(Ordering::Relaxed) > 0 || hub.stats().channels.load(Ordering::Relaxed) > 0 {
        assert!(Instant::now() < deadline, "the gone poll was not forgotten");
        tokio::time::sleep(Duration::from_millis(20)).await;
        hub.upkeep();
    }
    server.stop().await;
}

#[tokio::test]
async fn a_burst_reaches_each_parked_subscriber_in_one_write_and_in_order() {
    let setup = Setup {
        park_after: Some(Duration::from_millis(100)),
        ..Setup::default()
    };
    let (server, hub) = start(setup).await;
    let mut peers = parked_subscribers(&server, "burst", 3).await;
    let writes = || server.stats.parked_writes.load(Ordering::Relaxed);
    let before = writes();
    // 40 publications without yielding: one flush writes them all.
    for n in 1..=40 {
        publish(&hub, "burst", n).await;
    }
    for p in &mut peers {
        let got = p.messages(40).await;
        assert_eq!(offsets(&got), (1..=40).collect::<Vec<_>>());
        assert!(got.iter().zip(1..).all(|((_, d), n)| d["n"] == n));
    }
    assert_eq!(writes() - before, 3, "one write per parked subscriber");
    // Bursts again, the subscribers parked or resuming: order holds.
    for round in 0..5u64 {
        for n in 1..=10 {
            publish(&hub, "burst", 40 + round * 10 + n).await;
        }
        tokio::task::yield_now().await;
    }
    for p in &mut peers {
        assert_eq!(offsets(&p.messages(50).await), (41..=90).collect::<Vec<_>>());
    }
    server.stop().await;
}

/// A publication that finds the last subscriber gone frees the channel: a
/// regression test for a deadlock, where freeing it took the in-process
/// broker's lock of the channel that the fan-out was running under.
///
/// A deadlock blocks the thread that publishes (the in-process broker
/// publishes inside the future's poll), so no timeout inside the runtime
/// could fire: the scenario runs on a runtime of its own on another
/// thread, and the test fails if it has not finished in a minute.
#[test]
fn a_publication_to_a_channel_whose_last_subscriber_left_frees_it_without_a_deadlock() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(publish_to_a_channel_whose_subscriber_left());
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("deadlocked: publishing never returned"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("the scenario failed (its panic is above)"),
    }
}

async fn publish_to_a_channel_whose_subscriber_left() {
    let (server, hub) = start(Setup::default()).await;
    for round in 0..3u64 {
        // An SSE subscriber that goes away without a word.
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
            .await
            .unwrap();
        s.write_all(b"GET /sse/gone HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("event: subscribed") {
            let n = timeout(T, s.read(&mut buf)).await.expect("the stream answers").unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        drop(s);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Two publications: the first finds the subscriber gone, the second
        // the channel freed (or still being freed).
        for n in 0..2 {
            timeout(T, publish(&hub, "gone", round * 2 + n))
                .await
                .expect("publish returns");
        }
    }
    let deadline = Instant::now() + T;
    while hub.stats().channels.load(Ordering::Relaxed) != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hub.stats().channels.load(Ordering::Relaxed), 0, "the channel was freed");
}
