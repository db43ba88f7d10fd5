//! TLS and Unix-socket listeners (`tether::server::Listener`,
//! `tether::tls`): keep-alive, request limits, graceful shutdown,
//! connection limits (`503` over TLS), WebSockets (`wss`), ALPN, large
//! responses, the handshake deadline (silent, stalled and oversized
//! handshakes; shutdown during one) and certificate reload over TLS;
//! keep-alive, limits and WebSockets over a Unix domain socket; both
//! drivers flushing a transport that buffers writes; parking over TLS and
//! Unix sockets (idle keep-alive connections and WebSockets leave their
//! tasks, resume on input with their TLS session, close at their idle
//! timeout and on shutdown from the lot; records split across parking and
//! requests sharing a record).
//!
//! Every certificate is made here with `rcgen` (a root CA, an intermediate
//! CA and a leaf for `localhost`, the leaf's file holding the chain), in a
//! temporary directory: nothing secret is committed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tether::proto::h1;
use tether::server::router::{self, Router};
use tether::server::{Body, Listener, Request, Response, Server, ServerStats};
use tether::tls::rustls::pki_types::{CertificateDer, ServerName};
use tether::tls::rustls::{self, ClientConfig, RootCertStore};
use tether::tls::tokio_rustls::client::TlsStream;
use tether::tls::tokio_rustls::TlsConnector;
use tether::tls::{self as ttls, ReloadableCert};
use tether::ws::{self, Message, Replies, WsOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);
const BIG: usize = 16 << 20;
const SLOW: Duration = Duration::from_millis(300);

// ----- certificates -----

/// A CA the client trusts, and a way to issue `localhost` certificates
/// under it (through an intermediate) into PEM files.
struct Pki {
    dir: tempfile::TempDir,
    root: CertificateDer<'static>,
    intermediate: rcgen::Certificate,
    intermediate_key: KeyPair,
}

impl Pki {
    fn new() -> Self {
        let root_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, "tether test root");
        let root = params.self_signed(&root_key).unwrap();
        let intermediate_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(DnType::CommonName, "tether test intermediate");
        let intermediate = params.signed_by(&intermediate_key, &root, &root_key).unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            root: root.der().clone(),
            intermediate,
            intermediate_key,
        }
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// Issues a `localhost` certificate named `cn` and writes it (leaf,
    /// then the intermediate) and its key over the files; returns the
    /// leaf's DER, to recognise it on the client side.
    fn issue(&self, cn: &str) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let leaf = params
            .signed_by(&key, &self.intermediate, &self.intermediate_key)
            .unwrap();
        write_atomically(
            &self.cert_path(),
            format!("{}{}", leaf.pem(), self.intermediate.pem()).as_bytes(),
        );
        write_atomically(&self.key_path(), key.serialize_pem().as_bytes());
        leaf.der().clone()
    }

    fn client(&self, alpn: &[&[u8]]) -> TlsConnector {
        TlsConnector::from(self.client_config(alpn))
    }

    fn client_config(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.root.clone()).unwrap();
        let mut config = ClientConfig::builder_with_provider(ttls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// Replaces a file in one step (as a deployment tool would), so a reload
/// never reads half a file.
fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// ----- the server -----

fn echo(message: Message, replies: &mut Replies<'_>) {
    let _ = replies.send(message);
}

fn app() -> Router {
    let options = Arc::new(WsOptions::default());
    Router::new()
        .route(
            "/healthz",
            router::get(|_req: Request| async { router::text(StatusCode::OK, "ok") }),
        )
        .route(
            "/slow",
            router::get(|_req: Request| async {
                tokio::time::sleep(SLOW).await;
                router::text(StatusCode::OK, "slow")
            }),
        )
        .route(
            "/big",
            router::get(|_req: Request| async {
                let body: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
                Response::new(Body::Full(Bytes::from(body)))
            }),
        )
        .route("/ws", move |req: Request| {
            let options = options.clone();
            async move { ws::upgrade_service(&req, &options, echo) }
        })
}

fn config(idle: Duration, max_requests: u32) -> h1::Config {
    h1::Config {
        idle_timeout: idle,
        max_requests,
        ..h1::Config::default()
    }
}

struct Running {
    stats: Arc<ServerStats>,
    stop: Option<oneshot::Sender<()>>,
    done: JoinHandle<()>,
}

impl Running {
    fn start(server: Server, listeners: Vec<Listener>) -> Self {
        let stats = server.stats();
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            server
                .serve_on(listeners, async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            stats,
            stop: Some(tx),
            done,
        }
    }

    fn begin_stop(&mut self) {
        let _ = self.stop.take().expect("stopped once").send(());
    }

    async fn stop(mut self) {
        self.begin_stop();
        timeout(T, self.done).await.expect("the server stops").unwrap();
    }
}

/// A TLS listener on `127.0.0.1:0` with the certificate in `certs`.
async fn tls_listener(certs: &Arc<ReloadableCert>) -> (Listener, SocketAddr) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    (Listener::Tls(tcp, ttls::server_config(certs.clone()).unwrap()), addr)
}

/// A TLS server with `server`'s settings and a fresh certificate.
async fn start_tls(server: Server) -> (Running, SocketAddr, Pki) {
    let pki = Pki::new();
    pki.issue("first");
    let certs = ReloadableCert::from_files(pki.cert_path(), pki.key_path()).unwrap();
    let (listener, addr) = tls_listener(&certs).await;
    (Running::start(server, vec![listener]), addr, pki)
}

async fn connect(pki: &Pki, addr: SocketAddr) -> Http<TlsStream<TcpStream>> {
    connect_with(&pki.client(&[b"http/1.1"]), addr)
        .await
        .expect("TLS handshake")
}

async fn connect_with(connector: &TlsConnector, addr: SocketAddr) -> std::io::Result<Http<TlsStream<TcpStream>>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let tls = timeout(T, connector.connect(name, tcp))
        .await
        .expect("handshake in time")?;
    Ok(Http::new(tls))
}

// ----- a strict little HTTP/1.1 client over any stream -----

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Http<S> {
    io: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Http<S> {
    fn new(io: S) -> Self {
        Self { io, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        timeout(T, self.io.write_all(bytes))
            .await
            .expect("write in time")
            .unwrap();
        timeout(T, self.io.flush()).await.expect("flush in time").unwrap();
    }

    async fn get(&mut self, path: &str) -> Resp {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .await;
        self.response().await
    }

    /// Reads more; 0 at the end of the stream (a TLS peer's missing
    /// `close_notify` counts as the end too).
    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        match timeout(T, self.io.read(&mut chunk)).await.expect("read in time") {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(_) => 0,
        }
    }

    async fn head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return String::from_utf8(head).unwrap();
            }
            assert!(self.fill().await > 0, "closed before a response head");
        }
    }

    async fn response(&mut self) -> Resp {
        let head = self.head().await;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        let length: usize = resp.header("content-length").map_or(0, |v| v.parse().unwrap());
        while self.buf.len() < length {
            assert!(self.fill().await > 0, "closed inside a body");
        }
        resp.body = self.buf.drain(..length).collect();
        resp
    }

    /// Waits for the server to close the connection; returns how long it took.
    async fn closed(&mut self) -> Duration {
        let t0 = Instant::now();
        while self.fill().await > 0 {
            assert!(
                self.buf.is_empty(),
                "data instead of a close: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
        t0.elapsed()
    }
}

fn tls_state(c: &Http<TlsStream<TcpStream>>) -> &rustls::ClientConnection {
    c.io.get_ref().1
}

fn server_leaf(c: &Http<TlsStream<TcpStream>>) -> CertificateDer<'static> {
    tls_state(c).peer_certificates().expect("a certificate")[0]
        .clone()
        .into_owned()
}

// ----- the tests -----

#[tokio::test]
async fn keep_alive_over_tls_serves_several_requests_on_one_connection_then_closes_when_idle() {
    let server = Server::new(config(Duration::from_secs(1), 100), app());
    let (running, addr, pki) = start_tls(server).await;
    let mut c = connect(&pki, addr).await;
    assert_eq!(tls_state(&c).alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN");
    assert_eq!(
        c.io.get_ref().1.peer_certificates().map(<[_]>::len),
        Some(2),
        "the chain: leaf and intermediate"
    );
    for _ in 0..3 {
        let r = c.get("/healthz").await;
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
        assert_eq!(r.header("keep-alive"), Some("timeout=1, max=100"));
        assert_eq!(r.header("connection"), None);
    }
    let took = c.closed().await;
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(2500),
        "closed by the 1 s idle timeout, took {took:?}"
    );
    assert_eq!(
        running.stats.tls_handshakes.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    running.stop().await;
}

#[tokio::test]
async fn a_large_response_over_tls_arrives_whole() {
    // Far more than the sockets hold: the server's writes block again and
    // again, and rustls holds records its socket did not take yet.
    let (running, addr, pki) = start_tls(Server::new(config(Duration::from_secs(5), 100), app())).await;
    // A small receive window: the server's socket fills up.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = pki.client(&[b"http/1.1"]).connect(name, tcp).await.unwrap();
    let mut c = Http::new(tls);
    c.send(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    // Let the server fill every buffer before the client reads.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), BIG);
    assert!(r.body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    let r = c.get("/healthz").await;
    assert_eq!(r.status, 200, "the connection carries on");
    running.stop().await;
}

#[tokio::test]
async fn a_transport_that_buffers_writes_is_flushed_once_the_engine_has_written_everything() {
    // TLS takes bytes into rustls before the socket has them; a `BufWriter`
    // does the same, deterministically: it passes nothing on until it is
    // full or flushed. Both drivers (HTTP, then WebSocket) must flush.
    let (client, server) = tokio::io::duplex(64 * 1024);
    let handler: tether::server::SharedHandler = Arc::new(app());
    let config = Arc::new(config(Duration::from_secs(5), 100));
    // Kept until the end: an upgraded connection takes a closed stop
    // channel for a forced stop.
    let (_stop, stop) = tokio::sync::watch::channel(tether::server::driver::Stop::Run);
    let served = tokio::spawn(tether::server::driver::serve_connection(
        tokio::io::BufWriter::new(server),
        config,
        handler,
        stop,
    ));
    let mut c = Http::new(client);
    for _ in 0..2 {
        let r = c.get("/healthz").await;
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    }
    c.send(UPGRADE).await;
    assert!(c.head().await.starts_with("HTTP/1.1 101 "));
    c.send(&masked_frame(0x1, b"flushed")).await;
    assert_eq!(next_frame(&mut c).await, (0x1, b"flushed".to_vec()));
    c.send(&masked_frame(0x8, &1000u16.to_be_bytes())).await;
    assert_eq!(next_frame(&mut c).await.0, 0x8);
    c.closed().await;
    timeout(T, served).await.expect("the HTTP phase ended").unwrap();
}

#[tokio::test]
async fn max_requests_over_tls_ends_with_connection_close() {
    let (running, addr, pki) = start_tls(Server::new(config(Duration::from_secs(5), 2), app())).await;
    let mut c = connect(&pki, addr).await;
    let first = c.get("/healthz").await;
    assert_eq!(first.header("connection"), None);
    assert_eq!(first.header("keep-alive"), Some("timeout=5, max=2"));
    let last = c.get("/healthz").await;
    assert_eq!(last.status, 200);
    assert_eq!(last.header("connection"), Some("close"));
    let took = closed_cleanly(&mut c).await;
    assert!(took < Duration::from_secs(2), "closed after the last response");
    running.stop().await;
}

/// Waits for the server's clean TLS close: `close_notify`, then the end of
/// the stream (a bare FIN would be an error here); returns how long it took.
async fn closed_cleanly(c: &mut Http<TlsStream<TcpStream>>) -> Duration {
    let t0 = Instant::now();
    assert!(c.buf.is_empty(), "unread: {:?}", String::from_utf8_lossy(&c.buf));
    let mut rest = [0u8; 16];
    let end = timeout(T, c.io.read(&mut rest)).await.expect("closed in time");
    assert!(matches!(end, Ok(0)), "close_notify then EOF: {end:?}");
    t0.elapsed()
}

#[tokio::test]
async fn graceful_shutdown_over_tls_finishes_in_flight_requests_and_closes_idle_connections() {
    let server = Server::new(config(Duration::from_secs(30), 100), app()).shutdown_timeout(Duration::from_secs(5));
    let (mut running, addr, pki) = start_tls(server).await;
    let mut idle = connect(&pki, addr).await;
    assert_eq!(idle.get("/healthz").await.status, 200);
    let mut busy = connect(&pki, addr).await;
    busy.send(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    tokio::time::sleep(SLOW / 3).await;
    let t0 = Instant::now();
    running.begin_stop();
    let r = busy.response().await;
    assert_eq!(
        (r.status, &r.body[..]),
        (200, &b"slow"[..]),
        "the in-flight request finishes"
    );
    assert_eq!(r.header("connection"), Some("close"));
    busy.closed().await;
    idle.closed().await;
    timeout(T, running.done).await.expect("the server stops").unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "drained, not timed out: {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn alpn_is_http11_a_client_offering_only_h2_is_refused_and_tls12_is_served() {
    let (running, addr, pki) = start_tls(Server::new(config(Duration::from_secs(5), 100), app())).await;
    // No ALPN offered: served, nothing negotiated.
    let mut c = connect_with(&pki.client(&[]), addr).await.unwrap();
    assert_eq!(tls_state(&c).alpn_protocol(), None);
    assert_eq!(c.get("/healthz").await.status, 200);
    // Both offered: http/1.1 chosen.
    let c = connect_with(&pki.client(&[b"h2", b"http/1.1"]), addr).await.unwrap();
    assert_eq!(tls_state(&c).alpn_protocol(), Some(&b"http/1.1"[..]));
    // TLS 1.2 is served too (1.3 is preferred).
    assert_eq!(tls_state(&c).protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    let mut roots = RootCertStore::empty();
    roots.add(pki.root.clone()).unwrap();
    let tls12 = ClientConfig::builder_with_provider(ttls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut old = connect_with(&TlsConnector::from(Arc::new(tls12)), addr).await.unwrap();
    assert_eq!(
        tls_state(&old).protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(old.get("/healthz").await.status, 200);
    // Only h2: no_application_protocol.
    let refused = connect_with(&pki.client(&[b"h2"]), addr).await;
    let e = refused.err().expect("refused");
    assert!(e.to_string().contains("NoApplicationProtocol"), "{e}");
    running.stop().await;
}

#[tokio::test]
async fn websocket_echo_over_tls() {
    let (running, addr, pki) = start_tls(Server::new(config(Duration::from_secs(5), 100), app())).await;
    let mut c = connect(&pki, addr).await;
    c.send(UPGRADE).await;
    let head = c.head().await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    for text in ["hello over wss", "and again"] {
        c.send(&masked_frame(0x1, text.as_bytes())).await;
        let (opcode, payload) = next_frame(&mut c).await;
        assert_eq!((opcode, &payload[..]), (0x1, text.as_bytes()));
    }
    // The close handshake: 1000 back, then the server closes.
    c.send(&masked_frame(0x8, &1000u16.to_be_bytes())).await;
    let (opcode, payload) = next_frame(&mut c).await;
    assert_eq!((opcode, &payload[..2]), (0x8, &1000u16.to_be_bytes()[..]));
    c.closed().await;
    running.stop().await;
}

/// A WebSocket upgrade request for `/ws`.
const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let key = [1u8, 2, 3, 4];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

async fn next_frame<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Http<S>) -> (u8, Vec<u8>) {
    while c.buf.len() < 2 {
        assert!(c.fill().await > 0, "closed before a frame");
    }
    let (opcode, len) = (c.buf[0] & 0x0F, (c.buf[1] & 0x7F) as usize);
    assert!(len < 126, "a short frame");
    while c.buf.len() < 2 + len {
        assert!(c.fill().await > 0, "closed inside a frame");
    }
    let frame: Vec<u8> = c.buf.drain(..2 + len).collect();
    (opcode, frame[2..].to_vec())
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_dropped_at_the_deadline() {
    let server =
        Server::new(config(Duration::from_secs(30), 100), app()).tls_handshake_timeout(Duration::from_millis(500));
    let stats = server.stats();
    let (running, addr, pki) = start_tls(server).await;
    // One sends nothing; one stalls in the middle of its ClientHello (a
    // record header announcing 512 bytes, then 3 of them).
    let silent = TcpStream::connect(addr).await.unwrap();
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
        .await
        .unwrap();
    let t0 = Instant::now();
    for (what, mut s) in [("silent", silent), ("stalled", stalled)] {
        let mut byte = [0u8; 1];
        let n = timeout(T, s.read(&mut byte))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "{what}: closed without an answer");
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_millis(2500),
            "{what}: closed at the 500 ms deadline, took {took:?}"
        );
    }
    let timeouts = &stats.tls_handshake_timeouts;
    let deadline = Instant::now() + T;
    while timeouts.load(std::sync::atomic::Ordering::Relaxed) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(timeouts.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(stats.open.get(), 0, "nothing left open");
    // A real client is still served.
    assert_eq!(connect(&pki, addr).await.get("/healthz").await.status, 200);
    running.stop().await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_handshake_in_progress() {
    let server = Server::new(config(Duration::from_secs(30), 100), app()).shutdown_timeout(Duration::from_secs(20));
    let (mut running, addr, _pki) = start_tls(server).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        running.stats.open.get(),
        1,
        "a connection in its handshake counts as open"
    );
    let t0 = Instant::now();
    running.begin_stop();
    let mut byte = [0u8; 1];
    let n = timeout(T, silent.read(&mut byte)).await.expect("closed").unwrap_or(0);
    assert_eq!(n, 0);
    timeout(T, running.done).await.expect("the server stops").unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "no wait for the handshake: {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn a_tls_connection_beyond_the_limit_is_answered_503_over_tls() {
    let server = Server::new(config(Duration::from_secs(30), 100), app()).max_connections(Some(1));
    let (running, addr, pki) = start_tls(server).await;
    let mut first = connect(&pki, addr).await;
    assert_eq!(first.get("/healthz").await.status, 200);
    // Busy (a request in flight), so it cannot be reclaimed either.
    first.send(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut second = connect(&pki, addr).await;
    let r = second.response().await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    second.closed().await;
    assert_eq!(first.response().await.status, 200);
    running.stop().await;
}

#[tokio::test]
async fn a_client_announcing_an_oversized_handshake_message_is_refused_at_once() {
    // rustls takes a handshake message of at most 64 KiB: one announcing
    // 16 MiB is refused when its header arrives, long before the deadline,
    // and nothing is buffered for it.
    let (running, addr, pki) = start_tls(Server::new(config(Duration::from_secs(30), 100), app())).await;
    let stats = running.stats.clone();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let t0 = Instant::now();
    let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
    record.resize(5 + 0x4000, 0);
    for _ in 0..4 {
        if s.write_all(&record).await.is_err() {
            break;
        }
    }
    let mut rest = Vec::new();
    let _ = timeout(T, s.read_to_end(&mut rest)).await.expect("closed in time");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "refused at once: {:?}",
        t0.elapsed()
    );
    let deadline = Instant::now() + T;
    while stats.tls_handshake_failures.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "counted as a failed handshake");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(connect(&pki, addr).await.get("/healthz").await.status, 200);
    running.stop().await;
}

#[tokio::test]
async fn a_reloaded_certificate_serves_new_connections_while_old_ones_go_on() {
    let pki = Pki::new();
    let first = pki.issue("first");
    let certs = ReloadableCert::from_files(pki.cert_path(), pki.key_path()).unwrap();
    let (listener, addr) = tls_listener(&certs).await;
    let running = Running::start(Server::new(config(Duration::from_secs(30), 100), app()), vec![listener]);
    let mut old = connect(&pki, addr).await;
    assert_eq!(server_leaf(&old), first);
    assert_eq!(old.get("/healthz").await.status, 200);

    let second = pki.issue("second");
    assert_ne!(first, second);
    certs.reload().unwrap();
    let mut new = connect(&pki, addr).await;
    assert_eq!(server_leaf(&new), second, "a new connection gets the new certificate");
    assert_eq!(new.get("/healthz").await.status, 200);
    assert_eq!(old.get("/healthz").await.status, 200, "the old connection goes on");
    assert_eq!(server_leaf(&old), first);

    // A bad file: the reload fails, the certificate stays.
    write_atomically(&pki.key_path(), b"not a key\n");
    let e = certs.reload().unwrap_err();
    assert!(matches!(e, ttls::TlsError::NoPrivateKey { .. }), "{e}");
    assert!(e.to_string().contains("key.pem"), "{e}");
    let mut third = connect(&pki, addr).await;
    assert_eq!(server_leaf(&third), second, "the last good certificate stays");
    assert_eq!(third.get("/healthz").await.status, 200);

    // A key that is not the certificate's.
    pki.issue("third");
    let stray = KeyPair::generate().unwrap();
    write_atomically(&pki.key_path(), stray.serialize_pem().as_bytes());
    let e = certs.reload().unwrap_err();
    assert!(matches!(e, ttls::TlsError::KeyMismatch { .. }), "{e}");
    running.stop().await;
}

#[tokio::test]
async fn watching_the_files_reloads_when_they_change() {
    let pki = Pki::new();
    pki.issue("first");
    let certs = ReloadableCert::from_files(pki.cert_path(), pki.key_path()).unwrap();
    let watch = certs.watch(Duration::from_millis(50));
    // Modification times may have a coarse grain: make the change visible.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = pki.issue("second");
    let later = std::time::SystemTime::now() + Duration::from_secs(2);
    for path in [pki.cert_path(), pki.key_path()] {
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
    }
    let deadline = Instant::now() + T;
    while certs.current().cert[0] != second && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(certs.current().cert[0], second, "reloaded after the files changed");
    watch.abort();
}

#[tokio::test]
async fn loading_reports_what_is_wrong_with_which_file() {
    let pki = Pki::new();
    pki.issue("first");
    let missing = pki.dir.path().join("missing.pem");
    let e = ReloadableCert::from_files(&missing, pki.key_path()).unwrap_err();
    assert!(
        matches!(e, ttls::TlsError::Read { .. }) && e.to_string().contains("missing.pem"),
        "{e}"
    );
    // The files swapped: no certificate where one is expected.
    let e = ReloadableCert::from_files(pki.key_path(), pki.cert_path()).unwrap_err();
    assert!(matches!(e, ttls::TlsError::NoCertificate { .. }), "{e}");
}

#[cfg(unix)]
#[tokio::test]
async fn keep_alive_over_a_unix_socket_next_to_tcp() {
    use tokio::net::UnixStream;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.sock");
    let unix = tether::server::bind_unix(&path).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let server = Server::new(config(Duration::from_secs(1), 3), app()).max_connections_per_client(Some(1));
    let listeners = vec![Listener::Tcp(tcp), Listener::Unix(unix)];
    assert_eq!(listeners[1].url(), format!("unix:{}", path.display()));
    let running = Running::start(server, listeners);

    let mut c = Http::new(UnixStream::connect(&path).await.unwrap());
    // No per-client limit for a peer without an address: a second one is served too.
    let mut other = Http::new(UnixStream::connect(&path).await.unwrap());
    assert_eq!(other.get("/healthz").await.status, 200);
    for i in 1..=3 {
        let r = c.get("/healthz").await;
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
        if i < 3 {
            assert_eq!(r.header("keep-alive"), Some("timeout=1, max=3"));
        } else {
            assert_eq!(r.header("connection"), Some("close"), "max requests");
        }
    }
    c.closed().await;
    let took = other.closed().await;
    assert!(took < Duration::from_millis(1500), "idle timeout: {took:?}");

    // A WebSocket over the Unix socket.
    let mut ws = Http::new(UnixStream::connect(&path).await.unwrap());
    ws.send(UPGRADE).await;
    assert!(ws.head().await.starts_with("HTTP/1.1 101 "));
    ws.send(&masked_frame(0x2, b"bytes")).await;
    assert_eq!(next_frame(&mut ws).await, (0x2, b"bytes".to_vec()));

    // TCP is served by the same server.
    let mut t = Http::new(TcpStream::connect(addr).await.unwrap());
    assert_eq!(t.get("/healthz").await.status, 200);
    // Shutdown closes the WebSocket with 1001.
    let mut running = running;
    running.begin_stop();
    let (opcode, payload) = next_frame(&mut ws).await;
    assert_eq!((opcode, &payload[..2]), (0x8, &1001u16.to_be_bytes()[..]));
    ws.send(&masked_frame(0x8, &1001u16.to_be_bytes())).await;
    ws.closed().await;
    t.closed().await;
    timeout(T, running.done).await.expect("the server stops").unwrap();
    assert!(path.exists(), "the socket file stays until its owner removes it");
}

// ----- parking over TLS and Unix sockets -----

const PARK: Duration = Duration::from_millis(100);

/// A server with the test app that parks connections idle for `PARK`.
fn parking(config: h1::Config) -> Server {
    Server::new(config, app()).park_idle_after(Some(PARK))
}

/// Waits (bounded) until `holds` says yes.
async fn wait_until(what: &str, holds: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !holds() {
        assert!(Instant::now() < until, "still not {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (bounded) until the server has `parked` connections parked and `open` open.
async fn wait_counts(stats: &ServerStats, parked: u64, open: u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let counts = || (stats.parked.load(Relaxed), stats.open.get());
    wait_until(&format!("{parked} parked / {open} open"), || counts() == (parked, open)).await;
}

fn healthz_ok(r: &Resp) {
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
}

const GET_HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";

#[tokio::test]
async fn an_idle_tls_connection_parks_and_its_next_requests_resume_it() {
    let (running, addr, pki) = start_tls(parking(config(Duration::from_secs(30), 100))).await;
    let mut c = connect(&pki, addr).await;
    for round in 0..3 {
        let r = c.get("/healthz").await;
        healthz_ok(&r);
        assert_eq!(r.header("keep-alive"), Some("timeout=30, max=100"), "round {round}");
        assert_eq!(r.header("connection"), None);
        wait_counts(&running.stats, 1, 1).await;
    }
    // Two requests in one TLS record reach the parked connection: both
    // are answered, in order.
    c.send(&[GET_HEALTHZ, b"GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n"].concat())
        .await;
    healthz_ok(&c.response().await);
    assert_eq!(c.response().await.status, 404);
    wait_counts(&running.stats, 1, 1).await;
    // The same TLS session all along.
    let handshakes = running.stats.tls_handshakes.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(handshakes, 1);
    running.stop().await;
}

#[tokio::test]
async fn a_parked_tls_connection_closes_at_its_idle_timeout_with_close_notify() {
    let (running, addr, pki) = start_tls(parking(config(Duration::from_millis(800), 100))).await;
    let mut c = connect(&pki, addr).await;
    healthz_ok(&c.get("/healthz").await);
    let t0 = Instant::now();
    wait_counts(&running.stats, 1, 1).await;
    closed_cleanly(&mut c).await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(2000),
        "closed by the 800 ms idle timeout, took {took:?}"
    );
    wait_counts(&running.stats, 0, 0).await;
    running.stop().await;
}

#[tokio::test]
async fn request_limits_and_connection_close_hold_after_a_tls_connection_resumes() {
    let (running, addr, pki) = start_tls(parking(config(Duration::from_secs(30), 3))).await;
    let mut c = connect(&pki, addr).await;
    for _ in 0..2 {
        let r = c.get("/healthz").await;
        healthz_ok(&r);
        assert_eq!(r.header("keep-alive"), Some("timeout=30, max=3"));
        assert_eq!(r.header("connection"), None);
        wait_counts(&running.stats, 1, 1).await;
    }
    let last = c.get("/healthz").await;
    healthz_ok(&last);
    assert_eq!(last.header("connection"), Some("close"), "the third of max 3");
    closed_cleanly(&mut c).await;
    wait_counts(&running.stats, 0, 0).await;

    let mut d = connect(&pki, addr).await;
    healthz_ok(&d.get("/healthz").await);
    wait_counts(&running.stats, 1, 1).await;
    d.send(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    let r = d.response().await;
    healthz_ok(&r);
    assert_eq!(r.header("connection"), Some("close"));
    closed_cleanly(&mut d).await;
    running.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_closes_parked_tls_connections_with_close_notify() {
    let server = parking(config(Duration::from_secs(30), 100)).shutdown_timeout(Duration::from_secs(5));
    let (mut running, addr, pki) = start_tls(server).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = connect(&pki, addr).await;
        healthz_ok(&c.get("/healthz").await);
        clients.push(c);
    }
    wait_counts(&running.stats, 5, 5).await;
    let t0 = Instant::now();
    running.begin_stop();
    for c in &mut clients {
        closed_cleanly(c).await;
    }
    timeout(T, running.done).await.expect("the server stops").unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3), "drained: {:?}", t0.elapsed());
}

#[tokio::test]
async fn a_websocket_over_tls_parks_echoes_when_resumed_and_closes_1001_at_shutdown() {
    let (mut running, addr, pki) = start_tls(parking(config(Duration::from_secs(30), 100))).await;
    let stats = running.stats.clone();
    let parked_websockets = || stats.parked_websockets.load(std::sync::atomic::Ordering::Relaxed);
    let mut c = connect(&pki, addr).await;
    c.send(UPGRADE).await;
    assert!(c.head().await.starts_with("HTTP/1.1 101 "));
    for text in ["parked", "and parked again"] {
        wait_until("a parked WebSocket", || parked_websockets() == 1).await;
        c.send(&masked_frame(0x1, text.as_bytes())).await;
        assert_eq!(next_frame(&mut c).await, (0x1, text.as_bytes().to_vec()));
    }
    wait_until("a parked WebSocket", || parked_websockets() == 1).await;
    running.begin_stop();
    let (opcode, payload) = next_frame(&mut c).await;
    assert_eq!((opcode, &payload[..2]), (0x8, &1001u16.to_be_bytes()[..]));
    c.send(&masked_frame(0x8, &1001u16.to_be_bytes())).await;
    closed_cleanly(&mut c).await;
    timeout(T, running.done).await.expect("the server stops").unwrap();
}

/// A TLS client on a blocking socket that runs rustls itself, so a test
/// can put any part of a record on the wire.
struct RawTlsClient {
    tls: rustls::ClientConnection,
    tcp: std::net::TcpStream,
    plaintext: Vec<u8>,
}

impl RawTlsClient {
    fn connect(config: Arc<ClientConfig>, addr: SocketAddr) -> Self {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(T)).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = rustls::ClientConnection::new(config, name).unwrap();
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp).unwrap();
        }
        Self {
            tls,
            tcp,
            plaintext: Vec::new(),
        }
    }

    /// The records that carry `plaintext`, as they would go on the wire.
    fn seal(&mut self, plaintext: &[u8]) -> Vec<u8> {
        use std::io::Write;
        self.tls.writer().write_all(plaintext).unwrap();
        let mut records = Vec::new();
        while self.tls.wants_write() {
            self.tls.write_tls(&mut records).unwrap();
        }
        records
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.tcp.write_all(bytes).unwrap();
    }

    /// Reads until `n` `/healthz` responses (`200`, body `ok`) arrived.
    fn healthz_responses(&mut self, n: usize) {
        use std::io::Read;
        const OK: &[u8] = b"\r\n\r\nok";
        let count = |b: &[u8]| b.windows(OK.len()).filter(|w| *w == OK).count();
        while count(&self.plaintext) < n {
            let mut chunk = [0u8; 4096];
            let got = rustls::Stream::new(&mut self.tls, &mut self.tcp)
                .read(&mut chunk)
                .unwrap();
            assert!(got > 0, "closed before {n} responses");
            self.plaintext.extend_from_slice(&chunk[..got]);
        }
        assert_eq!(count(&self.plaintext), n);
        let text = String::from_utf8_lossy(&self.plaintext);
        assert_eq!(text.matches("HTTP/1.1 200 ").count(), n, "{text}");
        self.plaintext.clear();
    }
}

/// Runs `step` (the blocking client's) on a thread of its own, the server
/// going on meanwhile.
async fn blocking<R: Send + 'static>(step: impl FnOnce() -> R + Send + 'static) -> R {
    timeout(T, tokio::task::spawn_blocking(step))
        .await
        .expect("the step in time")
        .unwrap()
}

#[tokio::test]
async fn a_tls_record_split_across_parking_is_served_once_whole() {
    let (running, addr, pki) = start_tls(parking(config(Duration::from_secs(30), 100))).await;
    let config = pki.client_config(&[b"http/1.1"]);
    let mut c = blocking(move || {
        let mut c = RawTlsClient::connect(config, addr);
        let record = c.seal(GET_HEALTHZ);
        c.send_raw(&record);
        c.healthz_responses(1);
        c
    })
    .await;
    wait_counts(&running.stats, 1, 1).await;
    // Half a record wakes the parked connection: rustls keeps it (no
    // plaintext yet) and the connection parks again, holding it.
    let record = c.seal(GET_HEALTHZ);
    let (first, rest) = record.split_at(record.len() / 2);
    c.send_raw(first);
    tokio::time::sleep(3 * PARK).await;
    wait_counts(&running.stats, 1, 1).await;
    // The rest makes the socket readable again: the request is whole.
    c.send_raw(rest);
    let mut c = blocking(move || {
        c.healthz_responses(1);
        c
    })
    .await;
    wait_counts(&running.stats, 1, 1).await;
    // Three requests in one record: all answered.
    let record = c.seal(&GET_HEALTHZ.repeat(3));
    c.send_raw(&record);
    blocking(move || c.healthz_responses(3)).await;
    running.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn an_idle_unix_socket_connection_parks_resumes_and_closes_at_its_idle_timeout() {
    use tokio::net::UnixStream;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.sock");
    let server = parking(config(Duration::from_secs(1), 100));
    let mut running = Running::start(server, vec![Listener::Unix(tether::server::bind_unix(&path).unwrap())]);
    let stats = running.stats.clone();
    let mut c = Http::new(UnixStream::connect(&path).await.unwrap());
    for _ in 0..3 {
        let r = c.get("/healthz").await;
        healthz_ok(&r);
        assert_eq!(r.header("keep-alive"), Some("timeout=1, max=100"));
        wait_counts(&stats, 1, 1).await;
    }
    let took = c.closed().await;
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(2200),
        "closed by the 1 s idle timeout, took {took:?}"
    );
    wait_counts(&stats, 0, 0).await;

    // A WebSocket over the Unix socket parks too; shutdown closes it with 1001.
    let parked_websockets = || stats.parked_websockets.load(std::sync::atomic::Ordering::Relaxed);
    let mut ws = Http::new(UnixStream::connect(&path).await.unwrap());
    ws.send(UPGRADE).await;
    assert!(ws.head().await.starts_with("HTTP/1.1 101 "));
    wait_until("a parked WebSocket", || parked_websockets() == 1).await;
    ws.send(&masked_frame(0x2, b"bytes")).await;
    assert_eq!(next_frame(&mut ws).await, (0x2, b"bytes".to_vec()));
    wait_until("a parked WebSocket", || parked_websockets() == 1).await;
    running.begin_stop();
    let (opcode, payload) = next_frame(&mut ws).await;
    assert_eq!((opcode, &payload[..2]), (0x8, &1001u16.to_be_bytes()[..]));
    ws.send(&masked_frame(0x8, &1001u16.to_be_bytes())).await;
    ws.closed().await;
    timeout(T, running.done).await.expect("the server stops").unwrap();
}

#[tokio::test]
async fn a_large_static_file_over_tls_is_read_in_chunks_and_arrives_whole() {
    // No sendfile over TLS (rustls encrypts in this process): the file body
    // becomes chunked reads, with the same Content-Length and bytes.
    let dir = tempfile::tempdir().unwrap();
    let file: Vec<u8> = (0..3 * 1024 * 1024 + 5).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("big.bin"), &file).unwrap();
    let files = tether::server::StaticFiles::new(dir.path());
    let (running, addr, pki) = start_tls(Server::new(config(Duration::from_secs(5), 100), files)).await;
    let mut c = connect(&pki, addr).await;
    let r = c.get("/big.bin").await;
    assert_eq!(r.status, 200);
    assert!(r.body == file, "the whole file, byte for byte");
    let r = c.get("/big.bin").await;
    assert!(
        r.status == 200 && r.body.len() == file.len(),
        "again on the same connection"
    );
    running.stop().await;
}

#[tokio::test]
async fn hub_subscribers_over_wss_park_and_get_every_publication_while_parked() {
    // The hub over TLS: two wss subscribers (tether's own client) park
    // once idle; publications reach them through rustls without a task,
    // in order, none lost; a subscriber that comes back with `since`
    // resumes.
    let (hub, _) = tether::hub::Hub::in_memory(tether::hub::HubConfig::default());
    let router = tether::hub::http::routes(Router::new(), &hub, &Arc::new(WsOptions::default()));
    let server =
        Server::new(config(Duration::from_secs(60), 100), router).park_idle_after(Some(Duration::from_millis(100)));
    let (running, addr, pki) = start_tls(server).await;
    let options = || tether::client::ws::ClientOptions {
        tls: tether::client::TlsOptions {
            config: Some(pki.client_config(&[b"http/1.1"])),
            ..Default::default()
        },
        ..Default::default()
    };
    let url = format!("wss://localhost:{}/ws", addr.port());
    let mut subscribers = Vec::new();
    for _ in 0..2 {
        let ws = timeout(T, tether::client::ws::connect(&url, options()))
            .await
            .unwrap()
            .expect("wss connect");
        ws.send(Message::Text(r#"{"type":"subscribe","channel":"feed"}"#.into()))
            .await
            .unwrap();
        subscribers.push(ws);
    }
    for ws in &mut subscribers {
        let m = next_json(ws).await;
        assert_eq!(m["type"], "subscribed", "{m}");
    }
    let deadline = Instant::now() + T;
    while running.stats.parked.load(std::sync::atomic::Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "both subscribers parked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let channel = tether::hub::ChannelName::new("feed").unwrap();
    for n in 1..=50 {
        hub.publish_json(&channel, &n.to_string()).await.unwrap();
    }
    for ws in &mut subscribers {
        for n in 1..=50u64 {
            let m = next_json(ws).await;
            assert_eq!((m["offset"].as_u64(), m["data"].as_u64()), (Some(n), Some(n)), "{m}");
        }
    }
    assert!(
        running.stats.parked_writes.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "written to parked connections, through rustls"
    );
    // One goes away and comes back with `since`: it gets what it missed.
    drop(subscribers.pop());
    for n in 51..=53 {
        hub.publish_json(&channel, &n.to_string()).await.unwrap();
    }
    let mut back = timeout(T, tether::client::ws::connect(&url, options()))
        .await
        .unwrap()
        .expect("wss connect");
    back.send(Message::Text(
        r#"{"type":"subscribe","channel":"feed","since":50}"#.into(),
    ))
    .await
    .unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = next_json(&mut back).await;
        if m["type"] == "message" {
            got.push(m["offset"].as_u64().unwrap());
        }
    }
    assert_eq!(got, [51, 52, 53]);
    drop((back, subscribers));
    running.stop().await;
}

/// The next text message of a hub client, as JSON.
async fn next_json(ws: &mut tether::ws::WebSocket) -> serde_json::Value {
    loop {
        match timeout(T, ws.recv()).await.expect("a message in time") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("the connection ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn at_the_connection_limit_a_parked_tls_connection_is_reclaimed_with_close_notify() {
    // Beyond --max-connections the longest-idle parked connection makes
    // room: the lot closes it without a task, close_notify first, and the
    // newcomer is served.
    let server = Server::new(config(Duration::from_secs(30), 100), app())
        .max_connections(Some(1))
        .park_idle_after(Some(Duration::from_millis(100)));
    let (running, addr, pki) = start_tls(server).await;
    let mut idle = connect(&pki, addr).await;
    assert_eq!(idle.get("/healthz").await.status, 200);
    let deadline = Instant::now() + T;
    while running.stats.parked.load(std::sync::atomic::Ordering::Relaxed) < 1 {
        assert!(Instant::now() < deadline, "the idle connection parked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut newcomer = connect(&pki, addr).await;
    assert_eq!(newcomer.get("/healthz").await.status, 200, "served, not 503");
    closed_cleanly(&mut idle).await;
    drop(newcomer);
    running.stop().await;
}
