//! Any `tower::Service` as a tether handler: an axum `Router` (or any
//! tower stack, tower-http layers included) served by tether's server,
//! with tether's exact keep-alive, parking and close causes.
//!
//! Theory of operation. [`TowerHandler`] wraps a service that takes
//! `http::Request<RequestBody>` (tether's own request: its body implements
//! `http_body::Body`) and answers `http::Response<B>` for any body `B` of
//! `Bytes`. Per request it clones the service (tower's contract: a clone
//! is ready to be driven on its own), waits for `poll_ready`, calls it,
//! and turns the answer into a tether [`Response`]:
//!
//! - a body that is already at its end becomes [`Body::Empty`];
//! - a body of known size up to [`COLLECT_LIMIT`] (what `Full`, `String`,
//!   `Json` answers are) is read at once into [`Body::Full`], so it goes out
//!   with its `Content-Length` in the same write as the head;
//! - anything else is streamed: a task forwards its data frames into
//!   [`Body::Stream`] (trailers are dropped: HTTP/1.1 chunked trailers are
//!   not sent by tether).
//!
//! Headers and extensions pass through unchanged, so a handler inside the
//! service that answers with [`crate::ws::upgrade`] (which takes any
//! `http::Request<B>`) upgrades the connection exactly as a tether handler
//! would. A service error (`poll_ready` or `call`) is answered `500` and
//! logged; the connection follows its keep-alive rules.
//!
//! It never decides anything about the connection: keep-alive headers,
//! `Connection: close`, parking and shutdown stay the engine's and the
//! driver's.

use std::future::poll_fn;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body::Body as HttpBody;
use tower_service::Service;

use super::body::{Body, RequestBody};
use super::handler::{Handler, HandlerFuture, Request, Response};

/// Bodies of a known size up to this are read whole before the head is
/// sent (one write, with `Content-Length`); larger or unsized ones stream.
pub const COLLECT_LIMIT: u64 = 64 * 1024;

/// Chunks a streamed body may have waiting for the connection.
const STREAM_QUEUE: usize = 8;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A tower service as a [`Handler`] (see the module documentation).
#[derive(Clone, Debug)]
pub struct TowerHandler<S> {
    service: S,
}

impl<S> TowerHandler<S> {
    pub fn new(service: S) -> Self {
        Self { service }
    }
}

impl<S, B> Handler for TowerHandler<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn call(&self, req: Request) -> HandlerFuture {
        let mut service = self.service.clone();
        Box::pin(async move {
            if let Err(e) = poll_fn(|cx| service.poll_ready(cx)).await {
                return failed("not ready", e.into());
            }
            // The error is boxed before the next await: only `Send` values
            // cross it.
            let answer: Result<_, BoxError> = service.call(req).await.map_err(Into::into);
            match answer {
                Ok(resp) => into_response(resp).await,
                Err(e) => failed("failed", e),
            }
        })
    }
}

/// The `500` for a service that failed.
fn failed(what: &str, error: BoxError) -> Response {
    tracing::error!(%error, "tower service {what}");
    let mut resp = Response::new(Body::Full(Bytes::from_static(b"internal server error\n")));
    *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    resp
}

/// A service's answer as a tether [`Response`].
async fn into_response<B>(resp: http::Response<B>) -> Response
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = resp.into_parts();
    let body = if body.is_end_stream() {
        Body::Empty
    } else if body.size_hint().exact().is_some_and(|n| n <= COLLECT_LIMIT) {
        match collect(body).await {
            Ok(bytes) => Body::Full(bytes),
            Err(error) => return failed("body failed", error.into()),
        }
    } else {
        stream(body)
    };
    Response::from_parts(parts, body)
}

/// Reads a small body whole.
async fn collect<B>(body: B) -> std::io::Result<Bytes>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut acc = BytesMut::new();
    let mut only: Option<Bytes> = None;
    while let Some(chunk) = next_frame(body.as_mut()).await.map(chunk_of) {
        let Some(chunk) = chunk else { continue }; // trailers
        let data = chunk?;
        match only.take() {
            None if acc.is_empty() => only = Some(data),
            None => acc.extend_from_slice(&data),
            Some(first) => {
                acc.extend_from_slice(&first);
                acc.extend_from_slice(&data);
            }
        }
    }
    Ok(only.unwrap_or_else(|| acc.freeze()))
}

/// A body streamed into a [`Body::Stream`] by a task of its own, which ends
/// when the body does or the connection stops reading it.
fn stream<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (tx, out) = Body::channel(STREAM_QUEUE);
    tokio::spawn(async move {
        let mut body = std::pin::pin!(body);
        // Each frame becomes a `Send` chunk before the next await.
        while let Some(chunk) = next_frame(body.as_mut()).await.map(chunk_of) {
            let Some(chunk) = chunk else { continue }; // trailers
            let last = chunk.is_err();
            if tx.send(chunk).await.is_err() || last {
                return;
            }
        }
    });
    out
}

/// A frame's data (`None` for trailers), or its error as an I/O error.
fn chunk_of<E: Into<BoxError>>(frame: Result<http_body::Frame<Bytes>, E>) -> Option<std::io::Result<Bytes>> {
    match frame {
        Ok(frame) => frame.into_data().ok().map(Ok),
        Err(e) => Some(Err(std::io::Error::other(e.into()))),
    }
}

async fn next_frame<B: HttpBody>(mut body: Pin<&mut B>) -> Option<Result<http_body::Frame<B::Data>, B::Error>> {
    poll_fn(|cx| body.as_mut().poll_frame(cx)).await
}
