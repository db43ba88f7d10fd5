//! Byte-by-byte tests of the keep-alive state machine on virtual time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};

use super::*;

fn cfg(f: impl FnOnce(&mut Config)) -> Arc<Config> {
    let mut c = Config::default();
    f(&mut c);
    Arc::new(c)
}

struct Harness {
    conn: ServerConnection,
    t0: Instant,
    now: Instant,
}

impl Harness {
    fn new(config: Arc<Config>) -> Self {
        let t0 = Instant::now();
        Self {
            conn: ServerConnection::new(config, t0),
            t0,
            now: t0,
        }
    }
    fn at(&mut self, ms: u64) -> Instant {
        self.now = self.t0 + Duration::from_millis(ms);
        self.now
    }
    fn feed(&mut self, data: &str) {
        self.conn.handle_input(data.as_bytes(), self.now);
    }
    fn events(&mut self) -> Vec<Event> {
        let mut v = Vec::new();
        while let Some(e) = self.conn.poll_event() {
            v.push(e);
        }
        v
    }
    /// Answers a request with a small body and returns what went on the wire.
    fn respond(&mut self, body: &'static str) -> String {
        self.respond_with(StatusCode::OK, HeaderMap::new(), body)
    }
    fn respond_with(&mut self, status: StatusCode, headers: HeaderMap, body: &'static str) -> String {
        if body.is_empty() {
            self.conn.send_response(status, &headers, ResponseBody::Empty).unwrap();
        } else {
            self.conn
                .send_response(status, &headers, ResponseBody::Length(body.len() as u64))
                .unwrap();
            self.conn.send_body(Bytes::from_static(body.as_bytes())).unwrap();
            self.conn.finish_response().unwrap();
        }
        self.flush()
    }
    fn flush(&mut self) -> String {
        let out = self.conn.take_output(self.now);
        String::from_utf8(out.to_vec()).unwrap()
    }
    /// Feeds a request and answers every request event with "ok".
    fn roundtrip(&mut self, req: &str) -> String {
        self.feed(req);
        let mut wire = String::new();
        loop {
            let evs = self.events();
            if evs.is_empty() {
                break;
            }
            for ev in evs {
                match ev {
                    Event::Request(head) if head.body == BodyFraming::Empty => wire += &self.respond("ok"),
                    Event::Request(_) | Event::Body(_) => {}
                    Event::EndOfBody(_) => wire += &self.respond("ok"),
                    Event::Reject(status) if self.conn.awaiting_response() => {
                        wire += &self.respond_with(status, HeaderMap::new(), "");
                    }
                    Event::BodyFailed(e) if self.conn.awaiting_response() => {
                        wire += &self.respond_with(body_error_status(e), HeaderMap::new(), "");
                    }
                    _ => {}
                }
            }
        }
        wire
    }
}

fn requests(evs: &[Event]) -> usize {
    evs.iter().filter(|e| matches!(e, Event::Request(_))).count()
}

const GET: &str = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn http11_persists_and_advertises_keep_alive() {
    let mut h = Harness::new(cfg(|_| {}));
    let wire = h.roundtrip(GET);
    assert!(wire.starts_with("HTTP/1.1 200 OK\r\n"), "{wire}");
    assert!(wire.contains("keep-alive: timeout=5, max=100\r\n"), "{wire}");
    assert!(!wire.contains("connection:"), "{wire}");
    assert!(h.conn.is_idle());
    assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(5)));
}

#[test]
fn date_is_added_unless_the_handler_set_one() {
    const DATE: &str = "Thu, 26 Nov 2026 03:00:00 GMT";
    let mut h = Harness::new(cfg(|_| {}));
    h.feed(GET);
    assert_eq!(requests(&h.events()), 1);
    h.conn
        .send_response_with_date(
            StatusCode::OK,
            &HeaderMap::new(),
            Some(DATE.as_bytes()),
            ResponseBody::Empty,
        )
        .unwrap();
    let wire = h.flush();
    assert_eq!(wire.matches("date: ").count(), 1, "{wire}");
    assert!(wire.contains(&format!("\r\ndate: {DATE}\r\n")), "{wire}");

    h.feed(GET);
    assert_eq!(requests(&h.events()), 1);
    let mut own = HeaderMap::new();
    own.insert(header::DATE, "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
    h.conn
        .send_response_with_date(StatusCode::OK, &own, Some(DATE.as_bytes()), ResponseBody::Empty)
        .unwrap();
    let wire = h.flush();
    assert_eq!(wire.to_ascii_lowercase().matches("date: ").count(), 1, "{wire}");
    assert!(
        wire.contains("Sun, 06 Nov 1994 08:49:37 GMT"),
        "the handler's Date wins: {wire}"
    );

    h.feed(GET);
    assert_eq!(requests(&h.events()), 1);
    assert!(!h.respond("ok").contains("date: "), "no Date without one given");
}

#[test]
fn http10_closes_unless_keep_alive() {
    let mut h = Harness::new(cfg(|_| {}));
    let wire = h.roundtrip("GET / HTTP/1.0\r\n\r\n");
    assert!(wire.contains("connection: close\r\n"), "{wire}");
    assert!(!wire.contains("keep-alive:"), "{wire}");
    // Output flushed: the write side is shut down and input discarded (linger).
    assert!(h.conn.poll_shutdown_write());
    h.conn.handle_eof(h.now);
    assert_eq!(h.conn.poll_close(), Some(CloseCause::ClientClose));

    let mut h = Harness::new(cfg(|_| {}));
    let wire = h.roundtrip("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert!(wire.contains("connection: keep-alive\r\n"), "{wire}");
    assert!(wire.contains("keep-alive: timeout=5, max=100\r\n"), "{wire}");
    assert!(h.conn.is_idle());
}

#[test]
fn client_close_token_list() {
    let mut h = Harness::new(cfg(|_| {}));
    let wire = h.roundtrip("GET / HTTP/1.1\r\nHost: x\r\nConnection: TE, Close\r\n\r\n");
    assert!(wire.contains("connection: close\r\n"));
    assert_eq!(h.conn.will_close(), Some(CloseCause::ClientClose));
}

#[test]
fn idle_timeout_starts_after_flush_and_restarts_per_request() {
    let mut h = Harness::new(cfg(|c| c.idle_timeout = Duration::from_millis(1000)));
    h.at(0);
    assert_eq!(h.conn.poll_timeout(), Some(h.t0 + Duration::from_millis(1000)));
    h.at(900);
    h.feed(GET);
    assert_eq!(requests(&h.events()), 1);
    // In flight: no idle timer at all.
    h.at(5000);
    h.conn.handle_timeout(h.now);
    assert!(!h.conn.is_closed());
    h.conn
        .send_response(StatusCode::OK, &HeaderMap::new(), ResponseBody::Empty)
        .unwrap();
    // Not yet written: still not idle.
    assert!(!h.conn.is_idle());
    h.at(5200);
    h.flush();
    assert_eq!(h.conn.poll_timeout(), Some(h.t0 + Duration::from_millis(6200)));
    h.at(6199);
    h.conn.handle_timeout(h.now);
    assert!(!h.conn.is_closed());
    h.at(6200);
    h.conn.handle_timeout(h.now);
    assert_eq!(h.conn.poll_close(), Some(CloseCause::IdleTimeout));
    // Nothing is sent on an idle close.
    assert!(!h.conn.has_output());
}

#[test]
fn idle_since_only_when_nothing_is_received_queued_or_pending() {
    let mut h = Harness::new(cfg(|_| {}));
    h.at(0);
    assert_eq!(
        h.conn.idle_since(),
        Some(h.t0),
        "a fresh connection waits for its first request"
    );
    h.at(10);
    h.feed("GET / HTTP/1.1\r\nHo");
    assert_eq!(h.conn.idle_since(), None, "part of a head arrived");
    h.feed("st: x\r\n\r\n");
    assert_eq!(requests(&h.events()), 1);
    assert_eq!(h.conn.idle_since(), None, "in flight");
    h.conn
        .send_response(StatusCode::OK, &HeaderMap::new(), ResponseBody::Empty)
        .unwrap();
    assert_eq!(h.conn.idle_since(), None, "response not yet written");
    h.at(20);
    h.flush();
    assert_eq!(h.conn.idle_since(), Some(h.t0 + Duration::from_millis(20)));
    h.conn.handle_shutdown(h.now);
    assert_eq!(h.conn.idle_since(), None, "shutting down (closed)");
}

#[test]
fn idle_connection_holds_no_buffer_unless_retention_is_on() {
    let mut h = Harness::new(cfg(|_| {}));
    h.roundtrip(GET);
    assert!(h.conn.is_idle());
    assert_eq!(h.conn.buffer_capacity(), 0, "released at idle by default");

    h.conn.set_retain_buffers(true);
    h.roundtrip(GET);
    assert!(h.conn.is_idle());
    let kept = h.conn.buffer_capacity();
    assert!(kept > 0, "kept for the next request");
    h.roundtrip(GET);
    assert!(h.conn.buffer_capacity() <= kept, "reused, not grown");
    h.conn.release_buffers();
    assert_eq!(h.conn.buffer_capacity(), 0);
    // Still a working connection afterwards.
    let wire = h.roundtrip(GET);
    assert!(wire.starts_with("HTTP/1.1 200"), "{wire}");
}

#[test]
fn buffers_move_out_while_idle_and_back_in_for_the_next_request() {
    let mut h = Harness::new(cfg(|_| {}));
    h.conn.set_retain_buffers(true);
    h.roundtrip(GET);
    let (read, out) = h.conn.take_buffers().expect("idle with buffers");
    assert!(!h.conn.has_buffers());
    assert_eq!(h.conn.buffer_capacity(), 0, "an idle connection holds none");
    assert!(h.conn.take_buffers().is_none());
    h.conn.give_buffers((read, out));
    assert!(h.conn.has_buffers());
    let wire = h.roundtrip(GET);
    assert!(wire.starts_with("HTTP/1.1 200"), "{wire}");
    // Not while a request is in flight.
    h.feed(GET);
    assert_eq!(requests(&h.events()), 1);
    assert!(h.conn.take_buffers().is_none());
}

#[test]
fn retained_buffers_have_a_size_limit() {
    let mut h = Harness::new(cfg(|_| {}));
    h.conn.set_retain_buffers(true);
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "p".repeat(20_000));
    h.roundtrip(&big);
    assert!(h.conn.is_idle());
    assert_eq!(h.conn.buffer_capacity(), 0, "over 16 KiB: given back");
}

#[test]
fn max_requests_mth_response_closes_and_nothing_after_is_processed() {
    let mut h = Harness::new(cfg(|c| c.max_requests = 3));
    let w1 = h.roundtrip(GET);
    assert!(w1.contains("keep-alive: timeout=5, max=3\r\n"), "{w1}");
    let w2 = h.roundtrip(GET);
    assert!(!w2.contains("connection: close"));
    // Third request pipelined with a fourth: only three answered.
    let w3 = h.roundtrip(&format!("{GET}{GET}"));
    assert_eq!(w3.matches("HTTP/1.1 200").count(), 1, "{w3}");
    assert!(w3.contains("connection: close\r\n"));
    assert!(!w3.contains("keep-alive:"));
    assert_eq!(h.conn.will_close(), Some(CloseCause::MaxRequests));
    assert_eq!(h.conn.requests_served(), 3);
    assert!(h.conn.poll_event().is_none());
    assert!(h.conn.poll_shutdown_write());
    h.conn.handle_eof(h.now);
    assert_eq!(h.conn.poll_close(), Some(CloseCause::MaxRequests));
}

#[test]
fn max_zero_is_unlimited_and_omits_max() {
    let mut h = Harness::new(cfg(|c| c.max_requests = 0));
    for _ in 0..300 {
        let w = h.roundtrip(GET);
        assert!(w.contains("keep-alive: timeout=5\r\n"), "{w}");
    }
    assert!(h.conn.is_idle());
}

#[test]
fn keep_alive_header_modes() {
    let mut h = Harness::new(cfg(|c| {
        c.max_requests = 3;
        c.keep_alive_header = KeepAliveHeader::Remaining;
    }));
    assert!(h.roundtrip(GET).contains("keep-alive: timeout=5, max=2\r\n"));
    assert!(h.roundtrip(GET).contains("keep-alive: timeout=5, max=1\r\n"));
    let mut h = Harness::new(cfg(|c| c.keep_alive_header = KeepAliveHeader::Off));
    let w = h.roundtrip(GET);
    assert!(!w.contains("keep-alive"), "{w}");
    assert!(h.conn.is_idle());
}

#[test]
fn fractional_timeout_is_advertised_rounded_down() {
    let mut h = Harness::new(cfg(|c| c.idle_timeout = Duration::from_millis(2500)));
    assert!(h.roundtrip(GET).contains("keep-alive: timeout=2, max=100\r\n"));
}

#[test]
fn the_advertised_timeout_is_never_more_than_the_lifetime_left() {
    let mut h = Harness::new(cfg(|c| {
        c.idle_timeout = Duration::from_secs(5);
        c.max_lifetime = Some(Duration::from_secs(8));
    }));
    h.at(1000);
    assert!(h.roundtrip(GET).contains("keep-alive: timeout=5, max=100\r\n"));
    h.at(4500);
    assert!(
        h.roundtrip(GET).contains("keep-alive: timeout=3, max=100\r\n"),
        "3.5 s left"
    );
    h.at(7600);
    assert!(
        h.roundtrip(GET).contains("keep-alive: timeout=0, max=100\r\n"),
        "0.4 s left"
    );
    // ... and an idle connection closes when the lifetime ends.
    assert_eq!(h.conn.poll_timeout(), Some(h.t0 + Duration::from_secs(8)));
    h.at(8000);
    h.conn.handle_timeout(h.now);
    assert_eq!(h.conn.poll_close(), Some(CloseCause::Lifetime));
}

#[test]
fn lifetime_closes_next_response() {
    let mut h = Harness::new(cfg(|c| c.max_lifetime = Some(Duration::from_secs(60))));
    h.at(10);
    assert!(!h.roundtrip(GET).contains("close"));
    h.at(59_000);
    h.feed(GET);
    h.events();
    h.at(61_000);
    h.conn.handle_timeout(h.now);
    let w = h.respond("ok");
    assert!(w.contains("connection: close"), "{w}");
    assert_eq!(h.conn.will_close(), Some(CloseCause::Lifetime));
}

#[test]
fn lifetime_closes_idle_connection() {
    let mut h = Harness::new(cfg(|c| c.max_lifetime = Some(Duration::from_secs(3))));
    h.roundtrip(GET);
    assert_eq!(h.conn.poll_timeout(), Some(h.t0 + Duration::from_secs(3)));
    h.at(3000);
    h.conn.handle_timeout(h.now);
    assert_eq!(h.conn.poll_close(), Some(CloseCause::Lifetime));
}

#[test]
fn handler_connection_close() {
    let mut h = Harness::new(cfg(|_| {}));
    h.feed(GET);
    h.events();
    let mut hm = HeaderMap::new();
    hm.insert("connection", "close".parse().unwrap());
    let w = h.respond_with(StatusCode::OK, hm, "x");
    assert_eq!(w.matches("connection").count(), 1, "{w}");
    assert_eq!(h.conn.will_close(), Some(CloseCause::ServerClose));
}

#[test]
fn pipelined_requests_answered_in_order_and_close_stops_processing() {
    let mut h = Harness::new(cfg(|_| {}));
    h.feed("GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /3 HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut paths = Vec::new();
    loop {
        let evs = h.events();
        if evs.is_empty() {
            break;
        }
        for ev in evs {
            if let Event::Request(head) = ev {
                paths.push(head.uri.path().to_string());
                // The next head is not parsed before this response is done.
                assert!(h.conn.poll_event().is_none());
                h.respond("ok");
            }
        }
    }
    assert_eq!(paths, ["/1", "/2"]);
    assert_eq!(h.conn.will_close(), Some(CloseCause::ClientClose));
}

#[test]
fn content_length_body_then_next_request() {
    let mut h = Harness::new(cfg(|_| {}));
    h.feed("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel");
    let evs = h.events();
    assert!(matches!(&evs[..], [Event::Request(_), Event::Body(b)] if &b[..] == b"hel"));
    h.feed("lo");
    h.feed(GET);
    let evs = h.events();
    assert!(
        matches!(&evs[..], [Event::Body(b), Event::EndOfBody(None)] if &b[..] == b"lo"),
        "{evs:?}"
    );
    h.respond("ok");
    assert_eq!(requests(&h.events()), 1);
}

#[test]
fn chunked_body_with_trailers() {
    let mut h = Harness::new(cfg(|_| {}));
    h.feed("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n");
    let evs = h.events();
    assert!(
        matches!(&evs[..], [Event::Request(_), Event::Body(_), Event::EndOfBody(Some(t))] if t["x-t"] == "1"),
        "{evs:?}"
    );
}

#[test]
fn unread_body_is_drained_then_next_request_served() {
    let mut h = Harness::new(cfg(|_| {}));
    h.feed("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234");
    assert_eq!(requests(&h.events()), 1);
    let w = h.respond("early");
    assert!(!w.contains("close"), "{w}");
    h.feed("56789");
    h.feed(GET);
    let evs = h.events();
    assert_eq!(requests(&evs), 1, "{evs:?}");
    assert!(!evs.iter().any(|e| matches!(e, Event::Body(_))));
}

#[test]
fn unread_body_over_drain_limit_closes() {
    let mut h = Harness::new(cfg(|c| c.max_drain = 4));
    h.feed("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n");
    h.events();
    let w = h.respond("early");
    assert!(w.contains("connection: close"), "{w}");
    assert_eq!(h.conn.will_close(), Some(CloseCause::UnreadBody));
    // Chunked: unknown length; drained until the limit, then closed.
    let mut h = Harness::new(cfg(|c| c.max_drain = 4));
    h.feed("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    h.events();
    assert!(!h.respond("early").contains("close"));
    h.feed("a\r\n0123456789\r\n");
    assert!(h.events().is_empty());
    assert_eq!(h.conn.will_close(), Some(CloseCause::UnreadBody));
}

#[test]
fn expect_continue_is_answered() {
    let mut h = Harness::new(cfg(|_| {}));
    h.feed("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
    h.events();
    assert_eq!(h.flush(), "HTTP/1.1 100 Continue\r\n\r\n");
}

#[test]
fn head_204_304_have_no_body() {
    let mut h = Harness::new(cfg(|_| {}));
    h.feed("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    h.events();
    let w = h.respond("hello");
    assert!(w.ends_with("\r\n\r\n") && w.contains("content-length: 5"), "{w}");
    for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
        h.feed(GET);
        h.events();
        let w = h.respond_with(status, HeaderMap::new(), "body");
        assert!(w.ends_with("\r\n\r\n") && !w.contains("content-length"), "{w}");
    }
    assert!(h.conn.is_idle());
}

#[test]
fn streaming_response_chunked_for_11_close_delimited_for_10() {
    let mut h = Harness::new(cfg(|_| {}));
    h.feed(GET);
    h.events();
    h.conn
        .send_response(StatusCode::OK, &HeaderMap::new(), ResponseBody::Streaming)
        .unwrap();
    h.conn.send_body(Bytes::from_static(b"hello")).unwrap();
    h.conn.finish_response().unwrap();
    let w = h.flush();
    assert!(
        w.contains("transfer-encoding: chunked\r\n") && w.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        "{w}"
    );
    assert!(h.conn.is_idle());

    let mut h = Harness::new(cfg(|_| {}));
    h.feed("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    h.events();
    h.conn
        .send_response(StatusCode::OK, &HeaderMap::new(), ResponseBody::Streaming)
        .unwrap();
    h.conn.send_body(Bytes::from_static(b"hello")).unwrap();
    h.conn.finish_response().unwrap();
    let w = h.flush();
    assert!(
        w.contains("connection: close\r\n") && w.ends_with("\r\n\r\nhello"),
        "{w}"
    );
}

#[test]
fn body_length_mismatch() {
    let mut h = Harness::new(cfg(|_| {}));
    h.feed(GET);
    h.events();
    h.conn
        .send_response(StatusCode::OK, &HeaderMap::new(), ResponseBody::Length(3))
        .unwrap();
    assert_eq!(
        h.conn.send_body(Bytes::from_static(b"toolong")),
        Err(SendError::BodyTooLong)
    );
    h.conn.send_body(Bytes::from_static(b"ab")).unwrap();
    assert_eq!(h.conn.finish_response(), Err(SendError::BodyTooShort));
    assert_eq!(h.conn.will_close(), Some(CloseCause::ServerClose));
}

#[test]
fn header_timeout_sends_408() {
    let mut h = Harness::new(cfg(|c| c.header_timeout = Duration::from_secs(10)));
    h.at(1000);
    h.feed("GET / HTTP/1.1\r\n");
    assert!(h.events().is_empty());
    assert_eq!(h.conn.poll_timeout(), Some(h.t0 + Duration::from_secs(11)));
    h.at(5000);
    h.feed("Host: x\r\n");
    assert!(h.events().is_empty());
    // The timer does not restart with more bytes: the whole head within H.
    h.at(11_000);
    h.conn.handle_timeout(h.now);
    let evs = h.events();
    assert!(
        matches!(evs[..], [Event::Reject(StatusCode::REQUEST_TIMEOUT)]),
        "{evs:?}"
    );
    let w = h.respond_with(StatusCode::REQUEST_TIMEOUT, HeaderMap::new(), "");
    assert!(w.starts_with("HTTP/1.1 408") && w.contains("connection: close"));
    assert_eq!(h.conn.will_close(), Some(CloseCause::HeaderTimeout));
}

#[test]
fn idle_timeout_not_header_timeout_governs_empty_connection() {
    let mut h = Harness::new(cfg(|c| {
        c.idle_timeout = Duration::from_secs(30);
        c.header_timeout = Duration::from_secs(2);
    }));
    h.roundtrip(GET);
    assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(30)));
    // The first byte of the next request starts the header timer.
    h.at(10_000);
    h.feed("G");
    assert_eq!(h.conn.poll_timeout(), Some(h.t0 + Duration::from_secs(12)));
}

#[test]
fn body_timeout_fails_stalled_body() {
    let mut h = Harness::new(cfg(|c| c.body_timeout = Duration::from_secs(3)));
    h.feed("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01");
    h.events();
    assert_eq!(h.conn.poll_timeout(), Some(h.t0 + Duration::from_secs(3)));
    h.at(3000);
    h.conn.handle_timeout(h.now);
    let evs = h.events();
    assert!(matches!(evs[..], [Event::BodyFailed(BodyError::Timeout)]), "{evs:?}");
    assert_eq!(h.conn.will_close(), Some(CloseCause::BodyTimeout));
}

#[test]
fn a_body_trickled_below_the_minimum_rate_ends_with_408() {
    // One byte every 4 s never trips a 5 s stall timeout, but falls below
    // 100 bytes/s: the body must be complete by 5 s + 1 s per 100 bytes.
    let mut h = Harness::new(cfg(|c| {
        c.body_timeout = Duration::from_secs(5);
        c.body_min_rate = std::num::NonZeroU32::new(100);
    }));
    h.feed("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n");
    assert_eq!(requests(&h.events()), 1);
    let mut t = 0;
    loop {
        t += 4000;
        assert!(t <= 12_000, "still open after {t} ms");
        h.at(t);
        h.conn.handle_timeout(h.now);
        if h.conn.will_close().is_some() {
            break;
        }
        h.feed("x");
        h.events();
    }
    // The 1 byte received by then earned 10 ms: the deadline was 5.01 s.
    assert_eq!(t, 8000);
    assert!(matches!(h.events()[..], [Event::BodyFailed(BodyError::Timeout)]));
    assert_eq!(h.conn.will_close(), Some(CloseCause::BodyTimeout));
    // A body at the rate is fine: 1000 bytes at 200 bytes/s.
    let mut h = Harness::new(cfg(|c| {
        c.body_timeout = Duration::from_secs(5);
        c.body_min_rate = std::num::NonZeroU32::new(100);
    }));
    h.feed("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n");
    h.events();
    for i in 1..=5 {
        h.at(i * 1000);
        h.conn.handle_timeout(h.now);
        h.feed(&"y".repeat(200));
        h.events();
    }
    assert_eq!(h.conn.will_close(), None);
}

#[test]
fn rejected_head_answers_once_and_nothing_after_is_parsed() {
    // Request smuggling: CL + TE, followed by a smuggled request.
    let mut h = Harness::new(cfg(|_| {}));
    let w = h.roundtrip("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(w.matches("HTTP/1.1").count(), 1, "{w}");
    assert!(w.starts_with("HTTP/1.1 400") && w.contains("connection: close"), "{w}");
    assert_eq!(h.conn.will_close(), Some(CloseCause::ProtocolError));
}

#[test]
fn bad_input_statuses() {
    let cases: &[(&str, u16)] = &[
        ("GARBAGE\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", 400),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
        ),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
        ),
        ("GET / HTTP/1.1\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 17000000\r\n\r\n", 413),
        ("GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: user@evil\r\n\r\n", 400),
        ("GET healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ];
    for (raw, status) in cases {
        let mut h = Harness::new(cfg(|_| {}));
        h.feed(raw);
        let evs = h.events();
        assert!(
            matches!(evs[..], [Event::Reject(s)] if s.as_u16() == *status),
            "{raw:?}: {evs:?}"
        );
    }
    // Invalid chunk size mid-body.
    let mut h = Harness::new(cfg(|_| {}));
    h.feed("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    let evs = h.events();
    assert!(
        matches!(evs[..], [Event::Request(_), Event::BodyFailed(BodyError::InvalidChunk)]),
        "{evs:?}"
    );
    assert_eq!(body_error_status(BodyError::InvalidChunk), StatusCode::BAD_REQUEST);
    // Chunked body over the limit.
    let mut h = Harness::new(cfg(|c| c.max_body = 4));
    h.feed("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    let evs = h.events();
    assert!(
        matches!(evs[..], [Event::Request(_), Event::BodyFailed(BodyError::TooLarge)]),
        "{evs:?}"
    );
    // Limits: too many headers, too large a head, too long a target.
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    for (raw, status) in [
        (format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n"), 431),
        (
            format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n", "a".repeat(70_000)),
            431,
        ),
        (format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000)), 414),
    ] {
        let mut h = Harness::new(cfg(|_| {}));
        h.feed(&raw);
        let evs = h.events();
        assert!(matches!(evs[..], [Event::Reject(s)] if s.as_u16() == status), "{evs:?}");
    }
}

#[test]
fn a_method_longer_than_any_gets_501_and_closes() {
    let mut h = Harness::new(cfg(|_| {}));
    let w = h.roundtrip(&format!("{} / HTTP/1.1\r\nHost: x\r\n\r\n{GET}", "M".repeat(10_000)));
    assert!(w.starts_with("HTTP/1.1 501") && w.contains("connection: close"), "{w}");
    assert_eq!(w.matches("HTTP/1.1").count(), 1, "nothing after it is parsed: {w}");
    assert_eq!(h.conn.will_close(), Some(CloseCause::ProtocolError));
}

#[test]
fn pipelined_requests_wait_while_unsent_output_is_over_the_bound() {
    let mut h = Harness::new(cfg(|c| {
        c.max_unsent_output = 1000;
        c.header_timeout = Duration::from_secs(2);
        c.write_timeout = Duration::from_secs(30);
    }));
    h.feed(&GET.repeat(3));
    assert_eq!(requests(&h.events()), 1);
    let big = Bytes::from(vec![b'x'; 3000]);
    h.conn
        .send_response(StatusCode::OK, &HeaderMap::new(), ResponseBody::Length(3000))
        .unwrap();
    h.conn.send_body(big).unwrap();
    h.conn.finish_response().unwrap();
    // The peer reads nothing: the next head is not parsed, nothing more is
    // read, and only the write timeout is pending (not the header timeout:
    // the stall is the server's own output).
    assert!(h.events().is_empty());
    assert!(!h.conn.wants_read());
    assert!(!h.conn.has_output_capacity());
    let _ = h.conn.poll_transmit(h.now).count();
    assert_eq!(h.conn.poll_timeout(), Some(h.t0 + Duration::from_secs(30)));
    h.at(10_000);
    h.conn.handle_timeout(h.now);
    assert!(!h.conn.is_closed(), "no 408 while the output is ours to send");
    // The peer takes enough to bring it under the bound: the next request
    // is served and its header timer starts now.
    h.conn.handle_written(2500, h.now);
    assert!(h.conn.has_output_capacity());
    assert!(h.conn.wants_read());
    assert_eq!(requests(&h.events()), 1);
    // Never read, the output ends the connection at the write timeout.
    h.conn
        .send_response(StatusCode::OK, &HeaderMap::new(), ResponseBody::Length(3000))
        .unwrap();
    h.conn.send_body(Bytes::from(vec![b'y'; 3000])).unwrap();
    h.conn.finish_response().unwrap();
    assert!(h.events().is_empty());
    h.at(40_000);
    h.conn.handle_timeout(h.now);
    assert_eq!(h.conn.poll_close(), Some(CloseCause::WriteTimeout));
}

#[test]
fn a_lingering_connection_with_blocked_output_reads_nothing() {
    let mut h = Harness::new(cfg(|c| c.max_unsent_output = 100));
    h.feed("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    h.events();
    h.conn
        .send_response(StatusCode::OK, &HeaderMap::new(), ResponseBody::Length(500))
        .unwrap();
    h.conn.send_body(Bytes::from(vec![b'z'; 500])).unwrap();
    h.conn.finish_response().unwrap();
    assert!(
        !h.conn.wants_read(),
        "discarding input while our output waits costs CPU for nothing"
    );
    let _ = h.flush();
    assert!(h.conn.poll_shutdown_write());
    assert!(h.conn.wants_read(), "flushed: the lingering read begins");
}

#[test]
fn lingering_close_is_bounded() {
    let mut h = Harness::new(cfg(|c| {
        c.linger_idle = Duration::from_secs(2);
        c.linger_time = Duration::from_secs(5);
    }));
    h.roundtrip("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(h.conn.poll_shutdown_write());
    // The peer keeps sending: discarded, never parsed.
    for t in [1000, 2500, 4000] {
        h.at(t);
        h.feed(GET);
        assert!(h.events().is_empty());
        h.conn.handle_timeout(h.now);
        assert!(!h.conn.is_closed());
    }
    h.at(5000);
    h.conn.handle_timeout(h.now);
    assert_eq!(h.conn.poll_close(), Some(CloseCause::ClientClose));
    // A silent peer ends it after linger_idle.
    let mut h = Harness::new(cfg(|c| c.linger_idle = Duration::from_secs(2)));
    h.roundtrip("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    h.at(2000);
    h.conn.handle_timeout(h.now);
    assert!(h.conn.is_closed());
}

#[test]
fn shutdown_drains_idle_connections_and_answers_in_flight_with_close() {
    // Idle at shutdown: open for the drain; a request arriving in it is
    // answered with `Connection: close`.
    let mut h = Harness::new(cfg(|c| c.shutdown_drain = Duration::from_secs(1)));
    h.roundtrip(GET);
    h.at(100);
    h.conn.handle_shutdown(h.now);
    assert!(!h.conn.is_closed());
    assert_eq!(h.conn.idle_since(), None, "a draining connection does not park");
    assert_eq!(h.conn.poll_timeout(), Some(h.t0 + Duration::from_millis(1100)));
    h.at(600);
    let w = h.roundtrip(GET);
    assert!(w.starts_with("HTTP/1.1 200") && w.contains("connection: close"), "{w}");
    assert_eq!(h.conn.will_close(), Some(CloseCause::Shutdown));

    // Still idle when the drain ends: closed.
    let mut h = Harness::new(cfg(|c| c.shutdown_drain = Duration::from_secs(1)));
    h.roundtrip(GET);
    h.conn.handle_shutdown(h.now);
    h.at(999);
    h.conn.handle_timeout(h.now);
    assert!(!h.conn.is_closed());
    h.at(1000);
    h.conn.handle_timeout(h.now);
    assert_eq!(h.conn.poll_close(), Some(CloseCause::Shutdown));

    // No drain: idle connections close at once.
    let mut h = Harness::new(cfg(|c| c.shutdown_drain = Duration::ZERO));
    h.roundtrip(GET);
    h.conn.handle_shutdown(h.now);
    assert_eq!(h.conn.poll_close(), Some(CloseCause::Shutdown));

    // In flight: answered with close.
    let mut h = Harness::new(cfg(|_| {}));
    h.feed(GET);
    h.events();
    h.conn.handle_shutdown(h.now);
    assert!(!h.conn.is_closed());
    let w = h.respond("ok");
    assert!(w.contains("connection: close"));
    assert_eq!(h.conn.will_close(), Some(CloseCause::Shutdown));

    // A keep-alive response already on its way when shutdown came: the
    // connection then drains like an idle one, so the client's next request
    // (sent without a `Connection: close` to warn it) is still answered.
    let mut h = Harness::new(cfg(|c| c.shutdown_drain = Duration::from_secs(1)));
    h.feed(GET);
    h.events();
    h.conn
        .send_response(StatusCode::OK, &HeaderMap::new(), ResponseBody::Length(2))
        .unwrap();
    h.conn.handle_shutdown(h.now);
    h.conn.send_body(Bytes::from_static(b"ok")).unwrap();
    h.conn.finish_response().unwrap();
    let first = h.flush();
    assert!(!first.contains("connection: close"), "{first}");
    assert!(!h.conn.is_closed());
    let w = h.roundtrip(GET);
    assert!(w.contains("connection: close"), "{w}");
}

#[test]
fn only_an_idle_connection_can_be_reclaimed() {
    let mut h = Harness::new(cfg(|_| {}));
    h.feed("GET / HTTP/1.1\r\n");
    assert!(!h.conn.reclaim(h.now), "a request is arriving");
    h.feed("Host: x\r\n\r\n");
    h.events();
    assert!(!h.conn.reclaim(h.now), "a request is in flight");
    let _ = h.respond("ok");
    assert!(h.conn.reclaim(h.now));
    assert_eq!(h.conn.poll_close(), Some(CloseCause::Reclaimed));
}

#[test]
fn eof_cases() {
    // EOF while idle.
    let mut h = Harness::new(cfg(|_| {}));
    h.roundtrip(GET);
    h.conn.handle_eof(h.now);
    assert_eq!(h.conn.poll_close(), Some(CloseCause::PeerClosed));
    // Pipelined requests then EOF: all answered, then closed.
    let mut h = Harness::new(cfg(|_| {}));
    h.conn.handle_input(format!("{GET}{GET}").as_bytes(), h.now);
    h.conn.handle_eof(h.now);
    let w = h.roundtrip("");
    assert_eq!(w.matches("HTTP/1.1 200").count(), 2, "{w}");
    assert_eq!(h.conn.poll_close(), Some(CloseCause::PeerClosed));
    // EOF in the middle of a body.
    let mut h = Harness::new(cfg(|_| {}));
    h.feed("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01");
    h.events();
    h.conn.handle_eof(h.now);
    assert!(matches!(h.events()[..], [Event::BodyFailed(BodyError::Incomplete)]));
    // EOF while a chunked stream is being sent: the stream ends once what
    // is queued is flushed; no more body is accepted.
    let mut h = Harness::new(cfg(|_| {}));
    h.feed(GET);
    h.events();
    h.conn
        .send_response(StatusCode::OK, &HeaderMap::new(), ResponseBody::Streaming)
        .unwrap();
    h.conn.send_body(Bytes::from_static(b"event")).unwrap();
    h.conn.handle_eof(h.now);
    assert!(h.conn.send_body(Bytes::from_static(b"more")).is_err());
    let w = h.flush();
    assert!(w.ends_with("5\r\nevent\r\n"), "{w}");
    assert_eq!(h.conn.poll_close(), Some(CloseCause::PeerClosed));
    // A response of known length is still sent whole to a half-closed peer.
    let mut h = Harness::new(cfg(|_| {}));
    h.feed(GET);
    h.events();
    h.conn
        .send_response(StatusCode::OK, &HeaderMap::new(), ResponseBody::Length(4))
        .unwrap();
    h.conn.handle_eof(h.now);
    h.conn.send_body(Bytes::from_static(b"half")).unwrap();
    h.conn.finish_response().unwrap();
    assert!(h.flush().ends_with("\r\n\r\nhalf"));
    assert_eq!(h.conn.poll_close(), Some(CloseCause::PeerClosed));
    // Partial head then EOF: closed without an answer.
    let mut h = Harness::new(cfg(|_| {}));
    h.feed("GET / HT");
    h.events();
    h.conn.handle_eof(h.now);
    assert!(h.events().is_empty());
    assert_eq!(h.conn.poll_close(), Some(CloseCause::PeerClosed));
}

#[test]
fn write_timeout_closes_stalled_output() {
    let mut h = Harness::new(cfg(|c| c.write_timeout = Duration::from_secs(5)));
    h.feed(GET);
    h.events();
    h.conn
        .send_response(StatusCode::OK, &HeaderMap::new(), ResponseBody::Empty)
        .unwrap();
    // The timer starts when the output is first offered for writing.
    assert_eq!(h.conn.poll_timeout(), None);
    h.at(1000);
    assert_eq!(h.conn.poll_transmit(h.now).count(), 1);
    assert_eq!(h.conn.poll_timeout(), Some(h.t0 + Duration::from_secs(6)));
    h.at(6000);
    h.conn.handle_timeout(h.now);
    assert_eq!(h.conn.poll_close(), Some(CloseCause::WriteTimeout));
}

#[test]
fn a_slow_handler_s_response_gets_a_full_write_timeout() {
    // The request arrived at 0; the handler answers at 60 s. The write timer
    // starts when the answer is offered, not from the engine's last reading
    // of the clock (which would close it at once).
    let mut h = Harness::new(cfg(|c| {
        c.write_timeout = Duration::from_secs(30);
        c.idle_timeout = Duration::from_secs(5);
    }));
    h.feed(GET);
    h.events();
    h.conn
        .send_response(StatusCode::OK, &HeaderMap::new(), ResponseBody::Empty)
        .unwrap();
    h.at(60_000);
    let _ = h.conn.poll_transmit(h.now).count();
    assert_eq!(h.conn.poll_timeout(), Some(h.t0 + Duration::from_secs(90)));
    h.conn.handle_timeout(h.now);
    assert!(!h.conn.is_closed());
}

#[test]
fn upgrade_hands_over_remaining_bytes() {
    let mut h = Harness::new(cfg(|_| {}));
    h.conn.handle_input(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x80",
        h.now,
    );
    let evs = h.events();
    assert!(matches!(&evs[..], [Event::Request(head)] if head.upgrade));
    let mut hm = HeaderMap::new();
    hm.insert("connection", "Upgrade".parse().unwrap());
    hm.insert("upgrade", "websocket".parse().unwrap());
    h.conn
        .send_response(StatusCode::SWITCHING_PROTOCOLS, &hm, ResponseBody::Empty)
        .unwrap();
    let w = h.flush();
    assert!(
        w.starts_with("HTTP/1.1 101 Switching Protocols\r\n") && w.contains("connection: Upgrade"),
        "{w}"
    );
    assert!(h.conn.is_upgraded());
    assert_eq!(&h.conn.take_upgraded_bytes()[..], b"\x81\x80");
    // 101 to a request that did not ask is refused.
    let mut h = Harness::new(cfg(|_| {}));
    h.feed(GET);
    h.events();
    assert_eq!(
        h.conn
            .send_response(StatusCode::SWITCHING_PROTOCOLS, &HeaderMap::new(), ResponseBody::Empty),
        Err(SendError::NotUpgrade)
    );
}

/// Every request stream gives the same wire output whatever the split points.
#[test]
fn split_points_do_not_matter() {
    let input = format!(
        "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcPOST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n{GET}"
    );
    let whole = {
        let mut h = Harness::new(cfg(|_| {}));
        h.roundtrip(&input)
    };
    assert_eq!(whole.matches("HTTP/1.1 200").count(), 3);
    for split in 1..input.len() {
        let mut h = Harness::new(cfg(|_| {}));
        let mut w = h.roundtrip(&input[..split]);
        w += &h.roundtrip(&input[split..]);
        assert_eq!(w, whole, "split at {split}");
    }
}

#[test]
fn recycled_header_maps_are_reused_only_when_they_fit() {
    let head = |h: &mut Harness| match h.events().into_iter().next() {
        Some(Event::Request(head)) => head,
        other => panic!("expected a request, got {other:?}"),
    };
    let mut h = Harness::new(cfg(|_| {}));
    // A spare map with room for 20 fields serves a one-field head, emptied.
    let mut spare = HeaderMap::with_capacity(20);
    spare.insert(header::SERVER, "left over".parse().unwrap());
    let spare_capacity = spare.capacity();
    recycle_header_map(spare);
    h.feed("GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    let first = head(&mut h);
    assert_eq!(first.headers.capacity(), spare_capacity);
    assert_eq!(first.headers.len(), 1);
    assert!(first.headers.get(header::SERVER).is_none(), "the spare map was emptied");
    h.respond("ok");
    // A map larger than the spare limit is freed, not kept: the next head
    // gets a map of its own size.
    recycle_header_map(HeaderMap::with_capacity(1000));
    h.feed("GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
    let second = head(&mut h);
    assert!(second.headers.capacity() < 1000);
    h.respond("ok");
    // A head with more fields than the spare holds does not use it (it
    // would grow it); the spare waits for a smaller head.
    let mut small = HeaderMap::with_capacity(2);
    let small_capacity = small.capacity();
    small.insert(header::SERVER, "x".parse().unwrap());
    recycle_header_map(small);
    let many: String = (0..small_capacity + 4).map(|i| format!("X-F{i}: v\r\n")).collect();
    h.feed(&format!("GET /c HTTP/1.1\r\nHost: x\r\n{many}\r\n"));
    let third = head(&mut h);
    assert_eq!(third.headers.len(), small_capacity + 5);
    assert_ne!(third.headers.capacity(), small_capacity);
    h.respond("ok");
    h.feed("GET /d HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(head(&mut h).headers.capacity(), small_capacity);
}

/// `parse::header_value` skips `HeaderValue`'s own byte check because
/// httparse accepts a field value only when every byte is one that
/// `HeaderValue` allows. Checked here for every byte value, at every
/// position of a value long enough for httparse's SIMD paths.
#[test]
fn httparse_values_satisfy_header_value() {
    for b in 0..=255u8 {
        for at in [0usize, 1, 15, 16, 31, 32, 47, 63] {
            let mut value = vec![b'a'; 64];
            value[at] = b;
            let mut req = b"GET / HTTP/1.1\r\nHost: x\r\nX-B: ".to_vec();
            req.extend_from_slice(&value);
            req.extend_from_slice(b"\r\n\r\n");
            let mut buf = bytes::BytesMut::from(&req[..]);
            let parsed = parse::parse_request(&mut buf, &Config::default());
            let allowed = parse::is_field_value_byte(b);
            match parsed {
                Ok(Some(head)) => {
                    // What reaches the map is all allowed bytes (CR and LF
                    // may end a line early: the value then stops there).
                    let got = head.headers.get("x-b").expect("the field").as_bytes();
                    assert!(
                        got.iter().all(|&g| parse::is_field_value_byte(g)),
                        "byte {b:#04x} at {at}: {got:?}"
                    );
                    assert!(HeaderValue::from_bytes(got).is_ok(), "byte {b:#04x} at {at}");
                    // Whitespace at either end is OWS, trimmed.
                    let trimmed = matches!(b, b' ' | b'\t') && (at == 0 || at == value.len() - 1);
                    assert!(!allowed || trimmed || got.contains(&b), "byte {b:#04x} at {at} lost");
                }
                Ok(None) => panic!("byte {b:#04x} at {at}: incomplete"),
                Err(_) => assert!(!allowed, "byte {b:#04x} at {at} refused"),
            }
        }
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    /// Request shapes for pipelines; the ones listed in `PIPELINE_ENDS`
    /// end the connection after their response.
    const PIPELINE_PIECES: [&str; 7] = [
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        "POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "GET / HTTP/1.0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    ];
    const PIPELINE_ENDS: [usize; 3] = [3, 4, 5];

    /// What every connection satisfies once its input has ended and every
    /// event was answered: it is closed, for a cause that needs no clock (no
    /// time passed); it has nothing left to say or send; nothing was written
    /// after a response announcing the close; and a protocol error was
    /// answered with such a response.
    fn assert_known_end(h: &mut Harness, wire: &str) {
        assert!(h.conn.poll_event().is_none(), "an event after the end");
        let cause = h.conn.poll_close().expect("closed once the input ended");
        assert!(
            matches!(
                cause,
                CloseCause::PeerClosed
                    | CloseCause::ClientClose
                    | CloseCause::ServerClose
                    | CloseCause::ProtocolError
                    | CloseCause::MaxRequests
                    | CloseCause::UnreadBody
            ),
            "{cause:?} needs time to pass, and none did"
        );
        assert!(h.conn.take_output(h.now).is_empty(), "output after the close");
        if let Some(at) = wire.find("connection: close") {
            assert!(
                !wire[at..].contains("HTTP/1.1 "),
                "a response after the close: {wire:?}"
            );
        }
        if cause == CloseCause::ProtocolError {
            assert!(
                wire.contains("connection: close"),
                "a protocol error unanswered: {wire:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        /// Arbitrary bytes at arbitrary split points never panic, and every
        /// connection ends in a known state (see `assert_known_end`).
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600), splits in proptest::collection::vec(0usize..600, 0..6)) {
            let mut h = Harness::new(cfg(|c| { c.max_body = 64; c.max_head = 256; c.max_target = 64; }));
            let mut points: Vec<usize> = splits.into_iter().map(|s| s.min(data.len())).collect();
            points.push(data.len());
            points.sort_unstable();
            let mut start = 0;
            let mut wire = String::new();
            for p in points {
                h.conn.handle_input(&data[start..p], h.now);
                start = p;
                wire += &h.roundtrip("");
            }
            h.conn.handle_eof(h.now);
            wire += &h.roundtrip("");
            assert_known_end(&mut h, &wire);
        }

        /// Pipelines of real request shapes (bodies by length and chunked,
        /// HTTP/1.0, `Connection: close`, a malformed one) cut off at any
        /// byte and split at any points: every one ends in a known state,
        /// and every complete request before the cut was answered.
        #[test]
        fn cut_pipelines_end_in_a_known_state(
            picks in proptest::collection::vec(0usize..PIPELINE_PIECES.len(), 1..6),
            cut in any::<proptest::sample::Index>(),
            splits in proptest::collection::vec(any::<proptest::sample::Index>(), 0..4),
        ) {
            let full: String = picks.iter().map(|&i| PIPELINE_PIECES[i]).collect();
            let data = &full.as_bytes()[..cut.index(full.len() + 1)];
            let mut points: Vec<usize> = splits.iter().map(|s| s.index(data.len() + 1)).collect();
            points.push(data.len());
            points.sort_unstable();
            let mut h = Harness::new(cfg(|c| c.max_body = 64));
            let (mut wire, mut start) = (String::new(), 0);
            for p in points {
                h.conn.handle_input(&data[start..p], h.now);
                start = p;
                wire += &h.roundtrip("");
            }
            h.conn.handle_eof(h.now);
            wire += &h.roundtrip("");
            assert_known_end(&mut h, &wire);
            // Each piece that arrived whole was answered, up to the first one
            // that ends the connection; a piece cut inside its body was
            // answered 400 (its head had arrived).
            let mut answered = 0;
            let mut at = 0;
            for &i in &picks {
                let piece = PIPELINE_PIECES[i];
                if at + piece.len() > data.len() {
                    let head = piece.find("\r\n\r\n").unwrap() + 4;
                    if at + head <= data.len() {
                        answered += 1;
                        let last = &wire[wire.rfind("HTTP/1.1 ").unwrap()..];
                        assert!(last.starts_with("HTTP/1.1 400") && last.contains("connection: close"), "{wire:?}");
                    }
                    break;
                }
                at += piece.len();
                answered += 1;
                if PIPELINE_ENDS.contains(&i) {
                    break;
                }
            }
            assert_eq!(wire.matches("HTTP/1.1 ").count(), answered, "{picks:?} cut at {} of {}: {wire:?}", data.len(), full.len());
        }

        /// Valid-looking requests with random header noise never panic
        /// either, and end in a known state.
        #[test]
        fn structured_noise_never_panics(method in "[A-Z]{1,7}", path in "/[ -~]{0,20}", hdrs in proptest::collection::vec(("[!-9;-~]{1,10}", "[ -~]{0,20}"), 0..8), body in "[ -~\r\n]{0,40}") {
            let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n");
            for (n, v) in hdrs { raw += &format!("{n}: {v}\r\n"); }
            raw += "\r\n";
            raw += &body;
            let mut h = Harness::new(cfg(|_| {}));
            let mut wire = h.roundtrip(&raw);
            h.conn.handle_eof(h.now);
            wire += &h.roundtrip("");
            assert_known_end(&mut h, &wire);
        }
    }
}

#[test]
fn declared_content_length_frames_unknown_bodies() {
    let mut h = HeaderMap::new();
    assert_eq!(
        ResponseBody::declared_or(&h, ResponseBody::Streaming),
        ResponseBody::Streaming
    );
    h.insert("content-length", "12".parse().unwrap());
    assert_eq!(
        ResponseBody::declared_or(&h, ResponseBody::Empty),
        ResponseBody::Length(12)
    );
    for bad in ["+12", " 12x", "", "99999999999999999999"] {
        h.insert("content-length", bad.parse().unwrap());
        assert_eq!(
            ResponseBody::declared_or(&h, ResponseBody::Streaming),
            ResponseBody::Streaming,
            "{bad:?}"
        );
    }
    h.insert("content-length", "3".parse().unwrap());
    h.append("content-length", "4".parse().unwrap());
    assert_eq!(ResponseBody::declared_or(&h, ResponseBody::Empty), ResponseBody::Empty);
}

fn wire_bytes(overhead: usize, payload: usize) -> crate::wire::WireBytes {
    crate::wire::WireBytes {
        overhead: overhead as u64,
        payload: payload as u64,
    }
}

/// A keep-alive exchange with a head of known length, a chunked request
/// body (framing apart from data) and a chunked response: every byte read
/// and written is counted once, heads and framing as overhead, bodies as
/// payload, however the input is split.
#[test]
fn traffic_splits_heads_and_chunk_framing_from_bodies() {
    let head = "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let body = "5\r\nhello\r\nb;ext=1\r\n, wire byte\r\n0\r\nX-Sum: 9\r\n\r\n";
    // Framing: "5\r\n", "\r\n", "b;ext=1\r\n", "\r\n", "0\r\n", the trailer, "\r\n".
    let framing = 3 + 2 + 9 + 2 + 3 + "X-Sum: 9\r\n".len() + 2;
    assert_eq!(framing + 5 + 11, body.len());
    let input = format!("{head}{body}{GET}");
    for split in 0..=input.len() {
        let mut h = Harness::new(cfg(|_| {}));
        let mut wire = h.roundtrip(&input[..split]);
        wire += &h.roundtrip(&input[split..]);
        assert_eq!(wire.matches("HTTP/1.1 200 OK").count(), 2, "split {split}");
        let t = h.conn.traffic();
        assert_eq!(
            t.received,
            wire_bytes(head.len() + framing + GET.len(), 16),
            "split {split}"
        );
        // Two responses with "ok" bodies.
        assert_eq!(t.sent, wire_bytes(wire.len() - 4, 4), "split {split}");
        assert_eq!(t.received.total() as usize, input.len());
    }

    // A streamed (chunked) response: size lines, CRLFs and the last chunk
    // are overhead.
    let mut h = Harness::new(cfg(|_| {}));
    h.feed(GET);
    h.events();
    h.conn
        .send_response(StatusCode::OK, &HeaderMap::new(), ResponseBody::Streaming)
        .unwrap();
    let head_len = h.flush().len();
    h.conn.send_body(Bytes::from(vec![b'x'; 5000])).unwrap();
    h.conn.send_body(Bytes::from_static(b"tail")).unwrap();
    h.conn.finish_response().unwrap();
    let rest = h.flush();
    assert!(rest.starts_with("1388\r\n") && rest.ends_with("4\r\ntail\r\n0\r\n\r\n"));
    let framing = "1388\r\n\r\n".len() + "4\r\n\r\n".len() + "0\r\n\r\n".len();
    assert_eq!(h.conn.traffic().sent, wire_bytes(head_len + framing, 5004));
    assert_eq!(h.conn.traffic().received, wire_bytes(GET.len(), 0));
}

/// A drained body is payload; bytes discarded after a refused head and
/// those read while lingering are overhead; bytes handed to an upgraded
/// protocol are not this connection's; `100 Continue` is overhead.
#[test]
fn traffic_of_drained_discarded_and_upgraded_bytes() {
    let mut h = Harness::new(cfg(|_| {}));
    let post = "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n";
    h.feed(post);
    h.events();
    let cont = h.flush();
    let resp = h.respond("early");
    h.feed("0123456789");
    h.feed(GET);
    assert_eq!(requests(&h.events()), 1);
    assert_eq!(h.conn.traffic().received, wire_bytes(post.len() + GET.len(), 10));
    assert_eq!(h.conn.traffic().sent, wire_bytes(cont.len() + resp.len() - 5, 5));

    // A refused head: everything read is overhead, and so is what is read
    // while lingering.
    let mut h = Harness::new(cfg(|_| {}));
    let bad = "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx";
    let wire = h.roundtrip(bad);
    assert!(wire.starts_with("HTTP/1.1 400"), "{wire}");
    h.feed("more");
    let t = h.conn.traffic();
    assert_eq!(t.received, wire_bytes(bad.len() + 4, 0));
    assert_eq!(t.sent.total() as usize, wire.len());

    // An upgrade: the frame bytes after the request are the new protocol's.
    let mut h = Harness::new(cfg(|_| {}));
    let req = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    h.feed(&format!("{req}\u{1}\u{0}"));
    h.events();
    let mut hm = HeaderMap::new();
    hm.insert("upgrade", "websocket".parse().unwrap());
    h.conn
        .send_response(StatusCode::SWITCHING_PROTOCOLS, &hm, ResponseBody::Empty)
        .unwrap();
    let w = h.flush();
    assert_eq!(h.conn.take_upgraded_bytes().len(), 2);
    assert_eq!(h.conn.traffic().received, wire_bytes(req.len(), 0));
    assert_eq!(h.conn.traffic().sent, wire_bytes(w.len(), 0));
}

#[test]
fn a_direct_body_follows_its_head_and_keeps_the_connection() {
    let mut h = Harness::new(cfg(|c| {
        c.write_timeout = Duration::from_secs(5);
        c.idle_timeout = Duration::from_secs(60);
    }));
    h.feed("GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(requests(&h.events()), 1);
    h.conn
        .send_response(StatusCode::OK, &HeaderMap::new(), ResponseBody::Length(10))
        .unwrap();
    // Not before the head is written: the body would overtake it.
    assert_eq!(h.conn.begin_direct_body(h.now), Err(SendError::NotDirect));
    let head = h.flush();
    assert!(head.contains("content-length: 10\r\n"), "{head}");
    let now = h.at(10);
    assert_eq!(h.conn.begin_direct_body(now), Ok(10));
    assert!(h.conn.poll_timeout().is_some_and(|t| t <= now + Duration::from_secs(5)));
    {
        let t = h.at(20);
        h.conn.handle_direct_written(4, t)
    }
    .unwrap();
    assert_eq!(h.conn.begin_direct_body(h.now), Ok(6));
    assert_eq!(h.conn.handle_direct_written(7, h.now), Err(SendError::BodyTooLong));
    {
        let t = h.at(30);
        h.conn.handle_direct_written(6, t)
    }
    .unwrap();
    h.conn.finish_response().unwrap();
    assert!(h.conn.idle_since().is_some(), "idle again, keep-alive");
    assert_eq!(h.conn.traffic().sent.payload, 10);
    // The idle timeout is the next deadline, not the write timer.
    assert!(h.conn.poll_timeout().unwrap() > h.now + Duration::from_secs(5));
    let again = h.roundtrip("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
}

#[test]
fn a_stalled_direct_body_times_out_and_a_head_request_sends_none() {
    let mut h = Harness::new(cfg(|c| c.write_timeout = Duration::from_secs(5)));
    h.feed("HEAD /big HTTP/1.1\r\nHost: x\r\n\r\n");
    h.events();
    h.conn
        .send_response(StatusCode::OK, &HeaderMap::new(), ResponseBody::Length(10))
        .unwrap();
    h.flush();
    assert_eq!(h.conn.begin_direct_body(h.now), Ok(0), "HEAD: nothing to send");
    h.conn.finish_response().unwrap();
    h.feed("GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    h.events();
    h.conn
        .send_response(StatusCode::OK, &HeaderMap::new(), ResponseBody::Length(10))
        .unwrap();
    h.flush();
    {
        let t = h.at(100);
        h.conn.begin_direct_body(t)
    }
    .unwrap();
    {
        let t = h.at(200);
        h.conn.handle_direct_written(3, t)
    }
    .unwrap();
    // No progress for the write timeout: closed.
    let t = h.at(5_201);
    h.conn.handle_timeout(t);
    assert_eq!(h.conn.poll_close(), Some(CloseCause::WriteTimeout));
    // A chunked body is never direct.
    let mut h = Harness::new(cfg(|_| {}));
    h.feed("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    h.events();
    h.conn
        .send_response(StatusCode::OK, &HeaderMap::new(), ResponseBody::Streaming)
        .unwrap();
    h.flush();
    assert_eq!(h.conn.begin_direct_body(h.now), Err(SendError::NotDirect));
}
