//! WebSockets as `futures` `Stream` and `Sink` of messages: tether's
//! client against tether's server, driven only through `StreamExt` and
//! `SinkExt` (`next`, `send`, `forward`, `split`, `close`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, SinkExt, StreamExt};
use tether::client::ws::{connect, ClientOptions};
use tether::proto::h1;
use tether::server::router::Router;
use tether::server::{Request, Server};
use tether::ws::{self, CloseCode, Message, WsConfig, WsError, WsOptions};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

mod common;
use common::Serving;

/// `/echo` echoes data messages through the server's own Stream/Sink
/// (`forward` of the filtered stream into the sink); `/hold` upgrades and
/// never reads.
async fn start() -> Serving {
    let options = Arc::new(WsOptions::default());
    let hold_options = options.clone();
    let router = Router::new()
        .route("/echo", move |req: Request| {
            let options = options.clone();
            async move {
                ws::upgrade(&req, &options, |socket| async move {
                    let (tx, rx) = socket.split();
                    let data =
                        rx.take_while(|m| std::future::ready(matches!(m, Ok(Message::Text(_) | Message::Binary(_)))));
                    let _ = data.forward(tx).await;
                })
            }
        })
        .route("/hold", move |req: Request| {
            let options = hold_options.clone();
            async move {
                ws::upgrade(&req, &options, |socket| async move {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    drop(socket);
                })
            }
        });
    Serving::start(Server::new(h1::Config::default(), router).shutdown_timeout(Duration::from_secs(2))).await
}

fn url(server: &Serving, path: &str) -> String {
    format!("ws://127.0.0.1:{}{path}", server.port)
}

/// The next data message (pings and pongs skipped).
async fn next_data<S>(s: &mut S) -> Option<Message>
where
    S: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        match timeout(T, s.next()).await.expect("a message in time") {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_) | Message::Close(_)))) => return Some(m),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("{e}"),
            None => return None,
        }
    }
}

#[tokio::test]
async fn echo_through_next_and_send() {
    let server = start().await;
    let mut socket = connect(&url(&server, "/echo"), ClientOptions::default()).await.unwrap();
    for i in 0..10 {
        SinkExt::send(&mut socket, Message::Text(format!("m{i}").into()))
            .await
            .unwrap();
        assert_eq!(
            next_data(&mut socket).await,
            Some(Message::Text(format!("m{i}").into()))
        );
    }
    let big = Bytes::from(vec![3u8; 1 << 20]);
    SinkExt::send(&mut socket, Message::Binary(big.clone())).await.unwrap();
    assert_eq!(next_data(&mut socket).await, Some(Message::Binary(big)));
    // `SinkExt::close`: the close handshake, completed.
    timeout(T, SinkExt::close(&mut socket)).await.unwrap().unwrap();
    assert!(timeout(T, socket.next()).await.unwrap().is_none());
    server.stop().await;
}

#[tokio::test]
async fn forward_a_stream_of_100_messages() {
    let server = start().await;
    let socket = connect(&url(&server, "/echo"), ClientOptions::default()).await.unwrap();
    let (mut tx, mut rx) = socket.split();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 100 {
            match next_data(&mut rx).await {
                Some(Message::Text(t)) => got.push(t.to_string()),
                other => panic!("unexpected {other:?}"),
            }
        }
        (got, rx)
    });
    let mut messages = stream::iter((0..100).map(|i| Ok::<_, WsError>(Message::Text(format!("n{i}").into()))));
    timeout(T, tx.send_all(&mut messages)).await.unwrap().unwrap();
    let (got, mut rx) = timeout(T, reader).await.unwrap().unwrap();
    assert_eq!(got, (0..100).map(|i| format!("n{i}")).collect::<Vec<_>>());
    // `forward` too: a stream (fed through a channel) into the sink, which
    // it closes when the stream ends. Echoes are read before that: data
    // that arrives after our close frame left is discarded by the engine.
    let (feed, fed) = tokio::sync::mpsc::unbounded_channel::<Message>();
    let source = stream::unfold(fed, |mut fed| async move {
        fed.recv().await.map(|m| (Ok::<_, WsError>(m), fed))
    });
    let forwarding = tokio::spawn(async move { source.forward(tx).await });
    for i in 0..100u8 {
        feed.send(Message::Binary(Bytes::from(vec![i; 10]))).unwrap();
    }
    let mut n = 0u8;
    while n < 100 {
        match next_data(&mut rx).await {
            Some(Message::Binary(b)) => {
                assert_eq!(&b[..], &[n; 10][..]);
                n += 1;
            }
            other => panic!("unexpected {other:?} after {n}"),
        }
    }
    drop(feed);
    match next_data(&mut rx).await {
        Some(Message::Close(frame)) => assert_eq!(frame.map(|f| f.code), Some(CloseCode::NORMAL)),
        other => panic!("expected the close, got {other:?}"),
    }
    assert_eq!(n, 100);
    assert!(
        timeout(T, rx.next()).await.unwrap().is_none(),
        "the stream ends after the close"
    );
    timeout(T, forwarding).await.unwrap().unwrap().unwrap();
    server.stop().await;
}

#[tokio::test]
async fn split_of_the_combined_websocket() {
    let server = start().await;
    let socket = connect(&url(&server, "/echo"), ClientOptions::default()).await.unwrap();
    // `StreamExt::split`: one Stream + Sink into two halves behind a lock.
    let (mut sink, mut stream) = StreamExt::split(socket);
    let writer = tokio::spawn(async move {
        for i in 0..20 {
            sink.send(Message::Text(format!("s{i}").into())).await.unwrap();
        }
        sink
    });
    for i in 0..20 {
        assert_eq!(
            next_data(&mut stream).await,
            Some(Message::Text(format!("s{i}").into()))
        );
    }
    let mut sink = timeout(T, writer).await.unwrap().unwrap();
    sink.send(Message::Close(None)).await.unwrap();
    // The server answers the close; the stream ends after it.
    assert!(matches!(next_data(&mut stream).await, Some(Message::Close(_))));
    assert!(timeout(T, stream.next()).await.unwrap().is_none());
    server.stop().await;
}

#[tokio::test]
async fn the_stream_ends_after_a_close_and_the_sink_refuses_then() {
    let server = start().await;
    let mut socket = connect(&url(&server, "/echo"), ClientOptions::default()).await.unwrap();
    socket.close(CloseCode::NORMAL, "bye").await.unwrap();
    let mut seen_close = false;
    while let Some(m) = timeout(T, socket.next()).await.unwrap() {
        seen_close |= matches!(m, Ok(Message::Close(_)));
    }
    assert!(seen_close, "the server's close frame came first");
    assert!(timeout(T, socket.next()).await.unwrap().is_none(), "and stays ended");
    let refused = SinkExt::send(&mut socket, Message::Text("late".into())).await;
    assert!(matches!(refused, Err(WsError::Closed)), "{refused:?}");
    // Closing what is closed is done at once.
    timeout(T, SinkExt::close(&mut socket)).await.unwrap().unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_sink_on_a_peer_that_does_not_read_waits() {
    let server = start().await;
    let mut options = ClientOptions::default();
    options.ws.engine = Arc::new(WsConfig {
        max_queued_bytes: 64 * 1024,
        ..WsConfig::default()
    });
    let socket = connect(&url(&server, "/hold"), options).await.unwrap();
    let (mut tx, _rx) = socket.split();
    let chunk = Bytes::from(vec![0u8; 16 * 1024]);
    // `send` (ready, queue, flush) waits once the socket buffers are full.
    let mut sent = 0usize;
    let mut blocked = false;
    for _ in 0..10_000 {
        match timeout(
            Duration::from_millis(500),
            SinkExt::send(&mut tx, Message::Binary(chunk.clone())),
        )
        .await
        {
            Ok(Ok(())) => sent += 1,
            Ok(Err(e)) => panic!("send failed after {sent}: {e}"),
            Err(_) => {
                blocked = true;
                break;
            }
        }
    }
    assert!(blocked, "the sink never waited after {sent} messages");
    // `feed` (ready and queue, no flush) waits once the queue is at its
    // limit: a few messages more at most.
    let mut fed = 0usize;
    let mut full = false;
    for _ in 0..100 {
        match timeout(Duration::from_millis(300), tx.feed(Message::Binary(chunk.clone()))).await {
            Ok(Ok(())) => fed += 1,
            Ok(Err(e)) => panic!("feed failed after {fed}: {e}"),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    assert!(full, "poll_ready never waited after {fed} more messages");
    assert!(
        fed <= 64 * 1024 / (16 * 1024) + 1,
        "{fed} messages queued past the flush"
    );
    assert!(
        tx.queued_bytes() <= 64 * 1024 + 16 * 1024 + 64,
        "{} bytes queued",
        tx.queued_bytes()
    );
    assert!((sent + fed) * 16 * 1024 < 64 << 20, "{sent} + {fed} messages accepted");
    server.stop().await;
}

#[tokio::test]
async fn a_sender_without_its_receiver_closes_to_the_end_itself() {
    let server = start().await;
    let socket = connect(&url(&server, "/echo"), ClientOptions::default()).await.unwrap();
    let (mut tx, rx) = socket.split();
    SinkExt::send(&mut tx, Message::Text("before".into())).await.unwrap();
    drop(rx);
    // Nobody receives: the close reads the peer's answer (and the echo
    // before it) itself, and completes once the connection has ended.
    timeout(T, SinkExt::close(&mut tx)).await.unwrap().unwrap();
    assert!(tx.is_closed());
    let late = SinkExt::send(&mut tx, Message::Text("after".into())).await;
    assert!(matches!(late, Err(WsError::Closed)), "{late:?}");
    server.stop().await;
}
