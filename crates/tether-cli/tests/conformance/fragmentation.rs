//! Autobahn group 5: fragmentation.

use super::harness::*;

pub fn fragmentation() -> Group {
    let mut cases = vec![
        case("5.1 ping in two fragments: 1002", |s| {
            let mut c = Client::open(s);
            c.echo(TEXT, b"before");
            let bytes = c.frames(&[(false, 0, PING, b"fragmented "), (true, 0, CONT, b"ping")]);
            c.send_raw(&bytes);
            c.expect_fail(1002);
        }),
        case("5.2 pong in two fragments: 1002", |s| {
            let mut c = Client::open(s);
            c.echo(TEXT, b"before");
            let bytes = c.frames(&[(false, 0, PONG, b"fragmented "), (true, 0, CONT, b"pong")]);
            c.send_raw(&bytes);
            c.expect_fail(1002);
        }),
        case("5.2b close with FIN=0: 1002", |s| {
            let mut c = Client::open(s);
            c.echo(TEXT, b"before");
            c.send_frame(false, 0, CLOSE, &close_payload(1000, b""));
            c.expect_fail(1002);
        }),
        case("5.5 text in two fragments, written byte by byte", |s| {
            let mut c = Client::open(s);
            let bytes = c.frames(&[(false, 0, TEXT, b"fragment1"), (true, 0, CONT, b"fragment2")]);
            c.send_chopped(&bytes, 1);
            let m = c.expect_text(b"fragment1fragment2");
            assert_eq!(m.frames, 1);
            c.close_normally();
        }),
        case("5.6 ping between two fragments, one write: pong, then the echo", |s| {
            let mut c = Client::open(s);
            let bytes = c.frames(&[
                (false, 0, TEXT, b"fragment1"),
                (true, 0, PING, b"ping payload"),
                (true, 0, CONT, b"fragment2"),
            ]);
            c.send_raw(&bytes);
            c.expect_pong(b"ping payload");
            c.expect_text(b"fragment1fragment2");
            c.close_normally();
        }),
        case(
            "5.7 ping between two fragments, separate writes: pong before the message ends",
            |s| {
                let mut c = Client::open(s);
                let bytes = c.frames(&[(false, 0, TEXT, b"fragment1"), (true, 0, PING, b"ping payload")]);
                c.send_raw(&bytes);
                c.expect_pong(b"ping payload");
                c.send_frame(true, 0, CONT, b"fragment2");
                c.expect_text(b"fragment1fragment2");
                c.close_normally();
            },
        ),
        case("5.8 ping between two fragments, written byte by byte", |s| {
            let mut c = Client::open(s);
            let bytes = c.frames(&[
                (false, 0, TEXT, b"fragment1"),
                (true, 0, PING, b"ping payload"),
                (true, 0, CONT, b"fragment2"),
            ]);
            c.send_chopped(&bytes, 1);
            c.expect_pong(b"ping payload");
            c.expect_text(b"fragment1fragment2");
            c.close_normally();
        }),
        case("5.9 continuation (FIN=1) without a message: 1002", |s| {
            let mut c = Client::open(s);
            c.echo(TEXT, b"before");
            c.send_frame(true, 0, CONT, b"non-continuation payload");
            c.expect_fail(1002);
        }),
        case("5.10 continuation (FIN=1) without a message, byte by byte: 1002", |s| {
            let mut c = Client::open(s);
            c.echo(TEXT, b"before");
            let bytes = c.frame_bytes(true, 0, CONT, b"non-continuation payload");
            c.send_chopped_until_closed(&bytes, 1);
            c.expect_fail(1002);
        }),
        case("5.12 continuation (FIN=0) without a message: 1002", |s| {
            let mut c = Client::open(s);
            c.echo(TEXT, b"before");
            let bytes = c.frames(&[(false, 0, CONT, b"fragment1"), (true, 0, CONT, b"fragment2")]);
            c.send_raw(&bytes);
            c.expect_fail(1002);
        }),
        case(
            "5.15 extra continuation after a complete fragmented message: (echo,) 1002",
            |s| {
                let mut c = Client::open(s);
                let bytes = c.frames(&[
                    (false, 0, TEXT, b"fragment1"),
                    (true, 0, CONT, b"fragment2"),
                    (false, 0, CONT, b"fragment3"),
                    (true, 0, CONT, b"fragment4"),
                ]);
                c.send_raw(&bytes);
                if !c.expect_optional_echo_then_fail(TEXT, b"fragment1fragment2", 1002) {
                    eprintln!("5.15: non-strict: the completed message was not echoed before the close");
                }
            },
        ),
        case(
            "5.17 text (FIN=1) while a fragmented message is in progress: 1002",
            |s| {
                let mut c = Client::open(s);
                c.echo(TEXT, b"before");
                let bytes = c.frames(&[(false, 0, TEXT, b"fragment1"), (true, 0, TEXT, b"fragment2")]);
                c.send_raw(&bytes);
                c.expect_fail(1002);
            },
        ),
        case(
            "5.18 binary (FIN=0) while a fragmented text is in progress: 1002",
            |s| {
                let mut c = Client::open(s);
                c.echo(TEXT, b"before");
                let bytes = c.frames(&[(false, 0, TEXT, b"fragment1"), (false, 0, BINARY, b"fragment2")]);
                c.send_raw(&bytes);
                c.expect_fail(1002);
            },
        ),
        case(
            "5.19 five fragments with a ping after each: answers in the order asked (the last pong after the echo)",
            |s| {
                let mut c = Client::open(s);
                let mut expected = Vec::new();
                for i in 0..5 {
                    let part = format!("fragment{}", i + 1);
                    expected.extend_from_slice(part.as_bytes());
                    let op = if i == 0 { TEXT } else { CONT };
                    let ping = format!("pongme {}!", i + 1);
                    let bytes = c.frames(&[(i == 4, 0, op, part.as_bytes()), (true, 0, PING, ping.as_bytes())]);
                    c.send_raw(&bytes);
                    if i == 4 {
                        // The message completed before the last ping arrived:
                        // its echo goes first.
                        c.expect_text(&expected);
                    }
                    c.expect_pong(ping.as_bytes());
                }
                c.close_normally();
            },
        ),
        case("5.20 five fragments with pings, all byte by byte in one go", |s| {
            let mut c = Client::open(s);
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            for i in 0..5 {
                let part = format!("fragment{}", i + 1);
                expected.extend_from_slice(part.as_bytes());
                let op = if i == 0 { TEXT } else { CONT };
                let ping = format!("pongme {}!", i + 1);
                bytes.extend(c.frames(&[(i == 4, 0, op, part.as_bytes()), (true, 0, PING, ping.as_bytes())]));
            }
            c.send_chopped(&bytes, 1);
            // The last ping follows the final fragment, so the echo may come before its pong.
            for i in 0..4 {
                c.expect_pong(format!("pongme {}!", i + 1).as_bytes());
            }
            let mut got_echo = false;
            let mut got_pong = false;
            for _ in 0..2 {
                match c.next_event() {
                    Event::Msg(m) => {
                        assert_payload("echo", &m.payload, &expected);
                        got_echo = true;
                    }
                    Event::Pong(p) => {
                        assert_payload("pong", &p, b"pongme 5!");
                        got_pong = true;
                    }
                    other => panic!("expected the echo and the last pong, got {other:?}"),
                }
            }
            assert!(got_echo && got_pong);
            c.close_normally();
        }),
        case("5.21 close between fragments: close 1000 echoed, no message", |s| {
            let mut c = Client::open(s);
            let bytes = c.frames(&[
                (false, 0, TEXT, b"fragment1"),
                (true, 0, CLOSE, &close_payload(1000, b"")),
            ]);
            c.send_raw(&bytes);
            c.expect_close(Some(1000));
            c.expect_tcp_close(true);
        }),
        case("5.22 close between fragments, then the final fragment: ignored", |s| {
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
        case("5.23 zero-length first and last fragments", |s| {
            let mut c = Client::open(s);
            let bytes = c.fragmented_bytes(TEXT, 0, &[b"", b"abc", b""]);
            c.send_raw(&bytes);
            c.expect_text(b"abc");
            c.close_normally();
        }),
        case("5.24 all fragments empty: one empty text", |s| {
            let mut c = Client::open(s);
            let bytes = c.fragmented_bytes(TEXT, 0, &[b"", b"", b""]);
            c.send_raw(&bytes);
            c.expect_text(b"");
            c.close_normally();
        }),
        case("5.25 binary with an empty first fragment", |s| {
            let mut c = Client::open(s);
            let bytes = c.fragmented_bytes(BINARY, 0, &[b"", &[0, 1, 2], &[3, 4]]);
            c.send_raw(&bytes);
            c.expect_msg(BINARY, &[0, 1, 2, 3, 4]);
            c.close_normally();
        }),
        case("5.26 unsolicited pong between fragments is ignored", |s| {
            let mut c = Client::open(s);
            let bytes = c.frames(&[
                (false, 0, BINARY, b"fragment1"),
                (true, 0, PONG, b"unsolicited"),
                (true, 0, CONT, b"fragment2"),
            ]);
            c.send_raw(&bytes);
            c.expect_msg(BINARY, b"fragment1fragment2");
            c.close_normally();
        }),
        case(
            "5.27 fragmented binary, then a single text: both echoed in order",
            |s| {
                let mut c = Client::open(s);
                let mut bytes = c.fragmented_bytes(BINARY, 0, &[&[9; 10], &[8; 10]]);
                bytes.extend(c.frame_bytes(true, 0, TEXT, b"second"));
                c.send_raw(&bytes);
                let mut expected = vec![9; 10];
                expected.extend([8; 10]);
                c.expect_msg(BINARY, &expected);
                c.expect_text(b"second");
                c.close_normally();
            },
        ),
        case(
            "5.28 continuation after the close of the previous message, in a new message: 1002",
            |s| {
                let mut c = Client::open(s);
                c.echo(BINARY, b"complete");
                c.send_frame(true, 0, CONT, b"late");
                c.expect_fail(1002);
            },
        ),
    ];
    for n in 2..=8usize {
        cases.push(case(format!("5.3.{n} text in {n} fragments: one message"), move |s| {
            let text = format!("a text message in {n} fragments, reassembled by the server");
            let mut c = Client::open(s);
            let parts = split_n(text.as_bytes(), n);
            let bytes = c.fragmented_bytes(TEXT, 0, &parts);
            c.send_raw(&bytes);
            c.expect_text(text.as_bytes());
            c.close_normally();
        }));
    }
    for n in [2usize, 5, 100] {
        cases.push(case(
            format!("5.4.{n} binary in {n} fragments, separate writes"),
            move |s| {
                let data = random_bytes(1000, n as u64);
                let mut c = Client::open(s);
                for (i, part) in split_n(&data, n).into_iter().enumerate() {
                    let op = if i == 0 { BINARY } else { CONT };
                    c.send_frame(i + 1 == n, 0, op, part);
                }
                c.expect_msg(BINARY, &data);
                c.close_normally();
            },
        ));
    }
    Group {
        title: "5 fragmentation",
        args: vec![],
        cases,
    }
}
