//! `tether trace URL`: one client's view of a connection's lifecycle, as a
//! timeline (the model is the diagrams of the keep-alive and WebSocket
//! guide). It works against any server: tether, nginx, Node, hyper.
//!
//! # `http://` URLs
//!
//! `--requests N` `GET` requests (HTTP/1.1, or HTTP/1.0 with `Connection:
//! keep-alive` under `--http1.0`), one every `--interval` (a fixed
//! duration, or a range `0.5s..1.5s` drawn uniformly per gap), over one
//! keep-alive connection for as long as the server keeps it. Each request
//! line shows its time offset, method and target, status, latency,
//! response head and body bytes, the request's count on its connection
//! against the server's limit (`2/3`; `2/?` when the server advertises no
//! `max`) and the `Keep-Alive` parameters the response advertised.
//!
//! **A passive observer.** The requests go through the sans-I/O engine
//! `tether_proto::h1::client::ClientConnection` over a plain
//! `tokio::net::TcpStream` or TLS over one (not the pooled client, which retires
//! connections on its own judgement). The engine frames responses and
//! counts bytes (heads and chunk framing against bodies); it never decides
//! when the connection ends, the server does:
//! - it is given one fixed instant as its clock, so its own idle-timeout
//!   retirement (a margin before the advertised `timeout`, a client-side
//!   prediction) never fires: trace keeps using a connection the server has
//!   not closed, which is how it finds out whether the server honours what
//!   it advertised;
//! - when the engine retires for a reason of its own (`max` counted out
//!   while the server neither said `Connection: close` nor closed), a fresh
//!   engine takes over the same socket;
//! - after a response that says the connection ends (`Connection: close`,
//!   or HTTP/1.0 without `keep-alive`), trace waits (up to `--timeout`) for
//!   the server to close, and says so if it does not.
//!
//! **Idle gaps.** Between requests the socket is read with the end of the
//! gap as the deadline, so a close (FIN) or a reset during the gap is
//! timestamped when it happens ("server closed connection #1 (FIN) after
//! idle 1.00 s"). Bytes that arrive with no request in flight (some servers
//! send `408` before an idle close) are shown, not parsed.
//!
//! **Why the server closed** (the most likely cause, from what was seen):
//! - `max`: the last response's count reached the advertised `max` (whether
//!   the server advertises the limit, `max=3` each time, or what is left,
//!   `max=3, 2, 1`: the latter is recognised from the second response on);
//! - `connection_close`: the last response said the connection ends, and
//!   no limit explains it;
//! - `idle_timeout`: a close while idle with no other cause, with the
//!   advertised `timeout` (and a note when the close came well before it)
//!   or, with none advertised, the observed idle time;
//! - `unannounced`: closed within 10 ms of a response that did not say
//!   so, with no `timeout` advertised (a close decided with the response,
//!   not an idle timeout);
//! - `reset`: the connection was reset (ECONNRESET) rather than closed;
//! - `stale`: the server closed (or reset) with a request written and not a
//!   byte of its response received: the request is shown as lost ("request
//!   lost: server closed the connection (stale)"), counted, and sent once
//!   more on a new connection;
//! - `end_of_body`: a response without a length, delimited by the close;
//! - and trace's own ends: `truncated`, `bad_response`, `response_timeout`,
//!   `close_ignored` (`Connection: close` not followed by a close within
//!   `--timeout`), `trace_finished` (the connection still open at the end;
//!   `--linger D` first waits up to D for the server to close it, to
//!   observe an idle timeout after the last request).
//!
//! The next request after a close opens a new connection, shown as
//! "connection #2".
//!
//! # `ws://` URLs
//!
//! TCP connect, the upgrade handshake (request and response head sizes,
//! the status, the agreed subprotocol (`--subprotocol`, repeatable) and
//! extensions; compression is never offered, so payload sizes are what the
//! application sent), then `--requests N` text messages (`--message`, `{n}`
//! replaced by the message number, default `ping {n}`) one every
//! `--interval`, listening for server frames the whole time and for one
//! more interval after the last message; then the close handshake (code
//! 1000 from trace, unless the server closed first) and the TCP close.
//! Here too the sans-I/O engine (`tether_proto::ws::WsConnection`) runs the
//! protocol (masking, automatic pongs, the close handshake) while trace
//! owns the socket, so that every frame is seen as it crosses the wire:
//! both directions' bytes are scanned with the engine's header decoder,
//! and each frame is printed with its exact header size: 2 bytes, plus 2
//! for a payload of 126 to 65,535 bytes or 8 beyond, plus the 4-byte
//! masking key on client frames (so a short client message has a 6-byte
//! header and the server's echo a 2-byte one).
//!
//! # `https://` and `wss://` URLs
//!
//! The same, through TLS (rustls, `tether::client::tls`): after the TCP
//! connect, a line for the handshake with its time, the negotiated version
//! and cipher suite, the protocol the server chose in ALPN (`http/1.1` is
//! offered) and the server name sent (the URL's host). The server's
//! certificate must chain to the system's roots, or to `--ca-file`'s. Byte
//! counts stay those of HTTP and WebSocket (TLS records are not counted).
//! A `close_notify` reads as the server's close (FIN), and so does a TCP
//! close without one; a TLS alert or reset as a reset.
//!
//! # Output
//!
//! One event a line, with its offset from the start in milliseconds, then
//! a summary block (connections, requests, closes by cause, bytes in and
//! out: heads against bodies, or frame headers against payloads). ANSI
//! colour when stdout is a terminal (`--color auto|always|never`).
//! `--json` prints one JSON document instead: `url`, `protocol`, `events`
//! (each with `t_ms`, `kind` and its fields) and `summary`.
//!
//! Every connect, read and write waits at most `--timeout`, and every loop
//! is bounded by a count or a deadline.

mod http;
mod render;
mod ws;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use tether::client::{ClientStream, TlsConnector, TlsOptions};
use tokio::net::TcpStream;

use crate::config::parse_duration;
use render::Recorder;

/// `tether trace URL …`
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// `http[s]://host[:port]/path` or `ws[s]://host[:port]/path`.
    url: String,
    /// Requests to send (WebSocket: text messages).
    #[arg(long, short = 'n', default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    requests: u32,
    /// Pause between requests: a duration (`1s`, `250ms`) or a range
    /// (`0.5s..1.5s`, drawn uniformly for each gap).
    #[arg(long, short = 'i', default_value = "1s", value_parser = parse_interval)]
    interval: Interval,
    /// Send HTTP/1.0 requests with `Connection: keep-alive`.
    #[arg(long = "http1.0")]
    http10: bool,
    /// After the last response, keep the connection idle up to this long to
    /// see whether and when the server closes it (0: close at once).
    #[arg(long, default_value = "0s", value_parser = parse_linger)]
    linger: Duration,
    /// Longest wait for a connect, a response or a close.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// WebSocket: the text of each message; n in braces becomes its number.
    #[arg(long, default_value = "ping {n}")]
    message: String,
    /// WebSocket: a subprotocol to offer (repeatable).
    #[arg(long)]
    subprotocol: Vec<String>,
    /// Colour the timeline: `auto` when stdout is a terminal.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
    /// Print one JSON document (events and summary) instead of the timeline.
    #[arg(long)]
    json: bool,
    /// `https://`, `wss://`: trust the CA certificates of this PEM file
    /// instead of the system's roots.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// The pause between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Fixed(Duration),
    /// Uniform in `[low, high]`.
    Range(Duration, Duration),
}

impl Interval {
    /// The next gap.
    fn draw(&self) -> Duration {
        match *self {
            Interval::Fixed(d) => d,
            Interval::Range(low, high) => {
                let span = (high - low).as_secs_f64();
                low + Duration::from_secs_f64(span * rand::random::<f64>())
            }
        }
    }

    fn describe(&self) -> String {
        match *self {
            Interval::Fixed(d) => render::duration(d),
            Interval::Range(a, b) => format!("{}..{}", render::duration(a), render::duration(b)),
        }
    }
}

/// `1s`, `250ms`, or `LOW..HIGH`; zero is allowed (back to back).
fn parse_interval(input: &str) -> Result<Interval, String> {
    let one = |s: &str| -> Result<Duration, String> {
        if s.trim().parse::<f64>().is_ok_and(|v| v == 0.0) || s.trim() == "0ms" || s.trim() == "0s" {
            return Ok(Duration::ZERO);
        }
        parse_duration(s).map_err(|e| e.to_string())
    };
    match input.split_once("..") {
        None => Ok(Interval::Fixed(one(input)?)),
        Some((low, high)) => {
            let (low, high) = (one(low)?, one(high)?);
            if low > high {
                return Err(format!("invalid interval {input:?}: the low end is above the high end"));
            }
            Ok(Interval::Range(low, high))
        }
    }
}

fn parse_linger(input: &str) -> Result<Duration, String> {
    match parse_interval(input)? {
        Interval::Fixed(d) => Ok(d),
        Interval::Range(..) => Err(format!("invalid value {input:?}: one duration, not a range")),
    }
}

/// The parts of the URL each step needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    websocket: bool,
    /// `https://` or `wss://`.
    tls: bool,
    /// The host as TLS names it (no IPv6 brackets).
    server_name: String,
    /// `host:port` to connect to (brackets kept for IPv6).
    connect: String,
    /// The `Host` field: the authority as written.
    host_header: String,
    /// Origin-form request target (`/path?query`).
    path: String,
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Target> {
        let uri: ::http::Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL (expected http[s]://HOST[:PORT]/PATH or ws[s]://…)"))?;
        let (websocket, tls) = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http") => (false, false),
            Some("https") => (false, true),
            Some("ws") => (true, false),
            Some("wss") => (true, true),
            _ => bail!("{url:?}: expected an http://, https://, ws:// or wss:// URL"),
        };
        let authority = uri.authority().with_context(|| format!("{url:?}: no host"))?;
        if authority.as_str().contains('@') || authority.host().is_empty() {
            bail!("{url:?}: expected HOST[:PORT] without user information");
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = match uri.path_and_query().map(|pq| pq.as_str()) {
            Some(pq) if pq.starts_with('/') => pq.to_owned(),
            Some(pq) if !pq.is_empty() => format!("/{pq}"),
            _ => "/".to_owned(),
        };
        Ok(Target {
            websocket,
            tls,
            server_name: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            connect: format!("{}:{port}", authority.host()),
            host_header: authority.as_str().to_owned(),
            path,
        })
    }
}

/// Runs `tether trace`.
pub fn run(args: TraceArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let target = Target::parse(&args.url)?;
    let color = match args.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let mut rec = Recorder::new(Instant::now(), !args.json, color);
    rec.header(&args.url, &describe_run(&args, &target));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let outcome = if target.websocket {
        rt.block_on(ws::trace(&args, &target, &mut rec))
    } else {
        rt.block_on(http::trace(&args, &target, &mut rec))
    };
    if let Err(e) = &outcome {
        rec.error(None, format!("{e:#}"));
    }
    rec.finish(&args.url, if target.websocket { "websocket" } else { "http" })?;
    outcome
}

fn describe_run(args: &TraceArgs, target: &Target) -> String {
    let n = args.requests;
    let every = args.interval.describe();
    if target.websocket {
        format!("{n} message{}, interval {every}", if n == 1 { "" } else { "s" })
    } else {
        let version = if args.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        format!(
            "{n} {version} request{}, interval {every}",
            if n == 1 { "" } else { "s" }
        )
    }
}

/// Opens a TCP connection within `timeout`; returns it with both addresses.
async fn connect(target: &Target, timeout: Duration) -> anyhow::Result<(TcpStream, SocketAddr, SocketAddr)> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(&target.connect))
        .await
        .map_err(|_| anyhow::anyhow!("connect to {}: timed out after {timeout:?}", target.connect))?
        .with_context(|| format!("connect to {}", target.connect))?;
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().context("peer address")?;
    let local = stream.local_addr().context("local address")?;
    Ok((stream, peer, local))
}

/// For a TLS target, the handshake on `tcp` (within `timeout`), shown as
/// its own line; otherwise `tcp` as it is.
async fn secure(
    args: &TraceArgs,
    target: &Target,
    conn: u32,
    tcp: TcpStream,
    rec: &mut Recorder,
) -> anyhow::Result<ClientStream> {
    if !target.tls {
        return Ok(ClientStream::Tcp(tcp));
    }
    let connector = TlsConnector::new(&TlsOptions {
        ca_file: args.ca_file.clone(),
        config: None,
    })
    .context("setting up TLS")?;
    let began = Instant::now();
    let (stream, info) = tokio::time::timeout(args.timeout, connector.connect(&target.server_name, tcp))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "TLS handshake with {}: timed out after {:?}",
                target.connect,
                args.timeout
            )
        })?
        .with_context(|| format!("TLS handshake with {}", target.connect))?;
    rec.emit(
        began,
        render::Event::Tls {
            conn,
            version: info.version,
            cipher_suite: info.cipher_suite,
            alpn: info.alpn,
            server_name: info.server_name,
            handshake_ms: info.handshake.as_micros() as f64 / 1000.0,
        },
    );
    Ok(ClientStream::Tls(Box::new(stream)))
}

/// A read that takes a TLS peer's TCP close without `close_notify` as the
/// end of the stream, as a plain FIN.
async fn read_some(stream: &mut ClientStream, buf: &mut [u8]) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    match stream.read(buf).await {
        Err(e) if tether::client::tls::is_unclean_eof(&e) => Ok(0),
        other => other,
    }
}

/// Milliseconds between two instants, to the microsecond.
fn ms_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_micros() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_targets() {
        assert_eq!(parse_interval("1s"), Ok(Interval::Fixed(Duration::from_secs(1))));
        assert_eq!(parse_interval("0"), Ok(Interval::Fixed(Duration::ZERO)));
        assert_eq!(
            parse_interval("0.5s..1.5s"),
            Ok(Interval::Range(Duration::from_millis(500), Duration::from_millis(1500)))
        );
        assert!(parse_interval("2s..1s").is_err());
        assert!(parse_interval("soon").is_err());
        let r = Interval::Range(Duration::from_millis(500), Duration::from_millis(600));
        for _ in 0..100 {
            let d = r.draw();
            assert!(
                d >= Duration::from_millis(500) && d <= Duration::from_millis(600),
                "{d:?}"
            );
        }
        let t = Target::parse("http://127.0.0.1:8080/healthz?x=1").unwrap();
        assert_eq!(
            (t.websocket, t.connect.as_str(), t.host_header.as_str(), t.path.as_str()),
            (false, "127.0.0.1:8080", "127.0.0.1:8080", "/healthz?x=1")
        );
        let t = Target::parse("ws://[::1]/echo").unwrap();
        assert_eq!((t.websocket, t.connect.as_str()), (true, "[::1]:80"));
        assert_eq!(Target::parse("http://example.test").unwrap().path, "/");
        let t = Target::parse("https://example.test/").unwrap();
        assert_eq!(
            (t.websocket, t.tls, t.connect.as_str()),
            (false, true, "example.test:443")
        );
        let t = Target::parse("wss://[::1]:8443/chat").unwrap();
        assert_eq!((t.websocket, t.tls, t.server_name.as_str()), (true, true, "::1"));
        assert!(Target::parse("ftp://example.test/").is_err());
        assert!(Target::parse("http://u@example.test/").is_err());
    }
}
