//! `tether bench idle`: many idle connections, held, then checked.
//!
//! Phase 1 opens `--connections` connections (at most
//! `--connect-concurrency` connecting at once), from source addresses
//! spread over 127.0.0.0/8 for a loopback target. A keep-alive connection
//! is opened by one request answered `200` (so the server holds it as an
//! idle keep-alive connection, not a fresh one); a WebSocket by its
//! handshake.
//!
//! Then either:
//! - (default) every connection sits idle for `--hold`; afterwards each
//!   proves it is alive: another request answered `200`, or a Ping answered
//!   with a Pong. The result is alive/total.
//! - `--expect-close T`: each connection waits (at most T + `--hold`) for
//!   the server to close it and records how long after its last response
//!   that happened; the result is the distribution of close times relative
//!   to T.
//!
//! `--server-pid PID` samples the server's `VmRSS` before connecting and
//! while all connections are open, and reports the difference per
//! connection. Over `https://` / `wss://` each connection is a TLS session
//! held idle (the handshake done, one request or the upgrade answered),
//! so the figure is the server's memory per idle TLS connection, rustls's
//! state included (what `scripts/bench-tls` compares with nginx). A run
//! where no connection opened (an untrusted certificate, say) does not
//! hold and fails.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::json;
use tether::client::ClientStream;
use tokio::io::{AsyncRead, AsyncWrite};

use super::http::parse_response;
use super::procfs::Proc;
use super::report::{emit, fmt_us, Latency};
use super::{connect, on_threads, read_some, send, source_addr, thread_count, ws, CommonArgs, Progress, Target};
use crate::config::parse_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Keep-alive connections (a request, then idle).
    Http,
    /// WebSocket connections (a handshake, then idle).
    Ws,
}

#[derive(Debug, Args)]
pub struct IdleArgs {
    /// The URL: http://…/healthz for keep-alive, ws://…/echo for WebSocket
    /// (https://, wss://: the same over TLS).
    #[arg(long)]
    url: String,
    /// Connections to open and hold.
    #[arg(long, short = 'c', default_value_t = 1000)]
    connections: usize,
    /// Connection kind (default: from the URL's scheme).
    #[arg(long, value_enum)]
    kind: Option<Kind>,
    /// How long to hold the connections idle before checking them (with
    /// --expect-close: how long past T to keep waiting for the close).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    hold: Duration,
    /// Expect the server to close every keep-alive connection after this
    /// idle time, and measure when it does.
    #[arg(long, value_parser = parse_duration)]
    expect_close: Option<Duration>,
    /// Most connections being opened at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Sample this process's resident memory (the server's) before and
    /// with all connections open.
    #[arg(long)]
    server_pid: Option<u32>,
    #[command(flatten)]
    common: CommonArgs,
}

struct Stats {
    connected: u64,
    connect_errors: u64,
    alive: u64,
    dead: u64,
    closed: u64,
    not_closed: u64,
    /// Close time after the last response, µs.
    close_after: Latency,
    first_error: Option<String>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            connected: 0,
            connect_errors: 0,
            alive: 0,
            dead: 0,
            closed: 0,
            not_closed: 0,
            close_after: Latency::precise(),
            first_error: None,
        }
    }
}

struct Shared {
    target: Target,
    kind: Kind,
    request: Vec<u8>,
    timeout: Duration,
    spread: bool,
    expect_close: Option<Duration>,
    hold: Duration,
    progress: Progress,
}

pub fn run(a: IdleArgs) -> anyhow::Result<()> {
    let mut target = a.common.target(&a.url)?;
    let kind = a.kind.unwrap_or(if target.websocket { Kind::Ws } else { Kind::Http });
    target.websocket = kind == Kind::Ws;
    if a.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if a.expect_close.is_some() && kind == Kind::Ws {
        bail!("--expect-close applies to keep-alive connections (--kind http)");
    }
    let request = format!("GET {} HTTP/1.1\r\nHost: {}\r\n\r\n", target.path, target.host).into_bytes();
    let threads = thread_count(a.common.threads, a.connections);
    let rss_before = a.server_pid.map(|p| Proc::Pid(p).rss_kib()).transpose()?;
    let shared = Arc::new(Shared {
        target,
        kind,
        request,
        timeout: a.common.timeout,
        spread: !a.common.no_spread,
        expect_close: a.expect_close,
        hold: a.hold,
        progress: Progress {
            quiet: a.common.quiet || a.common.json,
            ..Progress::default()
        },
    });
    let (verify_tx, verify_rx) = tokio::sync::watch::channel(false);
    let finished = Arc::new(AtomicU64::new(0));
    let per_thread_concurrency = (a.connect_concurrency / threads).max(1);
    let start = Instant::now();
    let (s2, f2) = (shared.clone(), finished.clone());
    let runner = std::thread::spawn(move || {
        let r = on_threads(threads, a.connections, move |_, conns| {
            let shared = s2.clone();
            let verify = verify_rx.clone();
            async move {
                let stats = Rc::new(RefCell::new(Stats::default()));
                let sem = Rc::new(tokio::sync::Semaphore::new(per_thread_concurrency));
                let mut tasks = Vec::with_capacity(conns.len());
                for i in conns {
                    let (sh, st, sem, v) = (shared.clone(), stats.clone(), sem.clone(), verify.clone());
                    tasks.push(tokio::task::spawn_local(async move {
                        if let Err(e) = idle_conn(&sh, i, &sem, v, &st).await {
                            st.borrow_mut().first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
                Rc::try_unwrap(stats).ok().expect("all tasks done").into_inner()
            }
        });
        f2.store(1, Ordering::Release);
        r
    });

    // Phase 1: wait until every connection is open or has failed.
    let total = a.connections as u64;
    let progress = &shared.progress;
    while progress.done.load(Ordering::Relaxed) + progress.errors.load(Ordering::Relaxed) < total
        && finished.load(Ordering::Acquire) == 0
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let connect_time = start.elapsed();
    let open = progress.done.load(Ordering::Relaxed);
    eprintln!(
        "idle: {open}/{total} connections open in {:.2}s; {}",
        connect_time.as_secs_f64(),
        match a.expect_close {
            Some(t) => format!("waiting for the server to close them (expected after {t:?})"),
            None => format!("holding {:?}", a.hold),
        }
    );
    // Nothing to hold when no connection opened (e.g. an untrusted certificate).
    let rss_open = if a.expect_close.is_none() && open > 0 {
        let hold_end = Instant::now() + a.hold;
        let ticker = Progress::default();
        super::show_progress(&ticker, a.hold, "held", || {
            Instant::now() + Duration::from_millis(300) >= hold_end || finished.load(Ordering::Acquire) == 1
        });
        if let Some(left) = hold_end.checked_duration_since(Instant::now()) {
            std::thread::sleep(left.saturating_sub(Duration::from_millis(100)));
        }
        let rss = a.server_pid.map(|p| Proc::Pid(p).rss_kib()).transpose()?;
        let _ = verify_tx.send(true);
        rss
    } else {
        a.server_pid.map(|p| Proc::Pid(p).rss_kib()).transpose()?
    };
    let per_thread = runner.join().map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    drop(verify_tx);

    let mut s = Stats::default();
    for t in &per_thread {
        s.connected += t.connected;
        s.connect_errors += t.connect_errors;
        s.alive += t.alive;
        s.dead += t.dead;
        s.closed += t.closed;
        s.not_closed += t.not_closed;
        s.close_after.merge(&t.close_after);
        if s.first_error.is_none() {
            s.first_error = t.first_error.clone();
        }
    }
    let rss_per_conn = match (rss_before, rss_open) {
        (Some(b), Some(o)) if s.connected > 0 => Some((o as f64 - b as f64) * 1024.0 / s.connected as f64),
        _ => None,
    };
    let mut value = json!({
        "mode": "idle",
        "kind": match kind { Kind::Http => "http", Kind::Ws => "ws" },
        "url": a.url,
        "connections": a.connections,
        "connected": s.connected,
        "connect_errors": s.connect_errors,
        "connect_s": connect_time.as_secs_f64(),
        "threads": threads,
        "first_error": s.first_error,
        "server_rss_before_kib": rss_before,
        "server_rss_open_kib": rss_open,
        "server_rss_per_connection_bytes": rss_per_conn.map(|b| b.round()),
    });
    let mut text = format!(
        "{} {} connections: {} open ({} failed) in {:.2}s\n",
        a.connections,
        match kind {
            Kind::Http => "keep-alive",
            Kind::Ws => "WebSocket",
        },
        s.connected,
        s.connect_errors,
        connect_time.as_secs_f64()
    );
    if let (Some(b), Some(o), Some(per)) = (rss_before, rss_open, rss_per_conn) {
        text += &format!("  server RSS {b} KiB -> {o} KiB: {per:.0} bytes per connection\n");
    }
    let mut ok = s.connected == a.connections as u64;
    match a.expect_close {
        None => {
            value["hold_s"] = json!(a.hold.as_secs_f64());
            value["alive"] = json!(s.alive);
            value["dead"] = json!(s.dead);
            text += &format!("  after {:?} idle: {}/{} alive\n", a.hold, s.alive, a.connections);
            ok &= s.alive == a.connections as u64;
        }
        Some(t) => {
            let h = &s.close_after.0;
            let t_us = t.as_micros() as i64;
            let rel = |q: f64| h.value_at_quantile(q) as i64 - t_us;
            value["expect_close_s"] = json!(t.as_secs_f64());
            value["closed"] = json!(s.closed);
            value["not_closed"] = json!(s.not_closed);
            value["close_after"] = s.close_after.json();
            value["close_minus_t_us"] = json!({
                "min": if h.is_empty() { 0 } else { h.min() as i64 - t_us },
                "p50": rel(0.5),
                "p99": rel(0.99),
                "p999": rel(0.999),
                "max": h.max() as i64 - t_us,
            });
            let signed = |v: i64| {
                if v < 0 {
                    format!("-{}", fmt_us(v.unsigned_abs()))
                } else {
                    format!("+{}", fmt_us(v as u64))
                }
            };
            text += &format!(
                "  closed by the server: {}/{} (not within T+{:?}: {})\n  close time - T: min {}  p50 {}  p99 {}  p99.9 {}  max {}\n",
                s.closed,
                a.connections,
                a.hold,
                s.not_closed,
                signed(if h.is_empty() { 0 } else { h.min() as i64 - t_us }),
                signed(rel(0.5)),
                signed(rel(0.99)),
                signed(rel(0.999)),
                signed(h.max() as i64 - t_us),
            );
            ok &= s.closed == a.connections as u64;
        }
    }
    if let Some(e) = &s.first_error {
        text += &format!("  first error: {e}\n");
    }
    value["ok"] = json!(ok);
    emit(a.common.json, &value, &text);
    if s.connected == 0 {
        bail!(
            "no connection opened{}",
            s.first_error.map(|e| format!(": {e}")).unwrap_or_default()
        );
    }
    Ok(())
}

async fn idle_conn(
    sh: &Shared,
    index: usize,
    sem: &tokio::sync::Semaphore,
    mut verify: tokio::sync::watch::Receiver<bool>,
    stats: &RefCell<Stats>,
) -> anyhow::Result<()> {
    let permit = sem.acquire().await.context("semaphore closed")?;
    let opened = open(sh, index).await;
    drop(permit);
    let (mut stream, leftover, t0) = match opened {
        Ok(o) => o,
        Err(e) => {
            stats.borrow_mut().connect_errors += 1;
            sh.progress.errors.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
    };
    stats.borrow_mut().connected += 1;
    sh.progress.add(1);

    if let Some(t) = sh.expect_close {
        let limit = t0 + t + sh.hold;
        let mut b = [0u8; 256];
        loop {
            match tokio::time::timeout_at(limit.into(), read_some(&mut stream, &mut b)).await {
                Err(_) => {
                    stats.borrow_mut().not_closed += 1;
                    return Ok(());
                }
                Ok(Ok(0)) | Ok(Err(_)) => {
                    let mut s = stats.borrow_mut();
                    s.closed += 1;
                    s.close_after.record(t0.elapsed());
                    return Ok(());
                }
                Ok(Ok(_)) => continue,
            }
        }
    }

    // Hold until the main thread says to check (bounded by hold + timeout).
    let _ = tokio::time::timeout(sh.hold + sh.timeout, verify.wait_for(|v| *v)).await;
    let check = match sh.kind {
        Kind::Http => request(&mut stream, &sh.request, sh.timeout).await.map(|_| ()),
        Kind::Ws => ws::ping_pong(&mut stream, &leftover, sh.timeout).await,
    };
    let mut s = stats.borrow_mut();
    match check {
        Ok(()) => s.alive += 1,
        Err(e) => {
            s.dead += 1;
            s.first_error.get_or_insert_with(|| format!("check: {e:#}"));
        }
    }
    Ok(())
}

/// Opens connection `index`: connect, then one request or the handshake.
/// Returns, with the stream, when the last request was sent: the server's
/// idle timer cannot have started before it (it starts when the response is
/// flushed), so a close measured from it is never early unless the server
/// closed early. (Measured from when this task read the response, as
/// before, 500 connections on one thread showed closes "11 ms early": the
/// task ran that much after the server's flush.)
async fn open(sh: &Shared, index: usize) -> anyhow::Result<(ClientStream, Vec<u8>, Instant)> {
    let src = source_addr(sh.target.addr, index, sh.spread);
    let mut stream = connect(&sh.target, src, sh.timeout).await?;
    let sent = Instant::now();
    let leftover = match sh.kind {
        Kind::Http => {
            request(&mut stream, &sh.request, sh.timeout).await?;
            Vec::new()
        }
        Kind::Ws => ws::handshake(&mut stream, &sh.target, sh.timeout).await?,
    };
    Ok((stream, leftover, sent))
}

/// Sends one request and reads its response, which must be `200` and keep
/// the connection open.
async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    req: &[u8],
    timeout: Duration,
) -> anyhow::Result<()> {
    send(stream, req, timeout).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        if let Some(r) = parse_response(&buf)? {
            if r.status != 200 {
                bail!("status {}", r.status);
            }
            if r.close {
                bail!("the server closes the connection (Connection: close)");
            }
            return Ok(());
        }
        if buf.len() > 64 * 1024 {
            bail!("response too large");
        }
        let n = tokio::time::timeout_at(deadline, read_some(stream, &mut chunk))
            .await
            .context("response timed out")?
            .context("read")?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
