//! `tether serve --tls-cert --tls-key --listen-unix`: HTTPS on the TCP
//! listener, the certificate reloaded on SIGHUP and when its files change
//! (new connections get the new one, an open connection goes on), plain
//! HTTP on the Unix socket, a clean exit that removes the socket file.
//! Certificates are made here with `rcgen`.

#[allow(dead_code)]
#[path = "conformance/harness.rs"]
mod harness;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rcgen::{CertificateParams, DnType, KeyPair};
use tether::tls::rustls::pki_types::{CertificateDer, ServerName};
use tether::tls::rustls::{ClientConfig, RootCertStore};
use tether::tls::tokio_rustls::client::TlsStream;
use tether::tls::tokio_rustls::TlsConnector;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

/// Writes a self-signed `localhost` certificate named `cn` and its key;
/// returns the certificate (the client trusts it as its own root).
fn issue(dir: &Path, cn: &str) -> CertificateDer<'static> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    let cert = params.self_signed(&key).unwrap();
    for (name, pem) in [("cert.pem", cert.pem()), ("key.pem", key.serialize_pem())] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
    cert.der().clone()
}

fn connector(trusted: &[&CertificateDer<'static>]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for c in trusted {
        roots.add((*c).clone()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(tether::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

async fn connect(connector: &TlsConnector, port: u16) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(T, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

fn leaf(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

/// `GET /healthz` on a keep-alive connection: the response's head and body.
async fn healthz<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) -> String {
    io.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    io.flush().await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"ok")) {
        let n = tokio::time::timeout(T, io.read(&mut chunk))
            .await
            .expect("in time")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(got).unwrap()
}

/// The certificate's and the key's modification times.
fn mtimes(dir: &Path) -> [SystemTime; 2] {
    ["cert.pem", "key.pem"].map(|name| std::fs::metadata(dir.join(name)).unwrap().modified().unwrap())
}

/// Sets the certificate's and the key's modification times.
fn set_mtimes(dir: &Path, times: [SystemTime; 2]) {
    for (name, t) in ["cert.pem", "key.pem"].into_iter().zip(times) {
        let f = std::fs::File::options().write(true).open(dir.join(name)).unwrap();
        f.set_modified(t).unwrap();
    }
}

/// Moves the files made in `from` over those in `to` (their times kept).
fn move_files(from: &Path, to: &Path) {
    for name in ["cert.pem", "key.pem"] {
        std::fs::rename(from.join(name), to.join(name)).unwrap();
    }
}

/// Connects until a new connection gets `want` (bounded by `within`).
async fn wait_for_certificate(c: &TlsConnector, port: u16, want: &CertificateDer<'static>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = leaf(&connect(c, port).await);
        if &got == want {
            return;
        }
        assert!(Instant::now() < deadline, "still the old certificate after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn serve_reloads_its_certificate_on_sighup_and_when_the_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let first = issue(dir.path(), "first");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let sock = dir.path().join("tether.sock");
    let args = [
        "--demo=false",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--listen-unix",
        sock.to_str().unwrap(),
    ];
    let server = harness::Server::start(&args);
    let port = server.port;
    assert!(
        server.log().contains("listening on https://127.0.0.1:"),
        "{}",
        server.log()
    );

    // The client trusts every certificate the test will issue (each is its own root).
    let (second_dir, third_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let second = issue(second_dir.path(), "second");
    let third = issue(third_dir.path(), "third");
    let trust = connector(&[&first, &second, &third]);

    // New files with the old modification times: the watcher sees no
    // change, and the server still serves the first.
    set_mtimes(second_dir.path(), mtimes(dir.path()));
    move_files(second_dir.path(), dir.path());
    let mut old = connect(&trust, port).await;
    assert_eq!(leaf(&old), first);
    assert!(healthz(&mut old).await.starts_with("HTTP/1.1 200 "));

    // SIGHUP: new connections get the second; the old one goes on.
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_certificate(&trust, port, &second, T).await;
    assert!(
        healthz(&mut old).await.starts_with("HTTP/1.1 200 "),
        "the old connection goes on"
    );
    assert_eq!(leaf(&old), first);

    // Changed files (new modification times): reloaded by the watcher.
    let later = SystemTime::now() + Duration::from_secs(1);
    set_mtimes(third_dir.path(), [later, later]);
    move_files(third_dir.path(), dir.path());
    wait_for_certificate(&trust, port, &third, T).await;

    // A broken key file: the failure is logged, the third stays.
    let failures = |log: &str| log.matches("reload failed").count();
    let before = failures(&server.log());
    std::fs::write(&key, "garbage\n").unwrap();
    let even_later = SystemTime::now() + Duration::from_secs(2);
    set_mtimes(dir.path(), [even_later, even_later]);
    let deadline = Instant::now() + T;
    while failures(&server.log()) == before {
        assert!(Instant::now() < deadline, "no reload error logged:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(leaf(&connect(&trust, port).await), third);

    // The Unix socket: plain HTTP with keep-alive.
    let mut unix = tokio::net::UnixStream::connect(&sock).await.unwrap();
    for _ in 0..2 {
        let r = healthz(&mut unix).await;
        assert!(
            r.starts_with("HTTP/1.1 200 ") && r.contains("keep-alive: timeout=5"),
            "{r}"
        );
    }
    assert!(server.log().contains(&format!("listening on unix:{}", sock.display())));
    drop((old, unix));
    server.stop();
    assert!(!sock.exists(), "the socket file is removed at a clean exit");
}

#[test]
fn a_certificate_without_its_key_or_an_unreadable_one_is_refused_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    issue(dir.path(), "only");
    let cert = dir.path().join("cert.pem");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("TETHER_TLS_KEY")
            .env_remove("TETHER_TLS_CERT")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&["--tls-cert", cert.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("tls-key"), "{err}");
    let missing = dir.path().join("missing.pem");
    let (code, err) = run(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("missing.pem") && !err.contains("listening on"), "{err}");
}
