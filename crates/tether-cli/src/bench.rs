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
//!
//! TLS: every mode takes `https://` and `wss://` URLs (port 443 by
//! default). [`Target::parse`] builds the library's client TLS
//! configuration once per run (`tether::client::TlsConnector`: rustls,
//! TLS 1.2 and 1.3, ALPN `http/1.1`, the system's roots or `--ca-file`'s
//! CA certificates), and [`connect`], through which every mode opens its
//! connections, runs the handshake after the TCP connect with the URL's
//! host as the server name. A connection is a `tether::client::ClientStream`
//! (plain TCP or TLS over TCP, one `AsyncRead + AsyncWrite` type), so the
//! modes have one code path for both: they read with [`read_some`] /
//! [`poll_read_some`] (a TLS peer's close without `close_notify` is an end
//! of stream, as a FIN), write with [`send`] (which flushes: over TLS the
//! last record may wait in rustls until then), and drive both directions
//! of one connection by polling (`ws-echo`) or by `tokio::io::split`
//! (`fanout`'s publisher) instead of TCP-only `ready` / `try_read`. An
//! untrusted certificate (or another TLS refusal) is
//! [`is_permanent`]: reported as the run's first error, not retried. The
//! handshake is part of connecting: `http` and `idle` time requests, not
//! handshakes (`--pipeline` and keep-alive reuse one TLS session per
//! connection); the cost of new TLS connections is `scripts/bench-tls`'s
//! (`wrk` with `Connection: close`).

mod fanout;
mod http;
mod idle;
mod procfs;
mod report;
mod stale;
mod ws;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use tether::client::tls::is_unclean_eof;
use tether::client::{ClientStream, TlsConnector, TlsError, TlsOptions};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

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
    /// `https://`, `wss://`: trust the CA certificates of this PEM file
    /// instead of the system's roots.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

impl CommonArgs {
    /// `url` read as a [`Target`], TLS set up with `--ca-file`.
    pub fn target(&self, url: &str) -> anyhow::Result<Target> {
        Target::parse(url, self.ca_file.as_deref())
    }
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

/// A parsed `http://`, `ws://`, `https://` or `wss://` URL: where to
/// connect, how (TLS or not) and what to ask.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header value (`host[:port]` as written in the URL).
    pub host: String,
    /// Path and query, at least `/`.
    pub path: String,
    pub websocket: bool,
    /// `https://`, `wss://`: the TLS setup every connection goes through.
    pub tls: Option<Tls>,
}

/// How a TLS target's connections are secured: the library's client
/// configuration (`tether::client::tls`: the system's roots, or the CA
/// file) and the name sent as SNI and checked against the certificate.
#[derive(Debug, Clone)]
pub struct Tls {
    connector: TlsConnector,
    server_name: String,
}

impl Target {
    /// Reads `url`; for `https://` and `wss://` (port 443 by default) also
    /// builds the TLS configuration, trusting the CA certificates of
    /// `ca_file` (PEM) or, without it, the system's roots.
    pub fn parse(url: &str, ca_file: Option<&Path>) -> anyhow::Result<Target> {
        let (scheme, rest) = url
            .split_once("://")
            .with_context(|| format!("{url:?}: expected SCHEME://HOST[:PORT]/PATH"))?;
        let (websocket, tls) = match scheme.to_ascii_lowercase().as_str() {
            "http" => (false, false),
            "ws" => (true, false),
            "https" => (false, true),
            "wss" => (true, true),
            s => bail!("{url:?}: unknown scheme {s:?} (http, https, ws or wss)"),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            bail!("{url:?}: no host");
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, with_port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (v6, after) = bracketed
                .split_once(']')
                .with_context(|| format!("{url:?}: no ']' after an IPv6 address"))?;
            let port = if after.starts_with(':') {
                String::new()
            } else {
                format!(":{default_port}")
            };
            (v6, format!("{authority}{port}"))
        } else {
            match authority.split_once(':') {
                Some((h, _)) => (h, authority.to_owned()),
                None => (authority, format!("{authority}:{default_port}")),
            }
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("resolving {authority}"))?
            .next()
            .with_context(|| format!("{authority} resolves to no address"))?;
        let tls = if tls {
            let connector = TlsConnector::new(&TlsOptions {
                ca_file: ca_file.map(Path::to_path_buf),
                config: None,
            })
            .context("setting up TLS")?;
            Some(Tls {
                connector,
                server_name: host.to_owned(),
            })
        } else {
            None
        };
        Ok(Target {
            addr,
            host: authority.to_owned(),
            path: path.to_owned(),
            websocket,
            tls,
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

/// Connects to `target` (from `source` when given) with `TCP_NODELAY`,
/// then, for a TLS target, runs the handshake; each step within `timeout`.
/// Every mode's connections are made here, so every mode speaks TLS alike.
pub async fn connect(target: &Target, source: Option<SocketAddr>, timeout: Duration) -> anyhow::Result<ClientStream> {
    let addr = target.addr;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .context("creating a socket")?;
    if let Some(src) = source {
        socket.bind(src).with_context(|| format!("binding {src}"))?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("connect to {addr}: timed out"))?
        .with_context(|| format!("connect to {addr}"))?;
    let _ = stream.set_nodelay(true);
    let Some(tls) = &target.tls else {
        return Ok(ClientStream::Tcp(stream));
    };
    let (stream, _info) = tokio::time::timeout(timeout, tls.connector.connect(&tls.server_name, stream))
        .await
        .map_err(|_| anyhow::anyhow!("TLS handshake with {addr}: timed out"))?
        .with_context(|| format!("TLS handshake with {addr} ({})", tls.server_name))?;
    Ok(ClientStream::Tls(Box::new(stream)))
}

/// Whether a connection error will not go away by connecting again: the
/// server's certificate is not trusted, or the server refuses TLS as
/// configured. Modes that reconnect stop on such an error instead of
/// retrying it until the deadline.
pub fn is_permanent(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<TlsError>(),
        Some(TlsError::Certificate(_) | TlsError::Handshake(_) | TlsError::ServerName(_))
    )
}

/// One read into `buf`: `Ok(0)` at the end of the stream, a TLS peer's
/// TCP close without `close_notify` included (as `tether trace` takes it).
/// The poll form, for loops that drive reading and writing in one task.
pub fn poll_read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    cx: &mut std::task::Context<'_>,
    buf: &mut [u8],
) -> Poll<std::io::Result<usize>> {
    let mut rb = ReadBuf::new(buf);
    match Pin::new(stream).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
        Poll::Ready(Err(e)) if is_unclean_eof(&e) => Poll::Ready(Ok(0)),
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// [`poll_read_some`] as a future.
pub async fn read_some<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut [u8]) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_some(stream, cx, buf)).await
}

/// Writes all of `data` and flushes it (over TLS, the last record may wait
/// in rustls's buffer until flushed), within `timeout`.
pub async fn send<S: AsyncWrite + Unpin>(stream: &mut S, data: &[u8], timeout: Duration) -> anyhow::Result<()> {
    tokio::time::timeout(timeout, async {
        stream.write_all(data).await?;
        stream.flush().await
    })
    .await
    .context("write timed out")?
    .context("write")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_urls_default_to_443_and_name_the_server() {
        let t = Target::parse("https://127.0.0.1/healthz", None).unwrap();
        assert_eq!((t.addr.port(), t.path.as_str(), t.websocket), (443, "/healthz", false));
        assert_eq!(t.tls.as_ref().map(|t| t.server_name.as_str()), Some("127.0.0.1"));
        let t = Target::parse("WSS://[::1]:8443/echo", None).unwrap();
        assert_eq!(
            (t.addr.port(), t.host.as_str(), t.websocket),
            (8443, "[::1]:8443", true)
        );
        assert_eq!(t.tls.as_ref().map(|t| t.server_name.as_str()), Some("::1"));
        let t = Target::parse("wss://[::1]", None).unwrap();
        assert_eq!(t.addr.port(), 443);
        let t = Target::parse("http://127.0.0.1:8080", None).unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (8080, "/"));
        assert!(t.tls.is_none());
        assert_eq!(Target::parse("ws://[::1]/", None).unwrap().addr.port(), 80);
        assert!(Target::parse("ftp://127.0.0.1/", None).is_err());
    }

    #[test]
    fn a_bad_ca_file_fails_before_any_connection() {
        let e = Target::parse("https://127.0.0.1/", Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(
            matches!(e.downcast_ref::<TlsError>(), Some(TlsError::CaFile { .. })),
            "{e:#}"
        );
        // A plain URL needs no CA file and does not read it.
        assert!(Target::parse("http://127.0.0.1/", Some(Path::new("/nonexistent/ca.pem"))).is_ok());
    }
}
