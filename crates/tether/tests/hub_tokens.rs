//! Client tokens over real sockets, every reading transport: `/ws` with
//! `?token=` and with an `auth` message, refresh, expiry closing the
//! connection with 1008, `forbidden` keeping it open, `user:{sub}`; SSE
//! and polls with valid, missing, expired, tampered, wrong-key and
//! `alg: none` tokens; publisher keys on `POST /publish`.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tether::client::ws::{connect, ClientOptions};
use tether::hub::{Hub, HubConfig, MemoryLimits, PublishKeys, TokenVerifier};
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

async fn start() -> Serving {
    let config = HubConfig {
        tokens: Some(TokenVerifier::hs256(SECRET).unwrap()),
        publish_keys: PublishKeys::new(["backend-key"]),
        ..HubConfig::default()
    };
    let (hub, _) = Hub::in_memory(config, MemoryLimits::default());
    let router = tether::hub::http::routes(Router::new(), &hub, &Arc::new(WsOptions::default()));
    Serving::start(Server::new(h1::Config::default(), router).park_idle_after(Some(Duration::from_millis(100)))).await
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
