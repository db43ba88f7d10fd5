//! The whole HTTP/1.1 server connection on arbitrary bytes in arbitrary
//! pieces, answering every request, with time moving on.
//!
//! Invariants: no panic; responses never outnumber requests (refused heads
//! included); once closed the connection stays closed; after EOF and enough
//! time every connection ends with exactly one close cause.

#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use libfuzzer_sys::fuzz_target;
use tether_proto::h1::{body_error_status, Config, Event, ResponseBody, ServerConnection};

/// Takes every event and answers what waits for an answer; counts
/// (requests, responses).
fn answer(conn: &mut ServerConnection, counts: &mut (u32, u32)) {
    let headers = HeaderMap::new();
    while let Some(event) = conn.poll_event() {
        let status = match event {
            Event::Request(_) => {
                counts.0 += 1;
                None
            }
            Event::Reject(status) => {
                counts.0 += 1; // a refused head is answered too
                Some(status)
            }
            Event::EndOfBody(_) => Some(StatusCode::OK),
            Event::BodyFailed(e) => Some(body_error_status(e)),
            Event::Body(_) => None,
        };
        if conn.awaiting_response() {
            let status = status.unwrap_or(StatusCode::OK);
            if conn.send_response(status, &headers, ResponseBody::Length(2)).is_ok() {
                counts.1 += 1;
                let _ = conn.send_body(Bytes::from_static(b"ok"));
                let _ = conn.finish_response();
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [piece, stream @ ..] = data else {
        return;
    };
    let config = Arc::new(Config {
        max_body: 4096,
        max_head: 2048,
        max_target: 512,
        max_drain: 1024,
        ..Config::default()
    });
    let t0 = Instant::now();
    let mut now = t0;
    let mut conn = ServerConnection::new(config, now);
    let mut counts = (0u32, 0u32);
    let piece = usize::from(*piece).max(1);
    for chunk in stream.chunks(piece) {
        now += Duration::from_millis(10);
        conn.handle_input(chunk, now);
        answer(&mut conn, &mut counts);
        let _ = conn.take_output(now);
        let closed = conn.poll_close().is_some();
        conn.handle_timeout(now);
        assert!(!closed || conn.poll_close().is_some(), "a closed connection reopened");
    }
    conn.handle_eof(now);
    for step in 1..=100 {
        answer(&mut conn, &mut counts);
        let _ = conn.take_output(now);
        if conn.poll_close().is_some() {
            break;
        }
        now = t0 + Duration::from_secs(60 * step);
        conn.handle_timeout(now);
    }
    let (requests, responses) = counts;
    assert!(responses <= requests, "{responses} responses to {requests} requests");
    assert!(conn.poll_close().is_some(), "never closed after EOF");
});
