//! The server side of the handshake: turn a request into `101` and a [`WebSocket`].

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, StatusCode};
use tether_proto::ws::{handshake, WsConnection};
use tracing::Instrument;

use super::push::Inlet;
use super::service::{self, WsService};
use super::socket::{WebSocket, WsOptions};
use crate::server::upgrade::{OnUpgrade, Upgraded};
use crate::server::{Body, Request, Response};

/// Whether a request asks to become a WebSocket (it has an `Upgrade`
/// header or a `Sec-WebSocket-Key`): such requests should go to
/// [`upgrade`], which answers the malformed ones with 400/426/403.
pub fn is_websocket_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) || headers.contains_key(header::SEC_WEBSOCKET_KEY)
}

/// Answers a WebSocket upgrade request. On success the response is
/// `101 Switching Protocols` and `on_open` runs with the connection once
/// the `101` is written; otherwise it is the handshake's error response
/// (`400`, `426` with `Sec-WebSocket-Version: 13`, or `403` for a refused
/// `Origin`) and the HTTP connection follows its keep-alive rules.
pub fn upgrade<B, F, Fut>(req: &http::Request<B>, options: &Arc<WsOptions>, on_open: F) -> Response
where
    F: FnOnce(WebSocket) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    accept(req, options, |opened| {
        OnUpgrade::new(move |up: Upgraded| {
            let span = crate::spans::websocket(&up.span);
            let entered = span.clone();
            let run = async move {
                let Opened { mut engine, protocol } = opened;
                // The whole connection's count; the HTTP phase is in the HTTP totals.
                engine.count_handshake(up.traffic);
                let ws = WebSocket::start(up.io, up.read_buf, engine, protocol, up.stop, up.peer, span);
                on_open(ws).await;
            };
            run.instrument(entered)
        })
    })
}

/// Answers a WebSocket upgrade request like [`upgrade`], but the connection
/// is then served by `service`, message by message, with no task of the
/// application's: on a server that parks idle connections
/// (`Server::park_idle_after`) an idle one waits without any task at all.
/// See [`WsService`].
pub fn upgrade_service<B, S: WsService>(req: &http::Request<B>, options: &Arc<WsOptions>, service: S) -> Response {
    accept(req, options, |opened| {
        OnUpgrade::owning_guard(move |up: Upgraded| service::run(up, opened.engine, service, None))
    })
}

/// [`upgrade_service`] for a connection that others also push frames to,
/// through `inlet` (the hub's subscribers).
pub(crate) fn upgrade_pushed<S: WsService>(
    req: &Request,
    options: &Arc<WsOptions>,
    service: S,
    inlet: Arc<Inlet>,
) -> Response {
    accept(req, options, |opened| {
        let level = opened.engine.config().compression.level;
        inlet.set_shared_deflate(opened.engine.shared_deflate_window().map(|w| (w, level)));
        OnUpgrade::owning_guard(move |up: Upgraded| service::run(up, opened.engine, service, Some(inlet)))
    })
}

/// What an accepted handshake opens.
struct Opened {
    engine: WsConnection,
    protocol: Option<String>,
}

/// Runs the handshake: the `101` with `on_upgrade`'s callback, or the error response.
fn accept<B>(
    req: &http::Request<B>,
    options: &Arc<WsOptions>,
    on_upgrade: impl FnOnce(Opened) -> OnUpgrade,
) -> Response {
    match handshake::accept_head(
        req.method(),
        req.version(),
        req.headers(),
        &options.handshake,
        &options.engine.compression,
    ) {
        Err(e) => {
            tracing::debug!(error = %e, "websocket handshake refused");
            let mut resp = Response::new(Body::Full(Bytes::from(format!("{e}\n"))));
            *resp.status_mut() = e.status();
            *resp.headers_mut() = e.response_headers();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            resp
        }
        Ok(accepted) => {
            let mut resp = Response::new(Body::Empty);
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            *resp.headers_mut() = accepted.response_headers();
            let protocol = accepted
                .subprotocol
                .as_ref()
                .and_then(|p| p.to_str().ok())
                .map(str::to_string);
            // The engine's clocks (heartbeat, idle timeout) start at the handshake.
            let engine = WsConnection::server(options.engine.clone(), accepted.deflate, std::time::Instant::now());
            resp.extensions_mut().insert(on_upgrade(Opened { engine, protocol }));
            resp
        }
    }
}
