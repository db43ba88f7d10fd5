//! The `Date` header value, formatted at most once per second per thread.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;

thread_local! {
    static CACHED: RefCell<(u64, HeaderValue)> = const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
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

fn cached<R>(f: impl FnOnce(&HeaderValue) -> R) -> R {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
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
