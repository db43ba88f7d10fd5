//! `tether bench http`: keep-alive request load over raw TCP, or TLS for
//! an `https://` URL (see [`super::connect`]).
//!
//! Each connection writes a batch of `--pipeline` requests in one write
//! (the batch is encoded once for the whole run), then reads until that
//! many responses have arrived, framing each by `Content-Length`, and
//! repeats until the deadline or `--requests`. Latency is measured per
//! response from the write of its batch. A response with `Connection:
//! close` (or an early EOF) makes the connection reconnect; non-2xx
//! statuses count as errors.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;
use tether::client::ClientStream;

use super::report::{emit, Latency};
use super::{
    connect, is_permanent, read_some, run_with_progress, send, source_addr, thread_count, CommonArgs, Progress, Target,
};
use crate::config::parse_duration;

#[derive(Debug, Args)]
pub struct HttpArgs {
    /// The URL to request, e.g. http://127.0.0.1:8080/healthz or
    /// https://localhost:8443/healthz.
    #[arg(long)]
    url: String,
    /// Concurrent keep-alive connections.
    #[arg(long, short = 'c', default_value_t = 64)]
    connections: usize,
    /// Requests written back to back per connection before reading the responses.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// How long to run.
    #[arg(long, short = 'd', default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many requests in total (0: no limit).
    #[arg(long, default_value_t = 0)]
    requests: u64,
    /// Request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Request body (sent with Content-Length; e.g. for POST /echo).
    #[arg(long)]
    body: Option<String>,
    /// Exit 0 even when responses were not 2xx (by default any non-2xx
    /// response or failed request makes the run fail).
    #[arg(long)]
    allow_non_2xx: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Default)]
struct Stats {
    latency: Latency,
    responses: u64,
    non_2xx: u64,
    errors: u64,
    reconnects: u64,
    bytes_read: u64,
    first_error: Option<String>,
}

struct Shared {
    target: Target,
    batch: Vec<u8>,
    one: usize,
    depth: usize,
    deadline: Instant,
    timeout: Duration,
    spread: bool,
    /// Requests still allowed to be sent (`i64::MAX` when unlimited).
    budget: AtomicI64,
    progress: Progress,
}

pub fn run(a: HttpArgs) -> anyhow::Result<()> {
    let target = a.common.target(&a.url)?;
    if target.websocket {
        bail!("tether bench http needs an http:// or https:// URL");
    }
    if a.connections == 0 || a.pipeline == 0 {
        bail!("--connections and --pipeline must be at least 1");
    }
    let mut one = format!("{} {} HTTP/1.1\r\nHost: {}\r\n", a.method, target.path, target.host).into_bytes();
    if let Some(body) = &a.body {
        one.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        one.extend_from_slice(body.as_bytes());
    } else {
        one.extend_from_slice(b"\r\n");
    }
    let batch = one.repeat(a.pipeline);
    let threads = thread_count(a.common.threads, a.connections);
    let start = Instant::now();
    let shared = Arc::new(Shared {
        one: one.len(),
        target,
        batch,
        depth: a.pipeline,
        deadline: start + a.duration,
        timeout: a.common.timeout,
        spread: !a.common.no_spread,
        budget: AtomicI64::new(if a.requests == 0 { i64::MAX } else { a.requests as i64 }),
        progress: Progress {
            quiet: a.common.quiet || a.common.json,
            ..Progress::default()
        },
    });
    let s2 = shared.clone();
    let (per_thread, ended) = run_with_progress(
        threads,
        a.connections,
        &shared.progress,
        a.duration,
        "requests",
        move |_, conns| {
            let shared = s2.clone();
            async move {
                let stats = Rc::new(RefCell::new(Stats::default()));
                let mut tasks = Vec::with_capacity(conns.len());
                for i in conns {
                    tasks.push(tokio::task::spawn_local(conn_loop(shared.clone(), i, stats.clone())));
                }
                for t in tasks {
                    let _ = t.await;
                }
                Rc::try_unwrap(stats).ok().expect("all tasks done").into_inner()
            }
        },
    )?;
    let elapsed = ended.duration_since(start);

    let mut total = Stats::default();
    for s in &per_thread {
        total.latency.merge(&s.latency);
        total.responses += s.responses;
        total.non_2xx += s.non_2xx;
        total.errors += s.errors;
        total.reconnects += s.reconnects;
        total.bytes_read += s.bytes_read;
        if total.first_error.is_none() {
            total.first_error = s.first_error.clone();
        }
    }
    let secs = elapsed.as_secs_f64();
    let rps = total.responses as f64 / secs;
    let value = json!({
        "mode": "http",
        "url": a.url,
        "connections": a.connections,
        "pipeline": a.pipeline,
        "threads": threads,
        "duration_s": secs,
        "requests": total.responses,
        "requests_per_s": rps.round(),
        "non_2xx": total.non_2xx,
        "errors": total.errors,
        "reconnects": total.reconnects,
        "bytes_read": total.bytes_read,
        "first_error": total.first_error,
        "latency": total.latency.json(),
    });
    let mut text = format!(
        "{} connections, pipeline {}, {:.2}s, {} threads\n  {} requests, {:.0} req/s, {:.1} MB/s read\n  latency {}\n",
        a.connections,
        a.pipeline,
        secs,
        threads,
        total.responses,
        rps,
        total.bytes_read as f64 / secs / 1e6,
        total.latency.line()
    );
    if total.non_2xx + total.errors + total.reconnects > 0 {
        text += &format!(
            "  non-2xx {}  errors {}  reconnects {}\n",
            total.non_2xx, total.errors, total.reconnects
        );
    }
    if let Some(e) = &total.first_error {
        text += &format!("  first error: {e}\n");
    }
    emit(a.common.json, &value, &text);
    if total.responses == 0 {
        bail!(
            "no response received{}",
            total.first_error.map(|e| format!(": {e}")).unwrap_or_default()
        );
    }
    if total.errors > 0 {
        bail!("{} requests failed", total.errors);
    }
    if total.non_2xx > 0 && !a.allow_non_2xx {
        bail!(
            "{} of {} responses were not 2xx (--allow-non-2xx accepts them)",
            total.non_2xx,
            total.responses
        );
    }
    Ok(())
}

/// Keeps one connection busy until the deadline, reconnecting when the
/// server closes it.
async fn conn_loop(shared: Arc<Shared>, index: usize, stats: Rc<RefCell<Stats>>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut connects = 0u64;
    while Instant::now() < shared.deadline {
        if connects > 0 {
            stats.borrow_mut().reconnects += 1;
        }
        connects += 1;
        let src = source_addr(shared.target.addr, index + connects as usize * 7919, shared.spread);
        let result = match connect(&shared.target, src, shared.timeout).await {
            Ok(stream) => run_conn(&shared, stream, &mut buf, &stats).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(Next::Reconnect) => continue,
            Ok(Next::Done) => return,
            Err(e) => {
                {
                    let mut s = stats.borrow_mut();
                    s.errors += 1;
                    s.first_error.get_or_insert_with(|| format!("{e:#}"));
                }
                shared.progress.errors.fetch_add(1, Ordering::Relaxed);
                if is_permanent(&e) {
                    // An untrusted certificate stays untrusted.
                    return;
                }
                // Do not spin on a refusing server.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

enum Next {
    Reconnect,
    Done,
}

async fn run_conn(
    shared: &Shared,
    mut stream: ClientStream,
    buf: &mut [u8],
    stats: &Rc<RefCell<Stats>>,
) -> anyhow::Result<Next> {
    let (mut start, mut end) = (0usize, 0usize);
    loop {
        if Instant::now() >= shared.deadline {
            return Ok(Next::Done);
        }
        let n = take_budget(&shared.budget, shared.depth);
        if n == 0 {
            return Ok(Next::Done);
        }
        let t0 = Instant::now();
        send(&mut stream, &shared.batch[..n * shared.one], shared.timeout).await?;
        let mut got = 0;
        let mut close = false;
        while got < n {
            match parse_response(&buf[start..end])? {
                Some(r) => {
                    start += r.len;
                    got += 1;
                    let mut s = stats.borrow_mut();
                    s.latency.record(t0.elapsed());
                    s.responses += 1;
                    s.bytes_read += r.len as u64;
                    if !(200..300).contains(&r.status) {
                        s.non_2xx += 1;
                    }
                    if r.close {
                        close = true;
                        break;
                    }
                }
                None => {
                    if start > 0 {
                        buf.copy_within(start..end, 0);
                        end -= start;
                        start = 0;
                    }
                    if end == buf.len() {
                        bail!("response larger than {} bytes", buf.len());
                    }
                    let read = tokio::time::timeout(shared.timeout, read_some(&mut stream, &mut buf[end..]))
                        .await
                        .context("read timed out")?
                        .context("read")?;
                    if read == 0 {
                        if got > 0 || start == end {
                            // Closed between responses: the server's choice.
                            shared.progress.add(got as u64);
                            return Ok(Next::Reconnect);
                        }
                        bail!("connection closed mid-response");
                    }
                    end += read;
                }
            }
        }
        shared.progress.add(got as u64);
        if close {
            return Ok(Next::Reconnect);
        }
    }
}

/// Takes up to `want` requests from the shared budget.
fn take_budget(budget: &AtomicI64, want: usize) -> usize {
    let want = want as i64;
    let before = budget.fetch_sub(want, Ordering::Relaxed);
    before.clamp(0, want) as usize
}

pub(super) struct Response {
    pub len: usize,
    pub status: u16,
    pub close: bool,
}

/// Frames one response at the start of `buf`: `None` until its head and
/// whole body are there. Bodies must be `Content-Length` framed.
pub(super) fn parse_response(buf: &[u8]) -> anyhow::Result<Option<Response>> {
    let Some(head_end) = find_head_end(buf) else {
        return Ok(None);
    };
    let head = &buf[..head_end];
    if head.len() < 12 || !head.starts_with(b"HTTP/1.") {
        bail!(
            "not an HTTP/1.x response: {:?}",
            String::from_utf8_lossy(&head[..head.len().min(40)])
        );
    }
    let status = parse_u64(&head[9..12]).context("bad status code")? as u16;
    let mut length = 0u64;
    let mut close = false;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            length = parse_u64(value).context("bad Content-Length")?;
        } else if name.eq_ignore_ascii_case(b"connection") {
            close = value.eq_ignore_ascii_case(b"close");
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            bail!("chunked responses are not supported by tether bench http");
        }
    }
    if (100..200).contains(&status) || status == 204 || status == 304 {
        length = 0;
    }
    let len = head_end + length as usize;
    Ok((buf.len() >= len).then_some(Response { len, status, close }))
}

/// The index just past `\r\n\r\n`.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 3;
    while i < buf.len() {
        if buf[i] == b'\n' && buf[i - 1] == b'\r' && buf[i - 2] == b'\n' && buf[i - 3] == b'\r' {
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

fn trim(v: &[u8]) -> &[u8] {
    let s = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let e = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(s, |e| e + 1);
    &v[s..e]
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_responses_by_content_length() {
        let one = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nDate: x\r\n\r\nok";
        let mut two = one.to_vec();
        two.extend_from_slice(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        let r = parse_response(&two).unwrap().unwrap();
        assert_eq!((r.len, r.status, r.close), (one.len(), 200, false));
        let r = parse_response(&two[one.len()..]).unwrap().unwrap();
        assert_eq!((r.status, r.close), (404, true));
        assert!(parse_response(&one[..one.len() - 1]).unwrap().is_none());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
    }

    #[test]
    fn budget_runs_out_exactly() {
        let b = AtomicI64::new(5);
        assert_eq!(take_budget(&b, 4), 4);
        assert_eq!(take_budget(&b, 4), 1);
        assert_eq!(take_budget(&b, 4), 0);
    }
}
