//! Autobahn groups 9 (limits and large messages) and 10 (auto-fragmentation).

use std::time::{Duration, Instant};

use flate2::{Compress, Compression};

use super::harness::*;

fn payload_for(opcode: u8, len: usize) -> Vec<u8> {
    if opcode == TEXT {
        text_payload(len)
    } else {
        random_bytes(len, len as u64)
    }
}

/// Sends `data` in `fragment`-byte fragments from a helper thread and expects one echo.
fn echo_fragmented(c: &mut Client, opcode: u8, data: &[u8], fragment: usize) -> Msg {
    let parts: Vec<&[u8]> = data.chunks(fragment).collect();
    let bytes = c.fragmented_bytes(opcode, 0, &parts);
    let writer = c.send_in_background(bytes);
    let m = c.expect_msg(opcode, data);
    writer.join().expect("writer").expect("writing");
    m
}

fn echo_single(c: &mut Client, opcode: u8, data: &[u8]) -> Msg {
    let bytes = c.frame_bytes(true, 0, opcode, data);
    let writer = c.send_in_background(bytes);
    let m = c.expect_msg(opcode, data);
    writer.join().expect("writer").expect("writing");
    m
}

/// A header (FIN, binary, masked) declaring `len` payload bytes, and the mask key.
fn header_declaring(len: u64) -> Vec<u8> {
    let mut h = vec![0x82];
    encode_len(&mut h, len);
    h.extend_from_slice(&[1, 2, 3, 4]);
    h
}

/// 9.x against `--ws-max-message 1MiB`.
pub fn limits_1mib() -> Group {
    let mut cases = Vec::new();
    for (kind, opcode) in [("text", TEXT), ("binary", BINARY)] {
        cases.push(case(format!("9.1 1 MiB {kind} in one frame: echoed"), move |s| {
            let data = payload_for(opcode, MIB);
            let mut c = Client::open(s);
            echo_single(&mut c, opcode, &data);
            c.close_normally();
        }));
        cases.push(case(
            format!("9.2 1 MiB {kind} in 64 KiB fragments: echoed"),
            move |s| {
                let data = payload_for(opcode, MIB);
                let mut c = Client::open(s);
                echo_fragmented(&mut c, opcode, &data, 64 * KIB);
                c.close_normally();
            },
        ));
        cases.push(case(format!("9.3 1 MiB + 1 {kind} in one frame: 1009"), move |s| {
            let data = payload_for(opcode, MIB + 1);
            let mut c = Client::open(s);
            let bytes = c.frame_bytes(true, 0, opcode, &data);
            // The limit is on the declared length: the header alone triggers it.
            let writer = c.send_in_background(bytes);
            c.expect_fail(1009);
            let _ = writer.join();
        }));
        cases.push(case(
            format!("9.4 1 MiB + 1 {kind} in 64 KiB fragments: 1009"),
            move |s| {
                let data = payload_for(opcode, MIB + 1);
                let mut c = Client::open(s);
                let parts: Vec<&[u8]> = data.chunks(64 * KIB).collect();
                let bytes = c.fragmented_bytes(opcode, 0, &parts);
                let writer = c.send_in_background(bytes);
                c.expect_fail(1009);
                let _ = writer.join();
            },
        ));
    }
    cases.push(case(
        "9.5 header declaring 1 MiB + 1 bytes, no payload sent: 1009 at once",
        |s| {
            let mut c = Client::open(s);
            c.send_raw(&header_declaring(MIB as u64 + 1));
            c.expect_fail(1009);
        },
    ));
    cases.push(case("9.6 header declaring 2^40 bytes: 1009 at once", |s| {
        let mut c = Client::open(s);
        let t = Instant::now();
        c.send_raw(&header_declaring(1 << 40));
        c.expect_fail(1009);
        assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    }));
    cases.push(case("9.7 64-bit length with the most significant bit set: 1002", |s| {
        let mut c = Client::open(s);
        c.send_raw(&header_declaring(1 << 63));
        c.expect_fail(1002);
    }));
    cases.push(case("9.8 1000 messages of 1 KiB pipelined: echoed in order", |s| {
        let mut c = Client::open(s);
        let messages: Vec<Vec<u8>> = (0..1000).map(|i| random_bytes(KIB, i)).collect();
        let mut bytes = Vec::new();
        for m in &messages {
            bytes.extend(c.frame_bytes(true, 0, BINARY, m));
        }
        let writer = c.send_in_background(bytes);
        for m in &messages {
            c.expect_msg(BINARY, m);
        }
        writer.join().expect("writer").expect("writing");
        c.close_normally();
    }));
    // permessage-deflate against the limit (groups 12-13, here for the 1 MiB server).
    cases.push(case(
        "13.9.1 compressed message inflating to exactly 1 MiB: echoed",
        |s| {
            let (mut c, _) = Client::open_with(s, &format!("Sec-WebSocket-Extensions: {PMD_OFFER}\r\n"));
            let data = text_payload(MIB);
            c.send_compressed(TEXT, &data);
            c.expect_text(&data);
            c.close_normally();
        },
    ));
    cases.push(case("13.9.2 compressed message inflating to 1 MiB + 1: 1009", |s| {
        let (mut c, _) = Client::open_with(s, &format!("Sec-WebSocket-Extensions: {PMD_OFFER}\r\n"));
        c.send_compressed(BINARY, &vec![0u8; MIB + 1]);
        c.expect_fail(1009);
    }));
    cases.push(case(
        "13.9.3 compression bomb: 100 MiB of zeros in one frame: 1009 quickly",
        |s| {
            let (mut c, _) = Client::open_with(s, &format!("Sec-WebSocket-Extensions: {PMD_OFFER}\r\n"));
            let bomb = zero_bomb(100);
            let t = Instant::now();
            c.send_frame(true, RSV1, BINARY, &bomb);
            c.expect_fail(1009);
            assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
        },
    ));
    cases.push(case("13.9.4 compression bomb in fragments: 1009 quickly", |s| {
        let (mut c, _) = Client::open_with(s, &format!("Sec-WebSocket-Extensions: {PMD_OFFER}\r\n"));
        let bomb = zero_bomb(100);
        let parts: Vec<&[u8]> = bomb.chunks(bomb.len() / 10 + 1).collect();
        let bytes = c.fragmented_bytes(BINARY, RSV1, &parts);
        let t = Instant::now();
        let writer = c.send_in_background(bytes);
        c.expect_fail(1009);
        let _ = writer.join();
        assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    }));
    Group {
        title: "9 limits (--ws-max-message 1MiB)",
        args: vec!["--ws-max-message", "1MiB"],
        cases,
    }
}

/// `mib` MiB of zeros as one no-context deflate stream (trailer stripped),
/// built from copies of one compressed MiB: each ends with a sync flush, so
/// the concatenation is a valid stream and costs only 1 MiB of deflating.
pub fn zero_bomb(mib: usize) -> Vec<u8> {
    let mut chunk = deflate_with(&mut Compress::new(Compression::best(), false), &vec![0u8; MIB]);
    chunk.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut bomb = chunk.repeat(mib);
    bomb.truncate(bomb.len() - 4);
    bomb
}

/// 9.x large messages against the default limit (16 MiB).
pub fn large_messages() -> Group {
    let cases = vec![
        case("9.10 4 MiB binary in one frame: echoed", |s| {
            let data = random_bytes(4 * MIB, 4);
            let mut c = Client::open(s);
            echo_single(&mut c, BINARY, &data);
            c.close_normally();
        }),
        case("9.11 4 MiB text in 64 KiB fragments: echoed", |s| {
            let data = text_payload(4 * MIB);
            let mut c = Client::open(s);
            echo_fragmented(&mut c, TEXT, &data, 64 * KIB);
            c.close_normally();
        }),
        case("9.12 16 MiB binary in one frame (the default limit): echoed", |s| {
            let data = random_bytes(16 * MIB, 16);
            let mut c = Client::open(s);
            echo_single(&mut c, BINARY, &data);
            c.close_normally();
        }),
        case("9.13 16 MiB + 1 binary (declared): 1009", |s| {
            let mut c = Client::open(s);
            c.send_raw(&header_declaring(16 * MIB as u64 + 1));
            c.expect_fail(1009);
        }),
        case("10.1 64 KiB text in 1300-byte fragments: one echoed message", |s| {
            let data = text_payload(64 * KIB);
            let mut c = Client::open(s);
            let m = echo_fragmented(&mut c, TEXT, &data, 1300);
            eprintln!("10.1: echo came in {} frame(s)", m.frames);
            c.close_normally();
        }),
        case("10.2 64 KiB binary in 1-byte fragments: one echoed message", |s| {
            let data = random_bytes(64 * KIB, 102);
            let mut c = Client::open(s);
            echo_fragmented(&mut c, BINARY, &data, 1);
            c.close_normally();
        }),
        case(
            "10.3 1 MiB binary in 65535-byte fragments, written in 997-byte pieces",
            |s| {
                let data = random_bytes(MIB, 103);
                let mut c = Client::open(s);
                let parts: Vec<&[u8]> = data.chunks(65535).collect();
                let bytes = c.fragmented_bytes(BINARY, 0, &parts);
                let mut stream = c.stream.try_clone().expect("clone");
                let writer = std::thread::spawn(move || {
                    for piece in bytes.chunks(997) {
                        std::io::Write::write_all(&mut stream, piece)?;
                    }
                    Ok::<(), std::io::Error>(())
                });
                let m = c.expect_msg(BINARY, &data);
                writer.join().expect("writer").expect("writing");
                eprintln!("10.3: echo came in {} frame(s)", m.frames);
                c.close_normally();
            },
        ),
        case(
            "10.4 mixed fragment sizes (1, 125, 126, 65535, 65536 ...) then a ping",
            |s| {
                let data = random_bytes(200_000, 104);
                let mut c = Client::open(s);
                let mut parts = Vec::new();
                let mut rest = &data[..];
                for size in [1usize, 125, 126, 127, 65535, 65536].into_iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (a, b) = rest.split_at(size.min(rest.len()));
                    parts.push(a);
                    rest = b;
                }
                let mut bytes = c.fragmented_bytes(BINARY, 0, &parts);
                bytes.extend(c.frame_bytes(true, 0, PING, b"after"));
                let writer = c.send_in_background(bytes);
                // The pong comes from the engine, the echo from the application:
                // either order is fine.
                let (mut echoed, mut ponged) = (false, false);
                for _ in 0..2 {
                    match c.next_event() {
                        Event::Msg(m) if !echoed => {
                            assert_eq!(m.opcode, BINARY);
                            assert_payload("echo", &m.payload, &data);
                            echoed = true;
                        }
                        Event::Pong(p) if !ponged => {
                            assert_eq!(p, b"after");
                            ponged = true;
                        }
                        other => panic!("expected the echo and a pong, got {other:?}"),
                    }
                }
                writer.join().expect("writer").expect("writing");
                c.close_normally();
            },
        ),
    ];
    Group {
        title: "9-10 large messages and auto-fragmentation (default limit)",
        args: vec![],
        cases,
    }
}
