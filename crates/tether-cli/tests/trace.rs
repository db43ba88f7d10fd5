//! `tether trace` against `tether serve` (and a scripted server for the
//! stale case): the JSON timeline shows each close with its cause.

#[allow(dead_code)]
#[path = "conformance/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "support/pki.rs"]
mod pki;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// Runs `tether trace ARGS --json` and returns the document.
fn trace(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("trace")
        .args(args)
        .arg("--json")
        .output()
        .expect("run tether trace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tether trace {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

fn events<'a>(doc: &'a Value, kind: &str) -> Vec<&'a Value> {
    doc["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

fn column(events: &[&Value], field: &str) -> Vec<Value> {
    events.iter().map(|e| e[field].clone()).collect()
}

#[test]
fn the_connection_closes_at_max_and_the_next_request_opens_another() {
    let server = harness::Server::start(&["--keep-alive-timeout", "1s", "--keep-alive-max", "3"]);
    let url = format!("http://127.0.0.1:{}/healthz", server.port);
    let doc = trace(&[&url, "--requests", "4", "--interval", "0.2s"]);
    let requests = events(&doc, "request");
    assert_eq!(column(&requests, "conn"), [1, 1, 1, 2], "{doc:#}");
    assert_eq!(column(&requests, "count"), [1, 2, 3, 1]);
    assert_eq!(column(&requests, "limit"), [3, 3, 3, 3]);
    assert_eq!(column(&requests, "status"), [200, 200, 200, 200]);
    assert_eq!(requests[0]["keep_alive"], "timeout=1, max=3");
    assert_eq!(column(&requests, "server_close"), [false, false, true, false]);
    assert_eq!(requests[2]["connection"], "close");
    assert!(requests.iter().all(|r| r["response_body_bytes"] == 2), "{doc:#}");

    let closes = events(&doc, "close");
    assert_eq!(column(&closes, "conn"), [1, 2], "{doc:#}");
    assert_eq!(column(&closes, "cause"), ["max", "trace_finished"]);
    assert_eq!(column(&closes, "by"), ["server", "trace"]);
    assert_eq!(closes[0]["how"], "fin");
    assert_eq!(closes[0]["requests"], 3);
    let detail = closes[0]["detail"].as_str().unwrap();
    assert!(detail.contains("max reached (3/3)"), "{detail}");
    // Closed right after the 3rd response, before the 4th request.
    assert!(closes[0]["t_ms"].as_f64() < requests[3]["t_ms"].as_f64());
    assert_eq!(events(&doc, "connect").len(), 2);
    assert_eq!(doc["summary"]["connections"], 2);
    assert_eq!(doc["summary"]["answered"], 4);
    assert_eq!(doc["summary"]["lost"], 0);
    assert_eq!(doc["summary"]["closes"]["max"], 1);
    assert_eq!(doc["summary"]["bytes"]["in"]["body"], 8);
    server.stop();
}

#[test]
fn the_server_closes_an_idle_connection_at_its_timeout() {
    let server = harness::Server::start(&["--keep-alive-timeout", "1s", "--keep-alive-max", "3"]);
    let url = format!("http://127.0.0.1:{}/healthz", server.port);
    // A gap longer than the timeout, and after the last request a linger
    // long enough to see the second connection's idle close too.
    let doc = trace(&[&url, "--requests", "2", "--interval", "1.5s", "--linger", "3s"]);
    let requests = events(&doc, "request");
    assert_eq!(column(&requests, "conn"), [1, 2], "{doc:#}");
    assert_eq!(column(&requests, "count"), [1, 1]);
    let closes = events(&doc, "close");
    assert_eq!(column(&closes, "cause"), ["idle_timeout", "idle_timeout"], "{doc:#}");
    assert_eq!(column(&closes, "by"), ["server", "server"]);
    for close in &closes {
        let idle = close["idle_ms"].as_f64().expect("idle_ms");
        assert!((900.0..1400.0).contains(&idle), "closed after idle {idle} ms: {doc:#}");
        let detail = close["detail"].as_str().unwrap();
        assert!(detail.contains("advertised timeout=1 s"), "{detail}");
    }
    // The close was seen during the gap, before the next request.
    assert!(closes[0]["t_ms"].as_f64() < requests[1]["t_ms"].as_f64());
    assert!(
        events(&doc, "idle").is_empty(),
        "no gap ended with the connection open: {doc:#}"
    );
    assert_eq!(doc["summary"]["closes"]["idle_timeout"], 2);
    server.stop();
}

#[test]
fn http_1_0_requests_ask_for_keep_alive_and_get_it() {
    let server = harness::Server::start(&["--keep-alive-max", "5"]);
    let url = format!("http://127.0.0.1:{}/healthz", server.port);
    let doc = trace(&[&url, "--http1.0", "--requests", "3", "--interval", "0"]);
    let requests = events(&doc, "request");
    assert_eq!(column(&requests, "conn"), [1, 1, 1], "{doc:#}");
    assert_eq!(column(&requests, "version"), ["HTTP/1.0", "HTTP/1.0", "HTTP/1.0"]);
    assert_eq!(column(&requests, "server_close"), [false, false, false]);
    server.stop();
}

#[test]
fn a_request_lost_on_a_stale_connection_is_shown_and_sent_again() {
    // Connection 1 answers one request and closes on reading the second
    // without a byte of answer; connection 2 answers everything.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=30\r\n\r\nok";
        let read_request = |s: &mut std::net::TcpStream| {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the client closed");
                got.extend_from_slice(&buf[..n]);
            }
        };
        for (i, stream) in listener.incoming().take(2).enumerate() {
            let mut s = stream.unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            read_request(&mut s);
            s.write_all(OK).unwrap();
            if i == 0 {
                read_request(&mut s);
                drop(s);
            }
        }
    });
    let url = format!("http://127.0.0.1:{port}/x");
    let doc = trace(&[&url, "--requests", "2", "--interval", "0.05s"]);
    server.join().unwrap();
    let lost = events(&doc, "request_lost");
    assert_eq!(lost.len(), 1, "{doc:#}");
    assert_eq!(lost[0]["request"], 2);
    assert_eq!(lost[0]["will_retry"], true);
    assert!(lost[0]["reason"].as_str().unwrap().contains("stale"), "{doc:#}");
    let requests = events(&doc, "request");
    assert_eq!(column(&requests, "request"), [1, 2]);
    assert_eq!(column(&requests, "conn"), [1, 2]);
    assert_eq!(column(&requests, "retry"), [false, true]);
    assert_eq!(requests[0]["limit"], Value::Null);
    let closes = events(&doc, "close");
    assert_eq!(closes[0]["cause"], "stale", "{doc:#}");
    assert_eq!(doc["summary"]["lost"], 1);
}

#[test]
fn websocket_frames_are_shown_with_their_header_sizes() {
    let server = harness::Server::start(&[]);
    let url = format!("ws://127.0.0.1:{}/echo", server.port);
    let doc = trace(&[&url, "--requests", "3", "--interval", "0.1s"]);
    assert_eq!(doc["protocol"], "websocket");
    let upgrade = events(&doc, "ws_upgrade_response");
    assert_eq!(upgrade.len(), 1, "{doc:#}");
    assert_eq!(upgrade[0]["status"], 101);
    assert!(upgrade[0]["head_bytes"].as_u64().unwrap() > 0);
    let frames = events(&doc, "ws_frame");
    let text = |dir: &str| -> Vec<&Value> {
        frames
            .iter()
            .copied()
            .filter(|f| f["dir"] == dir && f["opcode"] == "text")
            .collect()
    };
    let (out, inc) = (text("out"), text("in"));
    assert_eq!(column(&out, "preview"), ["ping 1", "ping 2", "ping 3"], "{doc:#}");
    assert_eq!(column(&inc, "preview"), ["ping 1", "ping 2", "ping 3"], "{doc:#}");
    assert_eq!(column(&out, "header_bytes"), [6, 6, 6]);
    assert_eq!(column(&out, "masked"), [true, true, true]);
    assert_eq!(column(&inc, "header_bytes"), [2, 2, 2]);
    assert_eq!(column(&inc, "masked"), [false, false, false]);
    let closes: Vec<&Value> = frames.iter().copied().filter(|f| f["opcode"] == "close").collect();
    assert_eq!(column(&closes, "dir"), ["out", "in"], "{doc:#}");
    assert_eq!(column(&closes, "close_code"), [1000, 1000]);
    let end = events(&doc, "close");
    assert_eq!(end.len(), 1);
    assert_eq!(end[0]["cause"], "close_handshake");
    assert_eq!(end[0]["by"], "server", "the server closes TCP first: {doc:#}");
    assert_eq!(
        doc["summary"]["bytes"]["out"]["body"],
        3 * 6 + 2 + "trace finished".len()
    );
    server.stop();
}

/// A TLS server for trace: tether's own router over tokio-rustls, on a
/// thread of its own; certificates from rcgen in a temporary directory
/// (`support/pki.rs`).
struct TlsServer {
    port: u16,
    pki: pki::Pki,
}

impl TlsServer {
    fn start() -> TlsServer {
        use std::sync::Arc;
        use tether::client::tls::rustls;
        use tether::server::router::{self, Router};
        use tether::server::{Request, SharedHandler};

        let pki = pki::Pki::new();
        let provider = tether::client::tls::crypto_provider();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![pki.cert_der.clone().into()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(pki.key_der.clone().into()),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let ws_options = Arc::new(tether::ws::WsOptions::default());
                let app = Router::new()
                    .route(
                        "/hello",
                        router::get(|_r: Request| async { router::text(http::StatusCode::OK, "hi") }),
                    )
                    .route("/echo", move |req: Request| {
                        let options = ws_options.clone();
                        async move {
                            tether::ws::upgrade(&req, &options, |mut socket| async move {
                                while let Some(Ok(m)) = socket.recv().await {
                                    if matches!(m, tether::ws::Message::Text(_)) && socket.send(m).await.is_err() {
                                        break;
                                    }
                                }
                            })
                        }
                    });
                let handler: SharedHandler = Arc::new(app);
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let config = Arc::new(tether::server::Config::default());
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, handler, config) = (acceptor.clone(), handler.clone(), config.clone());
                    tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            tether::server::driver::serve_transport(tls, config, handler).await;
                        }
                    });
                }
            });
        });
        TlsServer { port, pki }
    }

    fn ca_file(&self) -> String {
        self.pki.ca().to_string_lossy().into_owned()
    }
}

#[test]
fn https_and_wss_show_the_tls_handshake() {
    let server = TlsServer::start();
    let url = format!("https://localhost:{}/hello", server.port);
    let ca = server.ca_file();
    let doc = trace(&[&url, "--ca-file", &ca, "--requests", "3", "--interval", "0.05s"]);
    let tls = events(&doc, "tls");
    assert_eq!(tls.len(), 1, "{doc:#}");
    assert_eq!(tls[0]["version"], "TLSv1.3");
    assert_eq!(tls[0]["alpn"], "http/1.1");
    assert_eq!(tls[0]["server_name"], "localhost");
    assert!(tls[0]["handshake_ms"].as_f64().unwrap() > 0.0);
    let requests = events(&doc, "request");
    assert_eq!(column(&requests, "conn"), [1, 1, 1], "{doc:#}");
    assert_eq!(column(&requests, "status"), [200, 200, 200]);

    let url = format!("wss://localhost:{}/echo", server.port);
    let doc = trace(&[&url, "--ca-file", &ca, "--requests", "2", "--interval", "0.05s"]);
    assert_eq!(events(&doc, "tls").len(), 1, "{doc:#}");
    let frames = events(&doc, "ws_frame");
    let texts: Vec<_> = frames.iter().filter(|f| f["opcode"] == "text").collect();
    assert_eq!(texts.len(), 4, "two out, two echoed: {doc:#}");
    let closes = events(&doc, "close");
    assert_eq!(closes[0]["cause"], "close_handshake", "{doc:#}");

    // Without the CA file the certificate is not trusted: trace fails.
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args([
            "trace",
            &format!("https://localhost:{}/hello", server.port),
            "--requests",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
