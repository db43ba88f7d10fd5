//! Who may publish and who may listen, over real sockets, every transport.
//! Client tokens: `/ws` with `?token=` and with an `auth` message, refresh,
//! expiry closing the connection with 1008, `forbidden` keeping it open,
//! `user:{sub}`; SSE and polls with valid, missing, expired, tampered,
//! wrong-key and `alg: none` tokens; publisher keys on `POST /publish`.
//! Namespaces: anonymous reading, clients kept from publishing, presence
//! off, history per namespace. Limits: the command rate (`rate_limited`,
//! then 1008) and connections per token subject on `/ws`, SSE and long
//! polls.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tether::client::ws::{connect, ClientOptions};
use tether::hub::{
    ChannelName, ClientLimits, HistoryLimits, Hub, HubConfig, Namespace, Namespaces, PublishKeys, TokenVerifier,
};
use tether::proto::h1;
use tether::server::{Router, Server};
use tether::ws::{Message, WebSocket, WsOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use common::Serving;

const T: Duration = Duration::from_secs(10);
const SECRET: &[u8] = b"a-secret-of-at-least-32-bytes-0123";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// Ada's token: chat:* to read, chat:room1 to write, valid for `secs`.
fn ada(secs: u64) -> String {
    token(json!({"sub": "ada", "exp": now() + secs, "subscribe": ["chat:*"], "publish": ["chat:room1"]}))
}

/// The hub's settings in these tests: tokens and a publisher key.
fn secured() -> HubConfig {
    HubConfig {
        tokens: Some(TokenVerifier::hs256(SECRET).unwrap()),
        publish_keys: PublishKeys::new(["backend-key"]),
        ..HubConfig::default()
    }
}

async fn start() -> Serving {
    start_with(secured()).await.0
}

async fn start_with(config: HubConfig) -> (Serving, Hub) {
    let (hub, _) = Hub::in_memory(config);
    let router = tether::hub::http::routes(Router::new(), &hub, &Arc::new(WsOptions::default()));
    let server = Server::new(h1::Config::default(), router).park_idle_after(Some(Duration::from_millis(100)));
    (Serving::start(server).await, hub)
}

async fn open(port: u16, query: &str) -> WebSocket {
    connect(&format!("ws://127.0.0.1:{port}/ws{query}"), ClientOptions::default())
        .await
        .expect("connect to /ws")
}

async fn send(ws: &WebSocket, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.expect("send");
}

/// The next JSON message, or the close code once the connection closes.
async fn next(ws: &mut WebSocket) -> Result<Value, u16> {
    loop {
        match timeout(T, ws.recv()).await.expect("a message in time") {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Close(frame))) => return Err(frame.map_or(1005, |f| f.code.0)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("{e}"),
            None => return Err(0),
        }
    }
}

/// The status line and body of one HTTP/1.1 request with `Connection: close`.
async fn http(port: u16, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test]
async fn a_websocket_needs_a_token_and_gets_only_its_channels() {
    let server = start().await;
    // Token in the URL: subscribe within the grant; outside it, forbidden,
    // and the connection stays open.
    let mut ws = open(server.port, &format!("?token={}", ada(60))).await;
    send(&ws, json!({"type": "subscribe", "channel": "chat:room2"})).await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "subscribed");
    send(&ws, json!({"type": "subscribe", "channel": "ticker:x", "id": 1})).await;
    let e = next(&mut ws).await.unwrap();
    assert_eq!(
        (e["code"].as_str(), e["channel"].as_str(), e["id"].as_i64()),
        (Some("forbidden"), Some("ticker:x"), Some(1))
    );
    send(&ws, json!({"type": "publish", "channel": "chat:room2", "data": 1})).await;
    assert_eq!(next(&mut ws).await.unwrap()["code"], "forbidden");
    // Its own user channel without listing it.
    send(&ws, json!({"type": "subscribe", "channel": "user:ada"})).await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "subscribed");
    send(&ws, json!({"type": "subscribe", "channel": "user:bob"})).await;
    assert_eq!(next(&mut ws).await.unwrap()["code"], "forbidden");
    send(
        &ws,
        json!({"type": "publish", "channel": "chat:room1", "data": {"hi": 1}}),
    )
    .await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "published");

    // A bad token in the URL: refused before the upgrade.
    for bad in ["not-a-token", &ada(60)[..20]] {
        let (status, head, _) = http(
            server.port,
            &format!("GET /ws?token={bad} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 401, "{head}");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
    }
}

#[tokio::test]
async fn the_first_message_authenticates_refreshes_and_expiry_closes() {
    let server = start().await;
    // Without a token, a command other than auth: unauthorized, 1008.
    let mut ws = open(server.port, "").await;
    send(&ws, json!({"type": "subscribe", "channel": "chat:a"})).await;
    assert_eq!(next(&mut ws).await.unwrap()["code"], "unauthorized");
    assert_eq!(next(&mut ws).await.unwrap_err(), 1008);

    // A tampered token in the auth message: unauthorized, 1008.
    let mut ws = open(server.port, "").await;
    let mut parts: Vec<String> = ada(60).split('.').map(str::to_string).collect();
    parts[1] = parts[1].chars().rev().collect();
    send(&ws, json!({"type": "auth", "token": parts.join(".")})).await;
    assert_eq!(next(&mut ws).await.unwrap()["code"], "unauthorized");
    assert_eq!(next(&mut ws).await.unwrap_err(), 1008);

    // A token that expires in 2 s, refreshed once, then left to expire:
    // the idle (parked) connection is closed with 1008 at the new expiry.
    let mut ws = open(server.port, "").await;
    send(&ws, json!({"type": "auth", "token": ada(2), "id": "a"})).await;
    let answer = next(&mut ws).await.unwrap();
    assert_eq!(
        (answer["type"].as_str(), answer["sub"].as_str()),
        (Some("authorized"), Some("ada"))
    );
    send(&ws, json!({"type": "subscribe", "channel": "chat:a"})).await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "subscribed");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    send(&ws, json!({"type": "auth", "token": ada(3)})).await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "authorized");
    // Past the first token's expiry, still open.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    send(&ws, json!({"type": "subscribe", "channel": "chat:b"})).await;
    assert_eq!(next(&mut ws).await.unwrap()["type"], "subscribed");
    // A refresh for someone else is refused.
    let bob = token(json!({"sub": "bob", "exp": now() + 60, "subscribe": ["*"]}));
    let mut other = open(server.port, &format!("?token={}", ada(60))).await;
    send(&other, json!({"type": "auth", "token": bob})).await;
    assert_eq!(next(&mut other).await.unwrap()["code"], "unauthorized");
    // Then the refreshed token runs out: closed with 1008 without a word from the client.
    let started = std::time::Instant::now();
    assert_eq!(next(&mut ws).await.unwrap_err(), 1008);
    assert!(started.elapsed() < Duration::from_secs(4), "closed at the expiry");
}

#[tokio::test]
async fn sse_and_polls_need_a_token_for_their_channel() {
    let server = start().await;
    let get = |path: String| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let valid = ada(60);
    let expired = token(json!({"sub": "ada", "exp": now() - 5, "subscribe": ["*"]}));
    let wrong_key = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "ada", "exp": now() + 60, "subscribe": ["*"]}),
        &EncodingKey::from_secret(b"someone-elses-secret-0123456789ab"),
    )
    .unwrap();
    let b64 = |s: String| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s);
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#.into()),
        b64(format!(r#"{{"sub":"ada","exp":{},"subscribe":["*"]}}"#, now() + 60))
    );
    for transport in ["poll", "sse"] {
        for (what, token, status) in [
            ("missing", None, 401),
            ("expired", Some(&expired), 401),
            ("wrong key", Some(&wrong_key), 401),
            ("alg none", Some(&none), 401),
        ] {
            let q = token.map(|t| format!("?token={t}")).unwrap_or_default();
            let (got, head, body) = http(server.port, &get(format!("/{transport}/chat:a{q}"))).await;
            assert_eq!(got, status, "{transport} {what}: {head}{body}");
            assert!(body.contains("\"unauthorized\""), "{body}");
        }
        let (got, _, body) = http(server.port, &get(format!("/{transport}/ticker:x?token={valid}"))).await;
        assert_eq!(got, 403, "{transport} outside the grant");
        assert!(body.contains("\"forbidden\""), "{body}");
    }
    let (got, _, body) = http(server.port, &get(format!("/poll/chat:a?since=0&token={valid}"))).await;
    assert_eq!(got, 200, "{body}");
    // The bearer field works as well as the query.
    let (got, _, _) = http(
        server.port,
        &format!("GET /poll/chat:a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {valid}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(got, 200);
    // An SSE stream with a token ends when the token expires.
    let short = ada(1);
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    s.write_all(get(format!("/sse/chat:a?token={short}")).as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the stream ended")
        .unwrap();
    assert!(String::from_utf8_lossy(&out).contains("event: subscribed"));
    assert!(started.elapsed() < Duration::from_secs(3));
    // HTTP publishing is the backend's: a publisher key, not a token.
    let publish = |auth: &str| {
        format!("POST /publish/chat:a HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 2\r\nConnection: close\r\n\r\nhi")
    };
    assert_eq!(http(server.port, &publish("")).await.0, 401);
    assert_eq!(
        http(server.port, &publish(&format!("Authorization: Bearer {valid}\r\n")))
            .await
            .0,
        401
    );
    assert_eq!(
        http(server.port, &publish("Authorization: Bearer backend-key\r\n"))
            .await
            .0,
        200
    );
}

/// `pub:` readable without a token (two publications of history);
/// `ticker:` readable without a token, published by the backend only, no
/// presence; everything else needs a token.
fn with_namespaces() -> HubConfig {
    let public = Namespace {
        anonymous: true,
        history: Some(HistoryLimits {
            size: 2,
            ttl: Duration::from_secs(60),
        }),
        ..Namespace::new("pub:")
    };
    let ticker = Namespace {
        anonymous: true,
        client_publish: false,
        presence: false,
        ..Namespace::new("ticker:")
    };
    HubConfig {
        namespaces: Namespaces::new(Namespace::new(""), vec![public, ticker]).unwrap(),
        ..secured()
    }
}

#[tokio::test]
async fn namespaces_open_reading_to_anonymous_clients_and_keep_clients_from_publishing() {
    let (server, hub) = start_with(with_namespaces()).await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    // Anonymous: reads pub: and ticker: on every transport, nothing else.
    let mut anon = open(server.port, "").await;
    send(&anon, json!({"type": "subscribe", "channel": "pub:news"})).await;
    assert_eq!(next(&mut anon).await.unwrap()["type"], "subscribed");
    for n in 1..=5 {
        hub.publish_json(&ChannelName::new("pub:news").unwrap(), &n.to_string())
            .await
            .unwrap();
    }
    for n in 1..=5 {
        assert_eq!(next(&mut anon).await.unwrap()["data"], n);
    }
    let (status, _, body) = http(server.port, &get("/poll/pub:news?since=0")).await;
    assert_eq!(status, 200, "{body}");
    let poll: Value = serde_json::from_str(&body).unwrap();
    let offsets: Vec<_> = poll["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].clone())
        .collect();
    assert_eq!(offsets, [json!(4), json!(5)], "pub: keeps two publications: {body}");
    assert_eq!(poll["recovered"], false);
    let (status, _, _) = http(server.port, &get("/poll/news?since=0")).await;
    assert_eq!(status, 401, "outside the anonymous namespaces");
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    s.write_all(get("/sse/ticker:X").as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    timeout(T, s.read_exact(&mut head)).await.unwrap().unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // An anonymous client cannot publish anywhere: unauthorized, 1008.
    send(&anon, json!({"type": "publish", "channel": "pub:news", "data": 1})).await;
    assert_eq!(next(&mut anon).await.unwrap()["code"], "unauthorized");
    assert_eq!(next(&mut anon).await.unwrap_err(), 1008);

    // A token allowing everything still cannot publish on ticker:, and
    // gets no presence there; the backend's key can publish.
    let all = token(json!({"sub": "ada", "exp": now() + 60, "subscribe": ["*"], "publish": ["*"]}));
    let mut ws = open(server.port, &format!("?token={all}")).await;
    send(
        &ws,
        json!({"type": "publish", "channel": "ticker:X", "data": 1, "id": 9}),
    )
    .await;
    let e = next(&mut ws).await.unwrap();
    assert_eq!((e["code"].as_str(), e["id"].as_i64()), (Some("forbidden"), Some(9)));
    send(
        &ws,
        json!({"type": "subscribe", "channel": "ticker:X", "presence": true}),
    )
    .await;
    let sub = next(&mut ws).await.unwrap();
    assert_eq!(sub["type"], "subscribed");
    assert!(sub.get("members").is_none(), "presence is off in ticker: {sub}");
    send(&ws, json!({"type": "subscribe", "channel": "chat:a", "presence": true})).await;
    assert_eq!(next(&mut ws).await.unwrap()["members"], 1, "presence is on elsewhere");
    send(&ws, json!({"type": "publish", "channel": "chat:a", "data": 2})).await;
    let answers = [next(&mut ws).await.unwrap(), next(&mut ws).await.unwrap()];
    assert!(answers.iter().any(|a| a["type"] == "published"), "{answers:?}");
    let publish = "POST /publish/ticker:X HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer backend-key\r\nContent-Length: 1\r\nConnection: close\r\n\r\n7";
    assert_eq!(http(server.port, publish).await.0, 200);
    let m = next(&mut ws).await.unwrap();
    assert_eq!((m["channel"].as_str(), m["data"].as_i64()), (Some("ticker:X"), Some(7)));
}

#[tokio::test]
async fn a_client_over_its_command_rate_is_refused_then_closed() {
    let config = HubConfig {
        client_limits: ClientLimits {
            commands_per_second: 5,
            command_burst: 5,
            strikes: 3,
            connections_per_subject: 0,
        },
        ..HubConfig::default()
    };
    let (server, _hub) = start_with(config).await;
    let mut ws = open(server.port, "").await;
    // Five at once: the burst. Then three refused (strikes), then closed.
    for i in 0..9 {
        send(&ws, json!({"type": "subscribe", "channel": format!("c{i}"), "id": i})).await;
    }
    for i in 0..5 {
        let a = next(&mut ws).await.unwrap();
        assert_eq!(
            (a["type"].as_str(), a["id"].as_i64()),
            (Some("subscribed"), Some(i)),
            "{a}"
        );
    }
    for i in 5..8 {
        let a = next(&mut ws).await.unwrap();
        assert_eq!(
            (a["code"].as_str(), a["id"].as_i64()),
            (Some("rate_limited"), Some(i)),
            "{a}"
        );
    }
    let last = next(&mut ws).await.unwrap();
    assert_eq!(last["code"], "rate_limited");
    assert_eq!(next(&mut ws).await.unwrap_err(), 1008);

    // A client within its rate (5/s: one every 250 ms) is never refused.
    let mut ws = open(server.port, "").await;
    for i in 0..12 {
        send(&ws, json!({"type": "subscribe", "channel": format!("d{i}")})).await;
        assert_eq!(next(&mut ws).await.unwrap()["type"], "subscribed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_subject_holds_at_most_its_connections_on_every_transport() {
    let config = HubConfig {
        client_limits: ClientLimits {
            connections_per_subject: 2,
            ..ClientLimits::default()
        },
        ..secured()
    };
    let (server, _hub) = start_with(config).await;
    let upgrade = |q: &str| {
        format!("GET /ws{q} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    };
    let first = open(server.port, &format!("?token={}", ada(60))).await;
    // The second by its first message.
    let mut second = open(server.port, "").await;
    send(&second, json!({"type": "auth", "token": ada(60)})).await;
    assert_eq!(next(&mut second).await.unwrap()["type"], "authorized");
    // A third: 429 before the upgrade, or too_many_connections and 1008 after it.
    let (status, _, body) = http(server.port, &upgrade(&format!("?token={}", ada(60)))).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too_many_connections"), "{body}");
    let mut third = open(server.port, "").await;
    send(&third, json!({"type": "auth", "token": ada(60)})).await;
    assert_eq!(next(&mut third).await.unwrap()["code"], "too_many_connections");
    assert_eq!(next(&mut third).await.unwrap_err(), 1008);
    // SSE and long polls count too; another subject is not affected.
    let get = |path: String| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (status, _, _) = http(server.port, &get(format!("/sse/chat:a?token={}", ada(60)))).await;
    assert_eq!(status, 429);
    let (status, _, _) = http(
        server.port,
        &get(format!("/poll/chat:a?since=0&wait=5&token={}", ada(60))),
    )
    .await;
    assert_eq!(status, 429);
    let bob = token(json!({"sub": "bob", "exp": now() + 60, "subscribe": ["chat:*"]}));
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    s.write_all(get(format!("/sse/chat:a?token={bob}")).as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 12];
    timeout(T, s.read_exact(&mut head)).await.unwrap().unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // A connection that ends gives its slot back: an SSE stream fits now.
    drop(first);
    let deadline = std::time::Instant::now() + T;
    let mut sse = loop {
        let mut s = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
        s.write_all(get(format!("/sse/chat:a?token={}", ada(60))).as_bytes())
            .await
            .unwrap();
        let mut head = [0u8; 12];
        timeout(T, s.read_exact(&mut head)).await.unwrap().unwrap();
        if &head == b"HTTP/1.1 200" {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "the slot came back in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The stream holds it: a long poll is refused until the stream ends.
    let (status, _, _) = http(
        server.port,
        &get(format!("/poll/chat:a?since=0&wait=5&token={}", ada(60))),
    )
    .await;
    assert_eq!(status, 429);
    sse.shutdown().await.unwrap();
    drop(sse);
    let deadline = std::time::Instant::now() + T;
    loop {
        let (status, _, _) = http(
            server.port,
            &get(format!("/poll/chat:a?since=0&wait=1&token={}", ada(60))),
        )
        .await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(
            std::time::Instant::now() < deadline,
            "the stream's slot came back in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
