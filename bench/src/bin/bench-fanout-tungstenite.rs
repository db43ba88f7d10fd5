//! tokio-tungstenite fan-out reference server: the push protocol of
//! `tether serve`'s `/ws` reduced to what `tether bench fanout` speaks, on
//! a `tokio::sync::broadcast` channel per channel name (tokio's documented
//! tool for "many values to many receivers"), one task per connection.
//!
//! Client → server (JSON text frames):
//! `{"type":"subscribe","channel":"c"}`, `{"type":"publish","channel":"c","data":…}`.
//! Server → client: `{"type":"subscribed","channel":"c","offset":L}` (L: the
//! latest offset), `{"type":"message","channel":"c","offset":N,"data":…}` to
//! every subscriber, `{"type":"published","channel":"c","offset":N}` to the
//! publisher, `{"type":"error","message":"…"}` for a bad command.
//!
//! A publication's message is formatted once and its `Utf8Bytes` shared by
//! every receiver (cloning a `Message::Text` clones a `Bytes`). Each
//! connection's task waits on its WebSocket and its subscriptions'
//! receivers (`tokio_stream::StreamMap` of `BroadcastStream`s) with
//! `select!` and sends each message with `SinkExt::send` (write and flush),
//! as tokio-tungstenite's examples do. A receiver that lags behind the
//! channel's capacity (it missed messages) closes its connection with 1008,
//! the rule tether applies to a slow consumer. Default `WebSocketConfig`,
//! `TCP_NODELAY` on accepted sockets; `/ws` only (other paths: `404`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamMap;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// Messages a channel holds for its slowest receiver.
const CAPACITY: usize = 4096;

/// A command: `type` says which; `data` is kept as raw JSON text. (Not a
/// `#[serde(tag = "type")]` enum: serde buffers internally tagged content,
/// which a borrowed `RawValue` cannot come from.)
#[derive(Deserialize)]
struct Command<'a> {
    #[serde(rename = "type")]
    kind: String,
    channel: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

struct Channel {
    offset: u64,
    tx: broadcast::Sender<Message>,
}

#[derive(Default)]
struct Hub {
    channels: Mutex<HashMap<String, Channel>>,
}

impl Hub {
    /// A receiver of `name`'s later messages, and its latest offset.
    fn subscribe(&self, name: &str) -> (broadcast::Receiver<Message>, u64) {
        let mut channels = self.channels.lock().unwrap();
        let c = channels.entry(name.to_owned()).or_insert_with(|| Channel {
            offset: 0,
            tx: broadcast::channel(CAPACITY).0,
        });
        (c.tx.subscribe(), c.offset)
    }

    /// Sends `data` to `name`'s subscribers; returns its offset. The lock
    /// makes offsets and the broadcast order agree.
    fn publish(&self, name: &str, data: &RawValue) -> u64 {
        let mut channels = self.channels.lock().unwrap();
        let c = channels.entry(name.to_owned()).or_insert_with(|| Channel {
            offset: 0,
            tx: broadcast::channel(CAPACITY).0,
        });
        c.offset += 1;
        let channel = json_string(name);
        let text = format!(
            r#"{{"type":"message","channel":{channel},"offset":{},"data":{}}}"#,
            c.offset,
            data.get()
        );
        // No receiver is not an error: nobody listens yet.
        let _ = c.tx.send(Message::text(text));
        c.offset
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

#[allow(clippy::result_large_err)]
fn check_path(req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() == "/ws" {
        Ok(resp)
    } else {
        let mut e = ErrorResponse::new(None);
        *e.status_mut() = StatusCode::NOT_FOUND;
        Err(e)
    }
}

async fn serve(stream: tokio::net::TcpStream, hub: Arc<Hub>) {
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, check_path).await else {
        return;
    };
    let (mut write, mut read) = ws.split();
    let mut subscriptions: StreamMap<String, BroadcastStream<Message>> = StreamMap::new();
    loop {
        tokio::select! {
            incoming = read.next() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    // Pings are answered by tungstenite; binary is not part of the protocol.
                    Some(Ok(_)) => continue,
                };
                let answer = match serde_json::from_str::<Command>(text.as_str()) {
                    Ok(Command { kind, channel, .. }) if kind == "subscribe" => {
                        if subscriptions.contains_key(&channel) {
                            r#"{"type":"error","message":"already subscribed"}"#.to_owned()
                        } else {
                            let (rx, offset) = hub.subscribe(&channel);
                            let answer = format!(
                                r#"{{"type":"subscribed","channel":{},"offset":{offset}}}"#,
                                json_string(&channel)
                            );
                            subscriptions.insert(channel, BroadcastStream::new(rx));
                            answer
                        }
                    }
                    Ok(Command { kind, channel, data: Some(data) }) if kind == "publish" => {
                        let offset = hub.publish(&channel, data);
                        format!(r#"{{"type":"published","channel":{},"offset":{offset}}}"#, json_string(&channel))
                    }
                    Ok(_) => r#"{"type":"error","message":"unknown command"}"#.to_owned(),
                    Err(e) => format!(r#"{{"type":"error","message":{}}}"#, json_string(&e.to_string())),
                };
                if write.send(Message::text(answer)).await.is_err() {
                    return;
                }
            }
            Some((_, message)) = subscriptions.next(), if !subscriptions.is_empty() => {
                let Ok(message) = message else {
                    // Lagged: this subscriber missed messages.
                    let close = CloseFrame { code: CloseCode::Policy, reason: "slow consumer".into() };
                    let _ = write.send(Message::Close(Some(close))).await;
                    return;
                };
                if write.send(message).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn main() {
    let args = tether_bench::Args::parse("bench-fanout-tungstenite");
    args.runtime().block_on(async {
        let listener = args.bind().await;
        let hub = Arc::new(Hub::default());
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(_) => continue,
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream, hub.clone()));
        }
    });
}
