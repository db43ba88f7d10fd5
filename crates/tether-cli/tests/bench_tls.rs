//! `tether bench` and `tether compare` over TLS, against `tether serve
//! --tls-cert --tls-key` on 127.0.0.1 with certificates made by `rcgen`
//! (`support/pki.rs`): `https://` and `wss://` URLs, `--ca-file` trust,
//! an untrusted certificate failing at once with its reason.

#[allow(dead_code)]
#[path = "conformance/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "support/pki.rs"]
mod pki;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `tether serve` over TLS with `pki`'s certificate.
fn serve(pki: &pki::Pki, extra: &[&str]) -> harness::Server {
    let (cert, key) = (pki.cert(), pki.key());
    let mut args = vec![
        "--demo=false",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    harness::Server::start(&args)
}

/// Runs `tether SUBCOMMAND ARGS` (loopback only: no source spreading for
/// bench) and returns its output.
fn tether(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .output()
        .expect("running tether")
}

/// Runs `tether bench MODE ARGS --json --no-spread`, which must succeed;
/// returns the JSON result.
fn bench_ok(mode: &str, args: &[&str]) -> Value {
    let mut all = vec!["bench", mode];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", "--no-spread", "--threads", "2"]);
    let out = tether(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tether {all:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

#[test]
fn bench_http_over_https_counts_every_request() {
    let pki = pki::Pki::new();
    let server = serve(&pki, &[]);
    let url = format!("https://127.0.0.1:{}/healthz", server.port);
    let ca = pki.ca();
    let ca = ca.to_str().unwrap();
    // 300 requests on 2 connections: the server closes each at its 100th
    // request (keep-alive max), so TLS connections are made again too.
    let r = bench_ok(
        "http",
        &[
            "--url",
            &url,
            "--ca-file",
            ca,
            "-c",
            "2",
            "--requests",
            "300",
            "-d",
            "30s",
        ],
    );
    assert_eq!(r["requests"], 300, "{r:#}");
    assert_eq!(r["errors"], 0, "{r:#}");
    assert_eq!(r["non_2xx"], 0, "{r:#}");
    assert!(r["reconnects"].as_u64().unwrap() >= 1, "{r:#}");
    // Pipelined: batches of 5 written in one go through TLS.
    let r = bench_ok(
        "http",
        &[
            "--url",
            &url,
            "--ca-file",
            ca,
            "-c",
            "2",
            "--pipeline",
            "5",
            "--requests",
            "100",
            "-d",
            "30s",
        ],
    );
    assert_eq!(
        (r["requests"].as_u64(), r["errors"].as_u64()),
        (Some(100), Some(0)),
        "{r:#}"
    );
    server.stop();
}

#[test]
fn bench_ws_echo_over_wss_echoes_small_and_large_messages() {
    let pki = pki::Pki::new();
    let server = serve(&pki, &[]);
    let url = format!("wss://127.0.0.1:{}/echo", server.port);
    let ca = pki.ca();
    let ca = ca.to_str().unwrap();
    for (size, in_flight) in [("32", "1"), ("256K", "4")] {
        let r = bench_ok(
            "ws-echo",
            &[
                "--url",
                &url,
                "--ca-file",
                ca,
                "-c",
                "2",
                "--size",
                size,
                "--in-flight",
                in_flight,
                "-d",
                "1s",
            ],
        );
        assert_eq!(r["connected"], 2, "{r:#}");
        assert_eq!(r["errors"], 0, "{r:#}");
        assert!(r["messages"].as_u64().unwrap() > 0, "{r:#}");
    }
    server.stop();
}

#[test]
fn bench_idle_holds_tls_connections_and_measures_the_server() {
    let pki = pki::Pki::new();
    let server = serve(&pki, &[]);
    let ca = pki.ca();
    let ca = ca.to_str().unwrap();
    let pid = server.pid().to_string();
    for url in [
        format!("https://127.0.0.1:{}/healthz", server.port),
        format!("wss://127.0.0.1:{}/echo", server.port),
    ] {
        let r = bench_ok(
            "idle",
            &[
                "--url",
                &url,
                "--ca-file",
                ca,
                "-c",
                "40",
                "--hold",
                "1s",
                "--server-pid",
                &pid,
            ],
        );
        assert_eq!(r["connected"], 40, "{r:#}");
        assert_eq!(r["alive"], 40, "{r:#}");
        assert_eq!(r["ok"], true, "{r:#}");
        assert!(r["server_rss_per_connection_bytes"].is_number(), "{r:#}");
    }
    server.stop();
}

#[test]
fn bench_fanout_over_wss_delivers_every_publication() {
    let pki = pki::Pki::new();
    let server = serve(&pki, &[]);
    let url = format!("wss://127.0.0.1:{}/ws", server.port);
    let ca = pki.ca();
    let r = bench_ok(
        "fanout",
        &[
            "--url",
            &url,
            "--ca-file",
            ca.to_str().unwrap(),
            "-n",
            "20",
            "--phases",
            "idle,rate",
            "--idle-hold",
            "200ms",
            "--rate",
            "20",
            "--rate-duration",
            "500ms",
        ],
    );
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["subscribed"], 20, "{r:#}");
    let rate = &r["rate"];
    assert_eq!(
        rate["deliveries"].as_u64(),
        rate["messages"].as_u64().map(|m| m * 20),
        "{r:#}"
    );
    server.stop();
}

#[test]
fn an_untrusted_certificate_fails_at_once_and_names_the_problem() {
    let pki = pki::Pki::new();
    let stranger = pki::Pki::new();
    let server = serve(&pki, &[]);
    let other_ca = stranger.ca();
    let other_ca = other_ca.to_str().unwrap();
    let https = format!("https://127.0.0.1:{}/healthz", server.port);
    let wss = format!("wss://127.0.0.1:{}/echo", server.port);
    for args in [
        vec!["bench", "http", "--url", &https, "-d", "30s"],
        vec!["bench", "ws-echo", "--url", &wss, "-d", "30s"],
        vec!["bench", "idle", "--url", &https, "--hold", "30s"],
    ] {
        let mut args = args.clone();
        args.extend_from_slice(&["-c", "2", "--ca-file", other_ca, "--no-spread", "-q"]);
        let began = Instant::now();
        let out = tether(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded: {stderr}");
        assert!(
            stderr.contains("certificate was rejected") && stderr.contains("UnknownIssuer"),
            "{args:?}: {stderr}"
        );
        // No retrying until the deadline: a certificate stays untrusted.
        assert!(
            began.elapsed() < Duration::from_secs(15),
            "{args:?} took {:?}",
            began.elapsed()
        );
    }
    server.stop();
}

#[test]
fn compare_measures_an_https_server_and_agrees_with_its_counters() {
    let pki = pki::Pki::new();
    let server = serve(&pki, &[]);
    let ca = pki.ca();
    let url = format!("https://127.0.0.1:{}", server.port);
    let out = tether(&[
        "compare",
        "--url",
        &url,
        "--ca-file",
        ca.to_str().unwrap(),
        "--speed",
        "100",
        "--messages",
        "10",
        "--requests",
        "5",
        "--quiet",
        "--json",
        "-",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "compare failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    for m in report["keepalive"]["modes"].as_array().unwrap() {
        assert!(m["server"]["agrees"].as_bool().unwrap(), "{m:#}");
    }
    let modes = report["keepalive"]["modes"].as_array().unwrap();
    assert_eq!(modes[0]["connections"], 1, "{:#}", modes[0]);
    assert_eq!(modes[1]["connections"], 5, "{:#}", modes[1]);
    let chat = &report["chat"];
    assert!(chat["server"]["agrees"].as_bool().unwrap(), "{:#}", chat["server"]);
    let transports = chat["transports"].as_array().unwrap();
    assert_eq!(transports.len(), 4);
    for t in transports {
        assert_eq!(t["delivered"], 10, "{t:#}");
        if let Some(agrees) = t.get("socket_agrees") {
            assert_eq!(agrees, true, "the counting socket counts the plaintext: {t:#}");
        }
    }
    server.stop();
}
