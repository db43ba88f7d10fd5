//! `tether bench stale`: the stale-connection test of issue 14. Requests
//! at random intervals (between `--min-interval` and `--max-interval`,
//! seeded) through tether's pooled keep-alive client, every error
//! counted and named. Intervals that straddle a server's idle timeout
//! are where clients that ignore `Keep-Alive` hints and a server's FIN
//! send requests on connections the server is closing.
//!
//! The schedule is SplitMix64 from `--seed`, the same as
//! `bench/src/bin/bench-stale-hyper.rs`, so both clients meet the same
//! gaps.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use http::{Method, Request};
use tether::client::http::{HttpClient, HttpClientOptions};

use crate::config::parse_duration;

/// `tether bench stale URL …`
#[derive(Debug, Args)]
pub struct StaleArgs {
    /// The `http://` or `https://` URL to request.
    pub url: String,
    /// Requests to send, one at a time.
    #[arg(long, default_value_t = 300)]
    pub requests: usize,
    /// Shortest gap between two requests.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub min_interval: Duration,
    /// Longest gap between two requests.
    #[arg(long, default_value = "1500ms", value_parser = parse_duration)]
    pub max_interval: Duration,
    /// Seed of the gaps' schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Send `POST` (not idempotent: never retried) instead of `GET`.
    #[arg(long)]
    pub post: bool,
    /// Deadline of each request.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// `https://`: trust the CA certificates of this PEM file instead of
    /// the system's roots.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<std::path::PathBuf>,
}

/// The gaps (ms) both stale clients follow (see the module documentation).
pub fn gaps(seed: u64, n: usize, min_ms: u64, max_ms: u64) -> Vec<u64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            min_ms + z % (max_ms - min_ms + 1)
        })
        .collect()
}

pub fn run(args: StaleArgs) -> anyhow::Result<()> {
    if args.min_interval > args.max_interval {
        bail!("--min-interval must not be longer than --max-interval");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let out = rt.block_on(stale(&args))?;
    if args.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

async fn stale(args: &StaleArgs) -> anyhow::Result<serde_json::Value> {
    let client = HttpClient::new(HttpClientOptions {
        response_timeout: args.timeout,
        tls: tether::client::TlsOptions {
            ca_file: args.ca_file.clone(),
            config: None,
        },
        ..HttpClientOptions::default()
    });
    let method = if args.post { Method::POST } else { Method::GET };
    let (min, max) = (
        args.min_interval.as_millis() as u64,
        args.max_interval.as_millis() as u64,
    );
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut ok = 0u64;
    let started = Instant::now();
    for (i, gap) in gaps(args.seed, args.requests, min, max).into_iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(gap)).await;
        }
        let req = Request::builder()
            .method(method.clone())
            .uri(&args.url)
            .body(Bytes::new())
            .with_context(|| format!("{:?} is not a URL", args.url))?;
        match client.request(req).await {
            Ok(resp) if resp.status().is_success() => ok += 1,
            Ok(resp) => *errors.entry(format!("status {}", resp.status())).or_default() += 1,
            Err(e) => *errors.entry(e.to_string()).or_default() += 1,
        }
    }
    let stats = client.stats();
    let closed: BTreeMap<&str, u64> = stats.closed.iter().filter(|(_, n)| *n > 0).copied().collect();
    Ok(serde_json::json!({
        "client": "tether",
        "url": args.url,
        "requests": args.requests,
        "ok": ok,
        "errors": errors.values().sum::<u64>(),
        "error_kinds": errors,
        "connections": stats.connections,
        "reused": stats.reused,
        "retried": stats.retried,
        "closed": closed,
        "seconds": started.elapsed().as_secs_f64(),
    }))
}

#[cfg(test)]
mod tests {
    use super::gaps;

    #[test]
    fn the_schedule_is_seeded_and_within_bounds() {
        let a = gaps(7, 1000, 500, 1500);
        assert_eq!(a, gaps(7, 1000, 500, 1500));
        assert_ne!(a, gaps(8, 1000, 500, 1500));
        assert!(a.iter().all(|g| (500..=1500).contains(g)));
        // It straddles a 1 s timeout both ways.
        assert!(a.iter().filter(|g| **g < 1000).count() > 300);
        assert!(a.iter().filter(|g| **g > 1000).count() > 300);
    }
}
