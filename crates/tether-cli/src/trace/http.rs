//! `tether trace http://…`: requests over a keep-alive connection, the
//! server's closes and their likely causes (see the parent module).

use std::time::Instant;

use anyhow::Context;
use http::{HeaderMap, HeaderValue, Method, Version};
use tether::client::ClientStream;
use tether_proto::h1::client::{
    ClientConfig, ClientConnection, ClientEvent, KeepAliveHints, RequestHead, ResponseHead, Retired,
};
use tether_proto::h1::has_token;
use tether_proto::wire::{Traffic, WireBytes};
use tokio::io::AsyncWriteExt;

use super::render::{Cause, Close, Event, Exchange, HeadBody, Recorder};
use super::{ms_between, Target, TraceArgs};

/// One TCP (or TLS) connection and what the server said on it.
struct Conn {
    id: u32,
    stream: ClientStream,
    engine: ClientConnection,
    opened: Instant,
    /// Responses completed.
    responses: u64,
    /// When the last response completed (the server's idle time starts).
    last_response_at: Option<Instant>,
    /// The last `max=` and whether it counts down (falls by one a response).
    last_max: Option<u64>,
    countdown: bool,
    /// The request limit, as far as the hints tell.
    limit: Option<u64>,
    /// The last advertised `timeout=`, in seconds.
    timeout: Option<u64>,
    /// The last response said the connection ends; with its `Connection` field.
    server_close: bool,
    connection_field: Option<String>,
    /// Bytes received with no request in flight.
    unsolicited: usize,
}

/// Unsolicited bytes shown before trace gives up on a connection.
const MAX_UNSOLICITED: usize = 64 * 1024;

/// What one request did to its connection.
enum Outcome {
    /// Answered; the connection stays.
    Open,
    /// Answered, and the response says the connection ends.
    Closing,
    /// The connection is gone (its close is recorded).
    Closed,
    /// No response byte before the server closed: send it again elsewhere.
    Lost,
}

struct Tracer<'a> {
    args: &'a TraceArgs,
    target: &'a Target,
    rec: &'a mut Recorder,
    /// The engines' clock: one fixed instant (see the module documentation
    /// of `trace`: trace never retires a connection on a prediction).
    clock: Instant,
    headers: HeaderMap,
    connections: u32,
    totals: Traffic,
    buf: Vec<u8>,
}

/// Runs the HTTP trace; the events go to `rec`.
pub async fn trace(args: &TraceArgs, target: &Target, rec: &mut Recorder) -> anyhow::Result<()> {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::HOST,
        HeaderValue::from_str(&target.host_header).context("the URL's host is not a valid Host field")?,
    );
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static(concat!("tether-trace/", env!("CARGO_PKG_VERSION"))),
    );
    headers.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
    let mut t = Tracer {
        args,
        target,
        clock: rec.start(),
        rec,
        headers,
        connections: 0,
        totals: Traffic::default(),
        buf: vec![0; 16 * 1024],
    };
    let result = t.run().await;
    let traffic = t.totals;
    rec.bytes.sent = HeadBody {
        head: traffic.sent.overhead,
        body: traffic.sent.payload,
    };
    rec.bytes.received = HeadBody {
        head: traffic.received.overhead,
        body: traffic.received.payload,
    };
    result
}

impl Tracer<'_> {
    async fn run(&mut self) -> anyhow::Result<()> {
        let mut conn: Option<Conn> = None;
        for n in 1..=self.args.requests {
            if n > 1 {
                let until = Instant::now() + self.args.interval.draw();
                if let Some(c) = conn.as_mut() {
                    if !self.watch_idle(c, until).await {
                        conn = None;
                    }
                }
                tokio::time::sleep_until(until.into()).await;
            }
            // The request, and once more on a new connection if it was lost.
            let mut retry = false;
            loop {
                if conn.is_none() {
                    conn = Some(self.open().await?);
                }
                let c = conn.as_mut().expect("opened above");
                match self.exchange(c, n, retry).await? {
                    Outcome::Open => break,
                    Outcome::Closing => {
                        let until = Instant::now() + self.args.timeout;
                        if self.watch_idle(c, until).await {
                            let detail = format!(
                                "the server said the connection ends but kept it open for {}",
                                super::render::duration(self.args.timeout)
                            );
                            self.close_here(c, Cause::CloseIgnored, detail);
                        }
                        conn = None;
                        break;
                    }
                    Outcome::Closed => {
                        conn = None;
                        break;
                    }
                    Outcome::Lost => {
                        conn = None;
                        if retry {
                            break;
                        }
                        retry = true;
                    }
                }
            }
        }
        if let Some(c) = conn.as_mut() {
            if !self.args.linger.is_zero() && !self.watch_idle(c, Instant::now() + self.args.linger).await {
                conn = None;
            }
        }
        if let Some(c) = conn.as_mut() {
            let n = c.responses;
            let s = if n == 1 { "" } else { "s" };
            self.close_here(c, Cause::TraceFinished, format!("done after {n} request{s} on it"));
        }
        Ok(())
    }

    async fn open(&mut self) -> anyhow::Result<Conn> {
        let began = Instant::now();
        let (stream, peer, local) = super::connect(self.target, self.args.timeout).await?;
        let now = Instant::now();
        self.connections += 1;
        let id = self.connections;
        self.rec.emit(
            began,
            Event::Connect {
                conn: id,
                peer: peer.to_string(),
                local: local.to_string(),
                connect_ms: ms_between(began, now),
            },
        );
        let stream = super::secure(self.args, self.target, id, stream, self.rec).await?;
        let now = Instant::now();
        Ok(Conn {
            id,
            stream,
            engine: new_engine(),
            opened: now,
            responses: 0,
            last_response_at: None,
            last_max: None,
            countdown: false,
            limit: None,
            timeout: None,
            server_close: false,
            connection_field: None,
            unsolicited: 0,
        })
    }

    /// Keeps `c` idle until `until`, reading so that a close or reset is
    /// seen when it happens; returns whether it is still open.
    async fn watch_idle(&mut self, c: &mut Conn, until: Instant) -> bool {
        loop {
            let read = tokio::time::timeout_at(until.into(), super::read_some(&mut c.stream, &mut self.buf)).await;
            let now = Instant::now();
            let idle_since = c.last_response_at.unwrap_or(c.opened);
            match read {
                Err(_) => {
                    self.rec.emit(
                        now,
                        Event::Idle {
                            conn: c.id,
                            idle_ms: ms_between(idle_since, now),
                        },
                    );
                    return true;
                }
                Ok(Ok(0)) => {
                    let (cause, why) = idle_close_cause(c, now);
                    let detail = match cause {
                        Cause::IdleTimeout => {
                            format!("after idle {}: {why}", super::render::duration(now - idle_since))
                        }
                        _ => format!(
                            "{} after response {}: {why}",
                            super::render::duration(now - idle_since),
                            c.responses
                        ),
                    };
                    self.record_close(c, now, "server", "fin", cause, detail, true);
                    return false;
                }
                Ok(Ok(n)) => {
                    self.totals.received.add_overhead(n);
                    c.unsolicited += n;
                    if c.unsolicited > MAX_UNSOLICITED {
                        let detail = "the server keeps sending with no request in flight".to_owned();
                        self.close_here(c, Cause::BadResponse, detail);
                        return false;
                    }
                    let text = String::from_utf8_lossy(&self.buf[..n]);
                    let first_line: String = text.lines().next().unwrap_or_default().chars().take(80).collect();
                    self.rec.emit(
                        now,
                        Event::Unsolicited {
                            conn: c.id,
                            bytes: n,
                            first_line,
                        },
                    );
                }
                Ok(Err(e)) => {
                    let (_, why) = idle_close_cause(c, now);
                    let how = if e.kind() == std::io::ErrorKind::ConnectionReset {
                        "reset"
                    } else {
                        "error"
                    };
                    let detail = format!(
                        "while idle for {}: {e}; otherwise likely: {why}",
                        super::render::duration(now - idle_since)
                    );
                    self.record_close(c, now, "server", how, Cause::Reset, detail, true);
                    return false;
                }
            }
        }
    }

    /// Request `n` on `c`, and its response.
    async fn exchange(&mut self, c: &mut Conn, n: u32, retry: bool) -> anyhow::Result<Outcome> {
        if c.engine.retired().is_some() {
            // Retired by the engine's own rule (max counted out) while the
            // server keeps the connection: a fresh engine, same socket.
            c.engine = new_engine();
        }
        let version = if self.args.http10 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let head = RequestHead {
            method: &Method::GET,
            target: &self.target.path,
            version,
            headers: &self.headers,
            keep_alive: true,
        };
        let before = c.engine.traffic();
        let bytes = c
            .engine
            .send_request(self.clock, &head, 0)
            .context("the client engine refused the request")?;
        let sent_at = Instant::now();
        let deadline = sent_at + self.args.timeout;
        let (conn_id, path) = (c.id, self.target.path.clone());
        let lost = move |why: String, will_retry: bool| Event::RequestLost {
            conn: conn_id,
            request: n,
            method: "GET".into(),
            target: path.clone(),
            reason: why,
            will_retry,
        };
        let write = tokio::time::timeout_at(deadline.into(), async {
            c.stream.write_all(&bytes).await?;
            // TLS may hold the last bytes until flushed.
            c.stream.flush().await
        })
        .await;
        self.totals.sent = self.totals.sent.plus(diff(c.engine.traffic().sent, before.sent));
        match write {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let now = Instant::now();
                let how = if e.kind() == std::io::ErrorKind::BrokenPipe {
                    "fin"
                } else {
                    "reset"
                };
                self.rec.emit(
                    sent_at,
                    lost(
                        format!("the write failed ({e}): server closed the connection (stale)"),
                        !retry,
                    ),
                );
                let detail = format!("with request {n} on its way: {e}");
                self.record_close(c, now, "server", how, Cause::Stale, detail, false);
                return Ok(Outcome::Lost);
            }
            Err(_) => {
                self.rec
                    .emit(sent_at, lost("the server did not take the request".into(), false));
                self.close_here(c, Cause::ResponseTimeout, "the request could not be written".into());
                return Ok(Outcome::Closed);
            }
        }

        let mut first_byte: Option<Instant> = None;
        let mut response = None;
        let mut complete = false;
        let received_before = c.engine.traffic().received;
        let ended = loop {
            let read = tokio::time::timeout_at(deadline.into(), super::read_some(&mut c.stream, &mut self.buf)).await;
            let now = Instant::now();
            match read {
                Err(_) => break Some((now, Ended::Timeout)),
                Ok(Ok(0)) => {
                    c.engine.handle_eof(self.clock);
                    drain(&mut c.engine, &mut response, &mut complete);
                    break Some((now, Ended::Fin));
                }
                Ok(Ok(got)) => {
                    first_byte.get_or_insert(now);
                    c.engine.handle_input(&self.buf[..got], self.clock);
                    drain(&mut c.engine, &mut response, &mut complete);
                    if complete {
                        break None;
                    }
                    if c.engine.retired() == Some(Retired::BadResponse) {
                        break Some((now, Ended::Bad));
                    }
                }
                Ok(Err(e)) => break Some((now, Ended::Reset(e))),
            }
        };
        let received = diff(c.engine.traffic().received, received_before);
        self.totals.received = self.totals.received.plus(received);
        let done_at = Instant::now();

        if let (true, Some(head)) = (complete, response) {
            let timing = Timing {
                sent_at,
                first_byte: first_byte.unwrap_or(done_at),
                done_at,
            };
            let mut x = self.answered(c, n, retry, head, received, timing);
            x.request_head_bytes = bytes.len() as u64;
            let server_close = x.server_close;
            self.rec.emit(sent_at, Event::Request(x));
            if let Some((now, Ended::Fin)) = ended {
                // No length: the close was the end of the body.
                let detail = "at the end of a response without a length (the close ends its body)".to_owned();
                self.record_close(c, now, "server", "fin", Cause::EndOfBody, detail, false);
                return Ok(Outcome::Closed);
            }
            return Ok(if server_close { Outcome::Closing } else { Outcome::Open });
        }
        let (now, ended) = ended.unwrap_or((done_at, Ended::Bad));
        let timeout = super::render::duration(self.args.timeout);
        Ok(match ended {
            Ended::Fin | Ended::Reset(_) if first_byte.is_none() => {
                let (how, shown) = match ended {
                    Ended::Fin => ("fin", "FIN"),
                    _ => ("reset", "RST"),
                };
                let why = format!("server closed the connection ({shown}) before any response byte (stale)");
                self.rec.emit(sent_at, lost(why, !retry));
                let detail = format!(
                    "with request {n} unanswered (stale), {} after the previous response",
                    super::render::duration(sent_at - c.last_response_at.unwrap_or(c.opened))
                );
                self.record_close(c, now, "server", how, Cause::Stale, detail, false);
                Outcome::Lost
            }
            Ended::Fin => {
                self.rec
                    .emit(sent_at, lost("the connection ended mid-response".into(), false));
                let detail = format!("mid-response to request {n}");
                self.record_close(c, now, "server", "fin", Cause::Truncated, detail, false);
                Outcome::Closed
            }
            Ended::Reset(e) => {
                self.rec
                    .emit(sent_at, lost("the connection was reset mid-response".into(), false));
                let detail = format!("mid-response to request {n}: {e}");
                self.record_close(c, now, "server", "reset", Cause::Reset, detail, false);
                Outcome::Closed
            }
            Ended::Bad => {
                self.rec.emit(sent_at, lost("the response is malformed".into(), false));
                self.close_here(c, Cause::BadResponse, format!("malformed response to request {n}"));
                Outcome::Closed
            }
            Ended::Timeout => {
                let why = format!("no complete response within {timeout}");
                self.rec.emit(sent_at, lost(why.clone(), false));
                self.close_here(c, Cause::ResponseTimeout, why);
                Outcome::Closed
            }
        })
    }

    /// Updates what the connection knows from a complete response and
    /// describes the exchange.
    fn answered(
        &mut self,
        c: &mut Conn,
        n: u32,
        retry: bool,
        head: ResponseHead,
        received: WireBytes,
        Timing {
            sent_at,
            first_byte,
            done_at,
        }: Timing,
    ) -> Exchange {
        let h = &head.headers;
        c.responses += 1;
        c.last_response_at = Some(done_at);
        let hints = KeepAliveHints::parse(h);
        if let Some(max) = hints.max {
            c.countdown |= c.last_max.is_some_and(|prev| max + 1 == prev);
            c.last_max = Some(max);
            c.limit = Some(if c.countdown { c.responses + max.max(1) - 1 } else { max });
        }
        c.timeout = hints.timeout.map(|t| t.as_secs());
        let field = |name: http::header::HeaderName| {
            let values: Vec<&str> = h.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
            (!values.is_empty()).then(|| values.join(", "))
        };
        c.connection_field = field(http::header::CONNECTION);
        let close = has_token(h, &http::header::CONNECTION, "close");
        let keep_alive = has_token(h, &http::header::CONNECTION, "keep-alive");
        c.server_close = close || (head.version == Version::HTTP_10 && !keep_alive);
        Exchange {
            conn: c.id,
            request: n,
            count: c.responses,
            limit: c.limit,
            method: "GET".into(),
            target: self.target.path.clone(),
            version: if self.args.http10 { "HTTP/1.0" } else { "HTTP/1.1" }.into(),
            request_head_bytes: 0,
            status: head.status.as_u16(),
            reason: head.status.canonical_reason().unwrap_or("").into(),
            response_version: format!("{:?}", head.version),
            response_head_bytes: received.overhead,
            response_body_bytes: received.payload,
            ttfb_ms: ms_between(sent_at, first_byte),
            latency_ms: ms_between(sent_at, done_at),
            keep_alive: field(http::header::HeaderName::from_static("keep-alive")),
            keep_alive_timeout_s: c.timeout,
            keep_alive_max: hints.max,
            connection: c.connection_field.clone(),
            server_close: c.server_close,
            retry,
        }
    }

    /// Trace ends the connection itself.
    fn close_here(&mut self, c: &mut Conn, cause: Cause, detail: String) {
        self.record_close(c, Instant::now(), "trace", "close", cause, detail, false);
    }

    #[allow(clippy::too_many_arguments)]
    fn record_close(
        &mut self,
        c: &Conn,
        at: Instant,
        by: &'static str,
        how: &'static str,
        cause: Cause,
        detail: String,
        idle: bool,
    ) {
        let idle_ms = idle.then(|| ms_between(c.last_response_at.unwrap_or(c.opened), at));
        self.rec.emit(
            at,
            Event::Close(Close {
                conn: c.id,
                by,
                how,
                cause,
                detail,
                requests: c.responses,
                idle_ms,
                lifetime_ms: ms_between(c.opened, at),
            }),
        );
    }
}

/// Why reading a response stopped before it was complete.
enum Ended {
    Timeout,
    Fin,
    Reset(std::io::Error),
    Bad,
}

/// When a request went out, its response began and ended.
struct Timing {
    sent_at: Instant,
    first_byte: Instant,
    done_at: Instant,
}

fn new_engine() -> ClientConnection {
    ClientConnection::new(ClientConfig {
        timeout_margin: std::time::Duration::ZERO,
        ..ClientConfig::default()
    })
}

/// Takes the engine's events: the head, and whether the response ended.
fn drain(engine: &mut ClientConnection, head: &mut Option<ResponseHead>, complete: &mut bool) {
    while let Some(event) = engine.poll_event() {
        match event {
            ClientEvent::Head(h) => *head = Some(h),
            ClientEvent::Body(_) => {}
            ClientEvent::End => *complete = true,
        }
    }
}

fn diff(after: WireBytes, before: WireBytes) -> WireBytes {
    WireBytes {
        overhead: after.overhead.saturating_sub(before.overhead),
        payload: after.payload.saturating_sub(before.payload),
    }
}

/// A close this soon after a response, with no timeout advertised, is a
/// decision made with the response, not an idle timeout.
const UNANNOUNCED: std::time::Duration = std::time::Duration::from_millis(10);

/// Why the server closed an idle connection, as far as can be told.
fn idle_close_cause(c: &Conn, now: Instant) -> (Cause, String) {
    let idle = now - c.last_response_at.unwrap_or(c.opened);
    if let Some(limit) = c.limit.filter(|&l| c.responses >= l) {
        let said = match &c.connection_field {
            Some(v) if c.server_close => format!(", Connection: {v}"),
            _ => String::new(),
        };
        return (Cause::Max, format!("max reached ({}/{limit}){said}", c.responses));
    }
    if c.server_close {
        let why = match &c.connection_field {
            Some(v) => format!("the last response said Connection: {v}"),
            None => "the last response was HTTP/1.0 without keep-alive".to_owned(),
        };
        return (Cause::ConnectionClose, why);
    }
    let observed = super::render::duration(idle);
    if c.timeout.is_none() && c.responses > 0 && idle < UNANNOUNCED {
        let why = "unannounced (the response did not say Connection: close, no idle timeout advertised)";
        return (Cause::Unannounced, why.to_owned());
    }
    let why = match c.timeout {
        Some(t) => {
            let (idle, t) = (idle.as_secs_f64(), t as f64);
            let note = if idle + 0.25 < t * 0.8 {
                "; well before it"
            } else if idle > t + 0.25 {
                "; later than advertised"
            } else {
                ""
            };
            format!("idle timeout (advertised timeout={t} s, observed {observed}{note})")
        }
        None => format!("idle timeout (not advertised, observed ≈{observed})"),
    };
    (Cause::IdleTimeout, why)
}
