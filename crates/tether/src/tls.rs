//! TLS for the server: certificates from PEM files, reloaded without a
//! restart, and the `rustls` configuration a TLS listener serves with.
//!
//! Theory of operation. TLS is a layer between the TCP socket and the
//! HTTP/1.1 engine and nothing more: `rustls` (through `tokio-rustls`)
//! turns the socket into a byte stream, and the same driver, engine and
//! handlers run over it, so keep-alive, upgrades and graceful shutdown are
//! unchanged (`crate::server::listener` says how a TLS connection is
//! accepted: its handshake runs on the connection's own task under a
//! deadline, never in the accept loop).
//!
//! The certificate is not fixed in the `ServerConfig`: the config asks a
//! [`ReloadableCert`] (a `rustls::server::ResolvesServerCert`) for it at
//! every handshake, and that answers with the `Arc<CertifiedKey>` it holds
//! now. [`ReloadableCert::reload`] reads the files again and swaps the
//! `Arc`: handshakes after the swap get the new certificate, connections
//! already established keep the session they negotiated (a TLS session
//! never looks at the certificate again), so nothing is dropped. A reload
//! that fails (a file missing, unreadable, not PEM, a key that does not
//! match the certificate) changes nothing: the old certificate stays and
//! the error is returned (and logged by [`ReloadableCert::watch`]).
//! `tether serve` reloads on `SIGHUP` and when either file's modification
//! time changes ([`ReloadableCert::watch`] polls it every 2 s).
//!
//! Defaults ([`server_config`]): the `ring` provider ([`crypto_provider`]:
//! no build tools beyond a C compiler; `aws-lc-rs` would need cmake, and
//! it alone has a post-quantum key exchange), TLS 1.3 and
//! 1.2 with rustls's safe cipher suites only (AEAD, forward secrecy), no
//! client certificates, ALPN `http/1.1` only (a client that offers ALPN
//! without `http/1.1`, e.g. only `h2`, is refused with the
//! `no_application_protocol` alert, as RFC 7301 asks), rustls's in-memory
//! session cache for resumption, no 0-RTT.
//!
//! PEM input: the certificate file holds the leaf first, then any
//! intermediates (the chain as sent to the client); the key file holds one
//! private key (PKCS#8, PKCS#1 RSA or SEC1 EC). Both are parsed with
//! `rustls-pki-types`; errors name the file and what was wrong
//! ([`TlsError`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use rustls;
pub use tokio_rustls;

/// The one application protocol a TLS listener offers.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Default deadline of a TLS handshake (`Server::tls_handshake_timeout`).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often [`ReloadableCert::watch`] looks at the files' modification times.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// What went wrong loading a certificate or building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid PEM, or a PEM section is not what it says.
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no `CERTIFICATE` section.
    #[error("{} holds no certificate (expected a PEM `CERTIFICATE` section, the leaf first)", path.display())]
    NoCertificate { path: PathBuf },
    /// The key file holds no private key.
    #[error("{} holds no private key (expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` section)", path.display())]
    NoPrivateKey { path: PathBuf },
    /// The key is of a kind the provider cannot sign with.
    #[error("{}: unsupported private key: {source}", path.display())]
    UnsupportedKey {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The key is not the certificate's.
    #[error("the private key in {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// Reads a certificate chain (leaf first) and its private key from PEM
/// files, checking that the key is the leaf's.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|source| TlsError::Read {
        path: cert.to_owned(),
        source,
    })?;
    let key_pem = std::fs::read(key).map_err(|source| TlsError::Read {
        path: key.to_owned(),
        source,
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.to_owned() });
    }
    let private = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(k) => k,
        Err(rustls_pki_types::pem::Error::NoItemsFound) => return Err(TlsError::NoPrivateKey { path: key.to_owned() }),
        Err(source) => {
            return Err(TlsError::Pem {
                path: key.to_owned(),
                source,
            })
        }
    };
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&private).map_err(|source| TlsError::UnsupportedKey {
            path: key.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        // The provider cannot tell (no public key to compare): the first
        // handshake will.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(_) => Err(TlsError::KeyMismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        }),
    }
}

/// A certificate read from two PEM files, swapped for new handshakes by
/// [`ReloadableCert::reload`] (see the module documentation).
pub struct ReloadableCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' modification times when last loaded (for `watch`).
    loaded_mtimes: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableCert")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish()
    }
}

impl ReloadableCert {
    /// Loads the certificate chain in `cert` and the private key in `key`.
    pub fn from_files(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Arc<Self>, TlsError> {
        let (cert_path, key_path) = (cert.into(), key.into());
        let mtimes = (mtime(&cert_path), mtime(&key_path));
        let certified = load_certified_key(&cert_path, &key_path)?;
        Ok(Arc::new(Self {
            cert_path,
            key_path,
            current: RwLock::new(Arc::new(certified)),
            loaded_mtimes: RwLock::new(mtimes),
        }))
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The key file.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// The certificate new handshakes get now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads both files again; on success new handshakes get the new
    /// certificate, on failure the old one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let mtimes = (mtime(&self.cert_path), mtime(&self.key_path));
        // Remembered even when loading fails, so a bad file is reported
        // once, not at every poll; the next change is tried again.
        *self.loaded_mtimes.write().unwrap_or_else(|e| e.into_inner()) = mtimes;
        let certified = load_certified_key(&self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(certified);
        Ok(())
    }

    /// Reloads if either file's modification time changed since the last
    /// load (or attempt): `None` when neither did.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = (mtime(&self.cert_path), mtime(&self.key_path));
        let loaded = *self.loaded_mtimes.read().unwrap_or_else(|e| e.into_inner());
        (now != loaded).then(|| self.reload())
    }

    /// Reloads and logs the outcome (`info` on success, `error` keeping the
    /// old certificate on failure); `why` says what asked for it.
    pub fn reload_logged(&self, why: &str) -> bool {
        match self.reload() {
            Ok(()) => {
                tracing::info!(cert = %self.cert_path.display(), why, "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, why, "TLS certificate reload failed: keeping the current certificate");
                false
            }
        }
    }

    /// Polls the files' modification times every `interval` on a task of
    /// its own and reloads when one changed (logged as in
    /// [`ReloadableCert::reload_logged`]). The task ends when it is aborted
    /// or the certificate is no longer used elsewhere.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                match this.reload_if_changed() {
                    None => {}
                    Some(Ok(())) => {
                        tracing::info!(cert = %this.cert_path.display(), why = "files changed", "TLS certificate reloaded")
                    }
                    Some(Err(e)) => tracing::error!(
                        error = %e,
                        why = "files changed",
                        "TLS certificate reload failed: keeping the current certificate"
                    ),
                }
            }
        })
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A file's modification time (`None` when it cannot be read).
fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The `rustls` server configuration of a TLS listener (see the module
/// documentation for its defaults), with its certificate from `certs`.
pub fn server_config(certs: Arc<dyn ResolvesServerCert>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// The cryptography every TLS configuration here uses: rustls's `ring`
/// provider with its default cipher suites and key exchange groups
/// (X25519, P-256, P-384). rustls 0.23.48 deprecates it for lacking the
/// post-quantum hybrid group (X25519MLKEM768), which only its `aws-lc-rs`
/// provider has; that one needs cmake and a C toolchain to build, so it
/// is not used yet (see the README).
#[allow(deprecated)]
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
