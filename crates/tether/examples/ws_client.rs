//! A WebSocket client smoke test against any echo server:
//!
//! ```text
//! cargo run --release -p tether --example ws_client -- URL [--deflate | --deflate-context] [--server-window BITS]
//! ```
//!
//! Connects with [`tether::client::ws::connect`], round-trips a few text
//! messages, a few binary ones, a 1 MiB binary message (larger than most
//! servers' frame fragments), a ping, then closes with 1000 and waits for
//! the server's Close. Prints one JSON line of results on stdout and exits
//! with status 0 only if every step succeeded. `--deflate` offers
//! permessage-deflate without context takeover (`Shared`),
//! `--deflate-context` with it (`Context`); `--server-window BITS` asks the
//! server to deflate with at most a 2^BITS window. The interop tests
//! (tests/interop/test_ws_client.py) run it against third-party servers.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use tether::client::ws::{connect, ClientOptions};
use tether::ws::{CloseCode, CompressionConfig, CompressionMode, Message, WebSocket};

/// Deadline for the whole sequence.
const OVERALL: Duration = Duration::from_secs(40);
/// Deadline for each reply.
const STEP: Duration = Duration::from_secs(15);

/// Results, printed as one JSON object.
#[derive(Default)]
struct Report {
    fields: Vec<(&'static str, String)>,
}

impl Report {
    fn bool(&mut self, name: &'static str, v: bool) {
        self.fields.push((name, v.to_string()));
    }
    fn num(&mut self, name: &'static str, v: impl std::fmt::Display) {
        self.fields.push((name, v.to_string()));
    }
    fn str(&mut self, name: &'static str, v: &str) {
        self.fields.push((name, json_string(v)));
    }
    fn json(&self) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{}: {}", json_string(k), v);
        }
        out.push('}');
        out
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The next text or binary message (pings and pongs skipped), or a
/// description of what came instead.
async fn next_data(ws: &mut WebSocket) -> Result<Message, String> {
    loop {
        match tokio::time::timeout(STEP, ws.recv()).await {
            Err(_) => return Err("timed out waiting for a message".into()),
            Ok(None) => return Err("connection closed while waiting for a message".into()),
            Ok(Some(Err(e))) => return Err(format!("receive error: {e}")),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Close(c)))) => return Err(format!("server closed while waiting: {c:?}")),
            Ok(Some(Ok(m))) => return Ok(m),
        }
    }
}

/// A deterministic pseudo-random byte pattern (xorshift), partly compressible.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            if (i / 4096) % 2 == 1 {
                return (i % 251) as u8;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn run(url: &str, mode: CompressionMode, server_window: u8, report: &mut Report) -> Result<(), String> {
    let mut options = ClientOptions::default();
    std::sync::Arc::make_mut(&mut options.ws.engine).compression = CompressionConfig {
        mode,
        server_max_window_bits: server_window,
        ..CompressionConfig::default()
    };
    let mut ws = connect(url, options).await.map_err(|e| format!("connect: {e}"))?;
    report.bool("connected", true);

    // Text: ASCII, empty, multi-byte, long and compressible.
    let texts = [
        "hello from tether".to_string(),
        String::new(),
        "héllo wörld ✓ 🚀".to_string(),
        "tether ".repeat(3000),
    ];
    let mut text_ok = true;
    for t in &texts {
        ws.send(Message::Text(t.as_str().into()))
            .await
            .map_err(|e| format!("send text: {e}"))?;
        match next_data(&mut ws).await? {
            Message::Text(got) if got.as_str() == t.as_str() => {}
            other => {
                text_ok = false;
                report.str("text_mismatch", &format!("{:.200}", format!("{other:?}")));
            }
        }
    }
    report.bool("text", text_ok);

    // Binary: small, empty, 64 KiB boundary sizes. Sent back to back
    // before reading any echo (pipelined).
    let mut bins: Vec<Bytes> = [4usize, 0, 125, 126, 65_535, 65_536, 70_000]
        .iter()
        .enumerate()
        .map(|(i, &n)| Bytes::from(pattern(n, i as u64 + 7)))
        .collect();
    // Repeats 3000 bytes apart: back-references longer than a small window.
    bins.push(Bytes::from(pattern(3000, 99).repeat(3)));
    for b in &bins {
        ws.send(Message::Binary(b.clone()))
            .await
            .map_err(|e| format!("send binary: {e}"))?;
    }
    let mut binary_ok = true;
    for b in &bins {
        match next_data(&mut ws).await? {
            Message::Binary(got) if got == *b => {}
            other => {
                binary_ok = false;
                let got = match &other {
                    Message::Binary(g) => format!("Binary(len {})", g.len()),
                    m => format!("{m:.100?}"),
                };
                report.str("binary_mismatch", &format!("want len {}, got {got}", b.len()));
            }
        }
    }
    report.bool("binary", binary_ok);

    // 1 MiB: more than one frame's worth for servers that fragment.
    let large = Bytes::from(pattern(1 << 20, 42));
    ws.send(Message::Binary(large.clone()))
        .await
        .map_err(|e| format!("send 1 MiB: {e}"))?;
    match next_data(&mut ws).await? {
        Message::Binary(got) => {
            report.num("large_len", got.len());
            report.bool("large", got == large);
        }
        other => return Err(format!("1 MiB echo was {other:.100?}")),
    }

    // Ping: the pong carries the same payload.
    let payload = Bytes::from_static(b"tether-ping");
    ws.send(Message::Ping(payload.clone()))
        .await
        .map_err(|e| format!("send ping: {e}"))?;
    let pong = loop {
        match tokio::time::timeout(STEP, ws.recv()).await {
            Err(_) => return Err("timed out waiting for pong".into()),
            Ok(Some(Ok(Message::Pong(p)))) => break p,
            Ok(Some(Ok(Message::Ping(_)))) => continue,
            Ok(other) => return Err(format!("expected a pong, got {other:.100?}")),
        }
    };
    report.bool("pong", pong == payload);

    // Close 1000: wait for the server's Close, then the end of the stream.
    ws.close(CloseCode::NORMAL, "done")
        .await
        .map_err(|e| format!("close: {e}"))?;
    let mut close_code = None;
    loop {
        match tokio::time::timeout(STEP, ws.recv()).await {
            Err(_) => return Err("timed out waiting for the close handshake".into()),
            Ok(None) => break,
            Ok(Some(Ok(Message::Close(frame)))) => {
                close_code = Some(frame.map_or(1005, |f| f.code.0));
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => return Err(format!("error during close: {e}")),
        }
    }
    match close_code {
        Some(code) => report.num("close_code", code),
        None => report.str("close_code", "none"),
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(url) = args.iter().find(|a| a.starts_with("ws")).cloned() else {
        eprintln!("usage: ws_client URL [--deflate | --deflate-context] [--server-window BITS]");
        return ExitCode::from(2);
    };
    let server_window = match args.iter().position(|a| a == "--server-window") {
        None => 15,
        Some(i) => match args.get(i + 1).and_then(|v| v.parse::<u8>().ok()) {
            Some(bits) => bits,
            None => {
                eprintln!("ws_client: --server-window needs a number of bits (9-15)");
                return ExitCode::from(2);
            }
        },
    };
    let mode = if args.iter().any(|a| a == "--deflate-context") {
        CompressionMode::Context
    } else if args.iter().any(|a| a == "--deflate") {
        CompressionMode::Shared
    } else {
        CompressionMode::Off
    };
    let mut report = Report::default();
    report.str("url", &url);
    report.str("mode", &format!("{mode:?}"));
    report.num("server_window", server_window);
    let outcome = match tokio::time::timeout(OVERALL, run(&url, mode, server_window, &mut report)).await {
        Ok(r) => r,
        Err(_) => Err(format!("overall deadline ({OVERALL:?}) passed")),
    };
    let ok = outcome.is_ok();
    report.bool("ok", ok);
    if let Err(e) = outcome {
        report.str("error", &e);
    }
    println!("{}", report.json());
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
