//! Limits per connection and per client: how fast a WebSocket connection
//! may send commands, and how many connections one token subject may hold.
//!
//! Theory of operation. [`CommandRate`] is a token bucket per `/ws`
//! connection: it holds up to `command_burst` commands and refills at
//! `commands_per_second`. A command that finds it empty is refused
//! (`rate_limited`, and the connection stays open), and costs a strike from
//! a second bucket of `strikes` that refills at one per second: a client
//! that keeps sending faster than its rate runs out of strikes and is
//! closed with 1008, one that slips over now and then never does. The
//! buckets are read with the caller's clock (`now`), so they are tested on
//! virtual time.
//!
//! [`Subjects`] counts the connections of each token subject on this node
//! (WebSockets, SSE streams and held long polls alike). A [`SubjectSlot`]
//! is one of them: taken when the connection shows its token, given back
//! when dropped (however the connection ends). The count is per node: with
//! several nodes a subject may hold the limit on each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The limits (see the module documentation). 0 switches a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Commands (subscribe, unsubscribe, publish, auth) one WebSocket
    /// connection may send per second, on average.
    pub commands_per_second: u32,
    /// Commands it may send at once, above the average.
    pub command_burst: u32,
    /// Commands refused for the rate it may send beyond one a second
    /// before it is closed (1008).
    pub strikes: u32,
    /// Connections one token subject may hold on this node at once.
    pub connections_per_subject: u32,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            commands_per_second: 20,
            command_burst: 100,
            strikes: 10,
            connections_per_subject: 64,
        }
    }
}

/// What the rate says of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the rate: carry it out.
    Allowed,
    /// Over the rate: refuse it (`rate_limited`), keep the connection.
    Limited,
    /// Over the rate with no strike left: close the connection (1008).
    Abusive,
}

/// One connection's command rate (see the module documentation).
#[derive(Debug)]
pub(crate) struct CommandRate {
    tokens: f64,
    strikes: f64,
    at: Instant,
}

impl CommandRate {
    /// Full buckets at `now`.
    pub(crate) fn new(limits: &ClientLimits, now: Instant) -> Self {
        Self {
            tokens: f64::from(limits.command_burst.max(1)),
            strikes: f64::from(limits.strikes),
            at: now,
        }
    }

    /// Takes one command at `now`.
    pub(crate) fn take(&mut self, limits: &ClientLimits, now: Instant) -> Verdict {
        if limits.commands_per_second == 0 {
            return Verdict::Allowed;
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now.max(self.at);
        let burst = f64::from(limits.command_burst.max(1));
        self.tokens = (self.tokens + elapsed * f64::from(limits.commands_per_second)).min(burst);
        self.strikes = (self.strikes + elapsed).min(f64::from(limits.strikes));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Verdict::Allowed
        } else if self.strikes >= 1.0 {
            self.strikes -= 1.0;
            Verdict::Limited
        } else {
            Verdict::Abusive
        }
    }
}

/// The connections of each token subject on this node.
#[derive(Debug, Default)]
pub(crate) struct Subjects {
    counts: Mutex<HashMap<Arc<str>, u32>>,
}

/// One connection of a subject, given back when dropped.
#[derive(Debug)]
pub(crate) struct SubjectSlot {
    subjects: Arc<Subjects>,
    subject: Arc<str>,
}

impl Subjects {
    /// A slot for one more connection of `subject`, unless it holds `max`
    /// (0: no limit) already.
    pub(crate) fn enter(self: &Arc<Self>, subject: &Arc<str>, max: u32) -> Option<SubjectSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(subject.clone()).or_insert(0);
        if max > 0 && *count >= max {
            return None;
        }
        *count += 1;
        Some(SubjectSlot {
            subjects: self.clone(),
            subject: subject.clone(),
        })
    }

    /// How many connections `subject` holds.
    #[cfg(test)]
    fn count(&self, subject: &str) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(subject).copied().unwrap_or(0)
    }
}

impl Drop for SubjectSlot {
    fn drop(&mut self) {
        let mut counts = self.subjects.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.subject) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.subject);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> ClientLimits {
        ClientLimits {
            commands_per_second: 10,
            command_burst: 5,
            strikes: 3,
            connections_per_subject: 2,
        }
    }

    #[test]
    fn a_burst_then_the_rate_then_strikes_then_abuse() {
        let l = limits();
        let t0 = Instant::now();
        let mut rate = CommandRate::new(&l, t0);
        for _ in 0..5 {
            assert_eq!(rate.take(&l, t0), Verdict::Allowed);
        }
        for _ in 0..3 {
            assert_eq!(rate.take(&l, t0), Verdict::Limited);
        }
        assert_eq!(rate.take(&l, t0), Verdict::Abusive);
        // 0.1 s later: one more command (10/s) and a tenth of a strike.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(rate.take(&l, t1), Verdict::Allowed);
        assert_eq!(rate.take(&l, t1), Verdict::Abusive);
    }

    #[test]
    fn a_client_within_its_rate_is_never_refused_and_strikes_come_back() {
        let l = limits();
        let t0 = Instant::now();
        let mut rate = CommandRate::new(&l, t0);
        // 10/s for 10 s, on time: always allowed.
        for i in 0..100 {
            let t = t0 + Duration::from_millis(100 * i);
            assert_eq!(rate.take(&l, t), Verdict::Allowed, "command {i}");
        }
        // Over the rate once a second: refused, but never closed.
        let mut t = t0 + Duration::from_secs(20);
        for _ in 0..5 {
            while rate.take(&l, t) == Verdict::Allowed {}
            t += Duration::from_secs(1);
        }
        assert_eq!(rate.take(&l, t0 + Duration::from_secs(30)), Verdict::Allowed);
        let off = ClientLimits {
            commands_per_second: 0,
            ..l
        };
        let mut rate = CommandRate::new(&off, t0);
        assert!((0..10_000).all(|_| rate.take(&off, t0) == Verdict::Allowed));
    }

    #[test]
    fn subjects_hold_at_most_their_limit_and_slots_come_back() {
        let subjects = Arc::new(Subjects::default());
        let ada: Arc<str> = "ada".into();
        let a = subjects.enter(&ada, 2).unwrap();
        let b = subjects.enter(&ada, 2).unwrap();
        assert!(subjects.enter(&ada, 2).is_none());
        assert!(subjects.enter(&"bob".into(), 2).is_some());
        drop(a);
        let c = subjects.enter(&ada, 2).unwrap();
        drop((b, c));
        assert_eq!(subjects.count("ada"), 0);
        assert!(subjects.counts.lock().unwrap().is_empty(), "no entry is left behind");
        let unlimited: Vec<_> = (0..100).map(|_| subjects.enter(&ada, 0).unwrap()).collect();
        assert_eq!(subjects.count("ada"), 100);
        drop(unlimited);
    }
}
