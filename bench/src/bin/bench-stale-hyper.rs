//! hyper-util's legacy pooled client in the stale-connection test (issue
//! 14): `--requests N` GETs of `--url` at random intervals between
//! `--min-ms` and `--max-ms` (seeded by `--seed`), every error counted,
//! one JSON object on stdout. Configured as its documentation shows
//! (`Client::builder(TokioExecutor::new()).build_http()`), with its
//! defaults: a 90 s pool idle timeout and the retry of requests canceled
//! before they were written; it does not read `Keep-Alive` hints.
//!
//! The same schedule as `tether bench stale`, so the two clients meet
//! the same idle gaps.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

struct Args {
    url: String,
    requests: usize,
    min_ms: u64,
    max_ms: u64,
    seed: u64,
    timeout_ms: u64,
}

fn usage(bad: &str) -> ! {
    eprintln!(
        "bench-stale-hyper: bad argument {bad:?}\n\
         usage: bench-stale-hyper --url http://HOST:PORT/PATH [--requests 300] [--min-ms 500] \
         [--max-ms 1500] [--seed 1] [--timeout-ms 10000]"
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let mut a = Args {
        url: String::new(),
        requests: 300,
        min_ms: 500,
        max_ms: 1500,
        seed: 1,
        timeout_ms: 10_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage(&flag));
        let num = || value.parse::<u64>().unwrap_or_else(|_| usage(&flag));
        match flag.as_str() {
            "--url" => a.url = value.clone(),
            "--requests" => a.requests = num() as usize,
            "--min-ms" => a.min_ms = num(),
            "--max-ms" => a.max_ms = num(),
            "--seed" => a.seed = num(),
            "--timeout-ms" => a.timeout_ms = num(),
            _ => usage(&flag),
        }
    }
    if a.url.is_empty() || a.min_ms > a.max_ms {
        usage("--url");
    }
    a
}

/// The schedule both stale clients follow: SplitMix64 from the seed, so
/// no RNG crate's version can change it.
fn gaps(seed: u64, n: usize, min_ms: u64, max_ms: u64) -> Vec<u64> {
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

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse();
    let uri: hyper::Uri = args.url.parse().unwrap_or_else(|_| usage("--url"));
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut ok = 0u64;
    let started = Instant::now();
    for (i, gap) in gaps(args.seed, args.requests, args.min_ms, args.max_ms).into_iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(gap)).await;
        }
        let req = hyper::Request::get(uri.clone()).body(Empty::new()).expect("static request");
        let result = tokio::time::timeout(Duration::from_millis(args.timeout_ms), async {
            let resp = client.request(req).await.map_err(|e| {
                // The error chain names the cause (e.g. "connection closed
                // before message completed").
                let mut text = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    text = format!("{text}: {s}");
                    src = s.source();
                }
                text
            })?;
            let status = resp.status();
            resp.into_body().collect().await.map_err(|e| e.to_string())?;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        })
        .await;
        match result {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => *errors.entry(e).or_default() += 1,
            Err(_) => *errors.entry("timed out".into()).or_default() += 1,
        }
    }
    let failed: u64 = errors.values().sum();
    let out = serde_json::json!({
        "client": "hyper-util legacy",
        "url": args.url,
        "requests": args.requests,
        "ok": ok,
        "errors": failed,
        "error_kinds": errors,
        "seconds": started.elapsed().as_secs_f64(),
    });
    println!("{out}");
}
