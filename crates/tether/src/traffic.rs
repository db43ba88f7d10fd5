//! Bytes on the wire, totalled: the engines count each connection's
//! ([`tether_proto::wire`]: overhead and payload, each way), and the
//! drivers add them to process-wide atomics here, never per request or per
//! message.
//!
//! When a connection's bytes reach the totals: an HTTP connection's when
//! its driver lets it go (it parks, upgrades or ends) and about once a
//! second while it stays busy on its task; a WebSocket's when it parks or
//! ends and at most once a second while it is busy; what a parked
//! connection reads or writes without a task, at once. So a total is at
//! most about a second behind for a busy connection, and exact for every
//! connection that has ended. An upgraded connection's HTTP phase (its
//! requests, the upgrade request and the `101`) counts as HTTP, the rest as
//! WebSocket; bytes read past the upgrade request count once, as WebSocket.
//!
//! Read them with [`crate::server::ServerStats::traffic`], or on
//! `/metrics` as `tether_wire_bytes_total` (see [`crate::metrics`]).

use std::sync::atomic::{AtomicU64, Ordering};

pub use tether_proto::wire::{Traffic, WireBytes};

/// A [`Traffic`] total that many connections add to (relaxed atomics).
#[derive(Debug, Default)]
pub struct AtomicTraffic {
    received_overhead: AtomicU64,
    received_payload: AtomicU64,
    sent_overhead: AtomicU64,
    sent_payload: AtomicU64,
}

impl AtomicTraffic {
    /// Zero.
    pub const fn new() -> Self {
        Self {
            received_overhead: AtomicU64::new(0),
            received_payload: AtomicU64::new(0),
            sent_overhead: AtomicU64::new(0),
            sent_payload: AtomicU64::new(0),
        }
    }

    /// Adds `t` (a part that is zero costs nothing).
    pub fn add(&self, t: Traffic) {
        for (total, n) in [
            (&self.received_overhead, t.received.overhead),
            (&self.received_payload, t.received.payload),
            (&self.sent_overhead, t.sent.overhead),
            (&self.sent_payload, t.sent.payload),
        ] {
            if n > 0 {
                total.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// The total so far.
    pub fn get(&self) -> Traffic {
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Traffic {
            received: WireBytes {
                overhead: read(&self.received_overhead),
                payload: read(&self.received_payload),
            },
            sent: WireBytes {
                overhead: read(&self.sent_overhead),
                payload: read(&self.sent_payload),
            },
        }
    }
}

/// Bytes on the wire by protocol ([`crate::server::ServerStats::traffic`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficByProtocol {
    /// The server's HTTP connections (heads and chunk framing as overhead,
    /// bodies as payload), upgraded ones up to their `101`.
    pub http: Traffic,
    /// Every WebSocket of the process, server and client side (frame
    /// headers as overhead, payloads as payload).
    pub websocket: Traffic,
}

impl TrafficByProtocol {
    /// Both protocols together.
    pub fn total(&self) -> Traffic {
        self.http.plus(self.websocket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_and_reads_back_by_part() {
        let total = AtomicTraffic::new();
        let t = Traffic {
            received: WireBytes {
                overhead: 1,
                payload: 2,
            },
            sent: WireBytes {
                overhead: 3,
                payload: 0,
            },
        };
        total.add(t);
        total.add(t);
        assert_eq!(total.get(), t.plus(t));
    }
}
