//! The handler API: an async function from [`Request`] to [`Response`].
//!
//! Handlers are plain `http` crate types with `bytes` bodies. Anything that
//! is `Fn(Request) -> impl Future<Output = Response>` is a [`Handler`].
//! Handlers never see keep-alive: the engine adds `Connection` and
//! `Keep-Alive` headers by policy. A handler that wants the connection
//! closed after its response sets `Connection: close` itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::body::{Body, RequestBody};

/// A request as a handler receives it.
pub type Request = http::Request<RequestBody>;
/// A response as a handler returns it.
pub type Response = http::Response<Body>;
/// The boxed future a [`Handler`] returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Response> + Send + 'static>>;

/// Something that answers requests.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn call(&self, req: Request) -> HandlerFuture;

    /// The handler that would answer `req`, when it is another one (a
    /// router's route): found by reference, so that the server moves the
    /// request once, into the handler that answers it, instead of once per
    /// routing layer (a request is about 250 bytes; each move is a
    /// `memcpy`). `None`, the default, means this handler answers itself.
    /// Calling the result must do what [`call`](Self::call) would do.
    fn resolve(&self, _req: &Request) -> Option<&dyn Handler> {
        None
    }
}

/// The innermost handler that answers `req` (following
/// [`Handler::resolve`]), `handler` itself if it answers.
pub fn resolve<'a>(handler: &'a dyn Handler, req: &Request) -> &'a dyn Handler {
    let mut h = handler;
    while let Some(inner) = h.resolve(req) {
        h = inner;
    }
    h
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    fn call(&self, req: Request) -> HandlerFuture {
        Box::pin((self)(req))
    }
}

impl<H: Handler + ?Sized> Handler for Arc<H> {
    fn call(&self, req: Request) -> HandlerFuture {
        (**self).call(req)
    }

    fn resolve(&self, req: &Request) -> Option<&dyn Handler> {
        (**self).resolve(req)
    }
}

impl Handler for Box<dyn Handler> {
    fn call(&self, req: Request) -> HandlerFuture {
        (**self).call(req)
    }

    fn resolve(&self, req: &Request) -> Option<&dyn Handler> {
        (**self).resolve(req)
    }
}

/// A shared, type-erased handler.
pub type SharedHandler = Arc<dyn Handler>;
