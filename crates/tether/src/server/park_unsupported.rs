//! Parking where it cannot be built (not a 64-bit Unix: the lot watches
//! sockets with its own `epoll`/`kqueue` through `mio`'s Unix descriptors,
//! and its tokens need 64 bits). The same interface as `park`, but a lot
//! never starts: [`ParkingLot::start`] reports `Unsupported` and the server
//! keeps every connection on its task (`Server::park_idle_after` is then
//! ignored, with a warning).

// The interface is `park`'s; a lot that never starts leaves parts unused.
#![allow(dead_code)]

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::sleeper::{Sleeper, Visit};
use super::stream::{ParkedStream, ServerStream};
use super::ServerStats;
use crate::lifecycle::{OpenGuard, Stop};

/// A lot that never exists (see the module documentation).
pub(crate) struct ParkingLot<S>(PhantomData<fn() -> S>);

impl<S> Clone for ParkingLot<S> {
    fn clone(&self) -> Self {
        Self(PhantomData)
    }
}

impl<S: Sleeper> ParkingLot<S> {
    pub(crate) fn start(_: Duration, _: Arc<ServerStats>, _: watch::Receiver<Stop>) -> std::io::Result<Self> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "parking idle connections needs a 64-bit Unix",
        ))
    }

    pub(crate) fn park_after(&self) -> Duration {
        Duration::MAX
    }

    pub(crate) fn reclaim_idle(&self, _: usize) -> usize {
        0
    }

    pub(crate) fn park(
        &self,
        io: ServerStream,
        sleeper: S,
        stop: watch::Receiver<Stop>,
        guard: Option<OpenGuard>,
        peer: Option<SocketAddr>,
    ) -> Option<u64> {
        sleeper.resume(io, stop, guard, peer, self);
        None
    }

    pub(crate) fn wake(&self, _: u64) {}

    pub(crate) fn visit<R>(&self, _: u64, _: impl FnOnce(&mut S, &mut ParkedStream) -> (R, Visit)) -> Option<R> {
        None
    }
}
