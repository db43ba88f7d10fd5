//! The one WebSocket driver core under both faces: the [`super::WebSocket`]
//! handle and callback-served connections ([`super::WsService`]).
//!
//! Theory of operation. A [`WsDriver`] is an engine
//! (`tether_proto::ws::WsConnection`, where every protocol decision is
//! made: framing, close codes, the queue limit and what overflowing it does,
//! the write, close, heartbeat and idle timers, shutdown's 1001), its
//! transport, the server's stop signal and one timer. [`WsDriver::poll_turn`]
//! moves bytes and time until its face has something to do:
//! 1. offers the engine's output to the transport (one vectored write at a
//!    time) and reports what was written back to the engine;
//! 2. once the engine says the transport should close, shuts down its
//!    write side (the server closes TCP first) and ends;
//! 3. reads once when the engine wants input (`wants_read`: not while a
//!    full queue waits for a peer that does not read), and returns so the
//!    face takes the events the read produced (the engine processes input
//!    up to one message at a time);
//! 4. sleeps until the engine's next deadline (or the face's own: parking)
//!    and hands the time to the engine;
//! 5. on the server's graceful stop tells the engine to shut down (close
//!    1001); on a forced stop ends at once.
//!
//! What it never does: decide anything about the protocol (it asks the
//! engine), or deliver messages (its faces do).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tether_proto::ws::{Role, WsConnection, WsEnd, WsStats};
use tokio::io::AsyncWrite;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::lifecycle::{Stop, StopSignal, Transport};
use crate::memory::PeakBuffers;
use crate::traffic::AtomicTraffic;

/// What [`WsDriver::poll_turn`] returns to its face.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// A read happened (bytes, or the end of input): events may be waiting.
    Input,
    /// The face's own deadline passed.
    Deadline,
    /// The connection is over; nothing more will be read or written.
    Ended,
}

/// How a driven connection ended: the engine's account, or the server's
/// forced stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Engine(WsEnd),
    ForcedStop,
}

/// A peer address for logs (`-` when the transport has none).
pub(crate) struct Peer(pub(crate) Option<SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(peer) => peer.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// The time, read at most once per pass of the driving loop (a pass takes
/// microseconds; deadlines here are seconds).
#[derive(Default)]
pub(crate) struct LazyNow(Option<Instant>);

impl LazyNow {
    pub(crate) fn get(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

/// How often a busy connection adds its traffic to [`WS_TOTALS`].
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Process-wide WebSocket counters, for metrics: a connection's traffic is
/// added when its driver parks or ends, and at most once a second while it
/// is busy (not per message); what a parked connection reads or is sent
/// without a task, at once. Two sets: [`WS_TOTALS`] for the server side's
/// connections (what `/metrics` shows) and [`WS_CLIENT_TOTALS`] for the
/// client side's, so a process that is both (a bridge, `tether compare`
/// with its in-process server) never reports its clients as its server.
#[derive(Debug, Default)]
pub struct WsTotals {
    /// WebSocket connections open now (of this side).
    pub open: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    /// Bytes on the wire, frame headers apart from payloads (an upgraded
    /// connection's HTTP phase is the server's `http_traffic`).
    pub traffic: AtomicTraffic,
    /// Connections ended, by `WsEnd as usize`; the last slot counts the
    /// server's forced stops.
    pub ended: [AtomicU64; WsEnd::ALL.len() + 1],
}

/// The server side's WebSockets (see [`WsTotals`]).
pub static WS_TOTALS: WsTotals = WsTotals::new();

/// The client side's WebSockets (see [`WsTotals`]).
pub static WS_CLIENT_TOTALS: WsTotals = WsTotals::new();

impl WsTotals {
    const fn new() -> Self {
        WsTotals {
            open: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            traffic: AtomicTraffic::new(),
            ended: [const { AtomicU64::new(0) }; WsEnd::ALL.len() + 1],
        }
    }

    /// The totals a connection of this side adds to.
    pub fn of(role: Role) -> &'static WsTotals {
        match role {
            Role::Server => &WS_TOTALS,
            Role::Client => &WS_CLIENT_TOTALS,
        }
    }

    /// A connection opened (its driver's first start, not a resumption).
    pub(crate) fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds what a connection counted from `was` to `now`.
    pub(crate) fn add(&self, was: &WsStats, now: &WsStats) {
        let add = |total: &AtomicU64, delta: u32| {
            if delta > 0 {
                total.fetch_add(u64::from(delta), Ordering::Relaxed);
            }
        };
        add(&self.messages_in, now.messages_in.wrapping_sub(was.messages_in));
        add(&self.messages_out, now.messages_out.wrapping_sub(was.messages_out));
        self.traffic.add(now.traffic.since(was.traffic));
    }

    /// Runs `f` on an engine no driver holds (a parked one) and adds what
    /// it counted meanwhile: the next driver starts from the engine's
    /// count as it finds it.
    pub(crate) fn tracked<R>(&self, engine: &mut WsConnection, f: impl FnOnce(&mut WsConnection) -> R) -> R {
        let was = engine.stats();
        let result = f(engine);
        self.add(&was, &engine.stats());
        result
    }
}

/// One WebSocket connection on the runtime (see the module documentation).
pub(crate) struct WsDriver<IO> {
    pub(crate) io: IO,
    pub(crate) engine: WsConnection,
    stop: Option<StopSignal>,
    /// Shutdown began: the engine was told (and a face parks no more).
    pub(crate) stopping: bool,
    /// Bytes were written and the transport not flushed since: a TLS
    /// stream may hold the last of them (TCP holds nothing).
    pub(crate) unflushed: bool,
    /// Created on the first deadline (many connections never have one).
    timer: Option<Pin<Box<Sleep>>>,
    /// The deadline the timer is armed for.
    armed: Option<Instant>,
    /// When the socket last carried bytes either way.
    pub(crate) last_io: Instant,
    ending: Option<Ending>,
    /// Its largest buffers, reported when the driver is dropped (see `memory`).
    peak: PeakBuffers,
    /// The peer's address, for logs.
    pub(crate) peer: Option<SocketAddr>,
    /// The WebSocket's span (a server's: under its connection's; see
    /// `crate::spans`): its end is recorded and logged in it.
    pub(crate) span: tracing::Span,
    /// The engine's counters as last added to [`WS_TOTALS`], and when.
    reported: WsStats,
    reported_at: Instant,
}

/// A deadline that passed.
enum Fired {
    Engine,
    Face,
}

impl<IO: Transport> WsDriver<IO> {
    /// Drives `engine` over `io`; with a stop signal, server shutdown closes it with 1001.
    pub(crate) fn new(
        io: IO,
        mut engine: WsConnection,
        stop: Option<watch::Receiver<Stop>>,
        peer: Option<SocketAddr>,
        span: tracing::Span,
    ) -> Self {
        let now = Instant::now();
        let mut stopping = false;
        let stop = stop.and_then(|rx| {
            let (current, signal) = StopSignal::new(rx);
            match current {
                Stop::Run => Some(signal),
                // Already stopping: say goodbye at once; a forced stop
                // still reaches it through the signal.
                Stop::Graceful => {
                    engine.handle_shutdown(now.into_std());
                    stopping = true;
                    Some(signal)
                }
                Stop::Force => {
                    engine.handle_eof(now.into_std());
                    None
                }
            }
        });
        // What an earlier driver of this engine (before parking) reported.
        let reported = engine.stats();
        Self {
            io,
            engine,
            stop,
            stopping,
            unflushed: false,
            timer: None,
            armed: None,
            last_io: now,
            ending: None,
            reported,
            reported_at: now,
            peak: PeakBuffers::default(),
            peer,
            span,
        }
    }

    /// Adds the traffic since the last report to [`WS_TOTALS`] (done when
    /// it waits and when it ends; a face that takes the engine away, to
    /// park it, calls it first).
    pub(crate) fn report(&mut self) {
        self.reported_at = self.last_io;
        let now = self.engine.stats();
        let was = std::mem::replace(&mut self.reported, now);
        WsTotals::of(self.engine.role()).add(&was, &now);
    }

    /// The stop signal's channel, for a connection that leaves this driver (parking).
    pub(crate) fn stop_receiver(&self) -> Option<watch::Receiver<Stop>> {
        self.stop.as_ref().map(StopSignal::receiver)
    }

    /// Moves bytes and time until the face has something to do, or until
    /// nothing can happen before a wake-up (`Pending`). `face_deadline`
    /// gives the face's own deadline, asked when the connection is about to
    /// wait (`Ready(Turn::Deadline)` once it passes).
    pub(crate) fn poll_turn(
        &mut self,
        cx: &mut Context<'_>,
        face_deadline: impl Fn(&Self) -> Option<Instant>,
    ) -> Poll<Turn> {
        if self.ending.is_some() {
            return Poll::Ready(Turn::Ended);
        }
        loop {
            let mut clock = LazyNow::default();
            let wrote = self.poll_write(cx, &mut clock);
            if let Some(end) = self.engine.poll_close() {
                // Shutting down a TCP write side does not block.
                let _ = AsyncWrite::poll_shutdown(Pin::new(&mut self.io), cx);
                self.finish(Ending::Engine(end));
                return Poll::Ready(Turn::Ended);
            }
            if self.engine.wants_read() {
                let clock_ref = &mut clock;
                let read =
                    super::incoming::poll_read(&mut self.io, cx, &mut self.engine, || clock_ref.get().into_std());
                if read.is_ready() {
                    self.last_io = clock.get();
                    return Poll::Ready(Turn::Input);
                }
            }
            if wrote {
                continue;
            }
            let face = face_deadline(self);
            match self.poll_deadlines(cx, face, &mut clock) {
                Some(Fired::Engine) => continue,
                Some(Fired::Face) => return Poll::Ready(Turn::Deadline),
                None => {}
            }
            match self.stop.as_mut().map(|s| s.poll_next(cx)) {
                Some(Poll::Ready(Stop::Graceful)) => {
                    self.stopping = true;
                    self.engine.handle_shutdown(Instant::now().into_std());
                    continue;
                }
                Some(Poll::Ready(Stop::Force)) => {
                    self.finish(Ending::ForcedStop);
                    return Poll::Ready(Turn::Ended);
                }
                Some(Poll::Ready(Stop::Run)) => continue,
                Some(Poll::Pending) | None => {
                    // At most once a second (of traffic) for a busy
                    // connection; the rest when it parks or ends.
                    if self.last_io >= self.reported_at + REPORT_EVERY {
                        self.report();
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn finish(&mut self, ending: Ending) {
        let end = match ending {
            Ending::Engine(end) => end.as_str(),
            Ending::ForcedStop => "forced_stop",
        };
        crate::spans::record(&self.span, "end", end);
        self.span.in_scope(|| self.log_end(ending));
        self.report();
        let slot = match ending {
            Ending::Engine(end) => end as usize,
            Ending::ForcedStop => WsEnd::ALL.len(),
        };
        let totals = WsTotals::of(self.engine.role());
        totals.ended[slot].fetch_add(1, Ordering::Relaxed);
        totals.open.fetch_sub(1, Ordering::Relaxed);
        self.ending = Some(ending);
        self.timer = None;
        self.stop = None;
    }

    /// The one line every WebSocket ends with (at `debug`): how it ended,
    /// the close codes each way and who closed first, what went through it
    /// each way (messages; bytes on the wire, `bytes_*` split into frame
    /// `header_*` and `payload_*`; an upgraded connection's HTTP phase
    /// included, its heads as header bytes), how long it lived.
    fn log_end(&self, ending: Ending) {
        let end = match ending {
            Ending::Engine(end) => end.as_str(),
            Ending::ForcedStop => "forced_stop",
        };
        let s = self.engine.stats();
        let closed_by = match s.closed_here_first {
            Some(true) => "here",
            Some(false) => "peer",
            None => "nobody",
        };
        tracing::debug!(
            peer = %Peer(self.peer),
            end,
            closed_by,
            close_sent = s.close_sent,
            close_received = s.close_received,
            messages_in = s.messages_in,
            messages_out = s.messages_out,
            bytes_in = s.traffic.received.total(),
            bytes_out = s.traffic.sent.total(),
            header_in = s.traffic.received.overhead,
            payload_in = s.traffic.received.payload,
            header_out = s.traffic.sent.overhead,
            payload_out = s.traffic.sent.payload,
            duration = ?self.engine.opened_at().elapsed(),
            "websocket closed"
        );
    }

    /// Offers the engine's output to the transport until it takes no more;
    /// returns whether anything was written (or the transport failed, which
    /// the engine is told as the end of the transport).
    // Inlined into the driving loop: a call cost about 90 instructions per
    // echoed message (callgrind).
    #[inline]
    pub(crate) fn poll_write(&mut self, cx: &mut Context<'_>, clock: &mut LazyNow) -> bool {
        let mut wrote = false;
        if self.engine.has_output() {
            self.peak
                .note(self.engine.queued_bytes() + self.engine.buffer_capacity());
        }
        while self.engine.has_output() {
            let now = clock.get();
            match crate::io::poll_write_bufs(&mut self.io, cx, self.engine.poll_transmit(now.into_std())) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.engine.handle_eof(now.into_std());
                    return true;
                }
                Poll::Ready(Ok(n)) => {
                    self.engine.handle_written(n, now.into_std());
                    self.last_io = now;
                    wrote = true;
                    self.unflushed = true;
                }
                Poll::Pending => break,
            }
        }
        // Once the queue is out, whatever the transport buffered (TLS) goes
        // too (woken by the socket to finish, like a pending write); free for
        // TCP. Every path that writes (this one, a parked connection's
        // pushes, a service's replies) ends here, so the flush is not tied
        // to `unflushed`, which only tells the Sink's `poll_flush` when its
        // bytes are out.
        if !self.engine.has_output() {
            match AsyncWrite::poll_flush(Pin::new(&mut self.io), cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(_)) => {
                    self.unflushed = false;
                    self.engine.handle_eof(clock.get().into_std());
                    return true;
                }
                Poll::Pending => {}
            }
        }
        wrote
    }

    /// Waits for the earliest deadline; reports one that passed (the
    /// engine's is handled here).
    fn poll_deadlines(&mut self, cx: &mut Context<'_>, face: Option<Instant>, clock: &mut LazyNow) -> Option<Fired> {
        let engine = self.engine.poll_timeout().map(Instant::from_std);
        let deadline = [engine, face].into_iter().flatten().min()?;
        // Moved only to an earlier deadline: a busy connection (whose park
        // deadline moves with every message) does not touch the timer wheel
        // per message; an early wake-up re-arms it.
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if self.armed.is_none_or(|a| deadline < a) {
            timer.as_mut().reset(deadline);
            self.armed = Some(deadline);
        }
        if deadline > clock.get() && timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        self.armed = None;
        let now = Instant::now();
        if engine.is_some_and(|d| now >= d) {
            self.engine.handle_timeout(now.into_std());
            return Some(Fired::Engine);
        }
        if face.is_some_and(|d| now >= d) {
            return Some(Fired::Face);
        }
        // Woke early (the timer was armed for an earlier deadline): re-arm.
        Some(Fired::Engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::ws::{WsConfig, WsState};
    use tokio::io::AsyncReadExt;

    fn engine() -> WsConnection {
        WsConnection::server(WsConfig::default(), None, std::time::Instant::now())
    }

    #[tokio::test]
    async fn partial_writes_keep_order_and_count() {
        let mut engine = engine();
        for i in 0..20u8 {
            engine.send_binary(vec![i; 3000]).unwrap();
        }
        // A pipe that takes 1 KiB at a time: every write is partial.
        let (io, mut peer) = tokio::io::duplex(1024);
        let mut conn = WsDriver::new(io, engine, None, None, tracing::Span::none());
        let mut wire = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..10_000 {
            std::future::poll_fn(|cx| Poll::Ready(conn.poll_write(cx, &mut LazyNow::default()))).await;
            if !conn.engine.has_output() {
                break;
            }
            assert!(
                conn.engine.poll_timeout().is_some(),
                "queued output has a write deadline"
            );
            let n = peer.read(&mut buf).await.unwrap();
            wire.extend_from_slice(&buf[..n]);
        }
        assert_eq!(conn.engine.poll_timeout(), None, "written: no deadline left");
        drop(conn);
        peer.read_to_end(&mut wire).await.unwrap();
        // 20 frames: 4-byte header (126, 16-bit length) then the payload, in order.
        assert_eq!(wire.len(), 20 * 3004);
        for (i, frame) in wire.chunks(3004).enumerate() {
            assert_eq!(&frame[..4], &[0x82, 126, 0x0B, 0xB8]);
            assert!(frame[4..].iter().all(|&b| b == i as u8), "frame {i} in order");
        }
    }

    #[tokio::test]
    async fn a_closed_transport_ends_the_engine_and_the_turn() {
        let mut engine = engine();
        engine.send_text("lost").unwrap();
        let (io, peer) = tokio::io::duplex(64);
        drop(peer);
        let mut conn = WsDriver::new(io, engine, None, None, tracing::Span::none());
        let turn = std::future::poll_fn(|cx| conn.poll_turn(cx, |_| None)).await;
        assert_eq!(turn, Turn::Ended);
        assert_eq!(conn.engine.state(), WsState::Closed);
        assert_eq!(conn.engine.queued_bytes(), 0);
        assert_eq!(conn.ending, Some(Ending::Engine(WsEnd::Abnormal)));
    }

    #[tokio::test]
    async fn a_graceful_stop_closes_with_1001_and_a_forced_one_ends_at_once() {
        let (tx, rx) = watch::channel(Stop::Run);
        let (io, mut peer) = tokio::io::duplex(4096);
        let mut conn = WsDriver::new(io, engine(), Some(rx), None, tracing::Span::none());
        let pending = std::future::poll_fn(|cx| Poll::Ready(conn.poll_turn(cx, |_| None))).await;
        assert!(pending.is_pending());
        tx.send(Stop::Graceful).unwrap();
        let pending = std::future::poll_fn(|cx| Poll::Ready(conn.poll_turn(cx, |_| None))).await;
        assert!(pending.is_pending(), "waits for the peer's close");
        assert!(conn.stopping);
        let mut head = [0u8; 4];
        peer.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, &[0x88, 22, 0x03, 0xE9], "close 1001 with its reason");
        tx.send(Stop::Force).unwrap();
        let turn = std::future::poll_fn(|cx| conn.poll_turn(cx, |_| None)).await;
        assert_eq!(turn, Turn::Ended);
        assert_eq!(conn.ending, Some(Ending::ForcedStop));
    }
}
