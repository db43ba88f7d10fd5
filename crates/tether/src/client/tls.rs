//! TLS for the clients (`https://`, `wss://`): rustls with the `ring`
//! provider, trusting the system's root certificates or a given CA file.
//!
//! Theory of operation. A [`TlsConnector`] is one `rustls::ClientConfig`
//! (protocol versions TLS 1.2 and 1.3, ALPN `http/1.1`, no client
//! certificate) built from [`TlsOptions`]: the roots are the system's
//! (`rustls-native-certs`: the platform's store, on Linux the PEM bundle
//! under `/etc/ssl`, or the files named by `SSL_CERT_FILE` /
//! `SSL_CERT_DIR`), read once per process and shared, or, with
//! [`TlsOptions::ca_file`], the certificates of that PEM file instead (a
//! private CA, a test's). No bundled root list (`webpki-roots`) is used: a
//! machine without a root store fails with [`TlsError::NoRoots`] rather
//! than trusting a list frozen at build time.
//!
//! [`TlsConnector::connect`] runs the handshake over any transport (a TCP
//! stream, or one that counts its bytes) with the URL's host as the server
//! name (SNI and certificate check; an IP address is checked against the
//! certificate's IP entries) and returns the stream with a [`TlsInfo`]:
//! the negotiated version, cipher suite and ALPN protocol and how long the
//! handshake took. A rejected certificate is [`TlsError::Certificate`],
//! any other refusal [`TlsError::Handshake`], so callers can tell "not
//! trusted" from "not TLS" without reading messages.
//!
//! [`ClientStream`] is what the pooled HTTP client holds: plain TCP or TLS
//! over TCP, one `AsyncRead + AsyncWrite` type, with the TCP socket still
//! at hand for the pool's look at an idle connection (`MSG_PEEK`).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub use rustls;

/// The protocol the clients offer in ALPN: they speak HTTP/1.1 (and
/// WebSocket upgrades over it) only.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Which certificates a client trusts.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Trust the CA certificates of this PEM file instead of the system's
    /// roots (`None`: the system's).
    pub ca_file: Option<PathBuf>,
    /// A complete rustls configuration to use as it is (roots, client
    /// certificates, versions, ALPN); `ca_file` is then ignored.
    pub config: Option<Arc<ClientConfig>>,
}

/// Why TLS could not be set up or the handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read or is not PEM.
    #[error("reading the CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    /// The CA file holds no usable certificate.
    #[error("the CA file {0} holds no usable certificate")]
    NoCertificates(PathBuf),
    /// No system root certificates were found (use a CA file).
    #[error("no system root certificates found (install ca-certificates, set SSL_CERT_FILE, or give a CA file)")]
    NoRoots,
    /// The URL's host cannot be a TLS server name.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    /// The server's certificate is not trusted (unknown issuer, wrong
    /// name, expired, ...).
    #[error("the server's certificate was rejected: {0}")]
    Certificate(rustls::CertificateError),
    /// The handshake failed for another TLS reason (no common version or
    /// cipher suite, an alert from the server, not TLS at all, ...).
    #[error("TLS handshake failed: {0}")]
    Handshake(rustls::Error),
    /// The transport failed during the handshake.
    #[error("I/O error during the TLS handshake: {0}")]
    Io(io::Error),
}

impl TlsError {
    fn from_handshake(e: io::Error) -> Self {
        let tls = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .cloned();
        match tls {
            Some(rustls::Error::InvalidCertificate(cert)) => TlsError::Certificate(cert),
            Some(other) => TlsError::Handshake(other),
            None => TlsError::Io(e),
        }
    }
}

/// What a handshake agreed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: String,
    /// The cipher suite (rustls's name, e.g. `TLS13_AES_128_GCM_SHA256`).
    pub cipher_suite: String,
    /// The ALPN protocol the server chose (`None`: it chose none).
    pub alpn: Option<String>,
    /// From the first handshake byte written to the handshake's end.
    pub handshake: Duration,
    /// The name sent as SNI and checked against the certificate.
    pub server_name: String,
}

impl TlsInfo {
    fn of(conn: &rustls::ClientConnection, handshake: Duration, server_name: &str) -> Self {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
            Some(other) => format!("{other:?}"),
            None => "unknown".to_owned(),
        };
        TlsInfo {
            version,
            cipher_suite: conn
                .negotiated_cipher_suite()
                .map_or_else(|| "unknown".to_owned(), |s| format!("{:?}", s.suite())),
            alpn: conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
            handshake,
            server_name: server_name.to_owned(),
        }
    }
}

/// A client TLS configuration, cheap to clone (see the module documentation).
#[derive(Clone)]
pub struct TlsConnector {
    inner: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConnector")
    }
}

impl TlsConnector {
    /// Builds the configuration `options` describe (reads the CA file, or
    /// the system's roots the first time they are needed).
    pub fn new(options: &TlsOptions) -> Result<Self, TlsError> {
        if let Some(config) = &options.config {
            return Ok(Self::from_config(config.clone()));
        }
        let roots = match &options.ca_file {
            Some(path) => Arc::new(roots_from_file(path)?),
            None => system_roots()?,
        };
        let mut config = ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Handshake)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        Ok(Self::from_config(Arc::new(config)))
    }

    /// Uses a rustls configuration as it is.
    pub fn from_config(config: Arc<ClientConfig>) -> Self {
        Self {
            inner: tokio_rustls::TlsConnector::from(config),
        }
    }

    /// Runs the handshake over `io` for `host` (a DNS name or an IP
    /// address, IPv6 with or without brackets).
    pub async fn connect<IO>(
        &self,
        host: &str,
        io: IO,
    ) -> Result<(tokio_rustls::client::TlsStream<IO>, TlsInfo), TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName(host.to_owned()))?;
        let began = Instant::now();
        let stream = self
            .inner
            .connect(server_name, io)
            .await
            .map_err(TlsError::from_handshake)?;
        let info = TlsInfo::of(stream.get_ref().1, began.elapsed(), name);
        Ok((stream, info))
    }
}

/// The crypto provider, shared with the server side (see [`crate::tls::crypto_provider`]).
pub use crate::tls::crypto_provider;

/// The CA certificates of a PEM file.
fn roots_from_file(path: &Path) -> Result<RootCertStore, TlsError> {
    let reason = |e: rustls::pki_types::pem::Error| TlsError::CaFile {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(reason)? {
        // An unusable certificate among others is skipped; none at all fails.
        let _ = roots.add(cert.map_err(reason)?);
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificates(path.to_owned()));
    }
    Ok(roots)
}

/// The system's roots, read once per process (a few milliseconds for a
/// full bundle); a failure is not remembered, so a later call tries again.
fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: Mutex<Option<Arc<RootCertStore>>> = Mutex::new(None);
    let mut cached = ROOTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(roots) = cached.as_ref() {
        return Ok(roots.clone());
    }
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!(error = %e, "reading the system's root certificates");
    }
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError::NoRoots);
    }
    let roots = Arc::new(roots);
    *cached = Some(roots.clone());
    Ok(roots)
}

/// A client connection: plain TCP, or TLS over TCP.
#[derive(Debug)]
pub enum ClientStream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl ClientStream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Tcp(s) => s,
            ClientStream::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether this is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Tcp(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// Whether a read error is a TLS peer's TCP close without `close_notify`
/// (rustls reports it as `UnexpectedEof`). The clients take it as the end
/// of the stream, as most servers close that way after `Connection:
/// close`; a response that is framed (length, chunks) still has to be
/// complete.
pub fn is_unclean_eof(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::UnexpectedEof
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_a_typed_error() {
        let missing = TlsConnector::new(&TlsOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            config: None,
        });
        assert!(matches!(missing, Err(TlsError::CaFile { .. })), "{missing:?}");
        let dir = std::env::temp_dir().join(format!("tether-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let r = TlsConnector::new(&TlsOptions {
            ca_file: Some(empty.clone()),
            config: None,
        });
        assert!(matches!(r, Err(TlsError::NoCertificates(_))), "{r:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
