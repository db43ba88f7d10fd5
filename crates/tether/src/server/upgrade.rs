//! Protocol upgrades: handing a connection over after `101 Switching Protocols`.
//!
//! A handler that wants to switch protocols answers `101` with an
//! [`OnUpgrade`] in the response's extensions. Once the `101` head has been
//! written, the connection driver stops speaking HTTP and calls the
//! callback with the transport and the bytes that already arrived after
//! the request ([`Upgraded`]). The callback runs on a task of its own, so the
//! HTTP connection's state is freed.

use std::future::Future;
use std::pin::Pin;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream a connection can run on (TCP, TLS, in-memory duplex).
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

/// The transport after a `101`, with the bytes already read past the request head.
pub struct Upgraded {
    /// The transport.
    pub io: Box<dyn Transport>,
    /// Bytes the peer sent after the upgrade request, not yet consumed.
    pub read_buf: BytesMut,
    /// The server's stop signal, so the new protocol can say goodbye on shutdown.
    pub(crate) stop: Option<tokio::sync::watch::Receiver<super::driver::Stop>>,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("buffered", &self.read_buf.len())
            .finish()
    }
}

type UpgradeFn = Box<dyn FnOnce(Upgraded) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What runs on the connection after its `101` response. Put it in the
/// response's extensions.
#[derive(Clone)]
pub struct OnUpgrade(std::sync::Arc<std::sync::Mutex<Option<UpgradeFn>>>);

impl OnUpgrade {
    /// Wraps the function that takes over the upgraded connection.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: FnOnce(Upgraded) -> Fut + Send + Sync + 'static,
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
