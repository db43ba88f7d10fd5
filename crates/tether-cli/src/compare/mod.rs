//! `tether compare`: the guide's two comparisons, measured for real.
//!
//! - `keepalive` (the guide's Part 1): N requests with and without
//!   keep-alive, in HTTP/1.1 and HTTP/1.0: connections opened, bytes on
//!   the wire (heads and bodies), latency per request.
//! - `chat` (the guide's "100 chat messages"): the same stream of
//!   messages, published at random times, delivered at once to four
//!   clients: polling `/poll` at an interval over keep-alive, long-polling,
//!   SSE and WebSocket push. For each: bytes both ways, overhead per
//!   delivered message, requests or frames, latency from publish to
//!   receipt; then the ratios the guide estimates.
//!
//! Every byte is counted twice: by the client engines (`wire::Traffic`,
//! split into protocol overhead and payload) and by a counting wrapper
//! around each socket ([`counted`]); the run also reads the server's own
//! counters (`/metrics`, `tether_wire_bytes_total`) before and after, and
//! reports whether the three agree. It runs against a tether server
//! started in-process on a free port (plain HTTP), or `--url`, which may be
//! `https://` (`--ca-file` to trust a private CA; the library's client TLS,
//! `tether::client::tls`, and `bench`'s connect for the raw-socket
//! clients). Over TLS every byte count, the counting sockets' and the
//! server's included, is of the plaintext: HTTP and WebSocket bytes, not
//! TLS records or handshakes (the server's counters count the same, see
//! `tether::server::listener`); only the loopback packet counts of
//! `keepalive` see what TLS adds. `--speed X` divides
//! every duration (the span of the messages, the poll interval, the
//! long-poll wait) by X: the number of polls per message stays the same,
//! so the byte ratios keep their meaning; latencies are reported as
//! measured, and polling's scale with the interval.
//!
//! Output: a progress bar on stderr, tables on stdout, `--json FILE`
//! (`-`: stdout, instead of the tables) and `--svg DIR` (charts).

mod chart;
mod chat;
mod counted;
mod keepalive;
mod server;

use std::path::PathBuf;
use std::time::Duration;

use tether::client::http::HttpClientOptions;
use tether::client::{ClientStream, TlsOptions};

use crate::bench::Target;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::config::parse_duration;

/// `tether compare [PART] …`
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Which comparison to run.
    #[arg(value_enum, default_value_t = Part::All)]
    pub part: Part,
    /// The tether server to measure (`http://host:port` or
    /// `https://host:port`); default: one started in this process on a
    /// free port (plain HTTP).
    #[arg(long)]
    pub url: Option<String>,
    /// `--url https://…`: trust the CA certificates of this PEM file
    /// instead of the system's roots.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// keepalive: requests per mode.
    #[arg(long, default_value_t = 100)]
    pub requests: usize,
    /// keepalive: the path requested.
    #[arg(long, default_value = "/healthz")]
    pub path: String,
    /// chat: messages published.
    #[arg(long, default_value_t = 100)]
    pub messages: usize,
    /// chat: the span the messages are published over (at random times).
    #[arg(long, default_value = "100s", value_parser = parse_duration)]
    pub over: Duration,
    /// chat: the polling client's interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// chat: how long the server holds a long poll (at most 30 s).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub long_poll_wait: Duration,
    /// Divides every duration by this (quick runs; byte ratios unchanged).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// chat: the request headers of every client, as a browser sends them
    /// (`User-Agent`, `Accept`, `Cookie`, …) or the fewest HTTP needs.
    #[arg(long, value_enum, default_value_t = HeaderSet::Browser)]
    pub headers: HeaderSet,
    /// Seed of the publication times and texts.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the results as JSON to this file (`-`: stdout, no tables).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write SVG charts into this directory.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    Keepalive,
    Chat,
    All,
}

/// The request headers a client sends besides `Host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HeaderSet {
    /// What a current Chromium sends with a `fetch()` (about 500 bytes).
    Browser,
    /// No optional field at all.
    Minimal,
}

/// Everything a run measured (the JSON output).
#[derive(Debug, Serialize)]
pub struct Report {
    pub server: String,
    pub speed: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<keepalive::KeepAliveReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<chat::ChatReport>,
}

pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    if !(args.speed.is_finite() && args.speed > 0.0) {
        bail!("--speed must be a positive number");
    }
    if args.messages == 0 || args.requests == 0 {
        bail!("--messages and --requests must be at least 1");
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let local = match &args.url {
        Some(_) => None,
        None => Some(server::Local::start().context("starting the in-process server")?),
    };
    let base = match (&args.url, &local) {
        (Some(url), _) => url.trim_end_matches('/').to_string(),
        (None, Some(l)) => format!("http://{}", l.addr),
        (None, None) => unreachable!("a server is started when no --url is given"),
    };
    let base = Base::new(base, args.ca_file.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = rt.block_on(async {
        let keepalive = match args.part {
            Part::Keepalive | Part::All => Some(keepalive::run(&args, &base).await?),
            Part::Chat => None,
        };
        let chat = match args.part {
            Part::Chat | Part::All => Some(chat::run(&args, &base).await?),
            Part::Keepalive => None,
        };
        anyhow::Ok(Report {
            server: base.url.clone(),
            speed: args.speed,
            keepalive,
            chat,
        })
    })?;
    drop(local);
    let to_stdout = args.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if !to_stdout {
        print!("{}", render(&report));
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        if to_stdout {
            println!("{text}");
        } else {
            std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if let Some(dir) = &args.svg {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, svg) in chart::all(&report) {
            let path = dir.join(name);
            std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
            if !to_stdout {
                println!("chart: {}", path.display());
            }
        }
    }
    Ok(())
}

/// The server measured: its base URL (`http://host:port` or
/// `https://host:port`, no trailing `/`; shown as it), with what the
/// clients need to reach it through TLS.
#[derive(Debug, Clone)]
pub struct Base {
    pub url: String,
    /// For the pooled clients (`tether::client::http`).
    tls: TlsOptions,
    /// For the raw-socket clients (SSE, WebSocket, the `/metrics` scrape).
    target: Target,
}

impl Base {
    pub fn new(url: String, ca_file: Option<PathBuf>) -> anyhow::Result<Base> {
        let lower = url.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            bail!("{url:?}: expected http://host:port or https://host:port");
        }
        let target = Target::parse(&url, ca_file.as_deref())?;
        if target.path != "/" {
            bail!("{url:?}: give the server's origin, without a path");
        }
        Ok(Base {
            url,
            tls: TlsOptions { ca_file, config: None },
            target,
        })
    }

    /// Options for a pooled client of this server (TLS trust included).
    pub fn http_options(&self) -> HttpClientOptions {
        HttpClientOptions {
            tls: self.tls.clone(),
            ..HttpClientOptions::default()
        }
    }

    /// A new connection to the server, through TLS for `https://`.
    pub async fn connect(&self) -> anyhow::Result<ClientStream> {
        crate::bench::connect(&self.target, None, Duration::from_secs(10)).await
    }

    /// The `Host` field: `host:port` as in the URL.
    pub fn authority(&self) -> &str {
        &self.target.host
    }
}

impl std::fmt::Display for Base {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

fn render(report: &Report) -> String {
    let mut out = String::new();
    if let Some(k) = &report.keepalive {
        out.push_str(&k.table());
        out.push('\n');
    }
    if let Some(c) = &report.chat {
        out.push_str(&c.table());
    }
    out
}

/// The request fields of a header set for requests to `url` (`Host` is
/// the client's to add). The browser set is what Chromium 131 sends with
/// a same-origin `fetch()`, a session cookie and an analytics cookie
/// included: the guide's "400-800 bytes" assumes such a set.
pub fn request_headers(set: HeaderSet, url: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    if set == HeaderSet::Minimal {
        return h;
    }
    let origin = url.split('/').take(3).collect::<Vec<_>>().join("/");
    let fields = [
        ("connection", "keep-alive".to_string()),
        ("sec-ch-ua-platform", "\"Linux\"".to_string()),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
                .to_string(),
        ),
        ("accept", "application/json, text/plain, */*".to_string()),
        (
            "sec-ch-ua",
            "\"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\"".to_string(),
        ),
        ("sec-ch-ua-mobile", "?0".to_string()),
        ("sec-fetch-site", "same-origin".to_string()),
        ("sec-fetch-mode", "cors".to_string()),
        ("sec-fetch-dest", "empty".to_string()),
        ("referer", format!("{origin}/chat")),
        ("accept-encoding", "gzip, deflate, br, zstd".to_string()),
        ("accept-language", "en-US,en;q=0.9".to_string()),
        (
            "cookie",
            "session=8f2c1e9a4b7d4c0e9a1f3b5d7e9c2a4f; _ga=GA1.1.1394857261.1733400000; theme=dark".to_string(),
        ),
    ];
    for (name, value) in fields {
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    h
}

/// A progress bar on stderr (hidden with `--quiet`, or when stderr is not
/// a terminal).
pub fn progress(args: &CompareArgs, total: u64, label: &'static str) -> indicatif::ProgressBar {
    if args.quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label);
    bar
}

/// A text table: a header row and rows, columns right-aligned but the first.
pub fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..head.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .chain([head[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(c.chars().count());
            if i == 0 {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str("  ");
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(head.to_vec());
    out.push_str(&line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(|s| s.as_str())
            .collect(),
    ));
    for r in rows {
        out.push_str(&line(r.iter().map(|s| s.as_str()).collect()));
    }
    out
}

/// Milliseconds with one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// The `q` quantile (0..=1) of `sorted`, nearest rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Latency summary of a sample, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(mut sample: Vec<Duration>) -> Latency {
        sample.sort();
        let f = |d: Duration| d.as_secs_f64() * 1000.0;
        Latency {
            p50_ms: f(quantile(&sample, 0.5)),
            p99_ms: f(quantile(&sample, 0.99)),
            max_ms: f(sample.last().copied().unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&s, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&s, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&s[..1], 0.99), Duration::from_millis(1));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn tables_align() {
        let t = table(&["a", "bb"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "a    bb\n---  --\nxyz   1\n");
    }
}
