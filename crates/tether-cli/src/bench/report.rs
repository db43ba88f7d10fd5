//! Latency histograms and the printed (text or JSON) results.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// A latency histogram in microseconds, 1 µs to 10 min, 3 significant digits.
pub struct Latency(pub Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"))
    }
}

impl Latency {
    /// 5 significant digits (50 µs resolution at 5 s): for close times,
    /// which are compared to a timeout seconds long.
    pub fn precise() -> Self {
        Latency(Histogram::new_with_bounds(1, 600_000_000, 5).expect("valid histogram bounds"))
    }

    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 600_000_000);
        let _ = self.0.record(us);
    }

    pub fn merge(&mut self, other: &Latency) {
        let _ = self.0.add(&other.0);
    }

    /// p50, p99, p99.9, max and mean in microseconds, as JSON.
    pub fn json(&self) -> Value {
        let h = &self.0;
        json!({
            "count": h.len(),
            "min_us": if h.is_empty() { 0 } else { h.min() },
            "p50_us": h.value_at_quantile(0.50),
            "p90_us": h.value_at_quantile(0.90),
            "p99_us": h.value_at_quantile(0.99),
            "p999_us": h.value_at_quantile(0.999),
            "max_us": h.max(),
            "mean_us": (h.mean() * 10.0).round() / 10.0,
        })
    }

    /// One line: `p50 … p99 … p99.9 … max …`.
    pub fn line(&self) -> String {
        let h = &self.0;
        format!(
            "p50 {}  p99 {}  p99.9 {}  max {}",
            fmt_us(h.value_at_quantile(0.50)),
            fmt_us(h.value_at_quantile(0.99)),
            fmt_us(h.value_at_quantile(0.999)),
            fmt_us(h.max())
        )
    }
}

/// `850µs`, `12.3ms`, `1.20s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// Prints `value` as JSON on stdout, or `text` lines.
pub fn emit(json: bool, value: &Value, text: &str) {
    if json {
        println!("{value}");
    } else {
        print!("{text}");
    }
}
