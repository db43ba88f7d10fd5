//! Protocol upgrades: handing a connection over after `101 Switching Protocols`.
//!
//! A handler that wants to switch protocols answers `101` with an
//! [`OnUpgrade`] in the response's extensions. Once the `101` head has been
//! written, the connection driver stops speaking HTTP and calls the
//! callback with the transport and the bytes that already arrived after
//! the request ([`Upgraded`]). The callback runs on a task of its own, so the
//! HTTP connection's state is freed; the connection counts as open (server
//! shutdown waits for it) until the callback's future completes.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;

use bytes::BytesMut;

use super::stream::{ServerStream, TlsStream};
pub use crate::lifecycle::Transport;

/// The transport after a `101`, with the bytes already read past the request head.
pub struct Upgraded {
    /// The transport.
    pub io: Box<dyn Transport>,
    /// Bytes the peer sent after the upgrade request, not yet consumed.
    pub read_buf: BytesMut,
    /// The HTTP phase's bytes on the wire: the requests the connection
    /// carried, the upgrade request and the `101` (`read_buf` not
    /// included: it is the new protocol's). They are in the server's HTTP
    /// totals already; a WebSocket adds them to its own count
    /// (`WsConnection::count_handshake`), so its traffic is the whole
    /// connection's.
    pub traffic: crate::traffic::Traffic,
    /// The server's stop signal, so the new protocol can say goodbye on shutdown.
    pub(crate) stop: Option<tokio::sync::watch::Receiver<crate::lifecycle::Stop>>,
    /// Keeps the connection counted as open.
    pub(crate) guard: Option<crate::lifecycle::OpenGuard>,
    /// The client's address, when the transport has one (for logs).
    pub peer: Option<std::net::SocketAddr>,
    /// The server's parking lot, for protocols that can park idle connections.
    pub(crate) lot: Option<super::serving::Lot>,
    /// The connection's `tracing` span: the new protocol's span is its child.
    pub(crate) span: tracing::Span,
}

impl Upgraded {
    /// The transport as a server stream (which may park), when it is one:
    /// the server's TCP, TLS or Unix-socket connections are.
    pub(crate) fn take_stream(io: Box<dyn Transport>) -> Result<ServerStream, Box<dyn Transport>> {
        let io = match downcast::<tokio::net::TcpStream>(io) {
            Ok(tcp) => return Ok(tcp.into()),
            Err(io) => io,
        };
        #[cfg(unix)]
        let io = match downcast::<tokio::net::UnixStream>(io) {
            Ok(unix) => return Ok(unix.into()),
            Err(io) => io,
        };
        downcast::<Box<TlsStream>>(io).map(ServerStream::from)
    }
}

/// The transport as a `T`, when it is one.
fn downcast<T: Transport>(io: Box<dyn Transport>) -> Result<T, Box<dyn Transport>> {
    if (&*io as &dyn Any).is::<T>() {
        let any: Box<dyn Any> = io;
        Ok(*any.downcast::<T>().expect("checked above"))
    } else {
        Err(io)
    }
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("buffered", &self.read_buf.len())
            .finish()
    }
}

type UpgradeFn = Box<dyn FnOnce(Upgraded) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// What runs on the connection after its `101` response. Put it in the
/// response's extensions.
#[derive(Clone)]
pub struct OnUpgrade(std::sync::Arc<std::sync::Mutex<Option<UpgradeFn>>>);

impl OnUpgrade {
    /// Wraps the function that takes over the upgraded connection. The
    /// connection counts as open until the future that `f` returns completes.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: FnOnce(Upgraded) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::owning_guard(move |mut u: Upgraded| {
            let guard = u.guard.take();
            let run = f(u);
            async move {
                run.await;
                drop(guard);
            }
        })
    }

    /// Like [`OnUpgrade::new`], but `f` takes charge of the open-connection
    /// guard in [`Upgraded`] (so a parked connection can keep it).
    pub(crate) fn owning_guard<F, Fut>(f: F) -> Self
    where
        F: FnOnce(Upgraded) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let boxed: UpgradeFn = Box::new(move |u| Box::pin(f(u)));
        Self(std::sync::Arc::new(std::sync::Mutex::new(Some(boxed))))
    }

    /// Takes the function out (once).
    pub(crate) fn take(&self) -> Option<UpgradeFn> {
        self.0.lock().ok().and_then(|mut g| g.take())
    }
}

impl std::fmt::Debug for OnUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnUpgrade")
    }
}
