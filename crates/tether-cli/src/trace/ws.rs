//! `tether trace ws://…`: the upgrade handshake, every frame both ways
//! with its header size, and the close handshake (see the parent module).
//!
//! The protocol is the engine's (`WsConnection`: masking, automatic pongs,
//! the close handshake and its timeout); this file owns the socket and
//! scans the bytes both ways with the engine's frame header decoder
//! ([`Scanner`]), so each frame is reported as it was on the wire
//! (fragments, extended lengths and masking keys included).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use http::HeaderMap;
use tether::client::ClientStream;
use tether_proto::ws::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use tether_proto::ws::{
    ClientHandshake, ClientHandshakeError, CloseCode, CompressionConfig, Event as WsEvent, WsConfig, WsConnection,
    WsEnd, WsState,
};
use tokio::io::AsyncWriteExt;

use super::render::{Cause, Close, Event, Frame, HeadBody, Recorder};
use super::{ms_between, Target, TraceArgs};

const CONN: u32 = 1;
/// Payload bytes kept per frame for its preview.
const PREVIEW: usize = 60;

/// Runs the WebSocket trace; the events go to `rec`.
pub async fn trace(args: &TraceArgs, target: &Target, rec: &mut Recorder) -> anyhow::Result<()> {
    let began = Instant::now();
    let (tcp, peer, local) = super::connect(target, args.timeout).await?;
    let opened = Instant::now();
    rec.emit(
        began,
        Event::Connect {
            conn: CONN,
            peer: peer.to_string(),
            local: local.to_string(),
            connect_ms: ms_between(began, opened),
        },
    );
    let mut stream = super::secure(args, target, CONN, tcp, rec).await?;
    let mut out = Scanner::new("out");
    let mut inc = Scanner::new("in");
    let result = session(args, target, rec, &mut stream, opened, &mut out, &mut inc).await;
    rec.bytes.sent = HeadBody {
        head: out.head,
        body: out.payload,
    };
    rec.bytes.received = HeadBody {
        head: inc.head,
        body: inc.payload,
    };
    result
}

async fn session(
    args: &TraceArgs,
    target: &Target,
    rec: &mut Recorder,
    stream: &mut ClientStream,
    opened: Instant,
    out: &mut Scanner,
    inc: &mut Scanner,
) -> anyhow::Result<()> {
    // The handshake: the engine writes and checks it, trace shows it.
    let handshake = ClientHandshake::new(
        rand::random::<[u8; 16]>(),
        args.subprotocol.clone(),
        CompressionConfig::default(),
    );
    let mut request = Vec::with_capacity(256);
    handshake
        .write_request(&target.host_header, &target.path, &HeaderMap::new(), &mut request)
        .context("the URL cannot be put in an upgrade request")?;
    let sent_at = Instant::now();
    let deadline = sent_at + args.timeout;
    tokio::time::timeout_at(deadline.into(), write_flushed(stream, &request))
        .await
        .context("writing the upgrade request timed out")?
        .context("writing the upgrade request")?;
    out.head += request.len() as u64;
    rec.emit(
        sent_at,
        Event::WsUpgradeRequest {
            conn: CONN,
            target: target.path.clone(),
            head_bytes: request.len(),
        },
    );
    let mut buf = vec![0u8; 16 * 1024];
    let mut head = Vec::with_capacity(1024);
    let (accepted, head_len) = loop {
        let n = tokio::time::timeout_at(deadline.into(), super::read_some(stream, &mut buf))
            .await
            .context("no answer to the upgrade request in time")?
            .context("reading the upgrade response")?;
        if n == 0 {
            bail!("the server closed the connection during the handshake");
        }
        head.extend_from_slice(&buf[..n]);
        match handshake.handle_response(&head) {
            Ok(Some(done)) => break done,
            Ok(None) => {}
            Err(ClientHandshakeError::Status(status)) => bail!(
                "the server answered {} {} instead of 101 Switching Protocols",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ),
            Err(e) => return Err(e).context("the upgrade failed"),
        }
    };
    let answered = Instant::now();
    inc.head += head_len as u64;
    rec.emit(
        answered,
        Event::WsUpgradeResponse {
            conn: CONN,
            status: 101,
            reason: "Switching Protocols".into(),
            head_bytes: head_len,
            handshake_ms: ms_between(sent_at, answered),
            subprotocol: accepted.subprotocol.clone(),
            // Compression is not offered, so a server may agree to none.
            extensions: None,
        },
    );

    let config = WsConfig {
        close_timeout: args.timeout,
        ..WsConfig::default()
    };
    let mut engine = WsConnection::client(Arc::new(config), accepted.deflate, rand::random::<[u8; 4]>, answered);
    let rest = head.split_off(head_len);
    if !rest.is_empty() {
        scan(rec, inc, &rest, answered);
        engine.handle_input(&rest, answered);
    }

    // Messages every interval, listening all along; one more interval of
    // listening after the last; then the close handshake.
    let mut sent = 0u32;
    let mut next_send = answered;
    let mut listen_until: Option<Instant> = None;
    let mut close_started = false;
    let mut tcp_end: Option<(Instant, &'static str)> = None;
    let mut last_close_frame: Option<Instant> = None;
    let slowest_gap = match args.interval {
        super::Interval::Fixed(d) | super::Interval::Range(_, d) => d,
    };
    // A bound on the whole session whatever the peer does.
    let hard_deadline = answered + slowest_gap * (args.requests + 1) + args.timeout * 2;
    let end = loop {
        while let Some(event) = engine.poll_event() {
            match event {
                WsEvent::Message(tether_proto::ws::Message::Close(_)) => {
                    last_close_frame = Some(Instant::now());
                }
                WsEvent::ProtocolError(e) => rec.error(Some(CONN), format!("the server broke the protocol: {e}")),
                _ => {}
            }
        }
        if engine.has_output() {
            let mut bytes = Vec::with_capacity(engine.queued_bytes());
            for chunk in engine.poll_transmit(Instant::now()) {
                bytes.extend_from_slice(chunk);
            }
            let now = Instant::now();
            scan(rec, out, &bytes, now);
            let write = tokio::time::timeout_at((now + args.timeout).into(), write_flushed(stream, &bytes)).await;
            match write {
                Ok(Ok(())) => engine.handle_written(bytes.len(), Instant::now()),
                Ok(Err(e)) => {
                    rec.error(Some(CONN), format!("writing: {e}"));
                    tcp_end = Some((Instant::now(), "reset"));
                    engine.handle_eof(Instant::now());
                }
                Err(_) => {
                    rec.error(Some(CONN), "the server stopped reading (write timed out)".into());
                    break None;
                }
            }
        }
        if let Some(end) = engine.poll_close() {
            break Some(end);
        }
        let now = Instant::now();
        if now >= hard_deadline {
            rec.error(Some(CONN), "the session did not end in time".into());
            break None;
        }
        let mut next = hard_deadline;
        if !close_started {
            next = next.min(listen_until.unwrap_or(next_send));
        }
        if let Some(t) = engine.poll_timeout() {
            next = next.min(t);
        }
        match tokio::time::timeout_at(next.into(), super::read_some(stream, &mut buf)).await {
            Ok(Ok(0)) => {
                let now = Instant::now();
                tcp_end = Some((now, "fin"));
                engine.handle_eof(now);
            }
            Ok(Ok(n)) => {
                let now = Instant::now();
                scan(rec, inc, &buf[..n], now);
                engine.handle_input(&buf[..n], now);
            }
            Ok(Err(e)) => {
                let now = Instant::now();
                rec.error(Some(CONN), format!("reading: {e}"));
                tcp_end = Some((now, "reset"));
                engine.handle_eof(now);
            }
            Err(_) => {
                let now = Instant::now();
                if engine.poll_timeout().is_some_and(|t| t <= now) {
                    engine.handle_timeout(now);
                }
                if close_started {
                    // Only the engine's timers and the peer's answer matter now.
                } else if engine.state() != WsState::Open {
                    // The server closed first: nothing more to send.
                    close_started = true;
                } else if sent < args.requests && now >= next_send {
                    sent += 1;
                    let text = args.message.replace("{n}", &sent.to_string());
                    engine.send_text(text).context("queueing a message")?;
                    let gap = args.interval.draw();
                    next_send = now + gap;
                    if sent == args.requests {
                        listen_until = Some(now + gap);
                    }
                } else if listen_until.is_some_and(|t| now >= t) {
                    engine
                        .close(CloseCode::NORMAL, "trace finished", now)
                        .context("starting the close handshake")?;
                    close_started = true;
                }
            }
        }
    };

    let now = Instant::now();
    let stats = engine.stats();
    let first = match stats.closed_here_first {
        Some(true) => "started by trace",
        Some(false) => "started by the server",
        None => "no close frame",
    };
    let codes = format!(
        "sent {}, received {}",
        code_name(stats.close_sent),
        code_name(stats.close_received)
    );
    let (at, by, how) = match tcp_end {
        Some((at, how)) => (at, "server", how),
        None => (now, "trace", "close"),
    };
    let after_close = last_close_frame.map_or(String::new(), |t| {
        format!(
            ", {} after the last close frame",
            super::render::duration(at.saturating_duration_since(t))
        )
    });
    let (cause, detail) = match end {
        Some(WsEnd::Closed) => (
            Cause::CloseHandshake,
            format!("after the close handshake, {first} ({codes}){after_close}"),
        ),
        Some(WsEnd::Abnormal) => (Cause::Abnormal, format!("without a close handshake (1006; {codes})")),
        Some(WsEnd::ProtocolError) => (Cause::ProtocolError, format!("protocol error ({codes})")),
        Some(WsEnd::CloseTimeout) => (
            Cause::CloseTimeout,
            format!(
                "no answer to the close frame within {} ({codes})",
                super::render::duration(args.timeout)
            ),
        ),
        Some(WsEnd::WriteTimeout) | None => (
            Cause::CloseTimeout,
            format!("the session did not end cleanly ({codes})"),
        ),
    };
    rec.emit(
        at,
        Event::Close(Close {
            conn: CONN,
            by,
            how,
            cause,
            detail,
            requests: u64::from(stats.messages_in),
            idle_ms: None,
            lifetime_ms: ms_between(opened, at),
        }),
    );
    Ok(())
}

fn code_name(code: u16) -> String {
    match code {
        0 => "none".to_owned(),
        1005 => "no code".to_owned(),
        c => c.to_string(),
    }
}

/// Records the frames that `bytes` completes.
fn scan(rec: &mut Recorder, scanner: &mut Scanner, bytes: &[u8], at: Instant) {
    for frame in scanner.feed(bytes) {
        rec.emit(at, Event::WsFrame(frame));
    }
}

/// Follows one direction's byte stream frame by frame: decodes each
/// header, skips (and previews) the payload.
struct Scanner {
    dir: &'static str,
    /// A header split across reads.
    carry: Vec<u8>,
    current: Option<Current>,
    /// The stream is not WebSocket framing any more: stop scanning.
    broken: bool,
    /// Frame header bytes and payload bytes seen.
    head: u64,
    payload: u64,
}

struct Current {
    header: FrameHeader,
    header_len: usize,
    remaining: u64,
    /// The first payload bytes, unmasked.
    kept: Vec<u8>,
}

impl Scanner {
    fn new(dir: &'static str) -> Self {
        Scanner {
            dir,
            carry: Vec::new(),
            current: None,
            broken: false,
            head: 0,
            payload: 0,
        }
    }

    /// The frames `data` completes.
    fn feed(&mut self, mut data: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            if let Some(cur) = self.current.as_mut() {
                let take = cur.remaining.min(data.len() as u64) as usize;
                let offset = cur.header.payload_len - cur.remaining;
                for (i, &b) in data[..take].iter().enumerate() {
                    let pos = offset as usize + i;
                    if pos >= 2 + 123 {
                        break;
                    }
                    let key = cur.header.mask.map_or(0, |k| k[pos % 4]);
                    cur.kept.push(b ^ key);
                }
                cur.remaining -= take as u64;
                self.payload += take as u64;
                data = &data[take..];
                if cur.remaining > 0 {
                    return frames;
                }
                let done = self.current.take().expect("a frame in progress");
                frames.push(self.describe(done));
                continue;
            }
            if self.broken || data.is_empty() {
                return frames;
            }
            let prior = self.carry.len();
            let decoded = if prior == 0 {
                FrameHeader::decode(data)
            } else {
                let add = data.len().min(MAX_HEADER_LEN);
                self.carry.extend_from_slice(&data[..add]);
                FrameHeader::decode(&self.carry)
            };
            match decoded {
                Ok(Some((header, len))) => {
                    data = &data[len - prior..];
                    self.carry.clear();
                    self.head += len as u64;
                    self.current = Some(Current {
                        header,
                        header_len: len,
                        remaining: header.payload_len,
                        kept: Vec::new(),
                    });
                }
                Ok(None) => {
                    // Fewer than 14 bytes: all of them are in the carry now.
                    if prior == 0 {
                        self.carry.extend_from_slice(data);
                    }
                    return frames;
                }
                Err(_) => {
                    self.broken = true;
                    return frames;
                }
            }
        }
    }

    fn describe(&self, cur: Current) -> Frame {
        let h = cur.header;
        let opcode = match h.opcode {
            OpCode::Continuation => "continuation",
            OpCode::Text => "text",
            OpCode::Binary => "binary",
            OpCode::Close => "close",
            OpCode::Ping => "ping",
            OpCode::Pong => "pong",
        };
        let (close_code, text, full_len) = match h.opcode {
            OpCode::Close if cur.kept.len() >= 2 => (
                Some(u16::from_be_bytes([cur.kept[0], cur.kept[1]])),
                Some(&cur.kept[2..]).filter(|reason| !reason.is_empty()),
                h.payload_len - 2,
            ),
            OpCode::Text if !h.rsv1 => (None, Some(&cur.kept[..]), h.payload_len),
            _ => (None, None, 0),
        };
        let preview = text.map(|t| {
            let s = String::from_utf8_lossy(t);
            let short: String = s.chars().take(PREVIEW).collect();
            if short.len() < s.len() || (t.len() as u64) < full_len {
                format!("{short}…")
            } else {
                short
            }
        });
        Frame {
            conn: CONN,
            dir: self.dir,
            opcode,
            fin: h.fin,
            rsv1: h.rsv1,
            masked: h.mask.is_some(),
            header_bytes: cur.header_len,
            payload_bytes: h.payload_len,
            preview,
            close_code,
        }
    }
}

/// Writes `bytes` and flushes (TLS may hold the last of them).
async fn write_flushed(stream: &mut ClientStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use tether_proto::ws::frame::encode_frame;

    fn frame(opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_frame(&mut out, &FrameHeader::new(opcode, payload.len() as u64, mask), payload);
        out.to_vec()
    }

    #[test]
    fn frames_are_scanned_with_their_header_sizes_wherever_the_reads_split() {
        let mut wire = frame(OpCode::Text, b"ping 1", Some([1, 2, 3, 4]));
        wire.extend(frame(OpCode::Binary, &[7; 300], None));
        wire.extend(frame(OpCode::Binary, &vec![0; 70_000], Some([9, 9, 9, 9])));
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        wire.extend(frame(OpCode::Close, &close, None));
        for split in [1, 3, 7, 13, 1000, wire.len()] {
            let mut s = Scanner::new("in");
            let frames: Vec<Frame> = wire.chunks(split).flat_map(|piece| s.feed(piece)).collect();
            let got: Vec<(&str, usize, u64)> = frames
                .iter()
                .map(|f| (f.opcode, f.header_bytes, f.payload_bytes))
                .collect();
            assert_eq!(
                got,
                [
                    ("text", 6, 6),
                    ("binary", 4, 300),
                    ("binary", 14, 70_000),
                    ("close", 2, 5)
                ],
                "split {split}"
            );
            assert_eq!(frames[0].preview.as_deref(), Some("ping 1"));
            assert_eq!(frames[3].close_code, Some(1000));
            assert_eq!(frames[3].preview.as_deref(), Some("bye"));
            assert_eq!(s.head + s.payload, wire.len() as u64);
        }
    }
}
