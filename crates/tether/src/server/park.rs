//! Parking: idle connections held without a task.
//!
//! Theory of operation. A keep-alive connection spends most of its life
//! waiting for the next request, a WebSocket most of its life waiting for
//! the next message. A task, its timer and the runtime's registration of
//! the socket cost about 1 KiB each while they wait, so a connection idle
//! for `park_after` (with nothing received, queued or in flight:
//! `ServerConnection::idle_since`, `WsConnection::is_quiescent`) leaves its
//! task: its driver hands back the socket and the engine (a [`Sleeper`]:
//! the keep-alive engine from [`driver::Driven::Idle`], or a callback-served
//! WebSocket's engine and service from `crate::ws::service`), the socket is
//! taken off the runtime's reactor and registered, one-shot, with the lot's
//! own `epoll` instance (through `mio`), and the engine waits in a slab.
//!
//! One task per server owns the lot. It wakes for the first of:
//! - readiness of the lot's `epoll` (a parked socket got bytes, EOF or an
//!   error): those connections are resumed;
//! - the earliest parked deadline (the engine's own `poll_timeout`: idle
//!   timeout, lifetime, heartbeat): the engine handles it; a keep-alive
//!   connection it closes is closed right there (no task), any other is
//!   resumed;
//! - shutdown: every parked connection is resumed, and parking stops.
//!
//! Resuming registers the socket with the runtime again and spawns a
//! connection task that drives the same engine: every decision
//! (serve the request, close at the idle timeout, close on shutdown) is the
//! engine's, exactly as if the connection had never left its task. The lot
//! decides nothing about the protocol; it only knows when to give a
//! connection back.
//!
//! States of a connection: `Running --idle park_after--> Parked --input |
//! deadline | shutdown--> Running`. A parked connection still counts as open.
//!
//! Memory. A parked connection is its engine and a slab slot (measured: about
//! 0.7 KiB for keep-alive against 2.8 KiB on a task, 0.5 KiB for a
//! callback-served WebSocket). The slab is one array that grows with the
//! most connections parked at once; once it is empty again after a burst
//! (more than `KEEP_EMPTY_SLOTS` slots) it is freed. The tasks it left are freed,
//! but glibc's allocator keeps freed memory inside its heap; so after every
//! `TRIM_BATCH` parkings or resumptions (at most once per `TRIM_INTERVAL`:
//! a burst of resumed connections that then close frees their tasks a
//! moment later) the lot asks it to return free pages to the system
//! (`malloc_trim`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::sleeper::{AtShutdown, Sleeper, Visit};
use super::ServerStats;
use crate::lifecycle::{OpenGuard, Stop};

/// Readiness events taken from the lot's `epoll` per call.
const EVENTS_PER_POLL: usize = 1024;
/// Parkings or resumptions (tasks freed, or soon to be) after which free
/// memory is returned to the system.
const TRIM_BATCH: usize = 64;
/// The least time between two such returns (it walks the allocator's heap).
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// A parked connection: the socket off the runtime, the engine, and what
/// its task needs to resume.
struct Parked<S> {
    socket: std::net::TcpStream,
    sleeper: S,
    stop: watch::Receiver<Stop>,
    guard: Option<OpenGuard>,
    peer: SocketAddr,
    deadline: Option<Instant>,
}

// Inline, not boxed: a parked connection leaves no object in the
// allocator's heap (whose pages would then stay resident around the freed
// tasks), only a slot of one array.
#[allow(clippy::large_enum_variant)]
enum Slot<S> {
    Vacant,
    Occupied { generation: u32, parked: Parked<S> },
}

/// A slab of parked connections; a token is (generation, index), the
/// generation counted across the whole lot, so a stale readiness event never
/// reaches a connection parked later in the same slot, even after the slab
/// was freed and built anew.
struct Lot<S> {
    slots: Vec<Slot<S>>,
    free: Vec<u32>,
    occupied: usize,
    /// The generation of the last insert.
    generation: u32,
    /// (deadline, token), earliest first.
    deadlines: BTreeSet<(Instant, u64)>,
    /// Shutdown began: nothing more is parked.
    closed: bool,
}

impl<S> Default for Lot<S> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            occupied: 0,
            generation: 0,
            deadlines: BTreeSet::new(),
            closed: false,
        }
    }
}

/// An emptied slab with more slots than this is freed (its slots hold
/// engines by value: 15,000 of them are about 8 MB).
const KEEP_EMPTY_SLOTS: usize = 1024;

fn token(generation: u32, index: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(index)
}

// A token needs all 64 bits (generation and index) to tell a stale
// readiness event from a live one; the lot is built only where `usize`
// holds them (see `server::park_unsupported` elsewhere).
const _: () = assert!(usize::BITS >= 64);

/// A token as `mio` carries it: no bits are lost (see the assertion above).
fn tok_to_usize(tok: u64) -> usize {
    usize::try_from(tok).expect("64-bit usize")
}

impl<S: Sleeper> Lot<S> {
    fn insert(&mut self, parked: Parked<S>) -> u64 {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::Vacant);
                (self.slots.len() - 1) as u32
            }
        };
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let tok = token(generation, index);
        if let Some(d) = parked.deadline {
            self.deadlines.insert((d, tok));
        }
        self.slots[index as usize] = Slot::Occupied { generation, parked };
        self.occupied += 1;
        tok
    }

    /// The connection parked under `tok`, if it is still there.
    fn get_mut(&mut self, tok: u64) -> Option<&mut Parked<S>> {
        match self.slots.get_mut(tok as u32 as usize)? {
            Slot::Occupied { generation, parked } if *generation == (tok >> 32) as u32 => Some(parked),
            _ => None,
        }
    }

    fn remove(&mut self, tok: u64) -> Option<Parked<S>> {
        let index = tok as u32;
        let generation = (tok >> 32) as u32;
        let slot = self.slots.get_mut(index as usize)?;
        match slot {
            Slot::Occupied { generation: g, .. } if *g == generation => {}
            _ => return None,
        }
        let Slot::Occupied { parked, .. } = std::mem::replace(slot, Slot::Vacant) else {
            unreachable!("checked above")
        };
        self.free.push(index);
        self.occupied -= 1;
        if let Some(d) = parked.deadline {
            self.deadlines.remove(&(d, tok));
        }
        if self.occupied == 0 && self.slots.capacity() > KEEP_EMPTY_SLOTS {
            // A burst is over: give its memory back.
            self.slots = Vec::new();
            self.free = Vec::new();
        }
        Some(parked)
    }

    /// Re-reads a parked connection's deadline after its engine changed.
    fn refresh_deadline(&mut self, tok: u64) {
        let Some(parked) = self.get_mut(tok) else {
            return;
        };
        let new = parked.sleeper.deadline().map(Instant::from_std);
        if let Some(old) = std::mem::replace(&mut parked.deadline, new) {
            self.deadlines.remove(&(old, tok));
        }
        if let Some(d) = new {
            self.deadlines.insert((d, tok));
        }
    }

    fn tokens(&self) -> Vec<u64> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Slot::Occupied { generation, .. } => Some(token(*generation, i as u32)),
                Slot::Vacant => None,
            })
            .collect()
    }
}

struct Shared<S> {
    /// How long a connection is idle before it parks.
    park_after: Duration,
    lot: Mutex<Lot<S>>,
    registry: Registry,
    /// A connection parked with a deadline earlier than the lot's timer, or
    /// `TRIM_BATCH` parkings or resumptions since the last trim.
    wake: Notify,
    turnover_since_trim: AtomicUsize,
    stats: Arc<ServerStats>,
}

/// The server's lot of parked connections (see the module documentation),
/// holding engines of type `S` by value.
pub(crate) struct ParkingLot<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for ParkingLot<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<S: Sleeper> ParkingLot<S> {
    /// Creates the lot and spawns its task, which runs until `stop` leaves `Run`.
    pub(crate) fn start(
        park_after: Duration,
        stats: Arc<ServerStats>,
        stop: watch::Receiver<Stop>,
    ) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        // Why unsafe: tokio's only non-deprecated way to watch a descriptor
        // it did not open; parking is what brings an idle keep-alive
        // connection under 1 KiB (docs/benchmarks.md). Exercised by every
        // test in tests/parking.rs.
        // SAFETY: `mio::Poll` owns its epoll descriptor, opened by `Poll::new`
        // above and closed only when the `Poll` drops; the `AsyncFd` owns the
        // `Poll`, so the descriptor stays open and the same for the `AsyncFd`'s
        // whole life, and `as_raw_fd` always returns it.
        #[allow(unsafe_code)]
        let ready = unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        let shared = Arc::new(Shared {
            park_after,
            lot: Mutex::new(Lot::default()),
            registry,
            wake: Notify::new(),
            turnover_since_trim: AtomicUsize::new(0),
            stats,
        });
        tokio::spawn(run(shared.clone(), ready, stop));
        Ok(Self { shared })
    }

    /// How long a connection is idle before it parks.
    pub(crate) fn park_after(&self) -> Duration {
        self.shared.park_after
    }

    /// Closes up to `n` parked connections that may be closed now (idle
    /// keep-alive ones), the longest idle first (the earliest idle
    /// deadline); returns how many it closed. For a server out of file
    /// descriptors or at its connection limit.
    pub(crate) fn reclaim_idle(&self, n: usize) -> usize {
        let now = Instant::now().into_std();
        let mut reclaimed = 0;
        // Looked at in deadline order; WebSockets (which say no) are skipped,
        // but only so many, so a lot full of them is not scanned in full.
        let candidates: Vec<u64> = lock(&self.shared.lot)
            .deadlines
            .iter()
            .take(n.saturating_mul(4) + 64)
            .map(|(_, tok)| *tok)
            .collect();
        for tok in candidates {
            if reclaimed == n {
                break;
            }
            let mut slab = lock(&self.shared.lot);
            let Some(parked) = slab.get_mut(tok) else {
                continue;
            };
            let peer = parked.peer;
            if parked.sleeper.reclaim(now, peer) {
                if let Some(p) = slab.remove(tok) {
                    drop(slab);
                    leave_lot(&self.shared, &p);
                    reclaimed += 1;
                }
            }
        }
        reclaimed
    }

    /// Takes an idle connection off its task: `sleeper` holds its engine.
    /// Returns its token, or `None` when it was not parked (the lot is
    /// closing: it resumed at once; or its socket failed: it is closed).
    pub(crate) fn park(
        &self,
        io: TcpStream,
        sleeper: S,
        stop: watch::Receiver<Stop>,
        guard: Option<OpenGuard>,
        peer: SocketAddr,
    ) -> Option<u64> {
        let deadline = sleeper.deadline().map(Instant::from_std);
        let websocket = sleeper.is_websocket();
        let mut lot = lock(&self.shared.lot);
        if lot.closed {
            drop(lot);
            sleeper.resume(io, stop, guard, peer, self);
            return None;
        }
        let socket = match io.into_std() {
            Ok(socket) => socket,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "could not park an idle connection; closing it");
                return None;
            }
        };
        let earliest = lot.deadlines.first().map(|(d, _)| *d);
        let fd = socket.as_raw_fd();
        let tok = lot.insert(Parked {
            socket,
            sleeper,
            stop,
            guard,
            peer,
            deadline,
        });
        // One-shot: the first event resumes it, and resuming deregisters it.
        if let Err(e) = self
            .shared
            .registry
            .register(&mut SourceFd(&fd), Token(tok_to_usize(tok)), Interest::READABLE)
        {
            let parked = lot.remove(tok);
            drop(lot);
            tracing::debug!(%peer, error = %e, "could not register a parked connection; resuming it");
            if let Some(p) = parked {
                resume(self, p);
            }
            return None;
        }
        self.shared.stats.parked.fetch_add(1, Ordering::Relaxed);
        if websocket {
            self.shared.stats.parked_websockets.fetch_add(1, Ordering::Relaxed);
        }
        drop(lot);
        let trim_due = count_turnover(&self.shared);
        if trim_due || deadline.is_some_and(|d| earliest.is_none_or(|e| d < e)) {
            self.shared.wake.notify_one();
        }
        Some(tok)
    }

    /// Resumes the connection parked under `tok`, if it still is (a held
    /// response's signal fired).
    pub(crate) fn wake(&self, tok: u64) {
        unpark(self, tok);
    }

    /// Lets `f` work on the connection parked under `tok` (its engine and
    /// socket) without a task: for a push to a parked subscriber. `f` says
    /// whether the connection stays parked or must resume on a task.
    /// `None` when it is no longer parked (resumed or resuming).
    pub(crate) fn visit<R>(
        &self,
        tok: u64,
        f: impl FnOnce(&mut S, &mut std::net::TcpStream) -> (R, Visit),
    ) -> Option<R> {
        let mut slab = lock(&self.shared.lot);
        let parked = slab.get_mut(tok)?;
        let (result, then) = f(&mut parked.sleeper, &mut parked.socket);
        match then {
            Visit::Stay => {
                slab.refresh_deadline(tok);
                self.shared.stats.parked_writes.fetch_add(1, Ordering::Relaxed);
            }
            Visit::Resume => {
                self.shared.stats.parked_write_resumes.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = slab.remove(tok) {
                    drop(slab);
                    resume(self, p);
                }
            }
        }
        Some(result)
    }
}

fn lock<S>(lot: &Mutex<Lot<S>>) -> MutexGuard<'_, Lot<S>> {
    lot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Takes a connection out of the lot (if still there) and gives it a task.
fn unpark<S: Sleeper>(lot: &ParkingLot<S>, tok: u64) {
    let parked = lock(&lot.shared.lot).remove(tok);
    if let Some(p) = parked {
        resume(lot, p);
    }
}

/// A parked connection's deadline passed: its engine decides. When that
/// ends the connection the socket is closed here, with no task; otherwise
/// the connection resumes.
fn expire<S: Sleeper>(lot: &ParkingLot<S>, tok: u64) {
    let Some(mut p) = lock(&lot.shared.lot).remove(tok) else {
        return;
    };
    if p.sleeper.expire(Instant::now().into_std(), p.peer) {
        leave_lot(&lot.shared, &p);
    } else {
        resume(lot, p);
    }
}

fn leave_lot<S: Sleeper>(shared: &Shared<S>, p: &Parked<S>) {
    let fd = p.socket.as_raw_fd();
    if shared.registry.deregister(&mut SourceFd(&fd)).is_ok() {
        shared.stats.parked.fetch_sub(1, Ordering::Relaxed);
        if p.sleeper.is_websocket() {
            shared.stats.parked_websockets.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Counts a parking or resumption; returns whether a trim is now due.
fn count_turnover<S>(shared: &Shared<S>) -> bool {
    shared.turnover_since_trim.fetch_add(1, Ordering::Relaxed) + 1 == TRIM_BATCH
}

fn resume<S: Sleeper>(lot: &ParkingLot<S>, mut p: Parked<S>) {
    leave_lot(&lot.shared, &p);
    if count_turnover(&lot.shared) {
        lot.shared.wake.notify_one();
    }
    // Read what woke it now: a socket registered anew has no readiness in
    // the runtime until the reactor's next turn, and the driver must see
    // this input before its parking timer could fire again.
    let now = Instant::now().into_std();
    let sleeper = &mut p.sleeper;
    let read = crate::io::read_now_with(&mut p.socket, |bytes| sleeper.handle_input(bytes, now));
    if read.is_err() {
        sleeper.handle_io_error(now);
    }
    match TcpStream::from_std(p.socket) {
        Ok(io) => p.sleeper.resume(io, p.stop, p.guard, p.peer, lot),
        Err(e) => tracing::debug!(peer = %p.peer, error = %e, "could not resume a parked connection; closing it"),
    }
}

/// The lot's task: resumes connections on readiness, at their deadline and
/// on shutdown.
async fn run<S: Sleeper>(shared: Arc<Shared<S>>, mut ready: AsyncFd<Poll>, mut stop: watch::Receiver<Stop>) {
    let lot = ParkingLot { shared };
    let shared = &lot.shared;
    let mut events = Events::with_capacity(EVENTS_PER_POLL);
    let far = || Instant::now() + Duration::from_secs(86_400);
    let sleep = tokio::time::sleep_until(far());
    tokio::pin!(sleep);
    let mut last_trim: Option<Instant> = None;
    // One more trim after a burst's: the tasks of connections resumed in
    // the burst free their memory only once they have run.
    let mut follow_up = false;
    loop {
        let mut next = lock(&shared.lot).deadlines.first().map(|(d, _)| *d);
        if follow_up || shared.turnover_since_trim.load(Ordering::Relaxed) >= TRIM_BATCH {
            match last_trim.map(|t| t + TRIM_INTERVAL).filter(|at| *at > Instant::now()) {
                Some(at) => next = Some(next.map_or(at, |n| n.min(at))),
                None => {
                    follow_up = shared.turnover_since_trim.swap(0, Ordering::Relaxed) >= TRIM_BATCH;
                    last_trim = Some(Instant::now());
                    crate::memory::release_free_memory();
                    continue;
                }
            }
        }
        sleep.as_mut().reset(next.unwrap_or_else(far));
        tokio::select! {
            biased;
            changed = stop.changed() => {
                let order = if changed.is_err() { Stop::Force } else { *stop.borrow_and_update() };
                match order {
                    Stop::Run => {}
                    Stop::Graceful => shut_down_parked(&lot),
                    Stop::Force => break,
                }
            }
            guard = ready.readable_mut() => {
                let Ok(mut guard) = guard else { break };
                loop {
                    match guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "polling parked connections failed");
                            break;
                        }
                    }
                    if events.is_empty() {
                        guard.clear_ready();
                        break;
                    }
                    for event in events.iter() {
                        unpark(&lot, event.token().0 as u64);
                    }
                }
            }
            _ = &mut sleep, if next.is_some() => {
                let now = Instant::now();
                loop {
                    let due = {
                        let slab = lock(&shared.lot);
                        slab.deadlines.first().filter(|(d, _)| *d <= now).map(|(_, t)| *t)
                    };
                    let Some(tok) = due else { break };
                    expire(&lot, tok);
                }
            }
            _ = shared.wake.notified() => {}
        }
        let slab = lock(&shared.lot);
        if slab.closed && slab.occupied == 0 {
            break;
        }
    }
    // A forced stop (or the last drained connection gone): whatever is
    // still parked ends now.
    let tokens = {
        let mut slab = lock(&shared.lot);
        slab.closed = true;
        slab.tokens()
    };
    for tok in tokens {
        let parked = lock(&shared.lot).remove(tok);
        if let Some(mut p) = parked {
            match p.sleeper.forced_stop(p.peer) {
                AtShutdown::Resume => resume(&lot, p),
                AtShutdown::Closed | AtShutdown::Stay => leave_lot(shared, &p),
            }
        }
    }
}

/// A graceful shutdown began: nothing more parks; each parked connection's
/// engine is told, and closes, stays (a keep-alive connection draining:
/// input resumes it, its drain deadline closes it here) or resumes (a
/// WebSocket, to write its close frame).
fn shut_down_parked<S: Sleeper>(lot: &ParkingLot<S>) {
    let tokens = {
        let mut slab = lock(&lot.shared.lot);
        slab.closed = true;
        slab.tokens()
    };
    let now = Instant::now().into_std();
    for tok in tokens {
        let mut slab = lock(&lot.shared.lot);
        let Some(parked) = slab.get_mut(tok) else {
            continue;
        };
        let peer = parked.peer;
        match parked.sleeper.shutdown(now, peer) {
            AtShutdown::Stay => slab.refresh_deadline(tok),
            AtShutdown::Closed => {
                if let Some(p) = slab.remove(tok) {
                    drop(slab);
                    leave_lot(&lot.shared, &p);
                }
            }
            AtShutdown::Resume => {
                if let Some(p) = slab.remove(tok) {
                    drop(slab);
                    resume(lot, p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine that never does anything: the slab's bookkeeping alone.
    struct Idle;

    impl Sleeper for Idle {
        fn deadline(&self) -> Option<std::time::Instant> {
            None
        }
        fn handle_input(&mut self, _: &[u8], _: std::time::Instant) {}
        fn handle_io_error(&mut self, _: std::time::Instant) {}
        fn expire(&mut self, _: std::time::Instant, _: SocketAddr) -> bool {
            true
        }
        fn shutdown(&mut self, _: std::time::Instant, _: SocketAddr) -> AtShutdown {
            AtShutdown::Closed
        }
        fn forced_stop(&mut self, _: SocketAddr) -> AtShutdown {
            AtShutdown::Closed
        }
        fn reclaim(&mut self, _: std::time::Instant, _: SocketAddr) -> bool {
            true
        }
        fn resume(
            self,
            _: TcpStream,
            _: watch::Receiver<Stop>,
            _: Option<OpenGuard>,
            _: SocketAddr,
            _: &ParkingLot<Self>,
        ) {
        }
    }

    /// A parked connection on a duplicate of `socket`.
    fn parked(socket: &std::net::TcpStream, stop: &watch::Receiver<Stop>) -> Parked<Idle> {
        Parked {
            socket: socket.try_clone().expect("dup"),
            sleeper: Idle,
            stop: stop.clone(),
            guard: None,
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            deadline: None,
        }
    }

    #[test]
    fn an_emptied_slab_is_freed_and_old_tokens_stay_stale() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_tx, stop) = watch::channel(Stop::Run);
        let mut lot = Lot::default();

        let small: Vec<u64> = (0..10).map(|_| lot.insert(parked(&socket, &stop))).collect();
        for tok in &small {
            assert!(lot.remove(*tok).is_some());
        }
        assert!(lot.slots.capacity() > 0, "a small slab is kept for the next parkings");

        let burst: Vec<u64> = (0..KEEP_EMPTY_SLOTS + 100)
            .map(|_| lot.insert(parked(&socket, &stop)))
            .collect();
        assert!(lot.slots.capacity() > KEEP_EMPTY_SLOTS);
        for tok in &burst {
            assert!(lot.remove(*tok).is_some());
        }
        assert_eq!(lot.slots.capacity(), 0, "the burst's slab is freed");
        assert_eq!(lot.free.capacity(), 0);

        // Slot 0 is used again, with a new generation: old tokens miss.
        let fresh = lot.insert(parked(&socket, &stop));
        assert_eq!(fresh as u32, 0);
        for tok in small.iter().chain(&burst) {
            assert_ne!(*tok, fresh);
            assert!(lot.remove(*tok).is_none());
            assert!(lot.get_mut(*tok).is_none());
        }
        assert!(lot.get_mut(fresh).is_some());
        assert!(lot.remove(fresh).is_some());
    }
}
