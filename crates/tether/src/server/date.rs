//! The `Date` header value, formatted at most once per second per thread.
//!
//! Two ways in: [`now`] and [`with_current_bytes`] read the wall clock and
//! reformat when its second changed; [`with_current_bytes_at`] takes the
//! driver's monotonic reading of the same moment and reads the wall clock
//! only once the second it cached has run out by that reading (the connection
//! driver already reads the monotonic clock per pass, so most responses
//! read no clock here at all).

use std::cell::RefCell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

thread_local! {
    static CACHED: RefCell<(u64, HeaderValue)> = const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    /// Until when (monotonic) the cached value's second lasts.
    static VALID_UNTIL: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// The current `Date` header value (IMF-fixdate), cached for the second.
pub fn now() -> HeaderValue {
    cached(HeaderValue::clone)
}

/// Calls `f` with the current `Date` value's bytes, without cloning it.
/// `f` must not call back into this module.
pub fn with_current_bytes<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    cached(|value| f(value.as_bytes()))
}

/// [`with_current_bytes`] for the moment `now` (a monotonic reading taken
/// just before): the wall clock is read only when the cached second has
/// run out by `now`. A wall clock that jumps is noticed at the next second.
pub fn with_current_bytes_at<R>(now: Instant, f: impl FnOnce(&[u8]) -> R) -> R {
    if VALID_UNTIL.get().is_some_and(|until| now < until) {
        return CACHED.with(|c| f(c.borrow().1.as_bytes()));
    }
    cached(|value| f(value.as_bytes()))
}

fn cached<R>(f: impl FnOnce(&HeaderValue) -> R) -> R {
    let now = SystemTime::now();
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    // The rest of this second, measured on the monotonic clock from here.
    let left = Duration::from_secs(1) - Duration::from_nanos(u64::from(since_epoch.subsec_nanos()));
    VALID_UNTIL.set(Instant::now().checked_add(left));
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let text = httpdate::fmt_http_date(now);
            c.1 = HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""));
            c.0 = secs;
        }
        f(&c.1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_from_a_monotonic_reading_is_the_current_second() {
        let check = |bytes: &[u8]| {
            let when = httpdate::parse_http_date(std::str::from_utf8(bytes).unwrap()).unwrap();
            let off = SystemTime::now().duration_since(when).unwrap_or_else(|e| e.duration());
            assert!(off < Duration::from_secs(2), "{off:?} off");
        };
        let t = Instant::now();
        with_current_bytes_at(t, check);
        // The cache lasts to the end of the wall clock's second, no longer.
        let until = VALID_UNTIL.get().expect("set by the first call");
        assert!(until > t && until <= Instant::now() + Duration::from_secs(1));
        // A reading past it refreshes the cache (and its end moves on).
        with_current_bytes_at(until + Duration::from_millis(1), check);
        let again = VALID_UNTIL.get().unwrap();
        assert!(again <= Instant::now() + Duration::from_secs(1));
        // Within the second, the cached value is used as it is.
        let cached = CACHED.with(|c| c.borrow().1.clone());
        with_current_bytes_at(Instant::now().min(again - Duration::from_nanos(1)), |b| {
            assert_eq!(b, cached.as_bytes())
        });
    }
}
