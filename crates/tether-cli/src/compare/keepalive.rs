//! The guide's Part 1: the same N requests with keep-alive and with a new
//! connection per request, in HTTP/1.1 and HTTP/1.0, through tether's
//! client (`tether::client::http`): connections opened, bytes on the wire
//! and latency per request (a new connection's includes its connect).

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Version};
use serde::Serialize;
use tether::client::http::{HttpClient, HttpClientOptions};
use tether::proto::wire::Traffic;

use super::server::{checked, Agreement, ServerBytes};
use super::{ms, request_headers, table, Base, CompareArgs, Latency};

/// One mode's results.
#[derive(Debug, Serialize)]
pub struct ModeResult {
    pub mode: &'static str,
    pub requests: usize,
    pub connections: u64,
    pub bytes: Bytes2,
    pub latency: Latency,
    pub total_ms: f64,
    pub server: Agreement,
    /// Packets and bytes on the loopback interface during the mode, TCP/IP
    /// headers, handshakes and teardowns included (Linux, a loopback
    /// server only; counts anything else on `lo` at the time too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loopback: Option<Loopback>,
}

/// The loopback interface's counters (`/proc/net/dev`, `lo`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Loopback {
    pub packets: u64,
    pub bytes: u64,
}

impl Loopback {
    /// `lo`'s received packets and bytes so far (on loopback, every packet
    /// sent is received once).
    fn read() -> Option<Loopback> {
        let text = std::fs::read_to_string("/proc/net/dev").ok()?;
        let line = text.lines().find(|l| l.trim_start().starts_with("lo:"))?;
        let mut fields = line
            .split_once(':')?
            .1
            .split_whitespace()
            .map(|f| f.parse::<u64>().ok());
        let bytes = fields.next()??;
        let packets = fields.next()??;
        Some(Loopback { packets, bytes })
    }

    fn since(self, earlier: Loopback) -> Loopback {
        Loopback {
            packets: self.packets.saturating_sub(earlier.packets),
            bytes: self.bytes.saturating_sub(earlier.bytes),
        }
    }
}

/// Bytes both ways, heads (overhead) and bodies (payload).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Bytes2 {
    pub sent_head: u64,
    pub sent_body: u64,
    pub received_head: u64,
    pub received_body: u64,
    pub total: u64,
}

impl From<Traffic> for Bytes2 {
    fn from(t: Traffic) -> Self {
        Bytes2 {
            sent_head: t.sent.overhead,
            sent_body: t.sent.payload,
            received_head: t.received.overhead,
            received_body: t.received.payload,
            total: t.total(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct KeepAliveReport {
    pub url: String,
    pub modes: Vec<ModeResult>,
}

const MODES: [(&str, Version, bool); 4] = [
    ("HTTP/1.1 keep-alive", Version::HTTP_11, true),
    ("HTTP/1.1 new connection each", Version::HTTP_11, false),
    ("HTTP/1.0 keep-alive", Version::HTTP_10, true),
    ("HTTP/1.0 new connection each", Version::HTTP_10, false),
];

pub async fn run(args: &CompareArgs, base: &Base) -> anyhow::Result<KeepAliveReport> {
    let url = format!("{base}{}", args.path);
    let progress = super::progress(args, (MODES.len() * args.requests) as u64, "keep-alive");
    let mut modes = Vec::new();
    for (name, version, keep_alive) in MODES {
        let work = one_mode(args, base, &url, version, keep_alive, &progress);
        let ((mut result, traffic), server) = checked(base, async {
            let (r, t) = work.await?;
            // What the server should have read is what the client sent.
            let clients = ServerBytes {
                read: t.sent.total(),
                written: t.received.total(),
            };
            Ok(((r, t), clients))
        })
        .await?;
        result.mode = name;
        result.bytes = traffic.into();
        result.server = server;
        modes.push(result);
    }
    progress.finish_and_clear();
    Ok(KeepAliveReport { url, modes })
}

/// The requests of one mode, one at a time; the client is dropped (its
/// connections closed) before the bytes are returned.
async fn one_mode(
    args: &CompareArgs,
    base: &Base,
    url: &str,
    version: Version,
    keep_alive: bool,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<(ModeResult, Traffic)> {
    let client = HttpClient::new(HttpClientOptions {
        version,
        keep_alive,
        ..base.http_options()
    });
    let headers = request_headers(args.headers, url);
    let mut sample = Vec::with_capacity(args.requests);
    let loopback = url.contains("://127.") || url.contains("://localhost") || url.contains("://[::1]");
    let lo_before = loopback.then(Loopback::read).flatten();
    let started = Instant::now();
    for _ in 0..args.requests {
        let mut req = Request::get(url).body(Bytes::new()).context("building the request")?;
        *req.headers_mut() = headers.clone();
        let t = Instant::now();
        let resp = client.request(req).await.with_context(|| format!("GET {url}"))?;
        sample.push(t.elapsed());
        anyhow::ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
        progress.inc(1);
    }
    let total = started.elapsed();
    let stats = client.stats();
    drop(client);
    // The closes' packets (FIN, ACK) go out as the client is dropped.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let lo = lo_before.and_then(|b| Some(Loopback::read()?.since(b)));
    let result = ModeResult {
        mode: "",
        requests: args.requests,
        connections: stats.connections,
        bytes: stats.traffic.into(),
        latency: Latency::of(sample),
        total_ms: total.as_secs_f64() * 1000.0,
        server: Agreement {
            clients: ServerBytes::default(),
            server: ServerBytes::default(),
            agrees: false,
        },
        loopback: lo,
    };
    Ok((result, stats.traffic))
}

impl KeepAliveReport {
    pub fn table(&self) -> String {
        let n = self.modes.first().map_or(0, |m| m.requests);
        let mut out = format!(
            "Keep-alive against a new connection per request: {n} × GET {}\n\n",
            self.url
        );
        let rows: Vec<Vec<String>> = self
            .modes
            .iter()
            .map(|m| {
                let per = m.bytes.total / m.requests.max(1) as u64;
                vec![
                    m.mode.to_string(),
                    m.connections.to_string(),
                    m.bytes.sent_head.to_string(),
                    m.bytes.received_head.to_string(),
                    m.bytes.received_body.to_string(),
                    per.to_string(),
                    format!("{:.2}", m.latency.p50_ms),
                    format!("{:.2}", m.latency.p99_ms),
                    ms(Duration::from_secs_f64(m.total_ms / 1000.0)),
                    m.loopback.map_or("-".into(), |l| {
                        format!("{:.1}", l.packets as f64 / m.requests.max(1) as f64)
                    }),
                    m.loopback
                        .map_or("-".into(), |l| (l.bytes / m.requests.max(1) as u64).to_string()),
                    if m.server.agrees { "yes" } else { "NO" }.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "mode",
                "connections",
                "head out",
                "head in",
                "body in",
                "bytes/req",
                "p50 ms",
                "p99 ms",
                "total ms",
                "lo pkts/req",
                "lo bytes/req",
                "server agrees",
            ],
            &rows,
        ));
        out.push_str(
            "\nbytes/req: HTTP bytes both ways; lo: packets and bytes on the loopback interface, TCP/IP headers,\n\
             handshakes and teardowns included (anything else on lo meanwhile too).\n",
        );
        if let (Some(ka), Some(new)) = (self.modes.first(), self.modes.get(1)) {
            out.push_str(&format!(
                "\nHTTP/1.1: a new connection per request opened {}× the connections and took {:.1}× the time (p50 {:.2} ms against {:.2} ms).\n",
                new.connections / ka.connections.max(1),
                new.total_ms / ka.total_ms.max(f64::MIN_POSITIVE),
                new.latency.p50_ms,
                ka.latency.p50_ms,
            ));
        }
        out
    }
}
