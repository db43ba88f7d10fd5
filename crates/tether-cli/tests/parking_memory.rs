//! Parking, measured on the real binary: idle keep-alive connections that
//! leave their tasks hand that memory back to the system. The server's own
//! resident memory (`VmRSS`) grows by less per idle connection with parking
//! than without it, in the same test, on the same machine.

#[allow(dead_code)]
#[path = "conformance/harness.rs"]
mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use harness::Server;

const CONNECTIONS: usize = 2000;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// One request answered on a new connection, which then stays open and idle.
fn open_idle(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !(got.starts_with(b"HTTP/1.1 200") && got.ends_with(b"\r\n\r\nok")) {
        assert!(
            got.len() < 4096,
            "unexpected response: {:?}",
            String::from_utf8_lossy(&got)
        );
        let n = s.read(&mut buf).expect("reading the response");
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    s
}

/// Resident bytes the server gains per idle connection, and whether every
/// connection still answers afterwards.
fn growth_per_connection(park: &str) -> f64 {
    let server = Server::start(&[
        "--workers",
        "1",
        "--keep-alive-timeout",
        "60s",
        "--park-idle-after",
        park,
    ]);
    let pid = server.pid();
    let mut warm = open_idle(server.port);
    warm.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(pid);
    let mut conns: Vec<TcpStream> = (0..CONNECTIONS).map(|_| open_idle(server.port)).collect();
    // Parking after 100 ms, the allocator's trim at most once a second.
    std::thread::sleep(Duration::from_millis(2500));
    let after = rss_kib(pid);
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, c) in conns.iter_mut().enumerate().step_by(97) {
        assert!(Instant::now() < deadline, "checking the connections took too long");
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).unwrap_or(0);
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "connection {i} after the wait ({park})"
        );
    }
    drop(conns);
    server.stop();
    after.saturating_sub(before) as f64 * 1024.0 / CONNECTIONS as f64
}

#[test]
fn parked_connections_return_their_tasks_memory() {
    let parked = growth_per_connection("100ms");
    let on_tasks = growth_per_connection("off");
    eprintln!("RSS per idle keep-alive connection: parked {parked:.0} B, on tasks {on_tasks:.0} B");
    assert!(
        parked < on_tasks * 0.6,
        "parking should save memory: parked {parked:.0} B, on tasks {on_tasks:.0} B per connection"
    );
}
