//! The keep-alive server over real TCP sockets: reuse, limits, timeouts,
//! pipelining, bodies, bad input, graceful shutdown and lingering close.
//!
//! Each test starts its own `Server` on `127.0.0.1:0` (see `common`) and
//! talks raw HTTP/1.1 to it. Timing bounds are deliberately generous.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tether::proto::h1;

const MS: Duration = Duration::from_millis(1);

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

// ----- 1. reuse -----

#[tokio::test]
async fn ten_requests_reuse_one_connection() {
    let server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    for i in 0..10 {
        c.send(&get("/healthz")).await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.body, b"ok", "request {i}");
        r.assert_keeps_alive(5, 100);
    }
    // Still open afterwards.
    c.expect_silence(100 * MS).await;
}

// ----- 2. max requests -----

#[tokio::test]
async fn third_response_closes_with_max_requests_three() {
    let server = TestServer::start(h1::Config {
        max_requests: 3,
        ..config()
    })
    .await;
    let mut c = server.connect().await;
    for i in 1..=2 {
        c.send(&get("/healthz")).await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "request {i}");
        r.assert_keeps_alive(5, 3);
    }
    // The 3rd request with a 4th pipelined behind it.
    let mut both = get("/healthz");
    both.extend_from_slice(&post_echo(b"fourth"));
    c.send(&both).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    r.assert_closes();
    // No response to the 4th: the next thing is EOF.
    c.expect_eof(IO_TIMEOUT).await;
}

#[tokio::test]
async fn remaining_mode_counts_down_max() {
    let server = TestServer::start(h1::Config {
        max_requests: 3,
        keep_alive_header: h1::KeepAliveHeader::Remaining,
        ..config()
    })
    .await;
    let mut c = server.connect().await;
    for left in [2, 1] {
        c.send(&get("/healthz")).await;
        c.response().await.assert_keeps_alive(5, left);
    }
    c.send(&get("/healthz")).await;
    c.response().await.assert_closes();
    c.expect_eof(IO_TIMEOUT).await;
}

// ----- 3. idle timeout -----

#[tokio::test]
async fn idle_connection_closed_after_idle_timeout() {
    let server = TestServer::start(h1::Config {
        idle_timeout: 500 * MS,
        ..config()
    })
    .await;
    let mut c = server.connect().await;
    c.send(&get("/healthz")).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert!(r.header("connection").is_none(), "{}", r.head);
    assert!(
        r.header("keep-alive").is_some_and(|v| v.starts_with("timeout=")),
        "{}",
        r.head
    );
    let took = c.expect_eof(secs(5.0)).await;
    assert_between("idle close", took, 300 * MS, secs(3.0));
}

#[tokio::test]
async fn every_response_carries_one_current_date() {
    let server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    for path in ["/healthz", "/missing"] {
        let r = c.send_and_read(&get(path)).await;
        let dates = r
            .head
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("date:"))
            .count();
        assert_eq!(dates, 1, "{}", r.head);
        let date = r.header("date").expect("a Date header");
        let when = httpdate::parse_http_date(date).expect("an IMF-fixdate");
        let skew = std::time::SystemTime::now()
            .duration_since(when)
            .unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_secs(5), "Date {date} is {skew:?} off");
    }
}

#[tokio::test]
async fn idle_timer_restarts_with_every_request() {
    let server = TestServer::start(h1::Config {
        idle_timeout: 500 * MS,
        ..config()
    })
    .await;
    let mut c = server.connect().await;
    for i in 0..5 {
        c.send(&get("/healthz")).await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "request {i}");
        assert!(r.header("connection").is_none(), "request {i}: {}", r.head);
        // 300 ms of silence: less than T, so never closed in between
        // (5 x 300 ms is three times T in total).
        c.expect_silence(300 * MS).await;
    }
    c.send(&get("/healthz")).await;
    assert_eq!(c.response().await.status, 200);
}

// ----- 4. HTTP/1.0 -----

#[tokio::test]
async fn http10_without_keep_alive_closes() {
    let server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    c.send(b"GET /healthz HTTP/1.0\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ok");
    r.assert_closes();
    c.expect_eof(IO_TIMEOUT).await;
}

#[tokio::test]
async fn http10_with_keep_alive_persists() {
    let server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    for i in 0..2 {
        c.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.body, b"ok");
        assert!(r.has_line("connection: keep-alive"), "request {i}:\n{}", r.head);
        assert!(r.has_line("keep-alive: timeout=5, max=100"), "request {i}:\n{}", r.head);
    }
    c.expect_silence(100 * MS).await;
}

#[tokio::test]
async fn connection_header_is_a_case_insensitive_token_list() {
    let server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    c.send(b"GET /healthz HTTP/1.0\r\nConnection: Upgrade, Keep-Alive\r\n\r\n")
        .await;
    let r = c.response().await;
    assert!(r.has_line("connection: keep-alive"), "{}", r.head);
    c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: x-foo, CLOSE\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    r.assert_closes();
    c.expect_eof(IO_TIMEOUT).await;
}

// ----- 5. pipelining -----

#[tokio::test]
async fn five_pipelined_requests_answered_in_order() {
    let server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    let mut all = Vec::new();
    for i in 1..=5 {
        all.extend_from_slice(&post_echo(format!("body number {i}").repeat(i).as_bytes()));
    }
    c.send(&all).await;
    for i in 1..=5 {
        let r = c.response().await;
        assert_eq!(r.status, 200, "response {i}");
        assert_eq!(r.body_str(), format!("body number {i}").repeat(i), "response {i}");
        r.assert_keeps_alive(5, 100);
    }
    c.expect_silence(100 * MS).await;
}

#[tokio::test]
async fn pipelined_connection_close_stops_processing() {
    let server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    let mut all = Vec::new();
    all.extend_from_slice(&post_echo(b"one"));
    all.extend_from_slice(&post_echo(b"two"));
    all.extend_from_slice(b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 5\r\n\r\nthree");
    all.extend_from_slice(&post_echo(b"four"));
    all.extend_from_slice(&post_echo(b"five"));
    c.send(&all).await;
    for (i, body) in ["one", "two"].iter().enumerate() {
        let r = c.response().await;
        assert_eq!(r.status, 200, "response {i}");
        assert_eq!(r.body_str(), *body);
        r.assert_keeps_alive(5, 100);
    }
    let r = c.response().await;
    assert_eq!(r.body_str(), "three");
    r.assert_closes();
    c.expect_eof(IO_TIMEOUT).await;
}

#[tokio::test]
async fn handler_connection_close_ends_connection() {
    let server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    let mut all = get("/close");
    all.extend_from_slice(&get("/healthz"));
    c.send(&all).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"bye");
    r.assert_closes();
    c.expect_eof(IO_TIMEOUT).await;
}

// ----- 6. bodies -----

#[tokio::test]
async fn content_length_body_echoed() {
    let server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    c.send(&post_echo(b"hello, tether")).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello, tether");
    assert_eq!(r.header("content-length"), Some("13"));
}

#[tokio::test]
async fn chunked_body_with_extensions_and_trailer_echoed() {
    let server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    let mut req = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(b"5;ext=1\r\nhello\r\n7;name=\"quoted value\"\r\n, world\r\n0\r\nX-Trailer: yes\r\n\r\n");
    // A second request right behind: the trailer must have been consumed.
    req.extend_from_slice(&get("/healthz"));
    c.send(&req).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "hello, world");
    r.assert_keeps_alive(5, 100);
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ok");
}

#[tokio::test]
async fn four_mib_body_echoed_intact() {
    let server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    let body: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    let r = c.send_and_read(&post_echo(&body)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("4194304"));
    assert!(r.body == body, "4 MiB body came back altered");
    // And the connection is still usable.
    c.send(&get("/healthz")).await;
    assert_eq!(c.response().await.status, 200);
}

#[tokio::test]
async fn expect_100_continue_before_final_response() {
    let server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await;
    // The interim response comes before any body byte is sent.
    let interim = c.response().await;
    assert_eq!(interim.status, 100);
    assert_eq!(interim.head, "HTTP/1.1 100 Continue\r\n\r\n");
    c.send(b"hello").await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello");
    r.assert_keeps_alive(5, 100);
}

#[tokio::test]
async fn unread_small_body_is_drained() {
    let server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    // The handler answers before the body arrives and never reads it; the
    // body then arrives together with the next request, which must be
    // parsed correctly. The body looks like a request (without Host, which
    // would be a 400) to catch a body parsed as a request.
    let fake = b"GET /nope HTTP/1.1\r\n\r\n";
    let mut later = Vec::new();
    // Content-Length.
    c.send(
        format!(
            "POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            fake.len()
        )
        .as_bytes(),
    )
    .await;
    later.push(fake.to_vec());
    // Chunked, with a trailer.
    let mut chunked = format!("{:x}\r\n", fake.len()).into_bytes();
    chunked.extend_from_slice(fake);
    chunked.extend_from_slice(b"\r\n0\r\nX-T: 1\r\n\r\n");
    later.push(chunked);
    // 100 KiB, under the 256 KiB drain limit.
    let mut big = Vec::new();
    while big.len() < 100 * 1024 {
        big.extend_from_slice(fake);
    }
    later.push(big);
    let heads = [
        None,
        Some("POST /ignore HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()),
        Some(format!(
            "POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            later[2].len()
        )),
    ];
    for (i, (head, body)) in heads.into_iter().zip(later).enumerate() {
        if let Some(head) = head {
            c.send(head.as_bytes()).await;
        }
        let r = c.response().await;
        assert_eq!(r.status, 200, "case {i}");
        assert_eq!(r.body, b"ignored", "case {i}");
        r.assert_keeps_alive(5, 100);
        // Now the body, and the next request behind it.
        let mut rest = body;
        rest.extend_from_slice(&post_echo(format!("next {i}").as_bytes()));
        let r = c.send_and_read(&rest).await;
        assert_eq!(
            r.status,
            200,
            "case {i}: request after the unread body:\n{}{}",
            r.head,
            r.body_str()
        );
        assert_eq!(r.body_str(), format!("next {i}"), "case {i}");
        r.assert_keeps_alive(5, 100);
    }
    c.expect_silence(100 * MS).await;
}

#[tokio::test]
async fn unread_body_in_same_write_does_not_become_a_request() {
    let server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    let mut all = b"POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 22\r\n\r\nGET /nope HTTP/1.1\r\n\r\n".to_vec();
    all.extend_from_slice(&get("/healthz"));
    c.send(&all).await;
    let r = c.response().await;
    assert_eq!(r.body, b"ignored");
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ok");
    c.expect_silence(100 * MS).await;
}

#[tokio::test]
async fn unread_large_body_closes_connection() {
    let server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    // 1 MiB declared, 64 KiB sent: more than max_drain (256 KiB) stays unread.
    let mut req = format!(
        "POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        1024 * 1024
    )
    .into_bytes();
    req.extend_from_slice(&vec![b'y'; 64 * 1024]);
    c.send(&req).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ignored");
    r.assert_closes();
    c.expect_eof(IO_TIMEOUT).await;
}

// ----- 7. streaming and HEAD -----

#[tokio::test]
async fn streaming_response_is_chunked() {
    let server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    for _ in 0..2 {
        c.send(&get("/stream")).await;
        let r = c.response().await;
        assert_eq!(r.status, 200);
        assert!(r.has_line("transfer-encoding: chunked"), "{}", r.head);
        assert!(r.header("content-length").is_none(), "{}", r.head);
        assert_eq!(r.body_str(), STREAM_PIECES.concat());
        assert!(r.chunks.as_ref().is_some_and(|c| !c.is_empty()));
        r.assert_keeps_alive(5, 100);
    }
}

#[tokio::test]
async fn streaming_response_to_http10_is_close_delimited() {
    let server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    c.send(b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert!(r.header("transfer-encoding").is_none(), "{}", r.head);
    assert!(r.header("content-length").is_none(), "{}", r.head);
    r.assert_closes();
    // Read to EOF by the parser.
    assert_eq!(r.body_str(), STREAM_PIECES.concat());
}

#[tokio::test]
async fn head_gets_headers_only() {
    let server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    let mut both = b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
    both.extend_from_slice(&get("/healthz"));
    c.send(&both).await;
    let h = c.head_response().await;
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), Some("2"));
    h.assert_keeps_alive(5, 100);
    // If HEAD had a body, "ok" would be parsed as the start of the next status line.
    let g = c.response().await;
    assert_eq!(g.status, 200);
    assert_eq!(g.header("content-length"), Some("2"));
    assert_eq!(g.body, b"ok");
    c.expect_silence(100 * MS).await;
}

// ----- 8. bad input -----

/// On a fresh connection to a server with `max_body` 1024, `raw` gets
/// `status` with `connection: close`, then EOF with nothing else; the server
/// still answers on a new connection.
async fn assert_rejected(raw: &[u8], status: u16) {
    let server = TestServer::start(h1::Config {
        max_body: 1024,
        ..config()
    })
    .await;
    let mut c = server.connect().await;
    c.send(raw).await;
    let r = c.response().await;
    assert_eq!(r.status, status, "response:\n{}{}", r.head, r.body_str());
    r.assert_closes();
    c.expect_eof(IO_TIMEOUT).await;
    server.assert_healthy().await;
}

#[tokio::test]
async fn bad_malformed_request_line_400() {
    assert_rejected(b"GARBAGE\r\n\r\n", 400).await;
    assert_rejected(b"GET /healthz HTTP/1.1 extra\r\nHost: t\r\n\r\n", 400).await;
}

#[tokio::test]
async fn bad_content_length_and_transfer_encoding_400_no_smuggling() {
    let mut raw =
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec();
    raw.extend_from_slice(&get("/healthz"));
    assert_rejected(&raw, 400).await;
}

#[tokio::test]
async fn bad_differing_content_lengths_400() {
    assert_rejected(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    )
    .await;
    assert_rejected(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 4\r\n\r\nabcd",
        400,
    )
    .await;
}

#[tokio::test]
async fn bad_obs_fold_400() {
    assert_rejected(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n", 400).await;
}

#[tokio::test]
async fn bad_transfer_encoding_gzip_400() {
    assert_rejected(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        400,
    )
    .await;
}

#[tokio::test]
async fn bad_transfer_encoding_gzip_chunked_501() {
    assert_rejected(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        501,
    )
    .await;
}

#[tokio::test]
async fn bad_chunk_size_400() {
    assert_rejected(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn bad_too_many_header_fields_431() {
    let mut raw = b"GET /healthz HTTP/1.1\r\nHost: t\r\n".to_vec();
    for i in 0..100 {
        raw.extend_from_slice(format!("X-Field-{i}: v\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    assert_rejected(&raw, 431).await;
}

#[tokio::test]
async fn hundred_header_fields_accepted() {
    let server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    let mut raw = b"GET /healthz HTTP/1.1\r\nHost: t\r\n".to_vec();
    for i in 0..99 {
        raw.extend_from_slice(format!("X-Field-{i}: v\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    c.send(&raw).await;
    assert_eq!(c.response().await.status, 200);
}

#[tokio::test]
async fn bad_huge_header_431() {
    let mut raw = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
    raw.extend_from_slice(&vec![b'a'; 70 * 1024]);
    raw.extend_from_slice(b"\r\n\r\n");
    assert_rejected(&raw, 431).await;
}

#[tokio::test]
async fn bad_long_target_414() {
    let raw = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(9 * 1024));
    assert_rejected(raw.as_bytes(), 414).await;
}

#[tokio::test]
async fn bad_body_over_max_body_by_content_length_413() {
    let mut raw = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n".to_vec();
    raw.extend_from_slice(&[b'b'; 2000]);
    assert_rejected(&raw, 413).await;
}

#[tokio::test]
async fn bad_body_over_max_body_chunked_413() {
    // One chunk larger than the limit.
    let mut raw = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n".to_vec();
    raw.extend_from_slice(&[b'c'; 2000]);
    raw.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_rejected(&raw, 413).await;
    // Small chunks that add up to more than the limit.
    let mut raw = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..5 {
        raw.extend_from_slice(b"190\r\n");
        raw.extend_from_slice(&[b'd'; 400]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    assert_rejected(&raw, 413).await;
}

#[tokio::test]
async fn body_at_max_body_accepted() {
    let server = TestServer::start(h1::Config {
        max_body: 1024,
        ..config()
    })
    .await;
    let mut c = server.connect().await;
    c.send(&post_echo(&[b'e'; 1024])).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 1024);
}

#[tokio::test]
async fn bad_http11_without_host_400() {
    assert_rejected(b"GET /healthz HTTP/1.1\r\n\r\n", 400).await;
}

#[tokio::test]
async fn bad_http2_request_line_505() {
    assert_rejected(b"GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n", 505).await;
}

#[tokio::test]
async fn bad_inputs_on_one_server_then_still_serving() {
    let server = TestServer::start(h1::Config {
        max_body: 1024,
        ..config()
    })
    .await;
    let cases: [(&[u8], u16); 4] = [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        (
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
        ),
    ];
    for (raw, status) in cases {
        let mut c = server.connect().await;
        c.send(raw).await;
        let r = c.response().await;
        assert_eq!(r.status, status, "for {:?}", String::from_utf8_lossy(raw));
        r.assert_closes();
        c.expect_eof(IO_TIMEOUT).await;
    }
    server.assert_healthy().await;
}

// ----- 9. header timeout -----

#[tokio::test]
async fn partial_head_gets_408_after_header_timeout() {
    let server = TestServer::start(h1::Config {
        header_timeout: secs(1.0),
        idle_timeout: secs(30.0),
        ..config()
    })
    .await;
    let mut c = server.connect().await;
    let t0 = Instant::now();
    c.send(b"GET / HTTP/1.1\r\n").await;
    let r = c.response().await;
    assert_between("408", t0.elapsed(), 700 * MS, secs(4.0));
    assert_eq!(r.status, 408);
    r.assert_closes();
    c.expect_eof(IO_TIMEOUT).await;
}

#[tokio::test]
async fn slowloris_between_requests_gets_408_not_idle_timeout() {
    let server = TestServer::start(h1::Config {
        header_timeout: secs(1.0),
        idle_timeout: secs(30.0),
        ..config()
    })
    .await;
    let mut c = server.connect().await;
    c.send(&get("/healthz")).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    r.assert_keeps_alive(30, 100);
    let t0 = Instant::now();
    c.send(b"G").await;
    let r = c.response().await;
    assert_between("408 between requests", t0.elapsed(), 700 * MS, secs(4.0));
    assert_eq!(r.status, 408);
    r.assert_closes();
    c.expect_eof(IO_TIMEOUT).await;
}

// ----- 10. graceful shutdown -----

#[tokio::test]
async fn shutdown_drains_an_idle_connection_then_closes_it() {
    let mut cfg = config();
    cfg.shutdown_drain = 500 * MS;
    let mut server = TestServer::start(cfg.clone()).await;
    let mut c = server.connect().await;
    c.send(&get("/healthz")).await;
    assert_eq!(c.response().await.status, 200);
    server.trigger_shutdown();
    // Idle timeout is 5 s: a close well before it is the drain's end.
    let took = c.expect_eof(secs(4.0)).await;
    assert!(
        took >= 400 * MS && took < secs(2.0),
        "idle connection closed after {took:?}"
    );
    server.wait_serve_returned(secs(3.0)).await;

    // A request sent during the drain is answered, with `Connection: close`.
    let mut server = TestServer::start(cfg).await;
    let mut c = server.connect().await;
    assert_eq!(c.send_and_read(&get("/healthz")).await.status, 200);
    server.trigger_shutdown();
    tokio::time::sleep(100 * MS).await;
    let r = c.send_and_read(&get("/healthz")).await;
    assert_eq!(r.status, 200);
    r.assert_closes();
    c.expect_eof(IO_TIMEOUT).await;
    server.wait_serve_returned(secs(3.0)).await;

    // No drain: closed at once.
    let mut cfg = config();
    cfg.shutdown_drain = Duration::ZERO;
    let mut server = TestServer::start(cfg).await;
    let mut c = server.connect().await;
    assert_eq!(c.send_and_read(&get("/healthz")).await.status, 200);
    server.trigger_shutdown();
    let took = c.expect_eof(secs(4.0)).await;
    assert!(took < 300 * MS, "closed after {took:?}");
    server.wait_serve_returned(secs(3.0)).await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_request_with_close() {
    let mut server = TestServer::start(config()).await;
    let mut idle = server.connect().await;
    idle.send(&get("/healthz")).await;
    assert_eq!(idle.response().await.status, 200);
    let mut c = server.connect().await;
    c.send(&get("/slow")).await;
    server.wait_started("slow").await;
    server.trigger_shutdown();
    idle.expect_eof(secs(2.0)).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"slow");
    r.assert_closes();
    c.expect_eof(IO_TIMEOUT).await;
    server.wait_serve_returned(secs(3.0)).await;
}

#[tokio::test]
async fn shutdown_does_not_process_request_pipelined_behind_in_flight_one() {
    let mut server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    let mut both = get("/slow");
    both.extend_from_slice(&get("/healthz"));
    c.send(&both).await;
    server.wait_started("slow").await;
    server.trigger_shutdown();
    let r = c.response().await;
    assert_eq!(r.body, b"slow");
    r.assert_closes();
    c.expect_eof(IO_TIMEOUT).await;
    server.wait_serve_returned(secs(3.0)).await;
}

#[tokio::test]
async fn shutdown_force_closes_after_shutdown_timeout() {
    let mut server = TestServer::start_with(config(), 500 * MS).await;
    let mut c = server.connect().await;
    c.send(&get("/hang")).await;
    server.wait_started("hang").await;
    server.trigger_shutdown();
    let took = server.wait_serve_returned(secs(3.0)).await;
    assert!(
        took >= 300 * MS,
        "serve returned after {took:?}, before the 500 ms shutdown timeout"
    );
    // The aborted connection is gone without a response.
    let (_how, _) = c.expect_closed(secs(2.0)).await;
}

// ----- 11. lingering close -----

#[tokio::test]
async fn response_survives_unread_garbage_after_connection_close() {
    let server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    let mut raw = b"GET /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec();
    raw.extend_from_slice(&vec![b'z'; 100 * 1024]);
    c.send(&raw).await;
    // Give a non-lingering server time to close with unread input (RST).
    tokio::time::sleep(200 * MS).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), STREAM_PIECES.concat());
    r.assert_closes();
    c.expect_eof(IO_TIMEOUT).await;
}

#[tokio::test]
async fn no_reset_when_close_leaves_unread_input() {
    let mut server = TestServer::start(config()).await;
    let mut c = server.connect().await;
    // The handler holds the response while 1 MiB of garbage piles up behind
    // the request, more than the server reads ahead: at the close, input is
    // still unread in the kernel. A plain close() would answer with RST
    // (the client sees a reset, and its write fails); a lingering close
    // sends FIN after the response and discards the garbage.
    let mut raw = b"GET /gate HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec();
    raw.extend_from_slice(&vec![b'z'; 1024 * 1024]);
    let r = c
        .send_and_read_after(&raw, async {
            server.wait_started("gate").await;
            tokio::time::sleep(100 * MS).await;
            server.open_gate();
        })
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"gated");
    r.assert_closes();
    c.expect_eof(IO_TIMEOUT).await;
}

// ----- 12. max lifetime -----

#[tokio::test]
async fn max_lifetime_closes_first_response_after_it() {
    // The exact rounding of the advertised timeout is the engine's rule,
    // proven on virtual time in `h1::tests`; this checks the wiring, with
    // seconds of margin for a loaded machine.
    let mut server = TestServer::start(h1::Config {
        max_lifetime: Some(secs(3.0)),
        idle_timeout: secs(30.0),
        ..config()
    })
    .await;
    let t0 = Instant::now();
    let mut c = server.connect().await;
    for i in 0..3 {
        c.send(&get("/healthz")).await;
        let r = c.response().await;
        assert_eq!(r.status, 200);
        assert!(t0.elapsed() < secs(2.5), "request {i} too slow to test the lifetime");
        // Under 3 s of its lifetime is left: that, not the 30 s idle
        // timeout, is what is advertised (rounded down).
        let keep_alive = r
            .header("keep-alive")
            .unwrap_or_else(|| panic!("no keep-alive in\n{}", r.head));
        let timeout: u64 = keep_alive
            .strip_prefix("timeout=")
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("keep-alive: {keep_alive}"));
        assert!(timeout <= 2, "advertised {keep_alive} with under 3 s of lifetime left");
        assert!(keep_alive.ends_with("max=100"), "{keep_alive}");
    }
    // A request in flight across the 3 s mark.
    c.send(&get("/gate")).await;
    server.wait_started("gate").await;
    tokio::time::sleep((t0 + secs(3.3)).saturating_duration_since(Instant::now())).await;
    server.open_gate();
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"gated");
    r.assert_closes();
    c.expect_eof(IO_TIMEOUT).await;
}

#[tokio::test]
async fn max_lifetime_closes_idle_connection() {
    let server = TestServer::start(h1::Config {
        max_lifetime: Some(secs(1.0)),
        idle_timeout: secs(30.0),
        ..config()
    })
    .await;
    let t0 = Instant::now();
    let mut c = server.connect().await;
    c.send(&get("/healthz")).await;
    assert_eq!(c.response().await.status, 200);
    c.expect_eof(secs(5.0)).await;
    assert_between("lifetime close", t0.elapsed(), 700 * MS, secs(4.0));
}
