//! Giving freed memory back to the system after bursts.
//!
//! Theory of operation. glibc's allocator keeps memory freed in the middle
//! of its heaps (and, once a large block was freed, serves later large
//! blocks from the heap instead of `mmap`), so a burst of large requests or
//! messages, or of connections that left their tasks, leaves the process
//! holding what it no longer uses: 928 MB after ten clients had pipelined
//! 16 MiB bodies, measured. Connections that held large buffers report
//! them when they end ([`note_released`]); once [`RELEASE_THRESHOLD`] bytes
//! were reported, one trim (`malloc_trim`) runs on a blocking thread, at
//! least [`SETTLE`] later (so the buffers of the task that reported them
//! are freed first) and at most once per [`TRIM_INTERVAL`] (it walks the
//! heap). The parking lot trims the same way after bursts of parkings
//! ([`trim_soon`]).
//!
//! A no-op where the allocator is not glibc's.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Bytes reported freed after which a trim is scheduled.
pub const RELEASE_THRESHOLD: usize = 8 << 20;
/// A connection reports its buffers when it held at least this much.
pub const REPORT_MIN: usize = 1 << 20;
/// The least time between two trims.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(1);
/// How long after being scheduled a trim runs at the earliest.
pub const SETTLE: Duration = Duration::from_millis(100);

static RELEASED: AtomicUsize = AtomicUsize::new(0);
static PENDING: AtomicBool = AtomicBool::new(false);
static LAST_TRIM: Mutex<Option<Instant>> = Mutex::new(None);

/// The most a connection held in buffers, reported ([`note_released`])
/// when it is dropped: with the connection's end, or when it parks.
#[derive(Debug, Default)]
pub(crate) struct PeakBuffers(usize);

impl PeakBuffers {
    /// The connection holds `bytes` now.
    #[inline]
    pub(crate) fn note(&mut self, bytes: usize) {
        if bytes > self.0 {
            self.0 = bytes;
        }
    }
}

impl Drop for PeakBuffers {
    fn drop(&mut self) {
        note_released(self.0);
    }
}

/// A connection that held `bytes` of buffers (at its peak) is ending.
pub(crate) fn note_released(bytes: usize) {
    if bytes < REPORT_MIN {
        return;
    }
    if RELEASED.fetch_add(bytes, Ordering::Relaxed) + bytes >= RELEASE_THRESHOLD {
        trim_soon();
    }
}

/// Schedules one trim (unless one is pending), within the rate limit.
pub(crate) fn trim_soon() {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if PENDING.swap(true, Ordering::AcqRel) {
        return;
    }
    runtime.spawn(async {
        let earliest = last_trim().map_or(Instant::now(), |t| t + TRIM_INTERVAL);
        tokio::time::sleep_until(earliest.max(Instant::now() + SETTLE)).await;
        RELEASED.store(0, Ordering::Relaxed);
        *LAST_TRIM.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let _ = tokio::task::spawn_blocking(release_free_memory).await;
        PENDING.store(false, Ordering::Release);
        // Reports that came in while this one was pending asked for nothing.
        if RELEASED.load(Ordering::Relaxed) >= RELEASE_THRESHOLD {
            trim_soon();
        }
    });
}

fn last_trim() -> Option<Instant> {
    *LAST_TRIM.lock().unwrap_or_else(|p| p.into_inner())
}

/// Returns the allocator's free pages to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn release_free_memory() {
    let started = std::time::Instant::now();
    // Why unsafe: an FFI call; measured: with 15,000 parked connections it
    // brings the server from 46 MB to 15 MB of resident memory (the tasks
    // they left), and after ten clients' 16 MiB pipelined bodies from
    // 928 MB held to what is still in use. Exercised by
    // `parked_connections_return_their_tasks_memory` and the hostile suite.
    // SAFETY: `malloc_trim` has no preconditions: it only releases free
    // memory, and may be called at any time from any thread.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(released = released != 0, took = ?started.elapsed(), "returned free memory to the system");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn release_free_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_add_up_to_one_trim_that_runs_after_the_settle_time() {
        let before = last_trim();
        note_released(REPORT_MIN - 1);
        assert_eq!(RELEASED.load(Ordering::Relaxed), 0, "small connections are not counted");
        for _ in 0..(RELEASE_THRESHOLD / REPORT_MIN) {
            note_released(REPORT_MIN);
        }
        assert!(PENDING.load(Ordering::Acquire), "a trim is scheduled");
        tokio::time::timeout(Duration::from_secs(5), async {
            while PENDING.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the trim ran");
        assert!(last_trim() > before);
        assert_eq!(RELEASED.load(Ordering::Relaxed), 0);
    }
}
