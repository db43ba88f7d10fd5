//! Admission: what happens between the listener and a connection's task.
//!
//! Theory of operation. The accept loop hands every accepted socket to
//! [`Admission::admit`]:
//! - within the limits, the connection is counted as open (in all, and per
//!   client address when a per-client limit is set) and served;
//! - at the connection limit (`Server::max_connections`), the longest-idle
//!   parked keep-alive connection is closed to make room (closing an idle
//!   persistent connection is always allowed, RFC 9112 §9.5); when none can
//!   be, the new connection is refused;
//! - at the per-client limit (`Server::max_connections_per_client`) it is
//!   refused.
//!
//! A refused connection is answered `503 Service Unavailable` with
//! `Retry-After: 1` and `Connection: close`, written without reading the
//! request, then closed with a bounded lingering close (write side shut,
//! input discarded for at most [`REFUSAL_LINGER`]) so the client does not
//! lose the answer to a reset.
//!
//! When `accept` itself fails for lack of file descriptors (`EMFILE`,
//! `ENFILE`) or kernel memory, idle parked keep-alive connections are
//! closed (up to [`RECLAIM_BATCH`] per failure) and `accept` is retried at
//! once, so a new client is served promptly instead of waiting in the
//! backlog while idle connections hold every descriptor; with none to
//! reclaim (parking off, or every connection busy) the loop waits
//! [`ACCEPT_BACKOFF`]. Each condition is logged once per [`LOG_INTERVAL`]
//! with counts, never once per event.
//!
//! It decides nothing about any protocol: the engines decide whether a
//! connection is idle and may be closed.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::serving::Lot;
use crate::lifecycle::{OpenCount, OpenGuard};

/// Idle connections closed per failed accept.
pub const RECLAIM_BATCH: usize = 16;
/// Wait after a failed accept with nothing to reclaim.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Each overload condition is logged at most this often.
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);
/// Longest lingering close of a refused connection.
pub const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The limits a server admits connections under.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Limits {
    pub max_connections: Option<usize>,
    pub max_per_client: Option<usize>,
}

/// What the accept loop does with one accepted socket.
pub(crate) enum Verdict {
    /// Serve it; the guard counts it as open.
    Admit(OpenGuard),
    /// Answer 503 and close it.
    Refuse,
}

/// Counts of one overload condition since it was last logged.
#[derive(Default)]
struct Throttled {
    last_logged: Option<Instant>,
    events: u64,
    reclaimed: u64,
}

impl Throttled {
    /// Notes one event; returns the counts to log when the interval is over.
    fn note(&mut self, reclaimed: usize) -> Option<(u64, u64)> {
        self.events += 1;
        self.reclaimed += reclaimed as u64;
        let now = Instant::now();
        if self.last_logged.is_some_and(|t| now < t + LOG_INTERVAL) {
            return None;
        }
        self.last_logged = Some(now);
        Some((std::mem::take(&mut self.events), std::mem::take(&mut self.reclaimed)))
    }
}

/// The accept loop's state: limits, counters and throttled logs.
pub(crate) struct Admission {
    limits: Limits,
    open: Arc<OpenCount>,
    lot: Option<Lot>,
    out_of_descriptors: Throttled,
    refused: Throttled,
}

impl Admission {
    pub(crate) fn new(limits: Limits, open: Arc<OpenCount>, lot: Option<Lot>) -> Self {
        Self {
            limits,
            open,
            lot,
            out_of_descriptors: Throttled::default(),
            refused: Throttled::default(),
        }
    }

    /// Decides about a socket accepted from `peer` (`None`: a Unix socket's
    /// peer, which has no address and so no per-client limit).
    pub(crate) fn admit(&mut self, peer: Option<IpAddr>) -> Verdict {
        if let (Some(max), Some(ip)) = (self.limits.max_per_client, peer) {
            if self.open.from_peer(ip) as usize >= max {
                return self.refuse("per-client connection limit reached", 0);
            }
        }
        if let Some(max) = self.limits.max_connections {
            if self.open.get() as usize >= max {
                let reclaimed = self.lot.as_ref().map_or(0, |lot| lot.reclaim_idle(1));
                if reclaimed == 0 {
                    return self.refuse("connection limit reached, no idle connection to reclaim", 0);
                }
            }
        }
        Verdict::Admit(match (self.limits.max_per_client, peer) {
            (Some(_), Some(ip)) => OpenGuard::for_peer(self.open.clone(), ip),
            _ => OpenGuard::new(self.open.clone()),
        })
    }

    fn refuse(&mut self, why: &'static str, reclaimed: usize) -> Verdict {
        if let Some((refused, _)) = self.refused.note(reclaimed) {
            tracing::warn!(refused, open = self.open.get(), "{why}: refusing connections with 503");
        }
        Verdict::Refuse
    }

    /// `accept` failed with `error`: makes room when descriptors ran out,
    /// else backs off.
    pub(crate) async fn accept_failed(&mut self, error: std::io::Error) {
        if !is_resource_exhaustion(&error) {
            // A connection that failed before it was accepted (reset,
            // aborted): nothing to do for the others.
            tracing::debug!(%error, "accept failed");
            return;
        }
        let reclaimed = self.lot.as_ref().map_or(0, |lot| lot.reclaim_idle(RECLAIM_BATCH));
        if let Some((failures, reclaimed)) = self.out_of_descriptors.note(reclaimed) {
            tracing::warn!(
                %error,
                failures,
                reclaimed,
                open = self.open.get(),
                "accept failed for lack of resources: closing idle keep-alive connections to make room"
            );
        }
        if reclaimed == 0 {
            tokio::time::sleep(ACCEPT_BACKOFF).await;
        }
    }
}

/// Out of file descriptors (process or system) or kernel memory.
fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// Answers a refused connection with 503 and closes it without a reset
/// (bounded: [`REFUSAL_LINGER`] in all). Over TLS it is answered after
/// the handshake.
pub(crate) async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    const BODY: &str = "server busy: too many connections\n";
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(head.as_bytes()).await?;
        stream.shutdown().await?;
        // Discard what the client sent (its request) until it closes.
        let mut scratch = [0u8; 4096];
        while stream.read(&mut scratch).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overload_condition_is_logged_once_per_interval_with_its_counts() {
        let mut t = Throttled::default();
        assert_eq!(t.note(3), Some((1, 3)), "the first event is logged at once");
        for _ in 0..99 {
            assert_eq!(t.note(1), None);
        }
        // Pretend the interval passed: the next one reports what was held back.
        t.last_logged = Some(Instant::now() - LOG_INTERVAL);
        assert_eq!(t.note(1), Some((100, 100)));
    }

    #[test]
    fn descriptor_exhaustion_is_told_from_other_accept_errors() {
        assert!(is_resource_exhaustion(&std::io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_resource_exhaustion(&std::io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_resource_exhaustion(&std::io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }

    #[test]
    fn limits_refuse_beyond_their_counts() {
        let open = Arc::new(OpenCount::default());
        let limits = Limits {
            max_connections: Some(3),
            max_per_client: Some(2),
        };
        let mut admission = Admission::new(limits, open.clone(), None);
        let a: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let b: Option<IpAddr> = Some("10.0.0.2".parse().unwrap());
        let mut guards = Vec::new();
        for peer in [a, a, b] {
            match admission.admit(peer) {
                Verdict::Admit(g) => guards.push(g),
                Verdict::Refuse => panic!("refused {peer:?} within the limits"),
            }
        }
        assert!(matches!(admission.admit(a), Verdict::Refuse), "third from one client");
        assert!(
            matches!(admission.admit(b), Verdict::Refuse),
            "fourth in all, nothing to reclaim"
        );
        guards.pop();
        match admission.admit(b) {
            Verdict::Admit(g) => guards.push(g),
            Verdict::Refuse => panic!("refused below the limits"),
        }
        // A Unix socket's peer has no address: only the total limit applies.
        assert!(matches!(admission.admit(None), Verdict::Refuse), "at the total limit");
        guards.pop();
        assert!(matches!(admission.admit(None), Verdict::Admit(_)));
    }
}
