//! Autobahn group 7: close handling.

use std::time::{Duration, Instant};

use super::harness::*;

const VALID_CODES: [u16; 17] = [
    1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4500, 4999,
];
const INVALID_CODES: [u16; 15] = [
    0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 6000, 65534, 65535,
];

pub fn close() -> Group {
    let mut cases = vec![
        case("7.1.1 echo, then close 1000", |s| {
            let mut c = Client::open(s);
            c.echo(TEXT, b"Hello World!");
            c.close_normally();
        }),
        case("7.1.2 two closes: one reply", |s| {
            let mut c = Client::open(s);
            let bytes = c.frames(&[
                (true, 0, CLOSE, &close_payload(1000, b"")),
                (true, 0, CLOSE, &close_payload(1001, b"")),
            ]);
            c.send_raw(&bytes);
            c.expect_close(Some(1000));
            c.expect_tcp_close(false);
        }),
        case("7.1.3 ping after close: no pong", |s| {
            let mut c = Client::open(s);
            let bytes = c.frames(&[(true, 0, CLOSE, &close_payload(1000, b"")), (true, 0, PING, b"late")]);
            c.send_raw(&bytes);
            c.expect_close(Some(1000));
            c.expect_tcp_close(false);
        }),
        case("7.1.4 text after close (same write): not echoed", |s| {
            let mut c = Client::open(s);
            let bytes = c.frames(&[
                (true, 0, CLOSE, &close_payload(1000, b"")),
                (true, 0, TEXT, b"after the close"),
            ]);
            c.send_raw(&bytes);
            c.expect_close(Some(1000));
            c.expect_tcp_close(false);
        }),
        case("7.1.4b text after close (separate write): not echoed", |s| {
            let mut c = Client::open(s);
            c.send_frame(true, 0, CLOSE, &close_payload(1000, b""));
            // Written as soon as possible; the server may already be gone.
            let late = c.frame_bytes(true, 0, TEXT, b"after the close");
            let _ = std::io::Write::write_all(&mut c.stream, &late);
            c.expect_close(Some(1000));
            c.expect_tcp_close(false);
        }),
        case("7.1.5 fragment, close, final fragment: close reply only", |s| {
            let mut c = Client::open(s);
            let bytes = c.frames(&[
                (false, 0, TEXT, b"fragment1"),
                (true, 0, CLOSE, &close_payload(1000, b"")),
                (true, 0, CONT, b"fragment2"),
            ]);
            c.send_raw(&bytes);
            c.expect_close(Some(1000));
            c.expect_tcp_close(false);
        }),
        case(
            "7.1.6 256 KiB text, ping, close in one write: nothing after the close reply",
            |s| {
                let mut c = Client::open(s);
                let big = text_payload(256 * KIB);
                let bytes = c.frames(&[
                    (true, 0, TEXT, &big),
                    (true, 0, PING, b"ping"),
                    (true, 0, CLOSE, &close_payload(1000, b"")),
                ]);
                let writer = c.send_in_background(bytes);
                // The echo and the pong may or may not precede the close reply (the server
                // may close before its application echoes), but the close comes, and last.
                let (mut saw_close, mut echoed, mut ponged) = (false, false, false);
                for _ in 0..3 {
                    match c.next_event() {
                        Event::Msg(m) if !echoed => {
                            assert_payload("echo", &m.payload, &big);
                            echoed = true;
                        }
                        Event::Pong(p) if !ponged => {
                            assert_eq!(p, b"ping");
                            ponged = true;
                        }
                        Event::Close(p) => {
                            assert_eq!(p[..2], 1000u16.to_be_bytes(), "{}", describe_close(&p));
                            saw_close = true;
                            break;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                assert!(saw_close, "no close reply");
                eprintln!("7.1.6: before the close reply: echo {echoed}, pong {ponged}");
                c.expect_tcp_close(true);
                writer.join().expect("writer").expect("writing");
            },
        ),
        case("7.3.1 close with empty payload: empty close reply, TCP closed", |s| {
            let mut c = Client::open(s);
            c.send_frame(true, 0, CLOSE, b"");
            c.expect_close(None);
            c.expect_tcp_close(true);
        }),
        case("7.3.2 close with a one-byte payload: 1002", |s| {
            let mut c = Client::open(s);
            c.send_frame(true, 0, CLOSE, b"\x03");
            c.expect_fail(1002);
        }),
        case("7.3.3 close 1000 without reason", |s| {
            let mut c = Client::open(s);
            c.send_frame(true, 0, CLOSE, &close_payload(1000, b""));
            c.expect_close(Some(1000));
            c.expect_tcp_close(true);
        }),
        case("7.3.4 close 1000 with a reason", |s| {
            let mut c = Client::open(s);
            c.send_frame(true, 0, CLOSE, &close_payload(1000, b"Hello World!"));
            c.expect_close(Some(1000));
            c.expect_tcp_close(true);
        }),
        case("7.3.5 close 1000 with a 123-byte reason (125-byte payload)", |s| {
            let mut c = Client::open(s);
            c.send_frame(true, 0, CLOSE, &close_payload(1000, &[b'*'; 123]));
            c.expect_close(Some(1000));
            c.expect_tcp_close(true);
        }),
        case("7.3.6 close with a 124-byte reason (126-byte payload): 1002", |s| {
            let mut c = Client::open(s);
            c.send_frame(true, 0, CLOSE, &close_payload(1000, &[b'*'; 124]));
            c.expect_fail(1002);
        }),
        case("7.3.7 close 1000 with a multibyte reason", |s| {
            let mut c = Client::open(s);
            c.send_frame(
                true,
                0,
                CLOSE,
                &close_payload(1000, "\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5} \u{1D11E}".as_bytes()),
            );
            c.expect_close(Some(1000));
            c.expect_tcp_close(true);
        }),
        case("7.5.1 close reason with invalid UTF-8: 1007", |s| {
            let mut c = Client::open(s);
            c.send_frame(
                true,
                0,
                CLOSE,
                &close_payload(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"),
            );
            c.expect_fail(1007);
        }),
        case("7.5.2 close reason truncated inside a code point: 1007", |s| {
            let mut c = Client::open(s);
            c.send_frame(true, 0, CLOSE, &close_payload(1000, b"bye \xf0\x9d\x84"));
            c.expect_fail(1007);
        }),
        case("7.5.3 close reason with an overlong encoding: 1007", |s| {
            let mut c = Client::open(s);
            c.send_frame(true, 0, CLOSE, &close_payload(1000, b"bye \xc0\xaf"));
            c.expect_fail(1007);
        }),
        case("7.6.1 close written byte by byte", |s| {
            let mut c = Client::open(s);
            let bytes = c.frame_bytes(true, 0, CLOSE, &close_payload(1001, b"going away"));
            c.send_chopped(&bytes, 1);
            c.expect_close(Some(1001));
            c.expect_tcp_close(true);
        }),
        case(
            "7.8.1 after the close handshake the server closes TCP first (we wait)",
            |s| {
                let mut c = Client::open(s);
                c.echo(BINARY, b"data");
                let t = Instant::now();
                c.send_frame(true, 0, CLOSE, &close_payload(1000, b""));
                c.expect_close(Some(1000));
                // We neither write nor shut down: the server must close on its own.
                c.expect_tcp_close(true);
                assert!(
                    t.elapsed() < Duration::from_secs(3),
                    "TCP closed after {:?}",
                    t.elapsed()
                );
            },
        ),
        case(
            "7.8.2 after a protocol error the server closes TCP without our close reply",
            |s| {
                let mut c = Client::open(s);
                c.send_frame(true, 0, CLOSE, b"\x03");
                c.expect_close(Some(1002));
                // No close reply from us: the server still closes within its close timeout.
                match c.next_event_within(Duration::from_secs(7)) {
                    Event::Eof | Event::Reset => {}
                    other => panic!("expected TCP close, got {other:?}"),
                }
            },
        ),
    ];
    for (i, code) in VALID_CODES.into_iter().enumerate() {
        cases.push(case(
            format!("7.7.{} valid close code {code}: echoed", i + 1),
            move |s| {
                let mut c = Client::open(s);
                c.send_frame(true, 0, CLOSE, &close_payload(code, b""));
                c.expect_close(Some(code));
                c.expect_tcp_close(true);
            },
        ));
    }
    for (i, code) in INVALID_CODES.into_iter().enumerate() {
        cases.push(case(
            format!("7.9.{} invalid close code {code}: 1002", i + 1),
            move |s| {
                let mut c = Client::open(s);
                c.send_frame(true, 0, CLOSE, &close_payload(code, b""));
                c.expect_fail(1002);
            },
        ));
    }
    Group {
        title: "7 close handling",
        args: vec![],
        cases,
    }
}
