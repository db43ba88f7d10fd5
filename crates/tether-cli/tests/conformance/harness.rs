//! The conformance harness: the real `tether serve` process, a raw WebSocket
//! client over `std::net::TcpStream` (its own frame encoder and decoder), the
//! permessage-deflate helpers and the table runner.
//!
//! Every read has a deadline ([`READ_TIMEOUT`], [`CLOSE_TIMEOUT`] for the
//! TCP close), every loop is bounded by a byte or frame count or a deadline:
//! a case fails with a message, it never hangs.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::panic::{self, AssertUnwindSafe};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use sha1::{Digest, Sha1};

/// Deadline of any single wait for a frame or a response.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may take to close TCP after the close handshake.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame payload the client accepts from the server.
const MAX_INCOMING_FRAME: u64 = 64 << 20;
/// Largest message the client assembles.
const MAX_INCOMING_MESSAGE: usize = 64 << 20;

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;

pub const CONT: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// The reserved bits as they sit in the first header byte.
pub const RSV1: u8 = 0x40;
pub const RSV2: u8 = 0x20;
pub const RSV3: u8 = 0x10;

/// The permessage-deflate offer most browsers send.
pub const PMD_OFFER: &str = "permessage-deflate; client_max_window_bits";

// ---------------------------------------------------------------------------
// The server process

/// A running `tether serve --listen 127.0.0.1:0 --log warn ARGS...`.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    log: Arc<Mutex<String>>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--log", "warn"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Hermetic: no TETHER_* setting from the environment.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TETHER_") {
                cmd.env_remove(name);
            }
        }
        let mut child = cmd.spawn().expect("spawning the tether binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let thread_log = log.clone();
        // Drains stderr for the whole life of the process (a full pipe would block it).
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Logged before the port is announced: a test that has the
                // port sees the line that gave it.
                {
                    let mut log = thread_log.lock().unwrap_or_else(|e| e.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
                if let Some(port) = parse_port(&line) {
                    let _ = tx.send(port);
                }
            }
        });
        let mut server = Server {
            child: Some(child),
            port: 0,
            log,
        };
        match rx.recv_timeout(READ_TIMEOUT) {
            Ok(port) => server.port = port,
            Err(_) => panic!(
                "tether serve {args:?} did not print its address within {READ_TIMEOUT:?}; stderr:\n{}",
                server.log()
            ),
        }
        server
    }

    /// The server's process id (for tests/parking_memory.rs).
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// What the server wrote on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sends SIGTERM and checks the process exits with status 0 within 10 s.
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("waiting for tether") {
                assert!(
                    status.success(),
                    "tether serve exited with {status} after SIGTERM; stderr:\n{}",
                    self.log()
                );
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tether serve did not exit within 10 s of SIGTERM");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn parse_port(line: &str) -> Option<u16> {
    let at = line.find("listening on ")? + "listening on ".len();
    let rest = line[at..]
        .strip_prefix("http://")
        .or_else(|| line[at..].strip_prefix("https://"))?;
    let addr = rest.split_whitespace().next()?;
    addr.rsplit(':').next()?.parse().ok()
}

// ---------------------------------------------------------------------------
// Table runner

type CaseFn = Box<dyn Fn(&Server) + Send + Sync>;

/// One conformance case: a name (Autobahn-style number first), a body that
/// panics on failure, and optionally the server bug that makes it fail.
pub struct Case {
    pub name: String,
    pub bug: Option<&'static str>,
    run: CaseFn,
}

pub fn case(name: impl Into<String>, run: impl Fn(&Server) + Send + Sync + 'static) -> Case {
    Case {
        name: name.into(),
        bug: None,
        run: Box::new(run),
    }
}

impl Case {
    /// Marks a case that fails because of a known server bug: the group
    /// skips it, the matching `#[ignore]` test runs it.
    #[allow(dead_code)]
    pub fn bug(mut self, why: &'static str) -> Case {
        self.bug = Some(why);
        self
    }
}

/// The cases that share one server started with `args`.
pub struct Group {
    pub title: &'static str,
    pub args: Vec<&'static str>,
    pub cases: Vec<Case>,
}

/// Runs every case of the group (except known bugs) against one server,
/// stops it (exit status 0 on SIGTERM) and fails with the list of failures.
pub fn run_group(group: Group) {
    run_cases(group, None);
}

/// Runs one case by name, even if marked as a known bug.
#[allow(dead_code)]
pub fn run_one(group: Group, name: &str) {
    assert!(
        group.cases.iter().any(|c| c.name == name),
        "no case named {name:?} in {}",
        group.title
    );
    run_cases(group, Some(name));
}

fn run_cases(group: Group, only: Option<&str>) {
    let mut names: Vec<&str> = group.cases.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        panic!("duplicate case name {:?} in {}", w[0], group.title);
    }
    let server = Server::start(&group.args);
    let started = Instant::now();
    let mut failures = Vec::new();
    let (mut passed, mut skipped) = (0, 0);
    for case in &group.cases {
        match only {
            Some(name) if case.name != name => continue,
            None if case.bug.is_some() => {
                eprintln!(
                    "SKIP {} / {} (known bug: {})",
                    group.title,
                    case.name,
                    case.bug.unwrap_or("")
                );
                skipped += 1;
                continue;
            }
            _ => {}
        }
        let t = Instant::now();
        match panic::catch_unwind(AssertUnwindSafe(|| (case.run)(&server))) {
            Ok(()) => passed += 1,
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "(non-string panic)".into());
                failures.push(format!("{}: {msg}", case.name));
            }
        }
        let elapsed = t.elapsed();
        if elapsed > Duration::from_secs(2) {
            eprintln!("slow case {} / {}: {elapsed:?}", group.title, case.name);
        }
    }
    // The server survived the whole table.
    let mut c = Client::connect(server.port);
    let health = c.http(&format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", host(server.port)));
    let log = server.log();
    server.stop();
    eprintln!(
        "{}: {} cases, {passed} passed, {} failed, {skipped} skipped as known bugs ({:?})",
        group.title,
        passed + failures.len(),
        failures.len(),
        started.elapsed()
    );
    assert_eq!(health.status, 200, "GET /healthz after the group");
    assert!(
        failures.is_empty(),
        "{}: {} case(s) failed:\n  {}\nserver stderr:\n{log}",
        group.title,
        failures.len(),
        failures.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// Payload generators

/// Deterministic incompressible bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Deterministic ASCII text of `len` bytes (compressible, not trivially).
pub fn text_payload(len: usize) -> Vec<u8> {
    const WORDS: [&str; 8] = [
        "tether ", "frame ", "echo ", "socket ", "deflate ", "ping ", "message ", "close ",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0usize;
    while out.len() < len {
        out.extend_from_slice(WORDS[(i * 7 + i / 3) % WORDS.len()].as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// Deterministic lowercase text that compresses only about 2:1 (no long repeats).
pub fn random_text(len: usize, seed: u64) -> Vec<u8> {
    random_bytes(len, seed)
        .into_iter()
        .map(|b| if b % 7 == 0 { b' ' } else { b'a' + b % 26 })
        .collect()
}

/// Splits `data` into `n` parts as equal as possible (some may be empty if n > len).
pub fn split_n(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut parts = Vec::with_capacity(n);
    for i in 0..n {
        parts.push(&data[data.len() * i / n..data.len() * (i + 1) / n]);
    }
    parts
}

/// A close payload: the code then the reason.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

// ---------------------------------------------------------------------------
// Frames

/// Encodes a client frame (masked with `key`). `rsv` holds the RSV bits as in
/// the first header byte ([`RSV1`] etc.).
pub fn encode_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | (rsv & 0x70) | (opcode & 0x0F));
    encode_len(&mut out, payload.len() as u64);
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(payload);
    mask(&mut out[start..], key);
    out
}

/// The second header byte (mask bit set) and the extended length, minimal encoding.
pub fn encode_len(out: &mut Vec<u8>, len: u64) {
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// XOR with the key, a word at a time (the 16 MiB cases run unoptimized).
pub fn mask(buf: &mut [u8], key: [u8; 4]) {
    let word = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes(chunk.try_into().expect("8 bytes")) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// A frame received from the server (checked unmasked with a minimal length encoding).
#[derive(Debug, Clone)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// A complete data message received from the server.
#[derive(Debug, Clone)]
pub struct Msg {
    pub opcode: u8,
    pub payload: Vec<u8>,
    /// RSV1 was set on its first frame (the payload here is inflated).
    pub compressed: bool,
    /// The number of frames it came in.
    pub frames: usize,
    /// The payload bytes on the wire.
    pub wire_len: usize,
}

/// What the next read brought.
#[derive(Debug)]
pub enum Event {
    Msg(Msg),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Vec<u8>),
    Eof,
    Reset,
    Timeout,
}

impl Event {
    fn describe(&self) -> String {
        match self {
            Event::Msg(m) => format!(
                "message opcode {} of {} bytes ({})",
                m.opcode,
                m.payload.len(),
                preview(&m.payload)
            ),
            Event::Ping(p) => format!("ping {}", preview(p)),
            Event::Pong(p) => format!("pong {}", preview(p)),
            Event::Close(p) => format!("close {}", describe_close(p)),
            Event::Eof => "EOF".into(),
            Event::Reset => "connection reset".into(),
            Event::Timeout => "nothing (timeout)".into(),
        }
    }
}

pub fn describe_close(p: &[u8]) -> String {
    if p.len() >= 2 {
        format!(
            "code {} reason {:?}",
            u16::from_be_bytes([p[0], p[1]]),
            String::from_utf8_lossy(&p[2..])
        )
    } else {
        format!("payload {p:02x?}")
    }
}

fn preview(p: &[u8]) -> String {
    if p.len() <= 40 {
        format!("{:?}", String::from_utf8_lossy(p))
    } else {
        format!("{:?}...", String::from_utf8_lossy(&p[..40]))
    }
}

/// Asserts two payloads are equal without dumping megabytes.
#[track_caller]
pub fn assert_payload(what: &str, got: &[u8], expected: &[u8]) {
    if got != expected {
        let first = got.iter().zip(expected).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes, expected {} bytes; first difference at {first:?}; got {}, expected {}",
            got.len(),
            expected.len(),
            preview(got),
            preview(expected)
        );
    }
}

// ---------------------------------------------------------------------------
// permessage-deflate helpers

/// Raw deflate with a sync flush, trailing `00 00 ff ff` stripped (RFC 7692 §7.2.1).
pub fn deflate_with(c: &mut Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    let mut pos = 0;
    for _ in 0..100_000 {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(4096));
        }
        let before = c.total_in();
        c.compress_vec(&data[pos..], &mut out, FlushCompress::Sync)
            .expect("deflate");
        pos += (c.total_in() - before) as usize;
        if pos == data.len() && out.len() < out.capacity() {
            assert!(out.ends_with(&[0, 0, 0xff, 0xff]), "sync flush marker");
            out.truncate(out.len() - 4);
            return out;
        }
    }
    panic!("deflate did not finish");
}

/// A fresh compressor (for no-context-takeover messages).
pub fn deflate(data: &[u8]) -> Vec<u8> {
    deflate_with(&mut Compress::new(Compression::new(6), false), data)
}

/// Inflates one message: appends `00 00 ff ff` and inflates, at most `limit` bytes out.
pub fn inflate_with(d: &mut Decompress, data: &[u8], limit: usize) -> Vec<u8> {
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(data.len() * 3 + 64);
    let mut pos = 0;
    for _ in 0..1_000_000 {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(4096));
        }
        let (in0, out0) = (d.total_in(), d.total_out());
        let status = d
            .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync)
            .expect("the server's compressed payload inflates");
        pos += (d.total_in() - in0) as usize;
        assert!(out.len() <= limit, "inflated message over {limit} bytes");
        let progress = d.total_in() != in0 || d.total_out() != out0;
        if status == Status::StreamEnd || (pos == input.len() && out.len() < out.capacity()) || !progress {
            return out;
        }
    }
    panic!("inflate did not finish");
}

/// The client's view of the negotiated permessage-deflate.
pub struct Inflater {
    d: Decompress,
    /// The server keeps its window between messages.
    context_takeover: bool,
}

// ---------------------------------------------------------------------------
// The client

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn host(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    BASE64.encode(sha1.finalize())
}

/// A raw TCP connection speaking HTTP/1.1 and then WebSocket frames.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    rng: u64,
    pub inflater: Option<Inflater>,
    /// Fragments of a data message being received: (opcode, compressed, payload, frames, wire bytes).
    partial: Option<(u8, bool, Vec<u8>, usize, usize)>,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to tether");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_write_timeout(Some(READ_TIMEOUT)).expect("write timeout");
        Client {
            stream,
            buf: Vec::new(),
            rng: 0x2545_F491_4F6C_DD1D ^ u64::from(port),
            inflater: None,
            partial: None,
        }
    }

    /// Opens `/echo` with no extension offered.
    pub fn open(server: &Server) -> Client {
        Client::open_with(server, "").0
    }

    /// Opens `/echo` with extra request header lines (each ending in CRLF);
    /// asserts 101 and the accept key; sets up inflating per the
    /// `Sec-WebSocket-Extensions` answer.
    pub fn open_with(server: &Server, extra_headers: &str) -> (Client, HttpResponse) {
        let mut c = Client::connect(server.port);
        let key = c.new_key();
        let request = format!(
            "GET /echo HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n",
            host(server.port)
        );
        c.send_raw(request.as_bytes());
        let resp = c.read_response(false);
        assert_eq!(resp.status, 101, "handshake refused:\n{}", resp.head);
        assert_eq!(resp.header("sec-websocket-accept"), Some(accept_key(&key).as_str()));
        if let Some(ext) = resp.header("sec-websocket-extensions") {
            assert!(
                ext.to_ascii_lowercase().starts_with("permessage-deflate"),
                "unexpected extension {ext:?}"
            );
            assert!(!extra_headers.is_empty(), "extension {ext:?} answered without an offer");
            c.inflater = Some(Inflater {
                d: Decompress::new(false),
                context_takeover: !ext.contains("server_no_context_takeover"),
            });
        }
        (c, resp)
    }

    /// A fresh base64 key of 16 random bytes.
    pub fn new_key(&mut self) -> String {
        let mut bytes = [0u8; 16];
        for chunk in bytes.chunks_mut(4) {
            chunk.copy_from_slice(&self.mask_key());
        }
        BASE64.encode(bytes)
    }

    /// The next masking key (xorshift; never all zero, so masking is exercised).
    pub fn mask_key(&mut self) -> [u8; 4] {
        loop {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let key = (self.rng as u32).to_be_bytes();
            if key != [0; 4] {
                return key;
            }
        }
    }

    // ----- HTTP -----

    /// Sends a raw request and reads the response (with its Content-Length body).
    pub fn http(&mut self, request: &str) -> HttpResponse {
        self.send_raw(request.as_bytes());
        self.read_response(true)
    }

    /// Reads a response head and, if `with_body`, a Content-Length body.
    pub fn read_response(&mut self, with_body: bool) -> HttpResponse {
        let deadline = Instant::now() + READ_TIMEOUT;
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(self.buf.len() < 64 * KIB, "response head too long");
            match self.fill(deadline) {
                Ok(0) => panic!(
                    "EOF before a complete response head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(_) => {}
                Err(e) => panic!("reading a response head: {e}"),
            }
        };
        let head = String::from_utf8(self.buf.drain(..end).collect()).expect("ASCII response head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        assert!(status_line.starts_with("HTTP/1.1 "), "status line {status_line:?}");
        let status = status_line[9..12].parse().expect("status code");
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').expect("header line with a colon");
                (n.trim().to_string(), v.trim().to_string())
            })
            .collect();
        let mut resp = HttpResponse {
            status,
            head,
            headers,
            body: Vec::new(),
        };
        if with_body {
            let len: usize = resp
                .header("content-length")
                .expect("a Content-Length on a non-101 response")
                .parse()
                .expect("numeric Content-Length");
            self.need(len, deadline).expect("reading the response body");
            resp.body = self.buf.drain(..len).collect();
        }
        resp
    }

    // ----- writing -----

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("writing to the server");
    }

    /// Writes `bytes` in pieces of `chunk` bytes, one write each.
    pub fn send_chopped(&mut self, bytes: &[u8], chunk: usize) {
        for piece in bytes.chunks(chunk) {
            self.stream.write_all(piece).expect("writing to the server");
        }
    }

    /// Like [`send_chopped`](Self::send_chopped) for bytes the server may
    /// reject part-way (it fails the connection on a bad header without
    /// reading the rest): stops quietly at the first write error.
    pub fn send_chopped_until_closed(&mut self, bytes: &[u8], chunk: usize) {
        for piece in bytes.chunks(chunk) {
            if self.stream.write_all(piece).is_err() {
                return;
            }
        }
    }

    /// A masked frame with a fresh key.
    pub fn frame_bytes(&mut self, fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let key = self.mask_key();
        encode_frame(fin, rsv, opcode, payload, key)
    }

    pub fn send_frame(&mut self, fin: bool, rsv: u8, opcode: u8, payload: &[u8]) {
        let bytes = self.frame_bytes(fin, rsv, opcode, payload);
        self.send_raw(&bytes);
    }

    /// Concatenated frames, for sending in one write.
    pub fn frames(&mut self, frames: &[(bool, u8, u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(fin, rsv, opcode, payload) in frames {
            out.extend(self.frame_bytes(fin, rsv, opcode, payload));
        }
        out
    }

    /// A message in fragments (the first carries `opcode` and `rsv`).
    pub fn fragmented_bytes(&mut self, opcode: u8, rsv: u8, parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let (op, r) = if i == 0 { (opcode, rsv) } else { (CONT, 0) };
            out.extend(self.frame_bytes(i + 1 == parts.len(), r, op, part));
        }
        out
    }

    /// Writes a large buffer from a helper thread while this thread reads
    /// (so neither side's buffers fill up); returns the writer to join.
    pub fn send_in_background(&mut self, bytes: Vec<u8>) -> thread::JoinHandle<io::Result<()>> {
        let mut stream = self.stream.try_clone().expect("cloning the stream");
        thread::spawn(move || stream.write_all(&bytes))
    }

    // ----- reading -----

    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline"));
        }
        self.stream.set_read_timeout(Some(deadline - now))?;
        let mut tmp = [0u8; 64 * 1024];
        let n = self.stream.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Buffers at least `n` bytes. `Ok(false)`: EOF first.
    fn need(&mut self, n: usize, deadline: Instant) -> io::Result<bool> {
        if self.buf.capacity() < n {
            self.buf.reserve(n - self.buf.len());
        }
        while self.buf.len() < n {
            if self.fill(deadline)? == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn io_event(e: io::Error) -> Event {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Event::Timeout,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
                Event::Reset
            }
            _ => panic!("reading from the server: {e}"),
        }
    }

    /// Reads one frame; checks the server's framing rules (no mask, minimal length).
    fn read_frame(&mut self, deadline: Instant) -> Result<Frame, Event> {
        match self.need(2, deadline) {
            Ok(true) => {}
            Ok(false) if self.buf.is_empty() => return Err(Event::Eof),
            Ok(false) => panic!("EOF inside a frame header"),
            Err(e) => return Err(Self::io_event(e)),
        }
        let (b0, b1) = (self.buf[0], self.buf[1]);
        assert_eq!(b1 & 0x80, 0, "the server sent a masked frame");
        let (len, header_len) = match b1 & 0x7F {
            126 => {
                self.need(4, deadline).map_err(Self::io_event)?;
                let len = u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]]));
                assert!(len >= 126, "16-bit length {len} where 7 bits suffice");
                (len, 4)
            }
            127 => {
                self.need(10, deadline).map_err(Self::io_event)?;
                let len = u64::from_be_bytes(self.buf[2..10].try_into().expect("8 bytes"));
                assert!(len > 0xFFFF, "64-bit length {len} where 16 bits suffice");
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        assert!(len <= MAX_INCOMING_FRAME, "server frame of {len} bytes");
        let total = header_len + len as usize;
        match self.need(total, deadline) {
            Ok(true) => {}
            Ok(false) => panic!("EOF inside a frame payload"),
            Err(e) => return Err(Self::io_event(e)),
        }
        let payload = if self.buf.len() == total {
            let mut all = std::mem::take(&mut self.buf);
            all.drain(..header_len);
            all
        } else {
            let p = self.buf[header_len..total].to_vec();
            self.buf.drain(..total);
            p
        };
        Ok(Frame {
            fin: b0 & 0x80 != 0,
            rsv: b0 & 0x70,
            opcode: b0 & 0x0F,
            payload,
        })
    }

    /// The next message, control frame or end of connection, within `timeout`.
    /// Fragmented data messages are assembled (and inflated); control frames
    /// between fragments are returned as they arrive.
    pub fn next_event_within(&mut self, timeout: Duration) -> Event {
        let deadline = Instant::now() + timeout;
        for _ in 0..1_000_000 {
            let frame = match self.read_frame(deadline) {
                Ok(f) => f,
                Err(event) => return event,
            };
            if frame.opcode >= 8 {
                assert!(frame.fin, "the server fragmented a control frame");
                assert_eq!(frame.rsv, 0, "RSV bits on a server control frame");
                assert!(frame.payload.len() <= 125, "server control frame over 125 bytes");
                match frame.opcode {
                    PING => return Event::Ping(frame.payload),
                    PONG => return Event::Pong(frame.payload),
                    CLOSE => return Event::Close(frame.payload),
                    op => panic!("server sent reserved opcode {op:#x}"),
                }
            }
            assert_eq!(frame.rsv & (RSV2 | RSV3), 0, "server set RSV2/RSV3");
            let compressed = frame.rsv & RSV1 != 0;
            let wire = frame.payload.len();
            match (&mut self.partial, frame.opcode) {
                (None, TEXT | BINARY) => {
                    assert!(
                        !compressed || self.inflater.is_some(),
                        "server set RSV1 without permessage-deflate"
                    );
                    self.partial = Some((frame.opcode, compressed, frame.payload, 1, wire));
                }
                (Some(p), CONT) => {
                    assert!(!compressed, "server set RSV1 on a continuation frame");
                    p.2.extend_from_slice(&frame.payload);
                    p.3 += 1;
                    p.4 += wire;
                    assert!(p.2.len() <= MAX_INCOMING_MESSAGE, "server message too long");
                }
                (None, CONT) => panic!("server sent a continuation frame outside a message"),
                (Some(_), op) => panic!("server sent opcode {op} inside a fragmented message"),
                (None, op) => panic!("server sent reserved opcode {op:#x}"),
            }
            if frame.fin {
                let (opcode, compressed, mut payload, frames, wire_len) = self.partial.take().expect("a message");
                if compressed {
                    let inf = self.inflater.as_mut().expect("negotiated");
                    if !inf.context_takeover {
                        inf.d.reset(false);
                    }
                    payload = inflate_with(&mut inf.d, &payload, MAX_INCOMING_MESSAGE);
                }
                if opcode == TEXT {
                    assert!(
                        std::str::from_utf8(&payload).is_ok(),
                        "server sent a text message that is not UTF-8"
                    );
                }
                return Event::Msg(Msg {
                    opcode,
                    payload,
                    compressed,
                    frames,
                    wire_len,
                });
            }
        }
        panic!("too many frames")
    }

    pub fn next_event(&mut self) -> Event {
        self.next_event_within(READ_TIMEOUT)
    }

    // ----- expectations -----

    /// The next event is a data message with this opcode and payload.
    #[track_caller]
    pub fn expect_msg(&mut self, opcode: u8, payload: &[u8]) -> Msg {
        match self.next_event() {
            Event::Msg(m) => {
                assert_eq!(m.opcode, opcode, "echoed opcode");
                assert_payload("echoed payload", &m.payload, payload);
                m
            }
            other => panic!("expected an echo of {} bytes, got {}", payload.len(), other.describe()),
        }
    }

    #[track_caller]
    pub fn expect_text(&mut self, payload: &[u8]) -> Msg {
        self.expect_msg(TEXT, payload)
    }

    /// Sends a single-frame message and expects it back.
    #[track_caller]
    pub fn echo(&mut self, opcode: u8, payload: &[u8]) -> Msg {
        self.send_frame(true, 0, opcode, payload);
        self.expect_msg(opcode, payload)
    }

    #[track_caller]
    pub fn expect_pong(&mut self, payload: &[u8]) {
        match self.next_event() {
            Event::Pong(p) => assert_payload("pong payload", &p, payload),
            other => panic!("expected a pong, got {}", other.describe()),
        }
    }

    /// The next event is a close frame: with `code`, or empty for `None`.
    #[track_caller]
    pub fn expect_close(&mut self, code: Option<u16>) -> Vec<u8> {
        match self.next_event() {
            Event::Close(p) => {
                match code {
                    None => assert!(p.is_empty(), "expected an empty close, got {}", describe_close(&p)),
                    Some(code) => {
                        assert!(p.len() >= 2, "expected close {code}, got {}", describe_close(&p));
                        assert_eq!(
                            u16::from_be_bytes([p[0], p[1]]),
                            code,
                            "close code ({})",
                            describe_close(&p)
                        );
                        assert!(std::str::from_utf8(&p[2..]).is_ok(), "close reason not UTF-8");
                    }
                }
                p
            }
            other => panic!("expected close {code:?}, got {}", other.describe()),
        }
    }

    /// The server closes TCP within [`CLOSE_TIMEOUT`] and sends nothing more.
    /// `strict`: a clean EOF (a reset is accepted otherwise, e.g. when the
    /// server dropped unread input we sent).
    #[track_caller]
    pub fn expect_tcp_close(&mut self, strict: bool) {
        match self.next_event_within(CLOSE_TIMEOUT) {
            Event::Eof => {}
            Event::Reset if !strict => {}
            other => panic!(
                "expected the server to close TCP within {CLOSE_TIMEOUT:?}, got {}",
                other.describe()
            ),
        }
    }

    /// The server fails the connection: the next frame is a close with
    /// `code`; we answer it and the server closes TCP.
    #[track_caller]
    pub fn expect_fail(&mut self, code: u16) {
        self.expect_close(Some(code));
        let reply = self.frame_bytes(true, 0, CLOSE, &close_payload(code, b""));
        let _ = self.stream.write_all(&reply); // the server may be gone already
        self.expect_tcp_close(false);
    }

    /// Like [`expect_fail`](Self::expect_fail), but the echo of `payload`
    /// may come first (Autobahn's "non-strict": a message completed just
    /// before the violation may be dropped when the server fails). Returns
    /// whether the echo came.
    #[track_caller]
    pub fn expect_optional_echo_then_fail(&mut self, opcode: u8, payload: &[u8], code: u16) -> bool {
        match self.next_event() {
            Event::Msg(m) => {
                assert_eq!(m.opcode, opcode, "echoed opcode");
                assert_payload("echoed payload", &m.payload, payload);
                self.expect_fail(code);
                true
            }
            Event::Close(p) => {
                assert!(
                    p.len() >= 2 && p[..2] == code.to_be_bytes(),
                    "expected close {code}, got {}",
                    describe_close(&p)
                );
                let reply = self.frame_bytes(true, 0, CLOSE, &close_payload(code, b""));
                let _ = self.stream.write_all(&reply);
                self.expect_tcp_close(false);
                false
            }
            other => panic!("expected an echo or close {code}, got {}", other.describe()),
        }
    }

    /// Client-initiated close 1000: the server echoes 1000 and closes TCP (cleanly).
    #[track_caller]
    pub fn close_normally(&mut self) {
        self.send_frame(true, 0, CLOSE, &close_payload(1000, b"bye"));
        self.expect_close(Some(1000));
        self.expect_tcp_close(true);
    }

    // ----- permessage-deflate -----

    /// Sends `data` compressed (fresh window) as one frame with RSV1.
    pub fn send_compressed(&mut self, opcode: u8, data: &[u8]) {
        let payload = deflate(data);
        self.send_frame(true, RSV1, opcode, &payload);
    }
}
