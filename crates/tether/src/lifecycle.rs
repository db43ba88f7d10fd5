//! What every connection shares, whatever its protocol or side: the
//! transport it runs on, the server's stop signal, and the guard that
//! counts it as open.
//!
//! Theory of operation. A server tells its connections to stop through one
//! `watch` channel ([`Stop`]: `Run` → `Graceful` → `Force`). A connection
//! watches it with a [`StopSignal`], which registers the waiting task's
//! waker once and polls the channel again only when it moved or a different
//! task waits: polling `watch::changed` on every wait cost about 570
//! instructions per keep-alive request (callgrind), and the drivers wait
//! once per request or message. Every connection the server accepted holds
//! an [`OpenGuard`] until it ends, wherever it lives (on a task, upgraded,
//! parked), so shutdown can wait for all of them ([`OpenCount::all_closed`]).
//!
//! It decides nothing about any protocol; the HTTP/1.1 and WebSocket
//! drivers, the parking lot and the WebSocket client all use it, and none
//! of them depends on another for it.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Notify};

/// A byte stream a connection can run on (TCP, TLS, in-memory duplex).
/// `Any`, so an upgraded protocol can find a TCP socket it may park.
pub trait Transport: Any + AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

/// What the server asks of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Keep serving.
    Run,
    /// Graceful shutdown: finish what is in flight, then close (HTTP: idle
    /// connections drain; WebSocket: close with 1001).
    Graceful,
    /// The shutdown deadline passed: close now.
    Force,
}

type NextStop = Pin<Box<dyn Future<Output = (Stop, watch::Receiver<Stop>)> + Send>>;

/// A connection's view of the server's stop channel (see the module
/// documentation): [`StopSignal::poll_next`] is pending until the server
/// sends a new order.
pub(crate) struct StopSignal {
    /// A second receiver of the channel, to see cheaply whether it moved.
    probe: watch::Receiver<Stop>,
    next: NextStop,
    /// The waker the pending `next` registered.
    registered: Option<Waker>,
}

impl std::fmt::Debug for StopSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopSignal")
            .field("current", &*self.probe.borrow())
            .finish()
    }
}

impl StopSignal {
    /// Watches `rx`; returns the order in force now too.
    pub(crate) fn new(mut rx: watch::Receiver<Stop>) -> (Stop, Self) {
        let current = *rx.borrow_and_update();
        let probe = rx.clone();
        let signal = Self {
            probe,
            next: Box::pin(next_stop(rx)),
            registered: None,
        };
        (current, signal)
    }

    /// The server's next order, once it sends one (a closed channel counts
    /// as [`Stop::Force`]). Cheap while nothing changed and the same task
    /// waits: the inner future is polled only to register a new waker or
    /// once the channel moved.
    #[inline]
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Stop> {
        let moved = self.probe.has_changed().unwrap_or(true);
        if !moved && self.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        match self.next.as_mut().poll(cx) {
            Poll::Pending => {
                self.registered = Some(cx.waker().clone());
                Poll::Pending
            }
            Poll::Ready((stop, rx)) => {
                self.registered = None;
                self.probe.mark_unchanged();
                self.next = Box::pin(next_stop(rx));
                Poll::Ready(stop)
            }
        }
    }

    /// A receiver of the same channel (to hand to an upgraded protocol).
    pub(crate) fn receiver(&self) -> watch::Receiver<Stop> {
        self.probe.clone()
    }
}

/// The channel's next value, with the receiver handed back for the next wait.
async fn next_stop(mut rx: watch::Receiver<Stop>) -> (Stop, watch::Receiver<Stop>) {
    // Unconstrained: with the task's coop budget spent, `changed` would
    // return `Pending` without registering a waker, and `poll_next` polls
    // this future again only once the channel has changed.
    let stop = match tokio::task::unconstrained(rx.changed()).await {
        Ok(()) => *rx.borrow_and_update(),
        Err(_) => Stop::Force,
    };
    (stop, rx)
}

/// How many connections of one server are open (in all, and per client
/// address when asked to count them), and a way to wait until none is.
#[derive(Debug, Default)]
pub struct OpenCount {
    open: AtomicU64,
    closed: Notify,
    /// Open connections per client address (only guards made with
    /// [`OpenGuard::for_peer`] count here).
    per_peer: Mutex<HashMap<IpAddr, u32>>,
}

impl OpenCount {
    /// Connections open now (upgraded and parked ones included).
    pub fn get(&self) -> u64 {
        self.open.load(Ordering::Acquire)
    }

    /// Connections open now from `ip` (counted by [`OpenGuard::for_peer`]).
    pub fn from_peer(&self, ip: IpAddr) -> u32 {
        lock(&self.per_peer).get(&ip).copied().unwrap_or(0)
    }

    /// Completes once no connection is open.
    pub(crate) async fn all_closed(&self) {
        loop {
            let notified = self.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.get() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts a connection as open for as long as it lives (no allocation of
/// its own: a parked connection keeps no heap object in the allocator's
/// heap for it).
#[derive(Debug)]
pub(crate) struct OpenGuard {
    count: Arc<OpenCount>,
    /// Counted per client address too.
    peer: Option<IpAddr>,
}

impl OpenGuard {
    pub(crate) fn new(count: Arc<OpenCount>) -> Self {
        count.open.fetch_add(1, Ordering::AcqRel);
        Self { count, peer: None }
    }

    /// A guard that also counts the connection under its client's address.
    pub(crate) fn for_peer(count: Arc<OpenCount>, ip: IpAddr) -> Self {
        *lock(&count.per_peer).entry(ip).or_insert(0) += 1;
        let mut guard = Self::new(count);
        guard.peer = Some(ip);
        guard
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if let Some(ip) = self.peer {
            let mut per_peer = lock(&self.count.per_peer);
            if let Some(n) = per_peer.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_peer.remove(&ip);
                }
            }
        }
        if self.count.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.count.closed.notify_waiters();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_stop_signal_wakes_its_waiter_once_per_order_and_reports_each() {
        let (tx, rx) = watch::channel(Stop::Run);
        let (current, mut signal) = StopSignal::new(rx);
        assert_eq!(current, Stop::Run);
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..3 {
            assert!(signal.poll_next(&mut cx).is_pending());
        }
        tx.send(Stop::Graceful).unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "the registered waker is woken");
        assert_eq!(signal.poll_next(&mut cx), Poll::Ready(Stop::Graceful));
        assert!(signal.poll_next(&mut cx).is_pending());
        // Another task waiting gets its own registration.
        let other = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let other_waker = Waker::from(other.clone());
        assert!(signal.poll_next(&mut Context::from_waker(&other_waker)).is_pending());
        drop(tx);
        assert_eq!(other.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            signal.poll_next(&mut cx),
            Poll::Ready(Stop::Force),
            "a closed channel is a forced stop"
        );
    }

    #[tokio::test]
    async fn all_closed_waits_for_the_last_guard() {
        let count = Arc::new(OpenCount::default());
        let a = OpenGuard::new(count.clone());
        let b = OpenGuard::new(count.clone());
        assert_eq!(count.get(), 2);
        let waiter = tokio::spawn({
            let count = count.clone();
            async move { count.all_closed().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("all_closed completes")
            .unwrap();
    }

    #[test]
    fn guards_for_a_peer_count_per_address_and_in_all() {
        let count = Arc::new(OpenCount::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "::1".parse().unwrap();
        let a = OpenGuard::for_peer(count.clone(), ip);
        let b = OpenGuard::for_peer(count.clone(), ip);
        let c = OpenGuard::for_peer(count.clone(), other);
        let d = OpenGuard::new(count.clone());
        assert_eq!((count.get(), count.from_peer(ip), count.from_peer(other)), (4, 2, 1));
        drop((a, c, d));
        assert_eq!((count.get(), count.from_peer(ip), count.from_peer(other)), (1, 1, 0));
        drop(b);
        assert!(lock(&count.per_peer).is_empty(), "no entry is left behind");
    }
}
