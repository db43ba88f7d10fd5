//! Listeners: where a server accepts connections from (TCP, TLS over TCP,
//! Unix domain sockets), and the TLS handshake of an accepted connection.
//!
//! Theory of operation. A [`Listener`] only accepts: the accept loop
//! (`Server::serve_on`) polls every listener it was given, admits each
//! accepted socket (`super::admission`: connection limits; a Unix peer has
//! no address, so no per-client limit applies to it) and hands it to a task
//! of its own at once. Nothing that can wait on a client runs in the loop:
//! a TLS connection's handshake ([`handshake`]) runs on the connection's
//! task, under a deadline (`Server::tls_handshake_timeout`, default 10 s),
//! and is abandoned when the server begins to shut down. A client that
//! connects and sends nothing, or stalls mid-handshake, holds its socket,
//! a task and rustls's connection state (its buffers are bounded by
//! rustls: a handshake message is at most 64 KiB) until the deadline, and
//! counts as an open connection meanwhile, so `Server::max_connections`
//! bounds how many can do so at once.
//!
//! After the handshake (or at once, for plain TCP and Unix sockets) the
//! same driver and engine serve the connection, so keep-alive rules,
//! request limits, upgrades (WebSockets: `wss` over TLS), parking of idle
//! connections and graceful shutdown hold unchanged. A parked TLS
//! connection keeps its rustls session (keys, and the read buffer rustls
//! keeps: `super::stream`), so it costs more than a plain one parked, and
//! far less than one idle on its task (docs/benchmarks.md). Bytes on the
//! wire (`crate::traffic`) count what the engines see: for TLS that is the
//! plaintext, without record framing and handshakes.
//!
//! A Unix socket path ([`bind_unix`]): a stale socket file left by a server
//! that is gone is removed first; a path where a server still answers, or
//! that is not a socket, is an error. The socket file is created with the
//! process's umask (a proxy needs read and write permission on it, and
//! search permission on its directory: put it in a directory only the
//! proxy's group can enter, or set the umask).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
#[cfg(unix)]
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::stream::{TlsSocket, TlsStream};
use crate::lifecycle::Stop;

/// A socket a server accepts connections from.
pub enum Listener {
    /// Plain HTTP (and `ws`) over TCP.
    Tcp(TcpListener),
    /// HTTPS (and `wss`) over TCP with this TLS configuration (see
    /// `crate::tls::server_config`).
    Tls(TcpListener, Arc<rustls::ServerConfig>),
    /// Plain HTTP over a Unix domain socket (behind a proxy on the same
    /// machine).
    #[cfg(unix)]
    Unix(UnixListener),
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url())
    }
}

impl Listener {
    /// Where it listens, as a client would name it: `http://ADDR`,
    /// `https://ADDR` or `unix:PATH`.
    pub fn url(&self) -> String {
        fn addr(l: &TcpListener) -> String {
            l.local_addr().map_or_else(|e| format!("?({e})"), |a| a.to_string())
        }
        match self {
            Listener::Tcp(l) => format!("http://{}", addr(l)),
            Listener::Tls(l, _) => format!("https://{}", addr(l)),
            #[cfg(unix)]
            Listener::Unix(l) => match l.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_owned)) {
                Some(p) => format!("unix:{}", p.display()),
                None => "unix:?".to_owned(),
            },
        }
    }

    /// Accepts one connection, if one is waiting.
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<Accepted>> {
        match self {
            Listener::Tcp(l) => l.poll_accept(cx).map_ok(|(stream, peer)| Accepted::Tcp(stream, peer)),
            Listener::Tls(l, config) => l
                .poll_accept(cx)
                .map_ok(|(stream, peer)| Accepted::Tls(stream, peer, TlsAcceptor::from(config.clone()))),
            #[cfg(unix)]
            Listener::Unix(l) => l.poll_accept(cx).map_ok(|(stream, _)| Accepted::Unix(stream)),
        }
    }
}

/// A connection just accepted (its TLS handshake, if any, not begun).
pub(crate) enum Accepted {
    Tcp(TcpStream, SocketAddr),
    Tls(TcpStream, SocketAddr, TlsAcceptor),
    #[cfg(unix)]
    Unix(UnixStream),
}

/// Accepts from whichever of `listeners` has a connection waiting,
/// starting after the one that accepted last (so a busy listener cannot
/// starve the others).
pub(crate) fn poll_accept_any(
    listeners: &[Listener],
    next: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<Accepted>> {
    let n = listeners.len();
    for i in 0..n {
        let at = (*next + i) % n;
        if let Poll::Ready(r) = listeners[at].poll_accept(cx) {
            *next = (at + 1) % n;
            return Poll::Ready(r);
        }
    }
    Poll::Pending
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client did not finish it within the deadline.
    #[error("TLS handshake timed out")]
    TimedOut,
    /// The server began to shut down.
    #[error("server shutting down during the TLS handshake")]
    ShuttingDown,
    /// The client broke it off, or rustls refused it (a protocol error,
    /// no common cipher suite or protocol, an ALPN mismatch).
    #[error("TLS handshake failed: {0}")]
    Failed(#[source] std::io::Error),
}

/// Runs a TLS handshake over `stream` until it completes, `timeout`
/// passes, or the server stops.
pub(crate) async fn handshake(
    acceptor: TlsAcceptor,
    stream: TlsSocket,
    timeout: Duration,
    mut stop: watch::Receiver<Stop>,
) -> Result<TlsStream, HandshakeError> {
    let accept = tokio::time::timeout(timeout, acceptor.accept(stream));
    let stopping = async {
        loop {
            let running = *stop.borrow_and_update() == Stop::Run;
            if !running || stop.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        r = accept => match r {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => Err(HandshakeError::Failed(e)),
            Err(_) => Err(HandshakeError::TimedOut),
        },
        () = stopping => Err(HandshakeError::ShuttingDown),
    }
}

/// Binds a Unix domain socket at `path`, first removing a stale socket file
/// left there (one no server answers on). A path where a server answers,
/// or that is not a socket, is an error (`AddrInUse`).
#[cfg(unix)]
pub fn bind_unix(path: impl AsRef<Path>) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    let path = path.as_ref();
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{}: a server is listening there", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
        tracing::info!(path = %path.display(), "removed a stale socket file");
    }
    UnixListener::bind(path)
}

#[cfg(all(test, unix))]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn a_stale_socket_file_is_replaced_and_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let first = bind_unix(&path).unwrap();
        // A server answers there: refused.
        let e = bind_unix(&path).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        // Gone (the file stays): replaced.
        drop(first);
        assert!(path.exists());
        let _second = bind_unix(&path).unwrap();
        // Not a socket: never removed.
        let file = dir.path().join("plain");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(bind_unix(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }

    #[tokio::test]
    async fn accepting_takes_turns_between_listeners() {
        let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let listeners = [Listener::Tcp(a), Listener::Tcp(b)];
        let _c = [
            TcpStream::connect(aa).await.unwrap(),
            TcpStream::connect(aa).await.unwrap(),
            TcpStream::connect(ba).await.unwrap(),
        ];
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut next = 0;
        let mut order = Vec::new();
        for _ in 0..3 {
            let got = std::future::poll_fn(|cx| poll_accept_any(&listeners, &mut next, cx)).now_or_never();
            let Some(Ok(Accepted::Tcp(s, _))) = got else {
                panic!("nothing accepted")
            };
            order.push(s.local_addr().unwrap().port());
        }
        assert_eq!(order, [aa.port(), ba.port(), aa.port()]);
    }
}
