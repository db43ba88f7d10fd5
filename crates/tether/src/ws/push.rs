//! Pushing frames to a callback-served WebSocket from elsewhere (the hub's
//! fan-out), whether the connection is on its task or parked.
//!
//! Theory of operation. An [`Inlet`] is one connection's mailbox for
//! frames encoded once and shared (`EncodedFrame`: the same `Bytes` for
//! every subscriber of a channel). It knows where its connection is:
//! * **on its task**: a push queues the frame in the inlet and wakes the
//!   task, which moves every waiting frame into its engine in one go and
//!   writes them with one vectored write (a burst of publications costs one
//!   system call per subscriber, not one per message);
//! * **parked** (in the server's lot, no task): a push hands the frame to the
//!   parked engine and writes it to the socket at once; only a socket that
//!   cannot take it all makes the connection resume on a task (which then
//!   waits for the socket, under the engine's write timeout). An idle
//!   subscriber receives messages without ever waking a task;
//! * **ended**: a push reports `Closed`, and the publisher drops it.
//!
//! A fan-out pushes *deferred* ([`Inlet::push_deferred`]): to a parked
//! connection the frame waits in the inlet instead of being written, and
//! the first frame waiting asks the caller to [`Inlet::flush`] the inlet
//! soon, which writes every frame then waiting with one vectored write,
//! still without a task. Publications that arrive before the flush (a burst
//! read in one go) so cost one system call per subscriber, not one per
//! message, parked or not. Any push behind waiting frames waits with them,
//! so a connection's frames keep the order they were pushed in.
//!
//! Bounds: frames waiting in the inlet are bounded by `limit` bytes (the
//! engine's queue limit); a push that would pass it marks the connection a
//! slow consumer, and its task closes it with 1008. Once in the engine, the
//! engine's own queue limit and `QueueOverflow` rule apply, parked or not.
//! A publisher never waits for a subscriber.
//!
//! Lock order: inlet, then the lot. Nothing holding the lot's lock takes an
//! inlet's, so a push and a parking never deadlock; a connection parks only
//! with the inlet locked and empty, so no frame is left behind in it.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::Waker;

use tether_proto::ws::{EncodedFrame, WsConnection};

use crate::server::serving::{Lot, Parkable, Visit};
use crate::server::stream::ParkedStream;

/// What a deferred push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deferred {
    /// Queued: a flush already due, or the connection's task, writes it.
    Queued,
    /// Queued as the first frame waiting for a parked connection: the
    /// caller must [`Inlet::flush`] the inlet (once its burst is pushed).
    NeedsFlush,
    /// The connection is over (or closing as a slow consumer): forget it.
    Closed,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued, or written already.
    Queued,
    /// The connection is over (or closing as a slow consumer): forget it.
    Closed,
}

/// One connection's mailbox (see the module documentation).
pub(crate) struct Inlet {
    state: Mutex<State>,
    /// The most bytes waiting in the inlet.
    limit: usize,
    /// Set once the handshake is done: the deflated shared frames the
    /// connection takes (`WsConnection::shared_deflate_window`), as
    /// (window, zlib level to compress with).
    shared_deflate: std::sync::OnceLock<Option<(u8, u32)>>,
}

enum At {
    /// On a task, woken by this waker (none yet: the task will look).
    Task(Option<Waker>),
    /// Parked in the lot under this token.
    Parked {
        lot: Lot,
        token: u64,
    },
    Ended,
}

struct State {
    waiting: VecDeque<EncodedFrame>,
    waiting_bytes: usize,
    at: At,
    /// The task is to close the connection with 1008 and this reason: a
    /// push overflowed (`slow consumer`), or the application asked
    /// ([`Inlet::close_policy`]).
    closing: Option<&'static str>,
    /// The task is to close the connection with 1008 and this reason once
    /// the frames waiting have gone to the engine ([`Inlet::close_after`]).
    close_after: Option<&'static str>,
}

impl std::fmt::Debug for Inlet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("Inlet")
            .field("waiting_bytes", &s.waiting_bytes)
            .field("closing", &s.closing)
            .finish()
    }
}

impl Inlet {
    /// A mailbox holding at most `limit` bytes of frames its task has not taken.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            state: Mutex::new(State {
                waiting: VecDeque::new(),
                waiting_bytes: 0,
                at: At::Task(None),
                closing: None,
                close_after: None,
            }),
            limit,
            shared_deflate: std::sync::OnceLock::new(),
        }
    }

    /// Records what deflated shared frames the connection takes (once, at
    /// the handshake).
    pub(crate) fn set_shared_deflate(&self, deflate: Option<(u8, u32)>) {
        let _ = self.shared_deflate.set(deflate);
    }

    /// The deflated shared frames the connection takes: (window, level).
    pub(crate) fn shared_deflate(&self) -> Option<(u8, u32)> {
        self.shared_deflate.get().copied().flatten()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delivers one frame (see the module documentation).
    pub(crate) fn push(&self, frame: &EncodedFrame) -> Pushed {
        let mut s = self.lock();
        if s.closing.is_some() || s.close_after.is_some() {
            return Pushed::Closed;
        }
        match &s.at {
            At::Ended => return Pushed::Closed,
            At::Parked { lot, token } if s.waiting.is_empty() => {
                match lot.visit(*token, |parked, socket| {
                    push_parked(parked, socket, std::iter::once(frame))
                }) {
                    Some(Pushed::Queued) => return Pushed::Queued,
                    Some(Pushed::Closed) => {
                        s.closing = Some(SLOW_CONSUMER);
                        return Pushed::Closed;
                    }
                    // Resumed (or resuming) by the lot: its task takes the frame.
                    None => s.at = At::Task(None),
                }
            }
            // Frames wait for a flush: this one waits behind them.
            At::Parked { .. } => {}
            At::Task(_) => {}
        }
        if queue(&mut s, frame, self.limit) {
            Pushed::Queued
        } else {
            Pushed::Closed
        }
    }

    /// Delivers one frame of a burst: queued in the inlet, parked or not;
    /// `NeedsFlush` asks the caller to [`flush`](Self::flush) it once the
    /// burst is pushed (see the module documentation).
    pub(crate) fn push_deferred(&self, frame: &EncodedFrame) -> Deferred {
        let mut s = self.lock();
        if s.closing.is_some() || s.close_after.is_some() {
            return Deferred::Closed;
        }
        let parked = match &s.at {
            At::Ended => return Deferred::Closed,
            At::Parked { .. } => true,
            At::Task(_) => false,
        };
        if !queue(&mut s, frame, self.limit) {
            Deferred::Closed
        } else if parked && s.waiting.len() == 1 {
            Deferred::NeedsFlush
        } else {
            Deferred::Queued
        }
    }

    /// Writes every frame waiting for a parked connection with one vectored
    /// write, without a task; only a socket that cannot take them all makes
    /// it resume. A connection on its task (or resumed meanwhile) takes them
    /// itself: it is woken.
    pub(crate) fn flush(&self) {
        let mut s = self.lock();
        let State {
            waiting,
            waiting_bytes,
            at,
            closing,
            ..
        } = &mut *s;
        if waiting.is_empty() {
            return;
        }
        match at {
            At::Parked { lot, token } => {
                match lot.visit(*token, |parked, socket| push_parked(parked, socket, waiting.iter())) {
                    Some(pushed) => {
                        // In the engine now (or refused: its task closes it).
                        if pushed == Pushed::Closed {
                            closing.get_or_insert(SLOW_CONSUMER);
                        }
                        waiting.clear();
                        *waiting_bytes = 0;
                    }
                    // Resumed (or resuming) by the lot: its task takes them.
                    None => *at = At::Task(None),
                }
            }
            At::Task(_) => wake(at),
            At::Ended => {
                waiting.clear();
                *waiting_bytes = 0;
            }
        }
    }

    /// The task's side: records `waker` as the one to wake and moves every
    /// waiting frame into `engine` (each subject to the engine's queue
    /// limit). Returns whether anything changed (frames moved, or the
    /// connection is closing as a slow consumer).
    pub(crate) fn take_into(&self, engine: &mut WsConnection, waker: &Waker) -> bool {
        let mut s = self.lock();
        match &mut s.at {
            At::Task(Some(w)) if w.will_wake(waker) => {}
            At::Ended => return false,
            at => *at = At::Task(Some(waker.clone())),
        }
        if let Some(reason) = s.closing.take() {
            s.at = At::Ended;
            engine.close_policy(reason);
            return true;
        }
        if s.waiting.is_empty() && s.close_after.is_none() {
            return false;
        }
        s.waiting_bytes = 0;
        let waiting = std::mem::take(&mut s.waiting);
        for frame in &waiting {
            if engine.send_encoded(frame).is_err() {
                // Closed as a slow consumer by the engine, or already closing.
                s.at = At::Ended;
                break;
            }
        }
        // The queue's allocation is kept for the next burst.
        let mut waiting = waiting;
        waiting.clear();
        if s.waiting.is_empty() {
            s.waiting = waiting;
        }
        if let Some(reason) = s.close_after.take() {
            s.at = At::Ended;
            engine.close_policy(reason);
        }
        true
    }

    /// Parks the connection with `park` (which returns its token in `lot`)
    /// unless frames are waiting; returns whether it parked. The inlet is
    /// locked meanwhile, so no push falls between the check and the parking.
    pub(crate) fn park_with(&self, lot: &Lot, park: impl FnOnce() -> Option<u64>) -> ParkAttempt {
        let mut s = self.lock();
        if !s.waiting.is_empty() || s.closing.is_some() || s.close_after.is_some() {
            return ParkAttempt::Busy;
        }
        match park() {
            Some(token) => {
                s.at = At::Parked {
                    lot: lot.clone(),
                    token,
                }
            }
            // Resumed at once (the lot is closing): the new task takes over.
            None => s.at = At::Task(None),
        }
        ParkAttempt::Parked
    }

    /// Gives up on the connection: it closes as a slow consumer (1008), at
    /// once if on its task, after resuming if parked.
    pub(crate) fn abandon(&self) {
        give_up(&mut self.lock(), SLOW_CONSUMER);
    }

    /// Closes the connection with 1008 (policy violation) and `reason`, the
    /// same way (e.g. a token that expired).
    pub(crate) fn close_policy(&self, reason: &'static str) {
        give_up(&mut self.lock(), reason);
    }

    /// Closes the connection with 1008 and `reason` once every frame pushed
    /// before has gone out: a last answer pushed just before reaches the
    /// client ahead of the Close, behind every earlier one. Later pushes
    /// report `Closed`.
    pub(crate) fn close_after(&self, reason: &'static str) {
        let mut s = self.lock();
        if s.closing.is_some() {
            return;
        }
        s.close_after.get_or_insert(reason);
        resume(&mut s);
    }

    /// The connection is over: later pushes report `Closed`.
    pub(crate) fn end(&self) {
        let mut s = self.lock();
        s.at = At::Ended;
        s.waiting.clear();
        s.waiting_bytes = 0;
    }

    /// Whether the connection is over.
    pub(crate) fn is_ended(&self) -> bool {
        matches!(self.lock().at, At::Ended)
    }
}

/// What [`Inlet::park_with`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParkAttempt {
    /// Handed to the lot (or resumed by it at once): the task is done.
    Parked,
    /// Frames are waiting: keep driving.
    Busy,
}

/// Queues `frame` behind the waiting ones, waking the task at the first;
/// `false` when that would pass `limit` (with frames already waiting): the
/// connection is given up as a slow consumer.
fn queue(s: &mut State, frame: &EncodedFrame, limit: usize) -> bool {
    if s.waiting_bytes + frame.len() > limit && !s.waiting.is_empty() {
        give_up(s, SLOW_CONSUMER);
        return false;
    }
    s.waiting_bytes += frame.len();
    s.waiting.push_back(frame.clone());
    if s.waiting.len() == 1 {
        wake(&s.at);
    }
    true
}

/// The connection closes as a slow consumer (1008): at once if on its task,
/// after resuming if parked.
/// The reason of a slow consumer's 1008.
const SLOW_CONSUMER: &str = "slow consumer";

fn give_up(s: &mut State, reason: &'static str) {
    s.closing.get_or_insert(reason);
    s.waiting.clear();
    s.waiting_bytes = 0;
    resume(s);
}

/// Gets the connection's task to look at the inlet: woken if it runs,
/// resumed if parked.
fn resume(s: &mut State) {
    match &s.at {
        At::Task(_) => wake(&s.at),
        At::Parked { lot, token } => {
            let _ = lot.visit(*token, |_, _| ((), Visit::Resume));
            s.at = At::Task(None);
        }
        At::Ended => {}
    }
}

fn wake(at: &At) {
    if let At::Task(Some(w)) = at {
        w.wake_by_ref();
    }
}

/// Frames for a parked connection: into its engine, and onto the socket at
/// once (one vectored write) if it takes them all; otherwise the connection
/// resumes.
fn push_parked<'a>(
    parked: &mut Parkable,
    socket: &mut ParkedStream,
    frames: impl IntoIterator<Item = &'a EncodedFrame>,
) -> (Pushed, Visit) {
    let Parkable::WebSocket(ws) = parked else {
        return (Pushed::Closed, Visit::Stay);
    };
    match ws.send_now(socket, frames) {
        Ok(true) => (Pushed::Queued, Visit::Stay),
        Ok(false) => (Pushed::Queued, Visit::Resume),
        // Closing (a slow consumer, or the write failed): its task finishes it.
        Err(()) => (Pushed::Closed, Visit::Resume),
    }
}
