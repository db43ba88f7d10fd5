//! The `tether` binary's command line: errors name what the user wrote.

#[allow(dead_code)]
#[path = "conformance/harness.rs"]
mod harness;

use std::process::Command;

fn tether(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    cmd.args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TETHER_")) {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run tether");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_environment_variable_is_reported_under_its_own_name() {
    let (code, err) = tether(&["serve"], &[("TETHER_KEEP_ALIVE_MAX", "abc")]);
    assert_eq!(code, 2);
    assert!(
        err.contains("TETHER_KEEP_ALIVE_MAX") && err.contains("\"abc\""),
        "{err}"
    );
    // Typed on the command line, the flag is named.
    let (code, err) = tether(&["serve", "--keep-alive-max", "abc"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--keep-alive-max") && !err.contains("TETHER_"), "{err}");
}

#[test]
fn a_bad_broker_is_refused_before_the_server_starts() {
    // Not a broker at all: refused by the option's parser.
    let (code, err) = tether(&["serve", "--listen", "127.0.0.1:0", "--broker", "redis://"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--broker"), "{err}");
    // A Redis URL the client cannot use: an error naming it, no server.
    let (code, err) = tether(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--broker",
            "redis://127.0.0.1:1/notadb",
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("invalid broker configuration") && err.contains("redis://127.0.0.1:1/notadb"),
        "{err}"
    );
    assert!(!err.contains("listening on"), "{err}");
}

#[test]
fn a_log_filter_that_would_turn_logging_off_is_refused() {
    let (code, err) = tether(&["serve", "--log", "verbose"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("not a level"), "{err}");
    let (code, err) = tether(&["serve"], &[("TETHER_LOG", "verbose")]);
    assert_eq!(code, 2);
    assert!(err.contains("TETHER_LOG"), "{err}");
}

#[test]
fn a_benchmark_with_failed_or_non_2xx_requests_fails() {
    // Nothing listens on port 1: every request fails.
    let (code, err) = tether(
        &["bench", "http", "--url", "http://127.0.0.1:1/", "-d", "300ms", "-q"],
        &[],
    );
    assert_ne!(code, 0, "{err}");
    let served = harness::Server::start(&[]);
    let missing = format!("http://127.0.0.1:{}/not-here", served.port);
    let (code, err) = tether(&["bench", "http", "--url", &missing, "-d", "300ms", "-q"], &[]);
    assert_ne!(code, 0, "a run of 404s must fail: {err}");
    assert!(err.contains("not 2xx"), "{err}");
    let (code, err) = tether(
        &[
            "bench",
            "http",
            "--url",
            &missing,
            "-d",
            "300ms",
            "-q",
            "--allow-non-2xx",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let healthz = format!("http://127.0.0.1:{}/healthz", served.port);
    let (code, err) = tether(&["bench", "http", "--url", &healthz, "-d", "300ms", "-q"], &[]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_fanout_benchmark_runs_its_phases_against_the_hub_and_fails_without_a_server() {
    // The publisher sends as fast as the hub delivers: no command rate.
    let served = harness::Server::start(&["--demo=false", "--client-rate", "0"]);
    let url = format!("ws://127.0.0.1:{}/ws", served.port);
    let (code, err) = tether(
        &[
            "bench",
            "fanout",
            "--url",
            &url,
            "-n",
            "20",
            "--idle-hold",
            "100ms",
            "--messages",
            "50",
            "--rate",
            "50",
            "--rate-duration",
            "200ms",
            "-q",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    // Nothing listens on port 1: the subscribers fail, and so does the run.
    let (code, err) = tether(
        &["bench", "fanout", "--url", "ws://127.0.0.1:1/ws", "-n", "3", "-q"],
        &[],
    );
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("subscribed"), "{err}");
}

/// Runs `tether serve ARGS` until it says it listens (and 300 ms more, for
/// what it logs right after), then stops it; its stderr lines.
fn serve_output(args: &[&str]) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("serve")
        .args(args)
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tether serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut deadline = Instant::now() + Duration::from_secs(15);
    let mut lines: Vec<String> = Vec::new();
    let mut listening = false;
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                if !listening && line.contains("listening on") {
                    listening = true;
                    deadline = Instant::now() + Duration::from_millis(300);
                }
                lines.push(line);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "tether serve did not start:\n{}", lines.join("\n"));
    lines
}

#[test]
fn an_open_hub_on_a_public_address_is_announced_with_a_warning() {
    let warnings = |lines: &[String]| {
        let has = |what: &str| lines.iter().any(|l| l.contains("WARN") && l.contains(what));
        (has("the hub is open"), has("POST /publish is open"))
    };
    let public = serve_output(&["--listen", "0.0.0.0:0", "--demo=false", "--log", "warn"]);
    assert_eq!(warnings(&public), (true, true), "{}", public.join("\n"));
    let loopback = serve_output(&["--listen", "127.0.0.1:0", "--demo=false", "--log", "warn"]);
    assert_eq!(warnings(&loopback), (false, false), "{}", loopback.join("\n"));
    let keyed = serve_output(&[
        "--listen",
        "0.0.0.0:0",
        "--demo=false",
        "--log",
        "warn",
        "--publish-key",
        "k",
    ]);
    assert_eq!(warnings(&keyed), (true, false), "{}", keyed.join("\n"));
    let secret = "0123456789abcdef0123456789abcdef";
    let closed = serve_output(&[
        "--listen",
        "0.0.0.0:0",
        "--demo=false",
        "--log",
        "warn",
        "--publish-key",
        "k",
        "--token-secret",
        secret,
    ]);
    assert_eq!(warnings(&closed), (false, false), "{}", closed.join("\n"));
}

#[test]
fn json_logs_are_one_object_per_line_with_the_connection_and_request_spans() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--log",
        "info,tether=debug",
        "--log-format",
        "json",
        "--access-log",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TETHER_")) {
        cmd.env_remove(k);
    }
    let mut child = cmd.spawn().expect("run tether");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let addr = loop {
        let line = rx.recv_timeout(Duration::from_secs(10)).expect("the listening line");
        lines.push(line.clone());
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if let Some(addr) = event["fields"]["addr"].as_str() {
            assert!(line.contains("listening on http://"), "{line}");
            break addr.to_owned();
        }
    };

    // One keep-alive connection, two requests, the second closing it.
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answers = String::new();
    tcp.read_to_string(&mut answers).unwrap();
    assert_eq!(answers.matches("HTTP/1.1 200").count(), 2, "{answers}");

    let until = Instant::now() + Duration::from_secs(10);
    while !lines.iter().any(|l| l.contains("connection closed")) {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("no close line:\n{}", lines.join("\n")),
        }
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    lines.extend(rx.try_iter());

    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for e in &events {
        assert!(e["level"].is_string(), "{e}");
        assert!(e["fields"]["message"].is_string(), "{e}");
    }
    let closed = events
        .iter()
        .find(|e| e["fields"]["message"] == "connection closed")
        .expect("a close line");
    assert_eq!(closed["span"]["name"], "conn", "{closed}");
    assert_eq!(closed["span"]["cause"], "client_close", "{closed}");
    assert_eq!(closed["span"]["requests"], 2, "{closed}");
    assert!(closed["span"]["conn"].is_u64(), "{closed}");
    let access: Vec<_> = events.iter().filter(|e| e["target"] == "tether::access").collect();
    assert_eq!(access.len(), 2, "{lines:#?}");
    for a in access {
        assert_eq!(a["span"]["name"], "request", "{a}");
        assert_eq!(a["span"]["path"], "/healthz", "{a}");
        assert_eq!(a["spans"][0]["name"], "conn", "{a}");
    }
}

#[test]
fn the_static_root_serves_ranges_siblings_and_the_configured_cache_control() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("a.txt"), b"0123456789").unwrap();
    std::fs::write(root.path().join("a.txt.gz"), b"GZ").unwrap();
    let dir = root.path().to_str().unwrap();
    let server = harness::Server::start(&["--root", dir, "--static-cache-control", "public, max-age=60"]);
    let mut c = harness::Client::connect(server.port);
    let host = harness::host(server.port);
    let r = c.http(&format!(
        "GET /a.txt HTTP/1.1\r\nHost: {host}\r\nRange: bytes=2-4\r\n\r\n"
    ));
    assert_eq!(r.status, 206, "{}", r.head);
    assert_eq!(r.header("content-range"), Some("bytes 2-4/10"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=60"));
    assert_eq!(r.body, b"234");
    let r = c.http(&format!(
        "GET /a.txt HTTP/1.1\r\nHost: {host}\r\nAccept-Encoding: gzip\r\n\r\n"
    ));
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(r.body, b"GZ");
    server.stop();
}

#[test]
fn development_tokens_are_signed_only_on_a_loopback_address_with_a_secret() {
    let secret = "0123456789abcdef0123456789abcdef";
    // Refused before the server starts: no secret, or a public address.
    let (code, err) = tether(&["serve", "--listen", "127.0.0.1:0", "--dev-tokens"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--dev-tokens needs --token-secret"), "{err}");
    let (code, err) = tether(
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--dev-tokens",
            "--token-secret",
            secret,
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a loopback address"), "{err}");

    let server = harness::Server::start(&["--demo=false", "--dev-tokens", "--token-secret", secret]);
    let mut c = harness::Client::connect(server.port);
    let host = harness::host(server.port);
    let mut get = |path: &str| c.http(&format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"));
    let r = get("/dev/token?sub=ada&subscribe=chat%3A*&publish=&ttl=60");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(answer["sub"], "ada");
    let token = answer["token"].as_str().unwrap().to_string();
    // The token it signed is the server's own: it reads chat:*, nothing else.
    assert_eq!(get(&format!("/poll/chat:a?since=0&token={token}")).status, 200);
    assert_eq!(get(&format!("/poll/news?since=0&token={token}")).status, 403);
    assert_eq!(get("/poll/chat:a?since=0").status, 401);
    assert_eq!(get("/dev/token?ttl=soon").status, 400);
    server.stop();

    // Off by default: no such endpoint.
    let server = harness::Server::start(&["--demo=false", "--token-secret", secret]);
    let mut c = harness::Client::connect(server.port);
    let host = harness::host(server.port);
    let r = c.http(&format!("GET /dev/token HTTP/1.1\r\nHost: {host}\r\n\r\n"));
    assert_eq!(r.status, 404);
    server.stop();
}
