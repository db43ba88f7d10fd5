//! Parking: idle connections held without a task.
//!
//! Theory of operation. A keep-alive connection spends most of its life
//! waiting for the next request, a WebSocket most of its life waiting for
//! the next message. A task, its timer and the runtime's registration of
//! the socket cost about 1 KiB each while they wait, so a connection idle
//! for `park_after` (with nothing received, queued or in flight:
//! `ServerConnection::idle_since`, `WsConnection::is_quiescent`) leaves its
//! task: its driver hands back the stream and the engine (a [`Sleeper`]:
//! the keep-alive engine from [`driver::Driven::Idle`], or a callback-served
//! WebSocket's engine and service from `crate::ws::service`), the socket is
//! taken off the runtime's reactor and registered, one-shot, with the lot's
//! own `epoll` instance (through `mio`), and the engine waits in a slab.
//! Any server stream parks: TCP, a Unix socket, or TLS over TCP, whose
//! rustls session waits with it (`super::stream` says what it holds, and
//! why a TLS connection with input inside rustls is resumed at once instead).
//!
//! One task per server owns the lot. It wakes for the first of:
//! - readiness of the lot's `epoll` (a parked socket got bytes, EOF or an
//!   error): those connections are resumed;
//! - the earliest parked deadline (the engine's own `poll_timeout`: idle
//!   timeout, lifetime, heartbeat): the engine handles it; a keep-alive
//!   connection it closes is closed right there (no task; over TLS after a
//!   `close_notify`, as far as the socket takes it at once), any other is
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
//! callback-served WebSocket), plus, over TLS, its boxed rustls session
//! (see docs/benchmarks.md). The slab is one array that grows with the
//! most connections parked at once; once it is empty again after a burst
//! (more than `KEEP_EMPTY_SLOTS` slots) it is freed. The tasks it left are freed,
//! but glibc's allocator keeps freed memory inside its heap; so after every
//! `TRIM_BATCH` parkings or resumptions (at most once per `TRIM_INTERVAL`:
//! a burst of resumed connections that then close frees their tasks a
//! moment later) the lot asks it to return free pages to the system
//! (`malloc_trim`).

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tokio::io::unix::AsyncFd;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::sleeper::{AtShutdown, Sleeper, Visit};
use super::stream::{ParkedStream, ServerStream};
use super::ServerStats;
use crate::lifecycle::{OpenGuard, Stop};
use crate::ws::driver::Peer;

/// Readiness events taken from the lot's `epoll` per call.
const EVENTS_PER_POLL: usize = 1024;
/// Parkings or resumptions (tasks freed, or soon to be) after which free
/// memory is returned to the system.
const TRIM_BATCH: usize = 64;
/// The least time between two such returns (it walks the allocator's heap).
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// A parked connection: the stream off the runtime, the engine, and what
/// its task needs to resume.
struct Parked<S> {
    stream: ParkedStream,
    sleeper: S,
    stop: watch::Receiver<Stop>,
    guard: Option<OpenGuard>,
    /// The client's address (`None` on a Unix socket).
    peer: Option<SocketAddr>,
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
                    close_in_lot(&self.shared, p);
                    reclaimed += 1;
                }
            }
        }
        reclaimed
    }

    /// Takes an idle connection off its task: `sleeper` holds its engine.
    /// Returns its token, or `None` when it was not parked (the lot is
    /// closing, or rustls holds input its socket will not announce: it
    /// resumed at once; or its socket failed: it is closed).
    pub(crate) fn park(
        &self,
        stream: ServerStream,
        sleeper: S,
        stop: watch::Receiver<Stop>,
        guard: Option<OpenGuard>,
        peer: Option<SocketAddr>,
    ) -> Option<u64> {
        let deadline = sleeper.deadline().map(Instant::from_std);
        let websocket = sleeper.is_websocket();
        let mut stream = match ParkedStream::detach(stream) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(peer = %Peer(peer), error = %e, "could not park an idle connection; closing it");
                return None;
            }
        };
        let holds_input = stream.holds_input();
        // Records rustls could not write yet: the lot waits for the socket
        // to take more too, and resumes the connection to write them.
        let interest = match stream.flush() {
            Ok(()) if stream.has_unsent() => Interest::READABLE | Interest::WRITABLE,
            Ok(()) => Interest::READABLE,
            Err(e) => {
                tracing::debug!(peer = %Peer(peer), error = %e, "could not park an idle connection; closing it");
                return None;
            }
        };
        let fd = stream.as_raw_fd();
        let parked = Parked {
            stream,
            sleeper,
            stop,
            guard,
            peer,
            deadline,
        };
        let mut lot = lock(&self.shared.lot);
        if lot.closed || holds_input {
            drop(lot);
            resume(self, parked);
            return None;
        }
        let earliest = lot.deadlines.first().map(|(d, _)| *d);
        let tok = lot.insert(parked);
        // One-shot: the first event resumes it, and resuming deregisters it.
        if let Err(e) = self
            .shared
            .registry
            .register(&mut SourceFd(&fd), Token(tok_to_usize(tok)), interest)
        {
            let parked = lot.remove(tok);
            drop(lot);
            tracing::debug!(peer = %Peer(peer), error = %e, "could not register a parked connection; resuming it");
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
    /// stream) without a task: for a push to a parked subscriber. `f` says
    /// whether the connection stays parked or must resume on a task (it
    /// must too when rustls holds records the socket did not take).
    /// `None` when it is no longer parked (resumed or resuming).
    pub(crate) fn visit<R>(&self, tok: u64, f: impl FnOnce(&mut S, &mut ParkedStream) -> (R, Visit)) -> Option<R> {
        let mut slab = lock(&self.shared.lot);
        let parked = slab.get_mut(tok)?;
        let (result, mut then) = f(&mut parked.sleeper, &mut parked.stream);
        if parked.stream.has_unsent() {
            then = Visit::Resume;
        }
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
/// ends the connection it is closed here, with no task; otherwise the
/// connection resumes.
fn expire<S: Sleeper>(lot: &ParkingLot<S>, tok: u64) {
    let Some(mut p) = lock(&lot.shared.lot).remove(tok) else {
        return;
    };
    if p.sleeper.expire(Instant::now().into_std(), p.peer) {
        close_in_lot(&lot.shared, p);
    } else {
        resume(lot, p);
    }
}

/// A connection taken out of the lot ends here, with no task: its socket
/// closes (after a TLS session's `close_notify`).
fn close_in_lot<S: Sleeper>(shared: &Shared<S>, p: Parked<S>) {
    leave_lot(shared, &p);
    p.stream.close();
}

fn leave_lot<S: Sleeper>(shared: &Shared<S>, p: &Parked<S>) {
    let fd = p.stream.as_raw_fd();
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
    // (Over TLS: the plaintext of what woke it, and first what rustls
    // held when it was parked.)
    let now = Instant::now().into_std();
    let sleeper = &mut p.sleeper;
    let read = crate::io::read_now_with(&mut p.stream, |bytes| sleeper.handle_input(bytes, now));
    if read.is_err() {
        sleeper.handle_io_error(now);
    }
    match p.stream.attach() {
        Ok(io) => p.sleeper.resume(io, p.stop, p.guard, p.peer, lot),
        Err(e) => {
            tracing::debug!(peer = %Peer(p.peer), error = %e, "could not resume a parked connection; closing it")
        }
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
                AtShutdown::Closed | AtShutdown::Stay => close_in_lot(shared, p),
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
                    close_in_lot(&lot.shared, p);
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

    /// A parked connection on a duplicate of `socket`.
    /// (Its sleeper records into a channel nobody reads: the slab's
    /// bookkeeping alone is under test.)
    fn parked(socket: &std::net::TcpStream, stop: &watch::Receiver<Stop>) -> Parked<Recorder> {
        Parked {
            stream: ParkedStream::Tcp(socket.try_clone().expect("dup")),
            sleeper: Recorder {
                input: Vec::new(),
                resumed: std::sync::mpsc::channel().0,
            },
            stop: stop.clone(),
            guard: None,
            peer: None,
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

    /// A sleeper that keeps what the lot reads for it and hands it over
    /// when resumed (its stream is then dropped).
    struct Recorder {
        input: Vec<u8>,
        resumed: std::sync::mpsc::Sender<Vec<u8>>,
    }

    impl Sleeper for Recorder {
        fn deadline(&self) -> Option<std::time::Instant> {
            None
        }
        fn handle_input(&mut self, bytes: &[u8], _: std::time::Instant) {
            self.input.extend_from_slice(bytes);
        }
        fn handle_io_error(&mut self, _: std::time::Instant) {}
        fn expire(&mut self, _: std::time::Instant, _: Option<SocketAddr>) -> bool {
            true
        }
        fn shutdown(&mut self, _: std::time::Instant, _: Option<SocketAddr>) -> AtShutdown {
            AtShutdown::Closed
        }
        fn forced_stop(&mut self, _: Option<SocketAddr>) -> AtShutdown {
            AtShutdown::Closed
        }
        fn reclaim(&mut self, _: std::time::Instant, _: Option<SocketAddr>) -> bool {
            true
        }
        fn resume(
            self,
            _: ServerStream,
            _: watch::Receiver<Stop>,
            _: Option<OpenGuard>,
            _: Option<SocketAddr>,
            _: &ParkingLot<Self>,
        ) {
            let _ = self.resumed.send(self.input);
        }
    }

    /// A client and a server TLS stream over loopback TCP, handshake done,
    /// with a self-signed `localhost` certificate.
    async fn tls_pair() -> (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        super::super::stream::TlsStream,
    ) {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
        let server = rustls::ServerConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certified.cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await
                .unwrap()
        };
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            let socket = super::super::stream::TlsSocket::Attached(tcp);
            tokio_rustls::TlsAcceptor::from(Arc::new(server))
                .accept(socket)
                .await
                .unwrap()
        };
        let within = Duration::from_secs(10);
        tokio::time::timeout(within, async { tokio::join!(connect, accept) })
            .await
            .expect("handshake in time")
    }

    #[tokio::test]
    async fn a_tls_connection_with_a_record_inside_rustls_resumes_at_once_and_one_without_parks() {
        use super::super::stream::TlsSocket;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let within = Duration::from_secs(10);
        let stats = Arc::new(ServerStats::default());
        let (_stop_tx, stop) = watch::channel(Stop::Run);
        let lot = ParkingLot::start(Duration::from_millis(100), stats.clone(), stop.clone()).unwrap();
        let (resumed_tx, resumed) = std::sync::mpsc::channel();
        let recorder = || Recorder {
            input: Vec::new(),
            resumed: resumed_tx.clone(),
        };

        // The request's record reaches rustls (read from the socket, not
        // yet decrypted) before the connection would park: the socket has
        // nothing more, so epoll would never wake it. It is resumed at once
        // with the request.
        let (mut client, mut server) = tls_pair().await;
        client.write_all(REQUEST).await.unwrap();
        client.flush().await.unwrap();
        let TlsSocket::Attached(tcp) = server.get_ref().0 else {
            unreachable!("attached until parked")
        };
        tokio::time::timeout(within, tcp.readable()).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (socket, session) = server.get_mut();
        for _ in 0..16 {
            match session.read_tls(socket) {
                Ok(n) => assert!(n > 0, "the client is still there"),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let token = lot.park(
            ServerStream::Tls(Box::new(server)),
            recorder(),
            stop.clone(),
            None,
            None,
        );
        assert_eq!(token, None, "not parked");
        assert_eq!(
            resumed.recv_timeout(within).unwrap(),
            REQUEST,
            "resumed with the request"
        );
        assert_eq!(stats.parked.load(Ordering::Relaxed), 0);

        // Nothing inside rustls: it parks. A push is sealed and written
        // without a task (it stays parked); the next request, read through
        // rustls off the runtime, resumes it.
        let (mut client, server) = tls_pair().await;
        let token = lot.park(
            ServerStream::Tls(Box::new(server)),
            recorder(),
            stop.clone(),
            None,
            None,
        );
        let token = token.expect("parked");
        assert_eq!(stats.parked.load(Ordering::Relaxed), 1);
        let pushed = lot.visit(token, |_, stream| (stream.write_all(b"pushed"), Visit::Stay));
        assert!(matches!(pushed, Some(Ok(()))), "{pushed:?}");
        let mut got = [0u8; 6];
        tokio::time::timeout(within, client.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"pushed");
        assert_eq!(stats.parked.load(Ordering::Relaxed), 1, "still parked");
        client.write_all(REQUEST).await.unwrap();
        client.flush().await.unwrap();
        let resumed = tokio::task::spawn_blocking(move || resumed.recv_timeout(within))
            .await
            .unwrap();
        assert_eq!(resumed.unwrap(), REQUEST, "resumed with the request");
        assert_eq!(stats.parked.load(Ordering::Relaxed), 0);
    }
}
