//! `tether bench`: a load generator for HTTP/1.1 keep-alive and WebSocket
//! servers, tether's or anyone's.
//!
//! Modes:
//! - `http`: N keep-alive connections each sending requests (optionally
//!   pipelined D deep, in batches of D), responses framed by
//!   `Content-Length`; requests/s and a latency histogram.
//! - `ws-echo`: N WebSocket connections each keeping K binary messages of
//!   S bytes in flight against an echo endpoint; messages/s, MB/s, latency.
//! - `idle`: open N keep-alive or WebSocket connections, hold them, then
//!   check each is still alive (a request answered `200`, a ping answered
//!   with a pong); or, with `--expect-close T`, measure when the server
//!   closes each one relative to T.
//! - `fanout`: N WebSocket subscribers of one channel of a push server
//!   (tether's `/ws` protocol) and a publisher: RSS per idle subscriber,
//!   deliveries/s and server CPU per delivery when publishing as fast as
//!   delivered, and publish-to-receipt latency at a fixed rate.
//! - `stale`: one request at a time at random gaps through tether's pooled
//!   keep-alive client (`tether::client::http`), every error counted: the
//!   stale-connection test.
//!
//! How it stays out of the way: one OS thread per available CPU (or
//! `--threads`), each with its own current-thread tokio runtime and its own
//! histogram, connections spread over the threads; request bytes and
//! WebSocket frames are encoded (and masked) once up front and written
//! again and again; responses are framed, not parsed into structures; no
//! allocation per request. Every loop is bounded by the run's deadline or a
//! count, and every read waits at most `--timeout`.
//!
//! Against a loopback IPv4 target each socket binds a source address in
//! 127.0.0.2–127.0.0.249 before connecting, so tens of thousands of
//! connections never exhaust one address's ephemeral ports.

mod fanout;
mod http;
mod idle;
mod procfs;
mod report;
mod stale;
mod ws;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::config::{parse_duration, parse_size};

/// `tether bench MODE …`
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// HTTP/1.1 keep-alive load: requests/s and latency.
    Http(http::HttpArgs),
    /// WebSocket echo load: messages/s, MB/s and latency.
    WsEcho(ws::WsEchoArgs),
    /// Hold many idle connections, then check they are alive (or time their close).
    Idle(idle::IdleArgs),
    /// Push fan-out: N subscribers of one channel; idle RSS, deliveries/s, latency at a rate.
    Fanout(Box<fanout::FanoutArgs>),
    /// Requests at random gaps straddling a server's idle timeout through
    /// tether's pooled client; counts stale-connection errors.
    Stale(stale::StaleArgs),
}

/// Options every mode has.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Load-generator threads, each with its own single-threaded runtime
    /// (default: the CPUs this process may run on).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Longest wait for any single read, write or connect.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Do not bind source addresses across 127.0.0.0/8 (use the kernel's choice).
    #[arg(long)]
    pub no_spread: bool,
    /// No progress on stderr while the load runs.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Runs `tether bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    // Idle and fan-out runs hold thousands of sockets: take the whole hard limit.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    match args.mode {
        Mode::Http(a) => http::run(a),
        Mode::WsEcho(a) => ws::run(a),
        Mode::Idle(a) => idle::run(a),
        Mode::Fanout(a) => fanout::run(*a),
        Mode::Stale(a) => stale::run(a),
    }
}

/// A parsed `http://` or `ws://` URL: where to connect and what to ask.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header value (`host[:port]` as written in the URL).
    pub host: String,
    /// Path and query, at least `/`.
    pub path: String,
    pub websocket: bool,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let (scheme, rest) = url
            .split_once("://")
            .with_context(|| format!("{url:?}: expected SCHEME://HOST[:PORT]/PATH"))?;
        let websocket = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "ws" => true,
            "https" | "wss" => bail!("{url:?}: TLS is not supported by tether bench"),
            s => bail!("{url:?}: unknown scheme {s:?} (http or ws)"),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            bail!("{url:?}: no host");
        }
        let with_port = if authority.starts_with('[') {
            if authority.contains("]:") {
                authority.to_owned()
            } else {
                format!("{authority}:80")
            }
        } else if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("resolving {authority}"))?
            .next()
            .with_context(|| format!("{authority} resolves to no address"))?;
        Ok(Target {
            addr,
            host: authority.to_owned(),
            path: path.to_owned(),
            websocket,
        })
    }
}

/// The source address for connection `i`: spread over 127.0.0.2–249 when
/// the target is loopback IPv4 (and spreading is on).
pub fn source_addr(target: SocketAddr, i: usize, spread: bool) -> Option<SocketAddr> {
    match target.ip() {
        IpAddr::V4(v4) if spread && v4.is_loopback() => {
            let x = 2 + (i % 248) as u8;
            Some(SocketAddr::from((Ipv4Addr::new(127, 0, 0, x), 0)))
        }
        _ => None,
    }
}

/// Connects (from `source` when given) with `TCP_NODELAY`, within `timeout`.
pub async fn connect(
    target: SocketAddr,
    source: Option<SocketAddr>,
    timeout: Duration,
) -> anyhow::Result<tokio::net::TcpStream> {
    let socket = if target.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .context("creating a socket")?;
    if let Some(src) = source {
        socket.bind(src).with_context(|| format!("binding {src}"))?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(target))
        .await
        .map_err(|_| anyhow::anyhow!("connect to {target}: timed out"))?
        .with_context(|| format!("connect to {target}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The number of load threads to use.
pub fn thread_count(requested: Option<usize>, connections: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    requested.unwrap_or(cpus).clamp(1, connections.max(1))
}

/// Runs `per_thread(thread_index, connection_indices)` on `threads` OS
/// threads, each inside its own current-thread runtime with a `LocalSet`,
/// and returns their results in thread order.
/// [`on_threads`] on a background thread while [`show_progress`] reports
/// on this one; returns each thread's result and when the load ended.
pub fn run_with_progress<T, F, Fut>(
    threads: usize,
    connections: usize,
    progress: &Progress,
    duration: Duration,
    unit: &str,
    per_thread: F,
) -> anyhow::Result<(Vec<T>, Instant)>
where
    T: Send + 'static,
    F: Fn(usize, Vec<usize>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let finished = Arc::new(AtomicU64::new(0));
    let done = finished.clone();
    let runner = std::thread::spawn(move || {
        let r = on_threads(threads, connections, per_thread);
        let ended = Instant::now();
        done.store(1, Ordering::Release);
        r.map(|r| (r, ended))
    });
    show_progress(progress, duration, unit, || finished.load(Ordering::Acquire) == 1);
    runner.join().map_err(|_| anyhow::anyhow!("load thread panicked"))?
}

pub fn on_threads<T, F, Fut>(threads: usize, connections: usize, per_thread: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize, Vec<usize>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let per_thread = Arc::new(per_thread);
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let conns: Vec<usize> = (0..connections).filter(|i| i % threads == t).collect();
        let f = per_thread.clone();
        let h = std::thread::Builder::new()
            .name(format!("bench-{t}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building a runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, f(t, conns))
            })
            .context("spawning a load thread")?;
        handles.push(h);
    }
    handles
        .into_iter()
        .map(|h| h.join().map_err(|_| anyhow::anyhow!("a load thread panicked")))
        .collect()
}

/// Counters the load threads bump and the progress display reads.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub errors: AtomicU64,
    /// Show nothing (`--quiet`).
    pub quiet: bool,
}

impl Progress {
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}

/// Shows progress on stderr until `end` says the load is over: a bar,
/// cleared at the end, when stderr is a terminal; otherwise one plain line
/// a second (so a run in CI or a pipe shows it is alive). Nothing when
/// `progress.quiet`. `unit` names what `progress.done` counts.
pub fn show_progress(progress: &Progress, total: Duration, unit: &str, end: impl Fn() -> bool) {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut last_line = start;
    let bar = if terminal && !progress.quiet {
        let b = ProgressBar::with_draw_target(Some(total.as_millis() as u64), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template("{bar:30} {elapsed}/{duration} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let mut last = (start, 0u64);
    while !end() {
        std::thread::sleep(Duration::from_millis(200));
        let now = Instant::now();
        let done = progress.done.load(Ordering::Relaxed);
        let errors = progress.errors.load(Ordering::Relaxed);
        if let Some(b) = &bar {
            let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-9);
            last = (now, done);
            b.set_position(now.duration_since(start).as_millis().min(total.as_millis()) as u64);
            b.set_message(format!("{done} {unit} ({rate:.0}/s), {errors} errors"));
        } else if !progress.quiet && now.duration_since(last_line) >= Duration::from_secs(1) {
            let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-9);
            last = (now, done);
            last_line = now;
            eprintln!(
                "bench: {:.0}s of {:.0}s: {done} {unit} ({rate:.0}/s), {errors} errors",
                now.duration_since(start).as_secs_f64(),
                total.as_secs_f64()
            );
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}

/// `--size` parser (bytes with optional K/M/G binary units).
pub fn parse_bytes(input: &str) -> Result<u64, crate::config::ValueError> {
    parse_size(input)
}
