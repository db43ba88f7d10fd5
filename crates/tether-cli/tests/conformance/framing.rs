//! Autobahn groups 1 (framing), 2 (ping/pong), 3 (reserved bits), 4 (opcodes).

use super::harness::*;

fn payload_for(opcode: u8, len: usize) -> Vec<u8> {
    if opcode == TEXT {
        text_payload(len)
    } else {
        random_bytes(len, len as u64 + 1)
    }
}

/// Group 1: every length encoding, text and binary, in one write and byte by byte.
pub fn framing() -> Group {
    let mut cases = Vec::new();
    for (gi, (kind, opcode)) in [("text", TEXT), ("binary", BINARY)].into_iter().enumerate() {
        for (li, len) in [0usize, 125, 126, 127, 128, 65535, 65536].into_iter().enumerate() {
            for chopped in [false, true] {
                let how = if chopped {
                    "written byte by byte"
                } else {
                    "in one write"
                };
                let n = li + 1 + if chopped { 7 } else { 0 };
                cases.push(case(format!("1.{}.{n} {kind} {len} bytes {how}", gi + 1), move |s| {
                    let payload = payload_for(opcode, len);
                    let mut c = Client::open(s);
                    let bytes = c.frame_bytes(true, 0, opcode, &payload);
                    if chopped {
                        c.send_chopped(&bytes, 1);
                    } else {
                        c.send_raw(&bytes);
                    }
                    let m = c.expect_msg(opcode, &payload);
                    assert_eq!(m.frames, 1, "the echo should be one frame");
                    assert!(!m.compressed);
                    c.close_normally();
                }));
            }
        }
    }
    // The server's own header sizes (minimal encoding is checked on every frame).
    for (i, (len, header)) in [(125usize, 2usize), (126, 4), (65535, 4), (65536, 10)]
        .into_iter()
        .enumerate()
    {
        cases.push(case(
            format!("1.3.{} echo of {len} bytes has a {header}-byte header", i + 1),
            move |s| {
                let payload = random_bytes(len, 7);
                let mut c = Client::open(s);
                c.send_frame(true, 0, BINARY, &payload);
                // Read the raw header bytes ourselves.
                c.stream.set_read_timeout(Some(READ_TIMEOUT)).expect("read timeout");
                let mut head = vec![0u8; header];
                std::io::Read::read_exact(&mut c.stream, &mut head).expect("reading the echo header");
                assert_eq!(head[0], 0x82, "FIN + binary, no RSV");
                let expected_b1 = match header {
                    2 => len as u8,
                    4 => 126,
                    _ => 127,
                };
                assert_eq!(head[1], expected_b1, "unmasked, minimal length code");
                let mut rest = vec![0u8; len];
                std::io::Read::read_exact(&mut c.stream, &mut rest).expect("reading the echo payload");
                assert_payload("echo", &rest, &payload);
                c.close_normally();
            },
        ));
    }
    Group {
        title: "1 framing",
        args: vec![],
        cases,
    }
}

/// Group 2: pings and pongs.
pub fn ping_pong() -> Group {
    let mut cases = vec![
        case("2.1 ping with empty payload", |s| {
            let mut c = Client::open(s);
            c.send_frame(true, 0, PING, b"");
            c.expect_pong(b"");
            c.close_normally();
        }),
        case("2.2 ping with text payload", |s| {
            let mut c = Client::open(s);
            c.send_frame(true, 0, PING, b"Hello, world!");
            c.expect_pong(b"Hello, world!");
            c.close_normally();
        }),
        case("2.3 ping with binary payload", |s| {
            let mut c = Client::open(s);
            let p = [0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff];
            c.send_frame(true, 0, PING, &p);
            c.expect_pong(&p);
            c.close_normally();
        }),
        case("2.4 ping with 125-byte payload", |s| {
            let mut c = Client::open(s);
            let p = random_bytes(125, 24);
            c.send_frame(true, 0, PING, &p);
            c.expect_pong(&p);
            c.close_normally();
        }),
        case("2.5 ping with 126-byte payload: 1002", |s| {
            let mut c = Client::open(s);
            c.send_frame(true, 0, PING, &[b'x'; 126]);
            c.expect_fail(1002);
        }),
        case("2.6 ping with 125-byte payload written byte by byte", |s| {
            let mut c = Client::open(s);
            let p = random_bytes(125, 26);
            let bytes = c.frame_bytes(true, 0, PING, &p);
            c.send_chopped(&bytes, 1);
            c.expect_pong(&p);
            c.close_normally();
        }),
        case("2.7 unsolicited empty pong is ignored", |s| {
            let mut c = Client::open(s);
            c.send_frame(true, 0, PONG, b"");
            c.echo(TEXT, b"after the pong");
            c.close_normally();
        }),
        case("2.8 unsolicited pong with payload is ignored", |s| {
            let mut c = Client::open(s);
            c.send_frame(true, 0, PONG, b"unsolicited pong payload");
            c.echo(TEXT, b"after the pong");
            c.close_normally();
        }),
        case("2.9 unsolicited pong, then ping: one pong for the ping", |s| {
            let mut c = Client::open(s);
            let bytes = c.frames(&[
                (true, 0, PONG, b"unsolicited pong payload"),
                (true, 0, PING, b"ping payload"),
            ]);
            c.send_raw(&bytes);
            c.expect_pong(b"ping payload");
            c.echo(TEXT, b"nothing else came");
            c.close_normally();
        }),
        case("2.12 fragmented ping (FIN=0): 1002", |s| {
            let mut c = Client::open(s);
            c.echo(TEXT, b"before");
            c.send_frame(false, 0, PING, b"fragmented");
            c.expect_fail(1002);
        }),
        case("2.13 pong with 126-byte payload: 1002", |s| {
            let mut c = Client::open(s);
            c.send_frame(true, 0, PONG, &[b'y'; 126]);
            c.expect_fail(1002);
        }),
        case("2.14 fragmented pong (FIN=0): 1002", |s| {
            let mut c = Client::open(s);
            c.send_frame(false, 0, PONG, b"fragmented");
            c.expect_fail(1002);
        }),
        case("2.15 ping and text in one write: pong, then echo", |s| {
            let mut c = Client::open(s);
            let p = random_bytes(125, 215);
            let bytes = c.frames(&[(true, 0, PING, &p), (true, 0, TEXT, b"after the ping")]);
            c.send_raw(&bytes);
            c.expect_pong(&p);
            c.expect_text(b"after the ping");
            c.close_normally();
        }),
        case(
            "2.16 ping with 126 bytes declared but only the header sent: 1002 at once",
            |s| {
                let mut c = Client::open(s);
                let bytes = c.frame_bytes(true, 0, PING, &[b'z'; 126]);
                c.send_raw(&bytes[..8]); // header + mask key only
                c.expect_fail(1002);
            },
        ),
    ];
    cases.push(case(
        "2.17 ten pings behind a 4 MiB binary: echo and pongs as whole frames",
        |s| {
            let mut c = Client::open(s);
            let data = random_bytes(4 * MIB, 217);
            let mut bytes = c.frame_bytes(true, 0, BINARY, &data);
            for i in 0..10 {
                bytes.extend(c.frame_bytes(true, 0, PING, format!("p{i}").as_bytes()));
            }
            let writer = c.send_in_background(bytes);
            // The engine's pongs may overtake the application's echo, but never split it.
            let (mut echoed, mut pongs) = (false, 0);
            for _ in 0..11 {
                match c.next_event() {
                    Event::Msg(m) if !echoed => {
                        assert_payload("echo", &m.payload, &data);
                        echoed = true;
                    }
                    Event::Pong(p) => {
                        assert_eq!(p, format!("p{pongs}").as_bytes(), "pongs in order");
                        pongs += 1;
                    }
                    other => panic!("expected the echo and 10 pongs, got {other:?}"),
                }
            }
            assert!(echoed && pongs == 10);
            writer.join().expect("writer").expect("writing");
            c.close_normally();
        },
    ));
    for (n, chopped) in [(10, false), (11, true)] {
        let how = if chopped {
            "written byte by byte"
        } else {
            "in one write"
        };
        cases.push(case(format!("2.{n} ten pings {how}: ten pongs in order"), move |s| {
            let mut c = Client::open(s);
            let payloads: Vec<Vec<u8>> = (0..10).map(|i| format!("payload-{i}").into_bytes()).collect();
            let mut bytes = Vec::new();
            for p in &payloads {
                bytes.extend(c.frame_bytes(true, 0, PING, p));
            }
            if chopped {
                c.send_chopped(&bytes, 1);
            } else {
                c.send_raw(&bytes);
            }
            for p in &payloads {
                c.expect_pong(p);
            }
            c.close_normally();
        }));
    }
    Group {
        title: "2 ping/pong",
        args: vec![],
        cases,
    }
}

/// Group 3: RSV bits without a negotiated extension.
pub fn reserved_bits() -> Group {
    let mut cases = Vec::new();
    let ops: [(&str, u8, &[u8]); 5] = [
        ("text", TEXT, b"reserved"),
        ("binary", BINARY, &[0, 1, 2, 3]),
        ("ping", PING, b"ping"),
        ("pong", PONG, b"pong"),
        ("close", CLOSE, &[0x03, 0xe8]),
    ];
    let mut n = 0;
    for (bits_name, bits) in [
        ("RSV1", RSV1),
        ("RSV2", RSV2),
        ("RSV3", RSV3),
        ("RSV1+RSV2+RSV3", RSV1 | RSV2 | RSV3),
    ] {
        for (op_name, opcode, payload) in ops {
            n += 1;
            cases.push(case(format!("3.{n} {bits_name} on {op_name}: 1002"), move |s| {
                let mut c = Client::open(s);
                c.echo(TEXT, b"before the bad frame");
                // A ping right behind the bad frame must not be answered.
                let bytes = c.frames(&[(true, bits, opcode, payload), (true, 0, PING, b"after")]);
                c.send_raw(&bytes);
                c.expect_fail(1002);
            }));
        }
    }
    cases.push(case("3.21 RSV2 on a continuation frame: 1002", |s| {
        let mut c = Client::open(s);
        c.echo(TEXT, b"before the bad frame");
        let bytes = c.frames(&[(false, 0, TEXT, b"first "), (true, RSV2, CONT, b"second")]);
        c.send_raw(&bytes);
        c.expect_fail(1002);
    }));
    cases.push(case("3.22 RSV1 on text, written byte by byte: 1002", |s| {
        let mut c = Client::open(s);
        c.echo(TEXT, b"before the bad frame");
        let bytes = c.frame_bytes(true, RSV1, TEXT, b"chopped");
        c.send_chopped_until_closed(&bytes, 1);
        c.expect_fail(1002);
    }));
    Group {
        title: "3 reserved bits",
        args: vec![],
        cases,
    }
}

/// Group 4: reserved opcodes.
pub fn opcodes() -> Group {
    let mut cases = Vec::new();
    for opcode in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        let kind = if opcode < 8 { "non-control" } else { "control" };
        let sub = if opcode < 8 { 1 } else { 2 };
        for (with_payload, payload) in [(false, &b""[..]), (true, &b"reserved opcode payload"[..])] {
            let what = if with_payload { "with payload" } else { "empty" };
            cases.push(case(
                format!("4.{sub} reserved {kind} opcode {opcode:#x}, {what}: 1002"),
                move |s| {
                    let mut c = Client::open(s);
                    c.echo(TEXT, b"before the bad frame");
                    let bytes = c.frames(&[(true, 0, opcode, payload), (true, 0, PING, b"after")]);
                    c.send_raw(&bytes);
                    c.expect_fail(1002);
                },
            ));
        }
    }
    Group {
        title: "4 opcodes",
        args: vec![],
        cases,
    }
}
