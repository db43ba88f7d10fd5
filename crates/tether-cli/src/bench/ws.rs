//! A minimal WebSocket client for load (RFC 6455, client side only) and
//! `tether bench ws-echo`.
//!
//! The client does exactly what a load generator needs: the opening
//! handshake with a random key (the `Sec-WebSocket-Accept` answer is
//! checked), masked frames encoded once and written many times, and a frame
//! reader that skips payload bytes without copying them. No extensions are
//! offered, so servers answer with plain frames.
//!
//! ws-echo: each connection keeps `--in-flight` binary messages of
//! `--size` bytes outstanding; every echoed message (counted when its final
//! frame ends) is timed from when it was queued and replaced by a new one,
//! until the deadline. One task per connection drives both directions,
//! polling the write and the read side of the one stream in the same poll
//! (`poll_write` until it would block, a flush once nothing is left to
//! write, `poll_read` until it would block), so a large echo never
//! deadlocks against our own unread input; this works alike on a plain
//! TCP stream and on TLS (`wss://`), where a flush is what pushes rustls's
//! last record out. The mask key is random per connection and reused for
//! its frames (a server cannot tell; it saves re-masking).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use clap::Args;
use serde_json::json;
use sha1::Digest;
use tether::client::ClientStream;
use tokio::io::{AsyncRead, AsyncWrite};

use super::report::{emit, Latency};
use super::{
    connect, parse_bytes, poll_read_some, read_some, run_with_progress, send, source_addr, thread_count, CommonArgs,
    Progress, Target,
};
use crate::config::parse_duration;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A small, fast, non-cryptographic random source (xorshift64*), seeded
/// from the clock and a counter: enough for handshake keys and mask keys.
pub fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            static SEQ: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
            (t ^ SEQ.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// Connects (through TLS for `wss://`) and performs the opening
/// handshake; returns the stream and any bytes the server sent after its
/// `101` head.
pub async fn open(
    target: &Target,
    source: Option<std::net::SocketAddr>,
    timeout: Duration,
) -> anyhow::Result<(ClientStream, Vec<u8>)> {
    let mut stream = connect(target, source, timeout).await?;
    let leftover = handshake(&mut stream, target, timeout).await?;
    Ok((stream, leftover))
}

/// The client side of the opening handshake on `stream`.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    target: &Target,
    timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&random_u64().to_le_bytes());
    raw[8..].copy_from_slice(&random_u64().to_le_bytes());
    let key = base64::engine::general_purpose::STANDARD.encode(raw);
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.path, target.host
    );
    send(stream, req.as_bytes(), timeout).await.context("handshake")?;
    let mut buf = Vec::with_capacity(512);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16 * 1024 {
            bail!("handshake response head too large");
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(timeout, read_some(stream, &mut chunk))
            .await
            .context("handshake read timed out")?
            .context("handshake read")?;
        if n == 0 {
            bail!("connection closed during the handshake");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("handshake response is not UTF-8")?;
    let status_line = head.lines().next().unwrap_or("");
    if !status_line.starts_with("HTTP/1.1 101") {
        bail!("handshake refused: {status_line:?}");
    }
    let mut sha = sha1::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let expected = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    let accept = head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case("sec-websocket-accept").then(|| v.trim())
    });
    if accept != Some(expected.as_str()) {
        bail!("bad Sec-WebSocket-Accept: {accept:?}");
    }
    Ok(buf[head_end..].to_vec())
}

/// One masked client frame (FIN set) carrying `payload`.
pub fn encode_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    f
}

/// A frame that has been read whole (its payload skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameEnd {
    pub opcode: u8,
    pub fin: bool,
    pub len: u64,
}

/// Reads frame boundaries out of a byte stream, skipping payloads.
#[derive(Default)]
pub struct FrameReader {
    hdr: [u8; 14],
    hdr_len: usize,
    remaining: u64,
    current: Option<FrameEnd>,
}

impl FrameReader {
    /// Consumes `data`, calling `f` at the end of every frame.
    pub fn feed(&mut self, mut data: &[u8], mut f: impl FnMut(FrameEnd)) -> anyhow::Result<()> {
        while !data.is_empty() {
            if let Some(cur) = self.current {
                let take = (self.remaining.min(data.len() as u64)) as usize;
                self.remaining -= take as u64;
                data = &data[take..];
                if self.remaining == 0 {
                    self.current = None;
                    f(cur);
                }
                continue;
            }
            self.hdr[self.hdr_len] = data[0];
            self.hdr_len += 1;
            data = &data[1..];
            if let Some((end, len)) = parse_header(&self.hdr[..self.hdr_len])? {
                self.hdr_len = 0;
                if len == 0 {
                    f(end);
                } else {
                    self.remaining = len;
                    self.current = Some(end);
                }
            }
        }
        Ok(())
    }
}

/// `Some` once `h` holds a whole frame header.
fn parse_header(h: &[u8]) -> anyhow::Result<Option<(FrameEnd, u64)>> {
    if h.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (h[0], h[1]);
    if b0 & 0x70 != 0 {
        bail!("server frame with RSV bits set (no extension was negotiated)");
    }
    let masked = b1 & 0x80 != 0;
    let (ext, len7) = match b1 & 0x7F {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let need = 2 + ext + if masked { 4 } else { 0 };
    if h.len() < need {
        return Ok(None);
    }
    let len = match (len7, ext) {
        (Some(n), _) => n,
        (None, 2) => u64::from(u16::from_be_bytes([h[2], h[3]])),
        _ => u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")),
    };
    let end = FrameEnd {
        opcode: b0 & 0x0F,
        fin: b0 & 0x80 != 0,
        len,
    };
    Ok(Some((end, len)))
}

/// Sends a ping on an open WebSocket and waits for its pong (data frames
/// in between are skipped). `leftover`: bytes already read after the
/// handshake.
pub async fn ping_pong<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    leftover: &[u8],
    timeout: Duration,
) -> anyhow::Result<()> {
    let mask = random_u64().to_le_bytes();
    let ping = encode_frame(OP_PING, b"tether", [mask[0], mask[1], mask[2], mask[3]]);
    send(stream, &ping, timeout).await.context("ping")?;
    let mut reader = FrameReader::default();
    let mut got = None;
    reader.feed(leftover, |f| {
        if f.opcode == OP_PONG || f.opcode == OP_CLOSE {
            got.get_or_insert(f.opcode);
        }
    })?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while got.is_none() {
        let n = tokio::time::timeout_at(deadline.into(), read_some(stream, &mut buf))
            .await
            .context("no pong in time")?
            .context("read")?;
        if n == 0 {
            bail!("connection closed");
        }
        reader.feed(&buf[..n], |f| {
            if f.opcode == OP_PONG || f.opcode == OP_CLOSE {
                got.get_or_insert(f.opcode);
            }
        })?;
    }
    if got == Some(OP_CLOSE) {
        bail!("server sent Close");
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct WsEchoArgs {
    /// The echo endpoint, e.g. ws://127.0.0.1:8080/echo or
    /// wss://localhost:8443/echo.
    #[arg(long)]
    url: String,
    /// Concurrent WebSocket connections.
    #[arg(long, short = 'c', default_value_t = 64)]
    connections: usize,
    /// Message size in bytes (K, M units allowed: 32, 1M).
    #[arg(long, default_value = "32", value_parser = parse_bytes)]
    size: u64,
    /// Messages outstanding per connection.
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// How long to run.
    #[arg(long, short = 'd', default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Default)]
struct Stats {
    latency: Latency,
    messages: u64,
    errors: u64,
    connected: u64,
    first_error: Option<String>,
}

struct Shared {
    target: Target,
    size: usize,
    in_flight: usize,
    deadline: Instant,
    timeout: Duration,
    spread: bool,
    progress: Progress,
}

pub fn run(a: WsEchoArgs) -> anyhow::Result<()> {
    let target = a.common.target(&a.url)?;
    if !target.websocket {
        bail!("tether bench ws-echo needs a ws:// or wss:// URL");
    }
    if a.connections == 0 || a.in_flight == 0 || a.size == 0 {
        bail!("--connections, --in-flight and --size must be at least 1");
    }
    let threads = thread_count(a.common.threads, a.connections);
    let start = Instant::now();
    let shared = Arc::new(Shared {
        target,
        size: usize::try_from(a.size).context("--size too large")?,
        in_flight: a.in_flight,
        deadline: start + a.duration,
        timeout: a.common.timeout,
        spread: !a.common.no_spread,
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
        "messages",
        move |_, conns| {
            let shared = s2.clone();
            async move {
                // One pre-masked run of frames per thread, shared by its connections.
                let mask = random_u64().to_le_bytes();
                let payload: Vec<u8> = (0..shared.size).map(|i| (i % 251) as u8).collect();
                let frame = encode_frame(OP_BINARY, &payload, [mask[0], mask[1], mask[2], mask[3]]);
                let copies = shared.in_flight.min((64 * 1024 / frame.len()).max(1));
                let rep: Rc<(Vec<u8>, usize)> = Rc::new((frame.repeat(copies), frame.len()));
                let stats = Rc::new(RefCell::new(Stats::default()));
                let mut tasks = Vec::with_capacity(conns.len());
                for i in conns {
                    let (sh, st, rep) = (shared.clone(), stats.clone(), rep.clone());
                    tasks.push(tokio::task::spawn_local(async move {
                        if let Err(e) = echo_conn(&sh, i, &rep, &st).await {
                            let mut s = st.borrow_mut();
                            s.errors += 1;
                            sh.progress.errors.fetch_add(1, Ordering::Relaxed);
                            s.first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
                Rc::try_unwrap(stats).ok().expect("all tasks done").into_inner()
            }
        },
    )?;
    let secs = ended.duration_since(start).as_secs_f64();
    let mut total = Stats::default();
    for s in &per_thread {
        total.latency.merge(&s.latency);
        total.messages += s.messages;
        total.errors += s.errors;
        total.connected += s.connected;
        if total.first_error.is_none() {
            total.first_error = s.first_error.clone();
        }
    }
    let mps = total.messages as f64 / secs;
    // Payload bytes echoed per second, one direction.
    let mbps = mps * a.size as f64 / 1e6;
    let value = json!({
        "mode": "ws-echo",
        "url": a.url,
        "connections": a.connections,
        "connected": total.connected,
        "size": a.size,
        "in_flight": a.in_flight,
        "threads": threads,
        "duration_s": secs,
        "messages": total.messages,
        "messages_per_s": mps.round(),
        "mb_per_s": (mbps * 10.0).round() / 10.0,
        "errors": total.errors,
        "first_error": total.first_error,
        "latency": total.latency.json(),
    });
    let mut text = format!(
        "{} connections ({} open), {} B messages, {} in flight, {:.2}s, {} threads\n  {} messages, {:.0} msg/s, {:.1} MB/s\n  latency {}\n",
        a.connections,
        total.connected,
        a.size,
        a.in_flight,
        secs,
        threads,
        total.messages,
        mps,
        mbps,
        total.latency.line()
    );
    if total.errors > 0 {
        text += &format!("  errors {}\n", total.errors);
    }
    if let Some(e) = &total.first_error {
        text += &format!("  first error: {e}\n");
    }
    emit(a.common.json, &value, &text);
    if total.messages == 0 {
        bail!(
            "no message echoed{}",
            total.first_error.map(|e| format!(": {e}")).unwrap_or_default()
        );
    }
    if total.errors > 0 {
        bail!("{} connections failed", total.errors);
    }
    Ok(())
}

async fn echo_conn(
    shared: &Shared,
    index: usize,
    rep: &(Vec<u8>, usize),
    stats: &RefCell<Stats>,
) -> anyhow::Result<()> {
    let (rep, flen) = (&rep.0, rep.1);
    let (mut stream, leftover) = open(
        &shared.target,
        source_addr(shared.target.addr, index, shared.spread),
        shared.timeout,
    )
    .await?;
    stats.borrow_mut().connected += 1;
    let mut queued: VecDeque<Instant> = VecDeque::with_capacity(shared.in_flight);
    // Frames queued but not yet fully written, and bytes of the first one written.
    let (mut pending, mut partial) = (0usize, 0usize);
    let now = Instant::now();
    for _ in 0..shared.in_flight {
        queued.push_back(now);
        pending += 1;
    }
    let mut reader = FrameReader::default();
    let mut buf = vec![0u8; 64 * 1024];
    let done_msgs = Cell::new(0u64);
    let mut on_frames = |data: &[u8], queued: &mut VecDeque<Instant>, pending: &mut usize| -> anyhow::Result<()> {
        let mut err = None;
        reader.feed(data, |f| match f.opcode {
            OP_BINARY | OP_TEXT | OP_CONT if f.fin => {
                let now = Instant::now();
                if let Some(t) = queued.pop_front() {
                    stats.borrow_mut().latency.record(now - t);
                }
                done_msgs.set(done_msgs.get() + 1);
                if now < shared.deadline {
                    queued.push_back(now);
                    *pending += 1;
                }
            }
            OP_CLOSE => err = Some("server sent Close"),
            _ => {}
        })?;
        if let Some(e) = err {
            bail!(e);
        }
        Ok(())
    };
    on_frames(&leftover, &mut queued, &mut pending)?;
    let mut reported = 0u64;
    // Bytes handed to the stream since its last flush (TLS: maybe still in
    // rustls's buffer).
    let mut unflushed = false;
    let result = loop {
        let now = Instant::now();
        if now >= shared.deadline || queued.is_empty() {
            break Ok(());
        }
        // Writes what is pending, flushes, reads what has come: ready when
        // anything moved (or failed), pending (with both wakers set) when
        // nothing could.
        let step = std::future::poll_fn(|cx| {
            let mut moved = false;
            while pending > 0 {
                let want = pending * flen - partial;
                let end = rep.len().min(partial + want);
                match Pin::new(&mut stream).poll_write(cx, &rep[partial..end]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(anyhow::anyhow!("write: the connection is closed"))),
                    Poll::Ready(Ok(n)) => {
                        let total = partial + n;
                        pending -= total / flen;
                        partial = total % flen;
                        unflushed = true;
                        moved = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(anyhow::Error::new(e).context("write"))),
                    Poll::Pending => break,
                }
            }
            if unflushed && pending == 0 {
                match Pin::new(&mut stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => unflushed = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(anyhow::Error::new(e).context("write"))),
                    Poll::Pending => {}
                }
            }
            loop {
                match poll_read_some(&mut stream, cx, &mut buf) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(anyhow::anyhow!("connection closed by the server"))),
                    Poll::Ready(Ok(n)) => {
                        if let Err(e) = on_frames(&buf[..n], &mut queued, &mut pending) {
                            return Poll::Ready(Err(e));
                        }
                        moved = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(anyhow::Error::new(e).context("read"))),
                    Poll::Pending => break,
                }
            }
            if moved {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        });
        let wait = (shared.deadline - now).min(shared.timeout);
        match tokio::time::timeout(wait, step).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => break Err(e),
            Err(_) if Instant::now() >= shared.deadline => break Ok(()),
            Err(_) => break Err(anyhow::anyhow!("no progress for {:?}", shared.timeout)),
        }
        if done_msgs.get() - reported >= 64 {
            shared.progress.add(done_msgs.get() - reported);
            reported = done_msgs.get();
        }
    };
    shared.progress.add(done_msgs.get() - reported);
    stats.borrow_mut().messages += done_msgs.get();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_reader() {
        let mut stream = Vec::new();
        for (op, len) in [
            (OP_BINARY, 0usize),
            (OP_TEXT, 5),
            (OP_BINARY, 300),
            (OP_PONG, 3),
            (OP_BINARY, 70_000),
        ] {
            let f = encode_frame(op, &vec![7u8; len], [1, 2, 3, 4]);
            // The server's frames are unmasked: clear the mask bit and key.
            let hdr = f.len() - len - 4;
            let mut g = f[..hdr].to_vec();
            g[1] &= 0x7F;
            g.extend(std::iter::repeat_n(7u8, len));
            stream.extend_from_slice(&g);
        }
        for chunk in [1usize, 3, 1000, usize::MAX] {
            let mut r = FrameReader::default();
            let mut seen = Vec::new();
            for c in stream.chunks(chunk.min(stream.len())) {
                r.feed(c, |f| seen.push((f.opcode, f.len))).unwrap();
            }
            assert_eq!(seen, vec![(2, 0), (1, 5), (2, 300), (10, 3), (2, 70_000)]);
        }
    }

    #[test]
    fn masks_payload() {
        let f = encode_frame(OP_BINARY, b"abcd", [1, 2, 3, 4]);
        assert_eq!(&f[..2], &[0x82, 0x84]);
        assert_eq!(&f[6..], &[b'a' ^ 1, b'b' ^ 2, b'c' ^ 3, b'd' ^ 4]);
    }
}
