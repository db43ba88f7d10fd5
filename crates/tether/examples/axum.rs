//! An axum app served by tether: axum's router, extractors, path
//! parameters and a tower-http layer, with tether's exact keep-alive,
//! parking and close causes, and a WebSocket route upgraded by tether.
//!
//! ```sh
//! cargo run --release -p tether --example axum          # listens on 127.0.0.1:3000
//! curl -i http://127.0.0.1:3000/hello/ada
//! curl -i -d '{"text":"hi"}' -H 'content-type: application/json' http://127.0.0.1:3000/echo
//! ```

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderName, HeaderValue};
use tether::server::{Config, Server, TowerHandler};
use tether::ws::{self, Message, WsOptions};
use tower_http::set_header::SetResponseHeaderLayer;

/// The app: plain axum, but for the WebSocket route's upgrade, which is
/// tether's (`tether::ws::upgrade` takes any `http::Request`).
pub fn app() -> Router {
    Router::new()
        .route("/hello/{name}", get(hello))
        .route("/echo", post(echo))
        .route("/ws", get(websocket))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("x-served-by"),
            HeaderValue::from_static("tether"),
        ))
        .with_state(Arc::new(WsOptions::default()))
}

async fn hello(Path(name): Path<String>) -> String {
    format!("hello, {name}\n")
}

async fn echo(Json(value): Json<serde_json::Value>) -> Json<serde_json::Value> {
    Json(value)
}

async fn websocket(State(options): State<Arc<WsOptions>>, req: Request) -> tether::server::Response {
    ws::upgrade(&req, &options, |mut socket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Text(_) | Message::Binary(_)) && socket.send(msg).await.is_err() {
                break;
            }
        }
    })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    Server::new(Config::default(), TowerHandler::new(app()))
        .serve(listener, async {
            tokio::signal::ctrl_c().await.ok();
        })
        .await
}
