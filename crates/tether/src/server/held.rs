//! Held responses: a request whose answer waits for something that has
//! not happened yet (a long poll waiting for the next publication), without
//! a task while it waits.
//!
//! Theory of operation. A handler answers with [`Held::into_response`]: a
//! [`HeldSignal`], a deadline, and `then`, which makes the real response.
//! The connection driver takes the `Held` out of the response instead of
//! sending it. On a server that parks, the connection is parked at once:
//! its engine (a request in flight, no response yet), the socket and the
//! `Held` wait in the lot, and the signal learns the lot's token. Whoever
//! fires the signal (any thread) resumes the connection through the lot;
//! so does the deadline (the lot's timer), input on the socket or shutdown.
//! Back on a task, the driver calls `then(fired)` and answers like any
//! handler. Without a lot the driver waits for the signal or the deadline
//! on its task.
//!
//! States of a signal: `Waiting(nobody) --parked--> Waiting(lot, token)`
//! or `--waited on a task--> Waiting(waker)`; any of them `--fire-->
//! Fired`. Firing before anyone waits is kept (`Fired`), so a wake-up that
//! races the parking is never lost.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::handler::{HandlerFuture, Response};
use super::serving::Lot;
use super::Body;

/// A one-shot wake-up for a held response; cheap to clone, fired from
/// anywhere.
#[derive(Clone, Default)]
pub struct HeldSignal(Arc<Mutex<Signal>>);

#[derive(Default)]
enum Signal {
    #[default]
    Unwatched,
    Task(Waker),
    Parked(Lot, u64),
    Fired,
}

impl std::fmt::Debug for HeldSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldSignal").field("fired", &self.is_fired()).finish()
    }
}

impl HeldSignal {
    /// A signal nobody waits on yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Signal> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fires it: the held connection resumes (or, not waiting yet, will
    /// find it fired).
    pub fn fire(&self) {
        let was = std::mem::replace(&mut *self.lock(), Signal::Fired);
        match was {
            Signal::Task(waker) => waker.wake(),
            Signal::Parked(lot, token) => lot.wake(token),
            Signal::Unwatched | Signal::Fired => {}
        }
    }

    /// Whether it fired.
    pub fn is_fired(&self) -> bool {
        matches!(*self.lock(), Signal::Fired)
    }

    /// Whether only its holder is left (the held response was answered or
    /// dropped): the party that would fire it may forget it.
    pub fn is_abandoned(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }

    /// The parked connection to resume when it fires; `false` when it
    /// fired already (the caller resumes it).
    pub(crate) fn park(&self, lot: &Lot, token: u64) -> bool {
        let mut s = self.lock();
        match *s {
            Signal::Fired => false,
            _ => {
                *s = Signal::Parked(lot.clone(), token);
                true
            }
        }
    }

    /// Ready once fired; the task behind `cx` is woken then.
    pub(crate) fn poll_fired(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.lock();
        match &*s {
            Signal::Fired => Poll::Ready(()),
            Signal::Task(w) if w.will_wake(cx.waker()) => Poll::Pending,
            _ => {
                *s = Signal::Task(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// What makes a held response's answer: called with whether the signal
/// fired (`false`: the deadline passed, or the server is shutting down).
pub type HeldAnswer = Box<dyn FnOnce(bool) -> HandlerFuture + Send>;

/// A response that is not ready yet (see the module documentation).
pub struct Held {
    pub(crate) signal: HeldSignal,
    pub(crate) deadline: Instant,
    pub(crate) answer: HeldAnswer,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("signal", &self.signal)
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// The `Held` a response carries, taken out by the driver.
#[derive(Clone)]
pub(crate) struct HeldSlot(Arc<Mutex<Option<Held>>>);

impl Held {
    /// Waits for `signal` until `deadline`, then answers with `answer`.
    pub fn new(signal: HeldSignal, deadline: Instant, answer: HeldAnswer) -> Self {
        Self {
            signal,
            deadline,
            answer,
        }
    }

    /// The response a handler returns to hold the request.
    pub fn into_response(self) -> Response {
        let mut resp = Response::new(Body::Empty);
        resp.extensions_mut().insert(HeldSlot(Arc::new(Mutex::new(Some(self)))));
        resp
    }

    /// The `Held` in a handler's response, if it is one.
    pub(crate) fn take_from(resp: &mut Response) -> Option<Held> {
        let slot = resp.extensions_mut().remove::<HeldSlot>()?;
        let held = slot.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        held
    }

    /// Whether its answer is due now (the signal fired, or the deadline passed).
    pub(crate) fn is_due(&self, now: Instant) -> bool {
        now >= self.deadline || self.signal.is_fired()
    }

    /// Its answer's future.
    pub(crate) fn answer(self) -> HandlerFuture {
        let fired = self.signal.is_fired();
        let Held { signal, answer, .. } = self;
        drop(signal);
        answer(fired)
    }
}
