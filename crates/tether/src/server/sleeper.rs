//! What the parking lot needs of a connection it holds, whichever lot this
//! platform builds (`park.rs`, or `park_unsupported.rs`, which never
//! parks): the [`Sleeper`] trait and what a sleeper needs at shutdown.
//! The lot decides nothing about the protocol; a sleeper decides nothing
//! about sockets or timers.

use std::net::SocketAddr;

use tokio::sync::watch;

use super::park::ParkingLot;
use super::stream::ServerStream;
use crate::lifecycle::{OpenGuard, Stop};

/// A protocol engine waiting in the lot: what the lot needs to hold it.
/// The lot decides nothing about the protocol.
pub(crate) trait Sleeper: Send + Sized + 'static {
    /// Whether it is a WebSocket (counted apart in the server's stats).
    fn is_websocket(&self) -> bool {
        false
    }
    /// The engine's next deadline.
    fn deadline(&self) -> Option<std::time::Instant>;
    /// Bytes that arrived while parked (an empty slice: end of file).
    fn handle_input(&mut self, bytes: &[u8], now: std::time::Instant);
    /// Reading the socket failed.
    fn handle_io_error(&mut self, now: std::time::Instant);
    /// Its deadline passed: handles it when that needs no task and reports
    /// whether the connection is over (its socket is then closed here).
    /// `peer` is the client's address (`None` on a Unix socket), for logs.
    fn expire(&mut self, now: std::time::Instant, peer: Option<SocketAddr>) -> bool;
    /// The server began a graceful shutdown: what the connection needs.
    fn shutdown(&mut self, now: std::time::Instant, peer: Option<SocketAddr>) -> AtShutdown;
    /// The server's forced stop: `Closed` (logged) or `Resume` (its task
    /// ends it, so its application hears of it).
    fn forced_stop(&mut self, peer: Option<SocketAddr>) -> AtShutdown;
    /// The server needs room (descriptors, its connection limit): closes
    /// the connection if the protocol allows it now, and says whether it did.
    fn reclaim(&mut self, now: std::time::Instant, peer: Option<SocketAddr>) -> bool;
    /// Gives the connection a task again on `stream` (it may park again in `lot`).
    fn resume(
        self,
        stream: ServerStream,
        stop: watch::Receiver<Stop>,
        guard: Option<OpenGuard>,
        peer: Option<SocketAddr>,
        lot: &ParkingLot<Self>,
    );
}

/// What a parked connection needs when a graceful shutdown begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtShutdown {
    /// It is over: its socket is closed here.
    Closed,
    /// It waits on in the lot (a draining keep-alive connection: input
    /// resumes it, its drain deadline closes it without a task).
    Stay,
    /// It needs its task (to write a close frame).
    Resume,
}

/// What a visit to a parked connection ([`ParkingLot::visit`]) leaves it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Visit {
    /// It stays parked (its deadline is read again).
    Stay,
    /// It needs its task (output the socket did not take).
    Resume,
}
