//! The clients over TLS (`https://`, `wss://`) against TLS servers made
//! here: tether's own server (`serve_transport` over a tokio-rustls
//! stream) and a scripted one for what happens to an idle connection.
//! Certificates are generated for each test with rcgen (a CA and a
//! `localhost` / `127.0.0.1` certificate it signs) into a temporary
//! directory; nothing secret is committed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tether::client::http::{ClientError, Exchange, HttpClient, HttpClientOptions};
use tether::client::tls::rustls;
use tether::client::ws::{connect, ClientOptions, ConnectError};
use tether::client::{TlsError, TlsOptions};
use tether::proto::h1;
use tether::server::driver::serve_transport;
use tether::server::router::{self, Router};
use tether::server::{Request, SharedHandler};
use tether::ws::{self, CloseCode, Message, WsOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

const T: Duration = Duration::from_secs(10);

/// A CA and a server certificate it signed, the CA's PEM in a file.
struct Pki {
    _dir: tempfile::TempDir,
    ca_file: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    (params.self_signed(&key).unwrap(), key)
}

impl Pki {
    fn new() -> Pki {
        let (ca_cert, ca_key) = ca("tether test CA");
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        let provider = tether::client::tls::crypto_provider();
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Pki {
            _dir: dir,
            ca_file,
            server: Arc::new(server),
        }
    }

    fn trust(&self) -> TlsOptions {
        TlsOptions {
            ca_file: Some(self.ca_file.clone()),
            config: None,
        }
    }

    /// Another CA's file: the server's certificate is not signed by it.
    fn stranger(&self) -> TlsOptions {
        let (other, _key) = ca("someone else");
        let path = self._dir.path().join("other.pem");
        std::fs::write(&path, other.pem()).unwrap();
        TlsOptions {
            ca_file: Some(path),
            config: None,
        }
    }
}

/// tether's server behind TLS: `/hello`, `/close` (answers with
/// `Connection: close`) and `/echo` (a WebSocket echo).
struct TlsServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

fn app() -> Router {
    let ws_options = Arc::new(WsOptions::default());
    Router::new()
        .route(
            "/hello",
            router::get(|_r: Request| async { router::text(StatusCode::OK, "hello over tls") }),
        )
        .route(
            "/close",
            router::get(|_r: Request| async {
                let mut resp = router::text(StatusCode::OK, "bye");
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                resp
            }),
        )
        .route("/echo", move |req: Request| {
            let options = ws_options.clone();
            async move {
                ws::upgrade(&req, &options, |mut socket| async move {
                    while let Some(Ok(m)) = socket.recv().await {
                        if matches!(m, Message::Text(_) | Message::Binary(_)) && socket.send(m).await.is_err() {
                            break;
                        }
                    }
                })
            }
        })
}

impl TlsServer {
    async fn start(pki: &Pki) -> TlsServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(pki.server.clone());
        let accepted = Arc::new(AtomicUsize::new(0));
        let handler: SharedHandler = Arc::new(app());
        let config = Arc::new(h1::Config::default());
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (acceptor, handler, config) = (acceptor.clone(), handler.clone(), config.clone());
                tokio::spawn(async move {
                    // A refused handshake (the untrusted-certificate test) just ends.
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve_transport(tls, config, handler).await;
                    }
                });
            }
        });
        TlsServer { addr, accepted }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }
}

fn client(tls: TlsOptions) -> HttpClient {
    HttpClient::new(HttpClientOptions {
        tls,
        ..HttpClientOptions::default()
    })
}

fn exchange(resp: &http::Response<Bytes>) -> Exchange {
    *resp.extensions().get::<Exchange>().expect("an Exchange")
}

#[tokio::test]
async fn the_pool_reuses_one_tls_connection_for_three_requests() {
    let pki = Pki::new();
    let server = TlsServer::start(&pki).await;
    let client = client(pki.trust());
    for i in 1..=3u64 {
        let resp = timeout(T, client.get(&server.url("/hello"))).await.unwrap().unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(&resp.body()[..], b"hello over tls");
        let x = exchange(&resp);
        assert_eq!((x.connection, x.sequence, x.reused), (1, i, i > 1), "{x:?}");
        // Session tickets and the like on the idle connection do not retire it.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = client.stats();
    assert_eq!((stats.connections, stats.tls_handshakes, stats.reused), (1, 1, 2));
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(client.idle_connections(), 1);
}

#[tokio::test]
async fn connection_close_over_tls_retires_the_connection() {
    let pki = Pki::new();
    let server = TlsServer::start(&pki).await;
    let client = client(pki.trust());
    let resp = timeout(T, client.get(&server.url("/close"))).await.unwrap().unwrap();
    assert_eq!(&resp.body()[..], b"bye");
    assert_eq!(client.idle_connections(), 0);
    let resp = timeout(T, client.get(&server.url("/hello"))).await.unwrap().unwrap();
    let x = exchange(&resp);
    assert_eq!((x.connection, x.reused, x.retried), (2, false, false));
    let closed = client.stats().closed;
    assert!(closed.contains(&("server_close", 1)), "{closed:?}");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_typed_error() {
    let pki = Pki::new();
    let server = TlsServer::start(&pki).await;
    let err = timeout(T, client(pki.stranger()).get(&server.url("/hello")))
        .await
        .unwrap()
        .unwrap_err();
    match &err {
        ClientError::Tls {
            source: TlsError::Certificate(rustls::CertificateError::UnknownIssuer),
            ..
        } => {}
        other => panic!("expected an unknown-issuer certificate error, got {other:?}"),
    }
    assert!(err.to_string().contains("certificate"), "{err}");
    // The certificate names localhost and 127.0.0.1, not this.
    let wrong_name = format!("https://127.0.0.2:{}/hello", server.addr.port());
    if let Ok(Err(e)) = timeout(T, client(pki.trust()).get(&wrong_name)).await {
        assert!(
            matches!(
                e,
                ClientError::Tls {
                    source: TlsError::Certificate(_),
                    ..
                } | ClientError::Connect { .. }
            ),
            "{e:?}"
        );
    }
    // The WebSocket client says the same.
    let url = format!("wss://localhost:{}/echo", server.addr.port());
    let options = ClientOptions {
        tls: pki.stranger(),
        ..ClientOptions::default()
    };
    let err = connect(&url, options).await.unwrap_err();
    assert!(matches!(err, ConnectError::Tls(TlsError::Certificate(_))), "{err:?}");
}

#[tokio::test]
async fn the_ca_file_is_what_is_trusted_and_an_ip_address_is_checked_too() {
    let pki = Pki::new();
    let server = TlsServer::start(&pki).await;
    let by_ip = format!("https://127.0.0.1:{}/hello", server.addr.port());
    let resp = timeout(T, client(pki.trust()).get(&by_ip)).await.unwrap().unwrap();
    assert_eq!(&resp.body()[..], b"hello over tls");
    // Plain HTTP to the TLS port is another origin, and not TLS.
    let plain = format!("http://localhost:{}/hello", server.addr.port());
    assert!(timeout(T, client(pki.trust()).get(&plain)).await.unwrap().is_err());
    // A CA file that is not there fails before any connection.
    let missing = TlsOptions {
        ca_file: Some(PathBuf::from("/nonexistent/ca.pem")),
        config: None,
    };
    let err = client(missing).get(&server.url("/hello")).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Tls {
                source: TlsError::CaFile { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn wss_echo_through_tethers_own_server_over_tls() {
    let pki = Pki::new();
    let server = TlsServer::start(&pki).await;
    let url = format!("wss://localhost:{}/echo", server.addr.port());
    let options = ClientOptions {
        tls: pki.trust(),
        ..ClientOptions::default()
    };
    let mut socket = timeout(T, connect(&url, options)).await.unwrap().expect("wss connect");
    let big = Bytes::from(vec![42u8; 300_000]);
    for i in 0..5 {
        socket.send(Message::Text(format!("hello {i}").into())).await.unwrap();
        let got = timeout(T, socket.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(got, Message::Text(format!("hello {i}").into()));
    }
    socket.send(Message::Binary(big.clone())).await.unwrap();
    assert_eq!(
        timeout(T, socket.recv()).await.unwrap().unwrap().unwrap(),
        Message::Binary(big)
    );
    socket.close(CloseCode::NORMAL, "done").await.unwrap();
    loop {
        match timeout(T, socket.recv()).await.expect("the close in time") {
            Some(Ok(Message::Close(_))) | Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("{e}"),
            None => break,
        }
    }
}

/// What the scripted server does after its one response.
#[derive(Clone, Copy)]
enum AfterResponse {
    /// Sends `close_notify` and keeps TCP open.
    CloseNotify,
    /// Closes TCP without `close_notify`.
    Fin,
    /// Sends a TLS 1.3 `key_update` (a record that is not data) and goes
    /// on serving.
    KeyUpdate,
}

/// A TLS server that answers requests with keep-alive responses and,
/// after the first, does `after`.
async fn scripted(pki: &Pki, after: AfterResponse) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(pki.server.clone());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                for served in 0.. {
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=30\r\n\r\nok";
                    if tls.write_all(resp).await.is_err() || tls.flush().await.is_err() {
                        return;
                    }
                    if served > 0 {
                        continue;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    match after {
                        AfterResponse::CloseNotify => {
                            tls.get_mut().1.send_close_notify();
                            let _ = tls.flush().await;
                            // TCP stays open: only the alert says it is over.
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            return;
                        }
                        AfterResponse::Fin => return,
                        AfterResponse::KeyUpdate => {
                            tls.get_mut().1.refresh_traffic_keys().unwrap();
                            tls.flush().await.unwrap();
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn close_notify_or_fin_on_an_idle_tls_connection_retires_it() {
    let pki = Pki::new();
    for after in [AfterResponse::CloseNotify, AfterResponse::Fin] {
        let (addr, accepted) = scripted(&pki, after).await;
        let client = client(pki.trust());
        let url = format!("https://localhost:{}/", addr.port());
        let first = timeout(T, client.get(&url)).await.unwrap().unwrap();
        assert_eq!(&first.body()[..], b"ok");
        // The alert (or FIN) arrives while the connection is idle in the pool.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let second = timeout(T, client.get(&url)).await.unwrap().unwrap();
        let x = exchange(&second);
        // Retired before any byte was sent: a fresh connection, no retry.
        assert_eq!((x.connection, x.reused, x.retried), (2, false, false), "{x:?}");
        let stats = client.stats();
        assert_eq!((stats.retried, stats.failed), (0, 0));
        assert!(stats.closed.contains(&("peer_closed", 1)), "{:?}", stats.closed);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}

#[tokio::test]
async fn a_key_update_on_an_idle_tls_connection_does_not_retire_it() {
    let pki = Pki::new();
    let (addr, accepted) = scripted(&pki, AfterResponse::KeyUpdate).await;
    let client = client(pki.trust());
    let url = format!("https://localhost:{}/", addr.port());
    timeout(T, client.get(&url)).await.unwrap().unwrap();
    // The key update arrives while the connection is idle in the pool; the
    // look at it takes the record in (and answers it), and it stays.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for sequence in 2..=3 {
        let resp = timeout(T, client.get(&url)).await.unwrap().unwrap();
        assert_eq!(&resp.body()[..], b"ok");
        let x = exchange(&resp);
        assert_eq!((x.connection, x.sequence, x.reused), (1, sequence, true), "{x:?}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    let closed = client.stats().closed;
    assert!(closed.iter().all(|(_, n)| *n == 0), "{closed:?}");
}

#[tokio::test]
async fn http_and_https_on_one_port_are_different_origins() {
    // A plain tether server: http:// works, https:// to the same host:port
    // is refused by the TLS handshake, never sent on the pooled plain
    // connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler: SharedHandler = Arc::new(app());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(serve_transport(tcp, Arc::new(h1::Config::default()), handler));
        }
    });
    let pki = Pki::new();
    let client = client(pki.trust());
    let plain = format!("http://localhost:{}/hello", addr.port());
    let resp = timeout(T, client.get(&plain)).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(client.idle_connections(), 1);
    let tls = format!("https://localhost:{}/hello", addr.port());
    let err = timeout(T, client.get(&tls)).await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Tls { .. }), "{err:?}");
    assert!(
        matches!(
            err,
            ClientError::Tls {
                source: TlsError::Handshake(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(client.stats().reused, 0);
}

/// `serve_transport` has no shutdown signal: the WebSocket it upgrades to
/// outlives the call and must not read its end as a forced stop.
#[tokio::test]
async fn a_websocket_upgraded_by_serve_transport_lives_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler: SharedHandler = Arc::new(app());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(serve_transport(tcp, Arc::new(h1::Config::default()), handler));
        }
    });
    let url = format!("ws://localhost:{}/echo", addr.port());
    let mut socket = timeout(T, connect(&url, ClientOptions::default()))
        .await
        .unwrap()
        .expect("ws connect");
    socket.send(Message::Text("x".into())).await.unwrap();
    let got = timeout(T, socket.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(got, Message::Text("x".into()));
}
