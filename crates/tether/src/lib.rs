//! tether: persistent connections on tokio — HTTP/1.1 keep-alive and
//! WebSockets on one port.
//!
//! Theory of operation: this crate is the thin asynchronous layer over the
//! sans-I/O engines in `tether_proto`. It owns sockets, tasks and timers;
//! it never decides protocol questions (whether a connection persists,
//! what a frame means): those are the engines'. [`server`] accepts and
//! drives HTTP/1.1 connections and calls handlers; [`ws`] upgrades them to
//! WebSockets; [`client`] is the pooled keep-alive HTTP client and the
//! WebSocket client, over TCP or TLS (`https://`, `wss://`). [`tls`] loads
//! (and reloads) certificates for a server's TLS listeners
//! ([`server::Listener`]: TCP, TLS over TCP, Unix domain sockets).
//! [`traffic`] totals the bytes on the wire the engines count per
//! connection.
//!
//! A server with one HTTP route and one WebSocket route (the README's
//! examples, compiled here):
//!
//! ```no_run
//! use std::sync::Arc;
//! use tether::server::{router::{self, Router}, Config, Request, Server};
//! use tether::ws::{self, Message, WsOptions};
//!
//! # async fn run() -> std::io::Result<()> {
//! let options = Arc::new(WsOptions::default());
//! let app = Router::new()
//!     .route("/hello", router::get(|_req: Request| async { router::text(http::StatusCode::OK, "hi") }))
//!     .route("/chat", move |req: Request| {
//!         let options = options.clone();
//!         async move {
//!             ws::upgrade(&req, &options, |socket| async move {
//!                 let (tx, mut rx) = socket.split(); // halves usable from different tasks
//!                 while let Some(Ok(msg)) = rx.recv().await {
//!                     if let Message::Text(_) = msg { let _ = tx.send(msg).await; }
//!                 }
//!             })
//!         }
//!     });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! Server::new(Config::default(), app)
//!     .serve(listener, async { tokio::signal::ctrl_c().await.ok(); })
//!     .await
//! # }
//! ```

#![deny(unsafe_code)]

pub mod client;
pub mod hub;
mod io;
pub mod lifecycle;
mod memory;
pub mod metrics;
pub mod server;
mod spans;
pub mod tls;
pub mod traffic;
pub mod ws;

pub use tether_proto as proto;
