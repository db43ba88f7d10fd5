//! The guide's "100 chat messages": one publisher posts N messages at
//! random times over a span; four clients receive the same stream at
//! once, by polling (`/poll` every interval, over keep-alive), by
//! long-polling (`/poll?wait=`), by SSE (`/sse`) and by WebSocket push
//! (`/ws`). Each records when each message arrived; the publisher records
//! when it sent each one, so latency is publish to receipt, on one clock.
//!
//! Bytes: the HTTP clients' engines count heads and bodies; the SSE and
//! WebSocket clients run on a counting socket ([`Counted`]) as well, and
//! the run reports whether engine and socket agree. Every client's bytes,
//! the publisher's included, are then checked against the server's own
//! counters ([`checked`]). Against an `https://` server every client goes
//! through TLS, and the counting socket wraps the TLS stream: it counts
//! the plaintext, as the engines and the server's counters do.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tether::client::http::HttpClient;
use tether::client::ws::{connect_on, ClientOptions};
use tether::proto::h1::client::{ClientConfig, ClientConnection, ClientEvent, RequestHead};
use tether::proto::wire::Traffic;
use tether::ws::{CloseCode, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::counted::{Counted, Tally};
use super::server::{checked, Agreement, ServerBytes};
use super::Base;
use super::{request_headers, table, CompareArgs, HeaderSet, Latency};

/// One transport's results.
#[derive(Debug, Serialize)]
pub struct TransportResult {
    pub transport: &'static str,
    pub delivered: usize,
    /// HTTP requests sent (polls), or WebSocket frames both ways.
    pub exchanges: u64,
    /// Polls answered with no message.
    pub empty_answers: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub total_bytes: u64,
    /// HTTP heads and chunk framing, or WebSocket frame headers plus the
    /// upgrade handshake: the guide's "headers".
    pub protocol_overhead: u64,
    /// Everything but the messages' own data, per delivered message.
    pub overhead_per_message: f64,
    pub protocol_overhead_per_message: f64,
    pub latency: Latency,
    /// Publish-to-receipt latency of each message in order (ms; `null`:
    /// not delivered).
    pub latencies_ms: Vec<Option<f64>>,
    /// Bytes of the connection's setup, both ways (the WebSocket upgrade;
    /// 0 for the others), part of `protocol_overhead`.
    pub setup_bytes: u64,
    /// For clients on a counting socket: whether the engine's count and
    /// the socket's agree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_agrees: Option<bool>,
}

/// The ratios the guide estimates, measured (polling against push).
#[derive(Debug, Serialize)]
pub struct Ratios {
    /// Polling's protocol overhead over the WebSocket's (guide: 30–60×).
    pub overhead_polling_vs_websocket: f64,
    /// Polling's total bytes over the WebSocket's.
    pub bytes_polling_vs_websocket: f64,
    /// Polling's median latency over the WebSocket's (guide: 100×).
    pub latency_p50_polling_vs_websocket: f64,
    /// Bytes of HTTP head per poll (request and response; guide: 400–800).
    pub head_bytes_per_poll: f64,
    /// WebSocket header bytes per delivered message, the upgrade spread
    /// over the messages.
    pub frame_header_bytes_per_message: f64,
    /// The same without the upgrade: frame headers alone (guide: 2–14).
    pub frame_header_bytes_per_message_after_upgrade: f64,
}

#[derive(Debug, Serialize)]
pub struct ChatReport {
    pub messages: usize,
    pub span_ms: f64,
    pub poll_interval_ms: f64,
    pub long_poll_wait_ms: f64,
    pub headers: HeaderSet,
    /// The messages' own data (compact JSON), summed.
    pub data_bytes: u64,
    pub transports: Vec<TransportResult>,
    pub publisher_bytes: u64,
    pub ratios: Ratios,
    pub server: Agreement,
}

/// What the publisher and the receivers share: when each message was sent.
struct Clock {
    start: Instant,
    published: Mutex<Vec<Option<Instant>>>,
}

impl Clock {
    fn latency(&self, n: usize, now: Instant) -> Option<Duration> {
        let sent = self.published.lock().ok()?.get(n).copied().flatten()?;
        Some(now.saturating_duration_since(sent))
    }
}

/// A receiver's record: latency per message, by index.
struct Receipts {
    latencies: Vec<Option<Duration>>,
    delivered: usize,
    progress: indicatif::ProgressBar,
}

impl Receipts {
    fn new(n: usize, progress: indicatif::ProgressBar) -> Self {
        Self {
            latencies: vec![None; n],
            delivered: 0,
            progress,
        }
    }

    /// A publication's data arrived (`{"n":…}`); repeats are ignored.
    fn record(&mut self, data: &serde_json::Value, clock: &Clock) {
        let Some(n) = data.get("n").and_then(|n| n.as_u64()).map(|n| n as usize) else {
            return;
        };
        if n < self.latencies.len() && self.latencies[n].is_none() {
            self.latencies[n] = Some(clock.latency(n, Instant::now()).unwrap_or_default());
            self.delivered += 1;
            self.progress.inc(1);
        }
    }

    fn done(&self) -> bool {
        self.delivered == self.latencies.len()
    }
}

/// What one receiver measured, before it is summarised.
struct Measured {
    transport: &'static str,
    receipts: Receipts,
    exchanges: u64,
    empty_answers: u64,
    traffic: Traffic,
    /// Socket-level (read, written), where the client ran on one.
    socket: Option<(u64, u64)>,
    /// The setup's bytes (see [`TransportResult::setup_bytes`]).
    setup: u64,
}

pub async fn run(args: &CompareArgs, base: &Base) -> anyhow::Result<ChatReport> {
    let scale = |d: Duration| d.div_f64(args.speed);
    let span = scale(args.over);
    let interval = scale(args.poll_interval);
    let wait = scale(args.long_poll_wait.min(Duration::from_secs(30)));
    let channel = format!("compare-{}-{}", std::process::id(), args.seed);
    let (schedule, texts) = plan(args.seed, args.messages, span);
    let data_bytes: u64 = texts.iter().map(|t| t.len() as u64).sum();
    let progress = super::progress(args, 4 * args.messages as u64, "chat");
    let headers = request_headers(args.headers, &base.url);

    let ((measured, publisher), server) = checked(base, async {
        let clock = Arc::new(Clock {
            start: Instant::now(),
            published: Mutex::new(vec![None; args.messages]),
        });
        // Past the last message: one more poll interval, then a margin.
        let deadline = clock.start + span + interval + Duration::from_secs(10);
        let (ready_tx, mut ready) = mpsc::channel::<&'static str>(4);
        let n = args.messages;
        let receivers = vec![
            tokio::spawn(polling(
                base.clone(),
                channel.clone(),
                headers.clone(),
                Polling::Every(interval),
                Receipts::new(n, progress.clone()),
                clock.clone(),
                deadline,
                ready_tx.clone(),
            )),
            tokio::spawn(polling(
                base.clone(),
                channel.clone(),
                headers.clone(),
                Polling::Long(wait),
                Receipts::new(n, progress.clone()),
                clock.clone(),
                deadline,
                ready_tx.clone(),
            )),
            tokio::spawn(sse(
                base.clone(),
                channel.clone(),
                headers.clone(),
                Receipts::new(n, progress.clone()),
                clock.clone(),
                deadline,
                ready_tx.clone(),
            )),
            tokio::spawn(websocket(
                base.clone(),
                channel.clone(),
                headers.clone(),
                Receipts::new(n, progress.clone()),
                clock.clone(),
                deadline,
                ready_tx,
            )),
        ];
        let mut subscribed = Vec::new();
        while subscribed.len() < 4 {
            match tokio::time::timeout(Duration::from_secs(10), ready.recv()).await {
                Ok(Some(name)) => subscribed.push(name),
                _ => {
                    // A receiver that gave up says why.
                    for r in receivers.into_iter().filter(|r| r.is_finished()) {
                        r.await.context("a receiver panicked")??;
                    }
                    bail!("only {subscribed:?} of the four receivers subscribed within 10 s")
                }
            }
        }
        let publisher = publish(base, &channel, &schedule, &texts, &clock).await?;
        let mut measured = Vec::new();
        for r in receivers {
            measured.push(r.await.context("a receiver panicked")??);
        }
        let mut clients = ServerBytes {
            read: publisher.sent.total(),
            written: publisher.received.total(),
        };
        for m in &measured {
            let (read, written) = m.socket.unwrap_or((m.traffic.received.total(), m.traffic.sent.total()));
            clients.read += written;
            clients.written += read;
        }
        Ok(((measured, publisher), clients))
    })
    .await?;
    progress.finish_and_clear();

    let transports: Vec<TransportResult> = measured.into_iter().map(|m| summarise(m, &texts)).collect();
    let ratios = ratios(&transports);
    Ok(ChatReport {
        messages: args.messages,
        span_ms: span.as_secs_f64() * 1000.0,
        poll_interval_ms: interval.as_secs_f64() * 1000.0,
        long_poll_wait_ms: wait.as_secs_f64() * 1000.0,
        headers: args.headers,
        data_bytes,
        transports,
        publisher_bytes: publisher.total(),
        ratios,
        server,
    })
}

/// The publication times (sorted, uniform over the span) and the
/// messages' data, from the seed.
fn plan(seed: u64, n: usize, span: Duration) -> (Vec<Duration>, Vec<String>) {
    const WORDS: [&str; 24] = [
        "hi", "anyone", "around", "the", "build", "is", "green", "again", "lunch", "at", "noon", "sounds", "good",
        "see", "you", "there", "deploy", "done", "thanks", "for", "the", "review", "ok", "later",
    ];
    const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut times: Vec<Duration> = (0..n).map(|_| span.mul_f64(rng.gen::<f64>())).collect();
    times.sort();
    let texts = (0..n)
        .map(|i| {
            let words = rng.gen_range(3..12);
            let text: Vec<&str> = (0..words).map(|_| WORDS[rng.gen_range(0..WORDS.len())]).collect();
            let user = USERS[rng.gen_range(0..USERS.len())];
            serde_json::json!({"n": i, "user": user, "text": text.join(" ")}).to_string()
        })
        .collect();
    (times, texts)
}

async fn publish(
    base: &Base,
    channel: &str,
    schedule: &[Duration],
    texts: &[String],
    clock: &Clock,
) -> anyhow::Result<Traffic> {
    let client = HttpClient::new(base.http_options());
    let url = format!("{base}/publish/{channel}");
    for (i, (at, text)) in schedule.iter().zip(texts).enumerate() {
        tokio::time::sleep_until((clock.start + *at).into()).await;
        let req = Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Bytes::from(text.clone()))
            .context("building a publication")?;
        if let Ok(mut p) = clock.published.lock() {
            p[i] = Some(Instant::now());
        }
        let resp = client.request(req).await.with_context(|| format!("POST {url}"))?;
        if !resp.status().is_success() {
            bail!("POST {url}: {}", resp.status());
        }
    }
    let traffic = client.stats().traffic;
    Ok(traffic)
}

/// `GET` with the header set; the response's JSON.
async fn get_json(client: &HttpClient, url: &str, headers: &HeaderMap) -> anyhow::Result<serde_json::Value> {
    let mut req = Request::get(url).body(Bytes::new()).context("building a poll")?;
    *req.headers_mut() = headers.clone();
    let resp = client.request(req).await.with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        bail!("GET {url}: {}", resp.status());
    }
    serde_json::from_slice(resp.body()).with_context(|| format!("GET {url}: not JSON"))
}

/// Records a poll answer's messages; returns its `next` and whether it
/// had none.
fn take_poll(answer: &serde_json::Value, receipts: &mut Receipts, clock: &Clock) -> anyhow::Result<(u64, bool)> {
    let next = answer
        .get("next")
        .and_then(|n| n.as_u64())
        .context("a poll answer without next")?;
    let messages = answer.get("messages").and_then(|m| m.as_array());
    for m in messages.into_iter().flatten() {
        if let Some(data) = m.get("data") {
            receipts.record(data, clock);
        }
    }
    Ok((next, messages.is_none_or(|m| m.is_empty())))
}

/// How a polling client asks: every interval, or held by the server.
#[derive(Clone, Copy)]
enum Polling {
    /// `GET /poll/{channel}?since=N` every interval.
    Every(Duration),
    /// `GET /poll/{channel}?since=N&wait=W` again as soon as answered.
    Long(Duration),
}

/// The polling and the long-polling client: one keep-alive connection,
/// a first poll for the latest offset, then polls until every message
/// arrived or the deadline passed.
#[allow(clippy::too_many_arguments)]
async fn polling(
    base: Base,
    channel: String,
    headers: HeaderMap,
    how: Polling,
    mut receipts: Receipts,
    clock: Arc<Clock>,
    deadline: Instant,
    ready: mpsc::Sender<&'static str>,
) -> anyhow::Result<Measured> {
    let (transport, options, query, mut tick) = match how {
        Polling::Every(interval) => {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            ("polling", base.http_options(), String::new(), Some(tick))
        }
        Polling::Long(wait) => {
            // The server holds each poll up to `wait`: the client waits longer.
            let mut options = base.http_options();
            options.response_timeout = wait + Duration::from_secs(10);
            let query = format!("&wait={:.3}", wait.as_secs_f64().max(0.001));
            ("long-polling", options, query, None)
        }
    };
    let client = HttpClient::new(options);
    let url = format!("{base}/poll/{channel}");
    let (mut next, _) = take_poll(&get_json(&client, &url, &headers).await?, &mut receipts, &clock)?;
    let _ = ready.send(transport).await;
    let (mut polls, mut empty) = (1u64, 0u64);
    while !receipts.done() && Instant::now() < deadline {
        if let Some(tick) = tick.as_mut() {
            tick.tick().await;
        }
        let answer = get_json(&client, &format!("{url}?since={next}&limit=1000{query}"), &headers).await?;
        let (n, was_empty) = take_poll(&answer, &mut receipts, &clock)?;
        next = n;
        polls += 1;
        empty += u64::from(was_empty);
    }
    let traffic = client.stats().traffic;
    Ok(Measured {
        transport,
        receipts,
        exchanges: polls,
        empty_answers: empty,
        traffic,
        socket: None,
        setup: 0,
    })
}

async fn sse(
    base: Base,
    channel: String,
    mut headers: HeaderMap,
    mut receipts: Receipts,
    clock: Arc<Clock>,
    deadline: Instant,
    ready: mpsc::Sender<&'static str>,
) -> anyhow::Result<Measured> {
    let tally = Arc::new(Tally::default());
    let conn = base.connect().await.context("connecting for SSE")?;
    let mut stream = Counted::new(conn, tally.clone());
    let mut engine = ClientConnection::new(ClientConfig::default());
    headers.insert(http::header::ACCEPT, HeaderValue::from_static("text/event-stream"));
    let host = HeaderValue::from_str(base.authority()).context("the server's address as a Host field")?;
    headers.insert(http::header::HOST, host);
    let path = format!("/sse/{channel}");
    let head = RequestHead {
        method: &Method::GET,
        target: &path,
        version: http::Version::HTTP_11,
        headers: &headers,
        keep_alive: true,
    };
    let out = engine
        .send_request(Instant::now(), &head, 0)
        .context("encoding the SSE request")?;
    stream.write_all(&out).await.context("sending the SSE request")?;
    stream.flush().await.context("sending the SSE request")?;
    let mut text = String::new();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut events = 0u64;
    let mut subscribed = false;
    while !receipts.done() {
        buf.clear();
        let n = match tokio::time::timeout_at(deadline.into(), stream.read_buf(&mut buf)).await {
            Err(_) => break,
            Ok(r) => r.context("reading the SSE stream")?,
        };
        if n == 0 {
            bail!("the server ended the SSE stream");
        }
        engine.handle_input(&buf, Instant::now());
        while let Some(event) = engine.poll_event() {
            match event {
                ClientEvent::Head(h) if !h.status.is_success() => bail!("GET {path}: {}", h.status),
                ClientEvent::Body(chunk) => text.push_str(&String::from_utf8_lossy(&chunk)),
                ClientEvent::Head(_) | ClientEvent::End => {}
            }
        }
        // Complete events end with a blank line.
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            // `event: subscribed` answers the subscription; a publication
            // is `id: OFFSET` and `data: DATA`, the data itself.
            let named_subscribed = event.lines().any(|l| l.trim_end() == "event: subscribed");
            for data in event.lines().filter_map(|l| l.strip_prefix("data:")) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim_start()) else {
                    continue;
                };
                events += 1;
                if named_subscribed {
                    if !subscribed {
                        subscribed = true;
                        let _ = ready.send("SSE").await;
                    }
                } else {
                    receipts.record(&v, &clock);
                }
            }
        }
    }
    let _ = stream.shutdown().await;
    drop(stream);
    Ok(Measured {
        transport: "SSE",
        receipts,
        exchanges: events,
        empty_answers: 0,
        traffic: engine.traffic(),
        socket: Some(tally.get()),
        setup: 0,
    })
}

async fn websocket(
    base: Base,
    channel: String,
    headers: HeaderMap,
    mut receipts: Receipts,
    clock: Arc<Clock>,
    deadline: Instant,
    ready: mpsc::Sender<&'static str>,
) -> anyhow::Result<Measured> {
    let tally = Arc::new(Tally::default());
    let conn = base.connect().await.context("connecting for the WebSocket")?;
    // The browser's fields, but not those the handshake sets itself.
    let mut headers = headers;
    headers.remove(http::header::HOST);
    headers.remove(http::header::CONNECTION);
    let options = ClientOptions {
        headers,
        ..ClientOptions::default()
    };
    // `ws://` even for an `https://` server: the connection is already
    // TLS (under the counting wrapper, so it counts the plaintext); the URL
    // only names the Host and the path.
    let url = format!("ws://{}/ws", base.authority());
    let mut socket = connect_on(Counted::new(conn, tally.clone()), &url, options)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let (setup_read, setup_written) = tally.get();
    let subscribe = serde_json::json!({"type": "subscribe", "channel": channel}).to_string();
    socket
        .send(Message::Text(subscribe.into()))
        .await
        .context("subscribing")?;
    let mut frames = 1u64;
    let mut subscribed = false;
    while !receipts.done() {
        let msg = match tokio::time::timeout_at(deadline.into(), socket.recv()).await {
            Err(_) => break,
            Ok(Some(Ok(msg))) => msg,
            Ok(Some(Err(e))) => bail!("the WebSocket failed: {e}"),
            Ok(None) => bail!("the server closed the WebSocket"),
        };
        frames += 1;
        let Message::Text(text) = msg else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
            continue;
        };
        match v.get("type").and_then(|t| t.as_str()) {
            Some("subscribed") if !subscribed => {
                subscribed = true;
                let _ = ready.send("WebSocket").await;
            }
            Some("message") => {
                if let Some(d) = v.get("data") {
                    receipts.record(d, &clock);
                }
            }
            _ => {}
        }
    }
    // The close handshake: our Close, the server's, then the end.
    socket.close(CloseCode::NORMAL, "done").await.ok();
    frames += 2;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), socket.recv()).await {}
    let traffic = socket.traffic();
    drop(socket);
    Ok(Measured {
        transport: "WebSocket",
        receipts,
        exchanges: frames,
        empty_answers: 0,
        traffic,
        socket: Some(tally.get()),
        setup: setup_read + setup_written,
    })
}

fn summarise(m: Measured, texts: &[String]) -> TransportResult {
    let delivered = m.receipts.delivered;
    let data: u64 = m
        .receipts
        .latencies
        .iter()
        .zip(texts)
        .filter(|(l, _)| l.is_some())
        .map(|(_, t)| t.len() as u64)
        .sum();
    let (down, up) = m.socket.unwrap_or((m.traffic.received.total(), m.traffic.sent.total()));
    let total = down + up;
    let engine_total = m.traffic.total();
    let protocol_overhead = m.traffic.received.overhead + m.traffic.sent.overhead;
    let per = |x: u64| x as f64 / delivered.max(1) as f64;
    let latencies: Vec<Duration> = m.receipts.latencies.iter().flatten().copied().collect();
    TransportResult {
        transport: m.transport,
        delivered,
        exchanges: m.exchanges,
        empty_answers: m.empty_answers,
        bytes_up: up,
        bytes_down: down,
        total_bytes: total,
        protocol_overhead,
        overhead_per_message: per(total.saturating_sub(data)),
        protocol_overhead_per_message: per(protocol_overhead),
        setup_bytes: m.setup,
        latency: Latency::of(latencies),
        latencies_ms: m
            .receipts
            .latencies
            .iter()
            .map(|l| l.map(|d| d.as_secs_f64() * 1000.0))
            .collect(),
        socket_agrees: m.socket.map(|_| engine_total == total),
    }
}

fn ratios(t: &[TransportResult]) -> Ratios {
    let find = |name: &str| t.iter().find(|r| r.transport == name);
    let (Some(poll), Some(ws)) = (find("polling"), find("WebSocket")) else {
        return Ratios {
            overhead_polling_vs_websocket: 0.0,
            bytes_polling_vs_websocket: 0.0,
            latency_p50_polling_vs_websocket: 0.0,
            head_bytes_per_poll: 0.0,
            frame_header_bytes_per_message: 0.0,
            frame_header_bytes_per_message_after_upgrade: 0.0,
        };
    };
    let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Ratios {
        overhead_polling_vs_websocket: div(poll.protocol_overhead as f64, ws.protocol_overhead as f64),
        bytes_polling_vs_websocket: div(poll.total_bytes as f64, ws.total_bytes as f64),
        latency_p50_polling_vs_websocket: div(poll.latency.p50_ms, ws.latency.p50_ms),
        head_bytes_per_poll: div(poll.protocol_overhead as f64, poll.exchanges as f64),
        frame_header_bytes_per_message: ws.protocol_overhead_per_message,
        frame_header_bytes_per_message_after_upgrade: div(
            ws.protocol_overhead.saturating_sub(ws.setup_bytes) as f64,
            ws.delivered as f64,
        ),
    }
}

impl ChatReport {
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} chat messages over {:.1} s ({} bytes of data), polling every {:.0} ms, {} headers\n\n",
            self.messages,
            self.span_ms / 1000.0,
            self.data_bytes,
            self.poll_interval_ms,
            match self.headers {
                HeaderSet::Browser => "browser",
                HeaderSet::Minimal => "minimal",
            },
        );
        let rows: Vec<Vec<String>> = self
            .transports
            .iter()
            .map(|t| {
                vec![
                    t.transport.to_string(),
                    format!("{}/{}", t.delivered, self.messages),
                    t.exchanges.to_string(),
                    t.bytes_up.to_string(),
                    t.bytes_down.to_string(),
                    t.protocol_overhead.to_string(),
                    format!("{:.0}", t.overhead_per_message),
                    format!("{:.1}", t.latency.p50_ms),
                    format!("{:.1}", t.latency.p99_ms),
                    format!("{:.1}", t.latency.max_ms),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "transport",
                "delivered",
                "requests/frames",
                "bytes up",
                "bytes down",
                "headers",
                "overhead/msg",
                "p50 ms",
                "p99 ms",
                "max ms",
            ],
            &rows,
        ));
        let r = &self.ratios;
        out.push_str(&format!(
            "\nmeasured against the guide:\n\
             \x20 HTTP head bytes per poll (request + response)   {:>8.0}   guide: 400-800\n\
             \x20 WebSocket header bytes per message               {:>8.1}   the upgrade spread over the messages\n\
             \x20 WebSocket frame header bytes per message         {:>8.1}   guide: 2-14\n\
             \x20 header bytes, polling / WebSocket                {:>8.1}x  guide: 30-60x\n\
             \x20 all bytes, polling / WebSocket                   {:>8.1}x\n\
             \x20 median latency, polling / WebSocket              {:>8.1}x  guide: 100x\n",
            r.head_bytes_per_poll,
            r.frame_header_bytes_per_message,
            r.frame_header_bytes_per_message_after_upgrade,
            r.overhead_polling_vs_websocket,
            r.bytes_polling_vs_websocket,
            r.latency_p50_polling_vs_websocket,
        ));
        out.push_str(&format!(
            "\nserver's counters: read {} written {}; clients: wrote {} read {} ({})\n",
            self.server.server.read,
            self.server.server.written,
            self.server.clients.read,
            self.server.clients.written,
            if self.server.agrees {
                "they agree"
            } else {
                "they DISAGREE"
            },
        ));
        out
    }
}
