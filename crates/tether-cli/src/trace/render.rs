//! The trace's events, how they print (a timeline line each, coloured on a
//! terminal) and the summary; or all of it as one JSON document.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

/// One thing that happened, with its offset from the start.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub t_ms: f64,
    #[serde(flatten)]
    pub event: Event,
}

/// What happened.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A TCP connection opened.
    Connect {
        conn: u32,
        peer: String,
        local: String,
        connect_ms: f64,
    },
    /// The TLS handshake on a connection (`https://`, `wss://`), at the
    /// time it began.
    Tls {
        conn: u32,
        /// `TLSv1.3` or `TLSv1.2`.
        version: String,
        cipher_suite: String,
        /// The protocol the server chose in ALPN (`http/1.1` offered).
        alpn: Option<String>,
        /// The name sent as SNI and checked against the certificate.
        server_name: String,
        handshake_ms: f64,
    },
    /// A request and its response (at the time the request was written).
    Request(Exchange),
    /// A request written on a connection that closed before a byte of the
    /// response arrived.
    RequestLost {
        conn: u32,
        request: u32,
        method: String,
        target: String,
        reason: String,
        /// Whether it is sent again on a new connection.
        will_retry: bool,
    },
    /// The connection stayed open and idle for a whole gap.
    Idle { conn: u32, idle_ms: f64 },
    /// Bytes from the server with no request in flight.
    Unsolicited {
        conn: u32,
        bytes: usize,
        first_line: String,
    },
    /// A connection ended.
    Close(Close),
    /// The WebSocket upgrade request was written.
    WsUpgradeRequest {
        conn: u32,
        target: String,
        head_bytes: usize,
    },
    /// The server's answer to it.
    WsUpgradeResponse {
        conn: u32,
        status: u16,
        reason: String,
        head_bytes: usize,
        handshake_ms: f64,
        subprotocol: Option<String>,
        extensions: Option<String>,
    },
    /// A WebSocket frame, either way, as it crossed the wire.
    WsFrame(Frame),
    /// Something went wrong that ends the trace (or a connection).
    Error { conn: Option<u32>, message: String },
}

/// One request and its response.
#[derive(Debug, Clone, Serialize)]
pub struct Exchange {
    pub conn: u32,
    /// The request's number in the run (1-based).
    pub request: u32,
    /// Its count on this connection (1-based).
    pub count: u64,
    /// The server's request limit for this connection, from `max=` (the
    /// limit itself, or, when the server counts down, count + max - 1).
    pub limit: Option<u64>,
    pub method: String,
    pub target: String,
    pub version: String,
    pub request_head_bytes: u64,
    pub status: u16,
    pub reason: String,
    pub response_version: String,
    pub response_head_bytes: u64,
    pub response_body_bytes: u64,
    pub ttfb_ms: f64,
    pub latency_ms: f64,
    /// The `Keep-Alive` field as sent, if any.
    pub keep_alive: Option<String>,
    pub keep_alive_timeout_s: Option<u64>,
    pub keep_alive_max: Option<u64>,
    /// The `Connection` field as sent, if any.
    pub connection: Option<String>,
    /// The response says the connection ends (`Connection: close`, or
    /// HTTP/1.0 without `keep-alive`).
    pub server_close: bool,
    /// A second attempt after the first was lost on a stale connection.
    pub retry: bool,
}

/// The end of a connection.
#[derive(Debug, Clone, Serialize)]
pub struct Close {
    pub conn: u32,
    /// `server` or `trace`.
    pub by: &'static str,
    /// `fin`, `reset`, `error` (the server's side), `close` (trace's).
    pub how: &'static str,
    pub cause: Cause,
    /// The cause in words.
    pub detail: String,
    /// Responses received on the connection.
    pub requests: u64,
    /// How long it had been idle, if it closed while idle.
    pub idle_ms: Option<f64>,
    pub lifetime_ms: f64,
}

/// The most likely reason a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The count reached the advertised `max`.
    Max,
    /// The last response said the connection ends.
    ConnectionClose,
    /// Closed while idle, nothing else explains it.
    IdleTimeout,
    /// Closed right after a response that did not say so, with no
    /// timeout advertised.
    Unannounced,
    /// Reset instead of closed.
    Reset,
    /// Closed with a request written and no response byte.
    Stale,
    /// The response had no length: the close ended its body.
    EndOfBody,
    /// Closed in the middle of a response.
    Truncated,
    /// The response was malformed (trace closed).
    BadResponse,
    /// No (complete) response within `--timeout` (trace closed).
    ResponseTimeout,
    /// `Connection: close` not followed by a close within `--timeout`.
    CloseIgnored,
    /// Still open when the trace ended (trace closed).
    TraceFinished,
    /// WebSocket: the close handshake completed.
    CloseHandshake,
    /// WebSocket: TCP ended without a close handshake (1006).
    Abnormal,
    /// WebSocket: a protocol violation (the engine closed).
    ProtocolError,
    /// WebSocket: no close answer within `--timeout`.
    CloseTimeout,
}

impl Cause {
    fn label(self) -> &'static str {
        match self {
            Cause::Max => "max reached",
            Cause::ConnectionClose => "Connection: close",
            Cause::IdleTimeout => "idle timeout",
            Cause::Unannounced => "unannounced close",
            Cause::Reset => "reset",
            Cause::Stale => "stale (request lost)",
            Cause::EndOfBody => "end of body",
            Cause::Truncated => "truncated response",
            Cause::BadResponse => "bad response",
            Cause::ResponseTimeout => "response timeout",
            Cause::CloseIgnored => "Connection: close not honoured",
            Cause::TraceFinished => "trace finished",
            Cause::CloseHandshake => "close handshake",
            Cause::Abnormal => "abnormal (no close frame)",
            Cause::ProtocolError => "protocol error",
            Cause::CloseTimeout => "close timeout",
        }
    }
}

/// A WebSocket frame seen on the wire.
#[derive(Debug, Clone, Serialize)]
pub struct Frame {
    pub conn: u32,
    /// `out` (trace to server) or `in`.
    pub dir: &'static str,
    pub opcode: &'static str,
    pub fin: bool,
    /// RSV1 (compressed under permessage-deflate).
    pub rsv1: bool,
    pub masked: bool,
    /// 2, plus 2 or 8 length bytes, plus 4 for the masking key.
    pub header_bytes: usize,
    pub payload_bytes: u64,
    /// The start of a text (or close reason) payload.
    pub preview: Option<String>,
    pub close_code: Option<u16>,
}

/// Bytes one way: heads (HTTP heads and chunk framing; WebSocket handshake
/// heads and frame headers) against bodies (payload).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct HeadBody {
    pub head: u64,
    pub body: u64,
}

/// Bytes both ways, as the tracer counted them.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Bytes {
    #[serde(rename = "in")]
    pub received: HeadBody,
    #[serde(rename = "out")]
    pub sent: HeadBody,
}

#[derive(Debug, Serialize)]
struct Summary {
    connections: u32,
    /// Requests written (lost ones and their retries included); WebSocket:
    /// text messages sent.
    requests: u32,
    answered: u32,
    lost: u32,
    closes: BTreeMap<Cause, u32>,
    /// Every distinct `Keep-Alive` field the server sent.
    keep_alive_seen: Vec<String>,
    frames_out: u32,
    frames_in: u32,
    bytes: Bytes,
    error: Option<String>,
}

#[derive(Serialize)]
struct Document<'a> {
    url: &'a str,
    protocol: &'a str,
    events: &'a [Record],
    summary: Summary,
}

/// Collects events; prints each at once in timeline mode.
pub struct Recorder {
    start: Instant,
    events: Vec<Record>,
    live: bool,
    color: bool,
    /// Set by the tracer before `finish`.
    pub bytes: Bytes,
}

impl Recorder {
    pub fn new(start: Instant, live: bool, color: bool) -> Self {
        Recorder {
            start,
            events: Vec::new(),
            live,
            color,
            bytes: Bytes::default(),
        }
    }

    /// When the trace started (offsets count from here).
    pub fn start(&self) -> Instant {
        self.start
    }

    /// The first line of the timeline.
    pub fn header(&self, url: &str, what: &str) {
        if self.live {
            let line = format!("tether trace {url}: {what}");
            print_line(&paint(self.color, BOLD, &line));
        }
    }

    pub fn emit(&mut self, at: Instant, event: Event) {
        let record = Record {
            t_ms: super::ms_between(self.start, at),
            event,
        };
        if self.live {
            print_line(&timeline_line(&record, self.color));
        }
        self.events.push(record);
    }

    pub fn error(&mut self, conn: Option<u32>, message: String) {
        self.emit(Instant::now(), Event::Error { conn, message });
    }

    /// Prints the summary (or the whole JSON document).
    pub fn finish(&self, url: &str, protocol: &str) -> anyhow::Result<()> {
        let summary = self.summary();
        let mut out = std::io::stdout().lock();
        if self.live {
            writeln!(out, "{}", summary_text(&summary, protocol, self.color)).context("writing to stdout")?;
        } else {
            let doc = Document {
                url,
                protocol,
                events: &self.events,
                summary,
            };
            serde_json::to_writer_pretty(&mut out, &doc).context("writing JSON")?;
            writeln!(out).context("writing to stdout")?;
        }
        out.flush().context("writing to stdout")
    }

    fn summary(&self) -> Summary {
        let mut s = Summary {
            connections: 0,
            requests: 0,
            answered: 0,
            lost: 0,
            closes: BTreeMap::new(),
            keep_alive_seen: Vec::new(),
            frames_out: 0,
            frames_in: 0,
            bytes: self.bytes,
            error: None,
        };
        for r in &self.events {
            match &r.event {
                Event::Connect { .. } => s.connections += 1,
                Event::Request(x) => {
                    s.requests += 1;
                    s.answered += 1;
                    if let Some(k) = &x.keep_alive {
                        if !s.keep_alive_seen.contains(k) {
                            s.keep_alive_seen.push(k.clone());
                        }
                    }
                }
                Event::RequestLost { .. } => {
                    s.requests += 1;
                    s.lost += 1;
                }
                Event::Close(c) => *s.closes.entry(c.cause).or_default() += 1,
                Event::WsFrame(f) => {
                    let data = matches!(f.opcode, "text" | "binary");
                    if f.dir == "out" {
                        s.frames_out += 1;
                        s.requests += u32::from(data);
                    } else {
                        s.frames_in += 1;
                        s.answered += u32::from(data);
                    }
                }
                Event::Error { message, .. } => s.error = Some(message.clone()),
                _ => {}
            }
        }
        s
    }
}

fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not worth failing the trace for.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

const BOLD: &str = "1";
const DIM: &str = "2";
const RED: &str = "31";
const GREEN: &str = "32";
const YELLOW: &str = "33";
const BLUE: &str = "34";
const MAGENTA: &str = "35";
const CYAN: &str = "36";

fn paint(on: bool, code: &str, text: &str) -> String {
    if on {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// `1.00 s`, `250 ms`, `0.31 ms`.
pub fn duration(d: Duration) -> String {
    millis(d.as_secs_f64() * 1000.0)
}

fn millis(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

fn timeline_line(r: &Record, c: bool) -> String {
    let t = paint(c, DIM, &format!("{:>10.1} ms", r.t_ms));
    let bar = |mark: &str| format!("{t}  {mark} ");
    match &r.event {
        Event::Connect {
            conn,
            peer,
            local,
            connect_ms,
        } => format!(
            "{}{} to {peer} (from {local}), TCP connect {}",
            bar("┌"),
            paint(c, &format!("{BOLD};{CYAN}"), &format!("connection #{conn}")),
            millis(*connect_ms)
        ),
        Event::Tls {
            version,
            cipher_suite,
            alpn,
            server_name,
            handshake_ms,
            ..
        } => format!(
            "{}{} {version}, {cipher_suite}, ALPN {}, server name {server_name}, handshake {}",
            bar("│"),
            paint(c, GREEN, "TLS"),
            alpn.as_deref().unwrap_or("none"),
            millis(*handshake_ms)
        ),
        Event::Request(x) => {
            let color = match x.status {
                200..=299 => GREEN,
                400..=499 => YELLOW,
                500..=599 => RED,
                _ => CYAN,
            };
            let status = paint(c, color, &format!("{} {}", x.status, x.reason));
            let limit = x.limit.map_or("?".to_owned(), |m| m.to_string());
            let count = paint(c, BOLD, &format!("{}/{limit}", x.count));
            let version = if x.response_version == "HTTP/1.1" {
                String::new()
            } else {
                format!(" {}", x.response_version)
            };
            let keep_alive = match &x.keep_alive {
                Some(k) => format!("Keep-Alive: {k}"),
                None => "no Keep-Alive".to_owned(),
            };
            let close = if x.server_close {
                format!(
                    ", {}",
                    paint(
                        c,
                        MAGENTA,
                        x.connection
                            .as_deref()
                            .map_or("(HTTP/1.0: closes)".to_owned(), |v| format!("Connection: {v}"))
                            .as_str()
                    )
                )
            } else {
                String::new()
            };
            let retry = if x.retry { " (retry)" } else { "" };
            format!(
                "{}{count}  {} {}{retry} → {status}{version}  {}  req {} B, resp head {} B + body {} B  {keep_alive}{close}",
                bar("│"),
                x.method,
                x.target,
                millis(x.latency_ms),
                x.request_head_bytes,
                x.response_head_bytes,
                x.response_body_bytes,
            )
        }
        Event::RequestLost {
            request,
            method,
            target,
            reason,
            will_retry,
            ..
        } => format!(
            "{}{}{}",
            bar("│"),
            paint(c, RED, &format!("request {request} ({method} {target}) lost: {reason}")),
            if *will_retry {
                "; sending it again on a new connection"
            } else {
                ""
            }
        ),
        Event::Idle { idle_ms, .. } => {
            format!("{}{}", bar("│"), paint(c, DIM, &format!("· idle {}", millis(*idle_ms))))
        }
        Event::Unsolicited { bytes, first_line, .. } => format!(
            "{}{}",
            bar("│"),
            paint(
                c,
                YELLOW,
                &format!("{bytes} B from the server while idle: {first_line:?}")
            )
        ),
        Event::Close(x) => {
            let who = if x.by == "server" {
                let how = match x.how {
                    "fin" => "FIN",
                    "reset" => "RST",
                    other => other,
                };
                format!("server closed connection #{} ({how})", x.conn)
            } else {
                format!("trace closed connection #{}", x.conn)
            };
            // A server's close reads on ("… (FIN) after idle 1.00 s: …"),
            // trace's gives its reason.
            let sep = if x.by == "server" { " " } else { ": " };
            format!(
                "{}{}{sep}{}",
                bar("└"),
                paint(c, BOLD, &who),
                paint(c, MAGENTA, &x.detail)
            )
        }
        Event::WsUpgradeRequest { target, head_bytes, .. } => format!(
            "{}{} GET {target} (Upgrade: websocket)  head {head_bytes} B",
            bar("│"),
            paint(c, BLUE, "→")
        ),
        Event::WsUpgradeResponse {
            status,
            reason,
            head_bytes,
            handshake_ms,
            subprotocol,
            extensions,
            ..
        } => format!(
            "{}{} {}  head {head_bytes} B, {}  subprotocol: {}, extensions: {}",
            bar("│"),
            paint(c, GREEN, "←"),
            paint(
                c,
                if *status == 101 { GREEN } else { RED },
                &format!("{status} {reason}")
            ),
            millis(*handshake_ms),
            subprotocol.as_deref().unwrap_or("none"),
            extensions.as_deref().unwrap_or("none"),
        ),
        Event::WsFrame(f) => {
            let (arrow, color) = if f.dir == "out" { ("→", BLUE) } else { ("←", GREEN) };
            let mut what = f.opcode.to_owned();
            if let Some(code) = f.close_code {
                what.push_str(&format!(" {code}"));
            }
            if !f.fin {
                what.push_str(" (not final)");
            }
            if f.rsv1 {
                what.push_str(" (compressed)");
            }
            if let Some(p) = &f.preview {
                what.push_str(&format!(" {p:?}"));
            }
            let len_bytes = f.header_bytes - 2 - if f.masked { 4 } else { 0 };
            let mut parts = vec!["2".to_owned()];
            if len_bytes > 0 {
                parts.push(format!("len {len_bytes}"));
            }
            if f.masked {
                parts.push("mask 4".to_owned());
            }
            let header = if parts.len() > 1 {
                format!("header {} B ({})", f.header_bytes, parts.join(" + "))
            } else {
                format!("header {} B", f.header_bytes)
            };
            format!(
                "{}{} {what}  {header} + payload {} B",
                bar("│"),
                paint(c, color, arrow),
                f.payload_bytes
            )
        }
        Event::Error { message, .. } => format!("{}{}", bar("!"), paint(c, &format!("{BOLD};{RED}"), message)),
    }
}

fn summary_text(s: &Summary, protocol: &str, c: bool) -> String {
    let mut lines = vec![paint(c, BOLD, "summary")];
    let mut row = |name: &str, value: String| lines.push(format!("  {:<12} {value}", name));
    row("connections", format!("{} opened", s.connections));
    if protocol == "websocket" {
        row(
            "messages",
            format!("{} data frames sent, {} received", s.requests, s.answered),
        );
        row("frames", format!("{} out, {} in", s.frames_out, s.frames_in));
    } else {
        row(
            "requests",
            format!("{} sent, {} answered, {} lost", s.requests, s.answered, s.lost),
        );
        row(
            "keep-alive",
            if s.keep_alive_seen.is_empty() {
                "no Keep-Alive header seen".to_owned()
            } else {
                s.keep_alive_seen.join(" | ")
            },
        );
    }
    let closes: Vec<String> = s.closes.iter().map(|(k, n)| format!("{} × {n}", k.label())).collect();
    row(
        "closes",
        if closes.is_empty() {
            "none".to_owned()
        } else {
            closes.join(", ")
        },
    );
    let (head, body) = if protocol == "websocket" {
        ("handshake + frame headers", "payload")
    } else {
        ("head", "body")
    };
    row(
        "bytes out",
        format!("{head} {} B, {body} {} B", s.bytes.sent.head, s.bytes.sent.body),
    );
    row(
        "bytes in",
        format!("{head} {} B, {body} {} B", s.bytes.received.head, s.bytes.received.body),
    );
    if let Some(e) = &s.error {
        row("error", paint(c, RED, e));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_their_kind_and_time() {
        let r = Record {
            t_ms: 1.5,
            event: Event::Idle {
                conn: 1,
                idle_ms: 200.0,
            },
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "idle");
        assert_eq!(v["t_ms"], 1.5);
        assert_eq!(v["conn"], 1);
        assert_eq!(serde_json::to_value(Cause::IdleTimeout).unwrap(), "idle_timeout");
        assert_eq!(millis(1234.0), "1.23 s");
        assert_eq!(millis(0.314), "0.31 ms");
        assert_eq!(paint(false, RED, "x"), "x");
        assert_eq!(paint(true, RED, "x"), "\x1b[31mx\x1b[0m");
    }
}
