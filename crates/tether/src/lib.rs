//! tether: persistent connections on tokio — HTTP/1.1 keep-alive and
//! WebSockets on one port.
//!
//! Theory of operation: this crate is the thin asynchronous layer over the
//! sans-I/O engines in `tether_proto`. It owns sockets, tasks and timers;
//! it never decides protocol questions (whether a connection persists,
//! what a frame means): those are the engines'. [`server`] accepts and
//! drives HTTP/1.1 connections and calls handlers; [`ws`] upgrades them to
//! WebSockets; [`client`] opens WebSockets to other servers.

#![deny(unsafe_code)]

pub mod client;
mod io;
pub mod lifecycle;
mod memory;
pub mod server;
pub mod ws;

pub use tether_proto as proto;
