//! Autobahn groups 12-13: permessage-deflate (RFC 7692), in the three
//! `--ws-compression` modes. The compression bomb cases are in `limits.rs`
//! (they need the 1 MiB server).

use flate2::{Compress, Compression, FlushCompress};

use super::harness::*;

/// The lowercased parameters of the `Sec-WebSocket-Extensions` answer
/// (`None`: no extension), after checking it names permessage-deflate once.
fn ext_params(resp: &HttpResponse) -> Option<Vec<String>> {
    let ext = resp.header("sec-websocket-extensions")?;
    assert!(!ext.contains(','), "several extensions accepted: {ext:?}");
    let mut parts = ext.split(';').map(|p| p.trim().to_ascii_lowercase());
    assert_eq!(parts.next().as_deref(), Some("permessage-deflate"), "{ext:?}");
    Some(parts.collect())
}

fn offer(value: &str) -> String {
    format!("Sec-WebSocket-Extensions: {value}\r\n")
}

fn open_pmd(s: &Server, value: &str) -> (Client, Vec<String>) {
    let (c, resp) = Client::open_with(s, &offer(value));
    let params = ext_params(&resp).unwrap_or_else(|| panic!("permessage-deflate declined for {value:?}"));
    (c, params)
}

/// Raw deflate ending in a final block (BFINAL=1), as RFC 7692 §7.2.3.3 allows.
fn deflate_final(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(6), false);
    let mut out = Vec::with_capacity(data.len() + 1024);
    let status = c.compress_vec(data, &mut out, FlushCompress::Finish).expect("deflate");
    assert_eq!(status, flate2::Status::StreamEnd, "output buffer large enough");
    out
}

/// Groups 12-13 against the default (`shared`, no context takeover) server.
pub fn deflate_shared() -> Group {
    let mut cases = vec![
        case(
            "12.0.1 offer with client_max_window_bits: no context takeover both ways",
            |s| {
                let (mut c, params) = open_pmd(s, PMD_OFFER);
                assert!(params.contains(&"server_no_context_takeover".into()), "{params:?}");
                assert!(params.contains(&"client_no_context_takeover".into()), "{params:?}");
                for p in &params {
                    let name = p.split('=').next().unwrap_or_default().trim();
                    assert!(
                        [
                            "server_no_context_takeover",
                            "client_no_context_takeover",
                            "client_max_window_bits",
                            "server_max_window_bits"
                        ]
                        .contains(&name),
                        "unknown parameter {p:?}"
                    );
                }
                c.close_normally();
            },
        ),
        case("12.0.2 plain offer: no client_max_window_bits in the answer", |s| {
            let (mut c, params) = open_pmd(s, "permessage-deflate");
            assert!(
                !params.iter().any(|p| p.starts_with("client_max_window_bits")),
                "client_max_window_bits answered without an offer: {params:?}"
            );
            assert!(params.contains(&"server_no_context_takeover".into()), "{params:?}");
            c.close_normally();
        }),
        case("12.0.3 unknown extension only: none accepted", |s| {
            let (mut c, resp) = Client::open_with(s, &offer("x-webkit-deflate-frame"));
            assert_eq!(resp.header("sec-websocket-extensions"), None);
            c.close_normally();
        }),
        case("12.0.4 server_max_window_bits=8 only: declined or raised to 9+", |s| {
            let (mut c, resp) = Client::open_with(s, &offer("permessage-deflate; server_max_window_bits=8"));
            if let Some(params) = ext_params(&resp) {
                assert!(!params.contains(&"server_max_window_bits=8".into()), "{params:?}");
            }
            c.close_normally();
        }),
        case("12.0.5 offer with a fallback: the fallback is accepted", |s| {
            let (mut c, params) = open_pmd(s, "permessage-deflate; server_max_window_bits=8, permessage-deflate");
            assert!(!params.contains(&"server_max_window_bits=8".into()), "{params:?}");
            let data = text_payload(10_000);
            c.send_compressed(TEXT, &data);
            c.expect_text(&data);
            c.close_normally();
        }),
        case("12.0.6 unknown parameter: declined", |s| {
            let (mut c, resp) = Client::open_with(s, &offer("permessage-deflate; foo=1"));
            assert_eq!(resp.header("sec-websocket-extensions"), None);
            c.close_normally();
        }),
        case("12.0.7 duplicate parameter: declined", |s| {
            let (mut c, resp) = Client::open_with(
                s,
                &offer("permessage-deflate; server_no_context_takeover; server_no_context_takeover"),
            );
            assert_eq!(resp.header("sec-websocket-extensions"), None);
            c.close_normally();
        }),
        case("12.0.8 client_max_window_bits=20: declined", |s| {
            let (mut c, resp) = Client::open_with(s, &offer("permessage-deflate; client_max_window_bits=20"));
            assert_eq!(resp.header("sec-websocket-extensions"), None);
            c.close_normally();
        }),
        case("12.0.9 server_max_window_bits=10: answered, replies inflate", |s| {
            let (mut c, params) = open_pmd(s, "permessage-deflate; server_max_window_bits=10");
            assert!(params.contains(&"server_max_window_bits=10".into()), "{params:?}");
            let data = text_payload(64 * KIB);
            c.send_compressed(TEXT, &data);
            c.expect_text(&data);
            c.close_normally();
        }),
        case("12.3.1 uncompressed message in a deflate session: echoed", |s| {
            let (mut c, _) = open_pmd(s, PMD_OFFER);
            c.echo(TEXT, b"not compressed");
            c.echo(BINARY, &random_bytes(1000, 1));
            c.close_normally();
        }),
        case("12.3.2 RSV1 with an empty payload: empty message", |s| {
            let (mut c, _) = open_pmd(s, PMD_OFFER);
            c.send_frame(true, RSV1, TEXT, b"");
            c.expect_text(b"");
            c.close_normally();
        }),
        case("12.3.3 compressed with BFINAL=1: echoed", |s| {
            let (mut c, _) = open_pmd(s, PMD_OFFER);
            let data = text_payload(5000);
            c.send_frame(true, RSV1, TEXT, &deflate_final(&data));
            c.expect_text(&data);
            c.close_normally();
        }),
        case(
            "12.3.4 compressed message in 3 fragments (RSV1 on the first only)",
            |s| {
                let (mut c, _) = open_pmd(s, PMD_OFFER);
                let data = text_payload(64 * KIB);
                let z = deflate(&data);
                let bytes = c.fragmented_bytes(TEXT, RSV1, &split_n(&z, 3));
                c.send_raw(&bytes);
                c.expect_text(&data);
                c.close_normally();
            },
        ),
        case(
            "12.3.5 compressed fragments with a ping between: pong, then the echo",
            |s| {
                let (mut c, _) = open_pmd(s, PMD_OFFER);
                let data = random_bytes(10_000, 5);
                let z = deflate(&data);
                let (a, b) = z.split_at(z.len() / 2);
                let bytes = c.frames(&[(false, RSV1, BINARY, a), (true, 0, PING, b"ping"), (true, 0, CONT, b)]);
                c.send_raw(&bytes);
                c.expect_pong(b"ping");
                c.expect_msg(BINARY, &data);
                c.close_normally();
            },
        ),
        case("12.3.6 compressed message with an empty first fragment", |s| {
            let (mut c, _) = open_pmd(s, PMD_OFFER);
            let data = text_payload(3000);
            let z = deflate(&data);
            let bytes = c.fragmented_bytes(TEXT, RSV1, &[b"", &z, b""]);
            c.send_raw(&bytes);
            c.expect_text(&data);
            c.close_normally();
        }),
        case("12.3.7 compressed message, one byte per fragment", |s| {
            let (mut c, _) = open_pmd(s, PMD_OFFER);
            let data = text_payload(2000);
            let z = deflate(&data);
            let parts: Vec<&[u8]> = z.chunks(1).collect();
            let bytes = c.fragmented_bytes(TEXT, RSV1, &parts);
            c.send_raw(&bytes);
            c.expect_text(&data);
            c.close_normally();
        }),
        case("12.4.1 100 compressed messages on one connection", |s| {
            let (mut c, _) = open_pmd(s, PMD_OFFER);
            for i in 0..100usize {
                let data = text_payload(100 + i * 37);
                c.send_compressed(TEXT, &data);
                c.expect_text(&data);
            }
            c.close_normally();
        }),
        case("12.4.2 the server compresses a large compressible reply", |s| {
            let (mut c, _) = open_pmd(s, PMD_OFFER);
            let data = text_payload(64 * KIB);
            c.send_compressed(TEXT, &data);
            let m = c.expect_text(&data);
            assert!(m.compressed, "64 KiB of text echoed uncompressed");
            assert!(m.wire_len < data.len() / 2, "{} bytes on the wire", m.wire_len);
            c.close_normally();
        }),
        case("13.1.1 RSV1 on a continuation frame: 1002", |s| {
            let (mut c, _) = open_pmd(s, PMD_OFFER);
            c.echo(TEXT, b"before");
            let z = deflate(&text_payload(1000));
            let (a, b) = z.split_at(z.len() / 2);
            let bytes = c.frames(&[(false, RSV1, TEXT, a), (true, RSV1, CONT, b)]);
            c.send_raw(&bytes);
            c.expect_fail(1002);
        }),
        case("13.1.2 RSV1 on an uncompressed message's continuation: 1002", |s| {
            let (mut c, _) = open_pmd(s, PMD_OFFER);
            let bytes = c.frames(&[(false, 0, TEXT, b"plain "), (true, RSV1, CONT, b"rest")]);
            c.send_raw(&bytes);
            c.expect_fail(1002);
        }),
        case("13.1.6 RSV2 in a deflate session: 1002", |s| {
            let (mut c, _) = open_pmd(s, PMD_OFFER);
            c.send_frame(true, RSV2, TEXT, b"rsv2");
            c.expect_fail(1002);
        }),
        case("13.2.1 invalid deflate data: 1007", |s| {
            let (mut c, _) = open_pmd(s, PMD_OFFER);
            c.echo(TEXT, b"before");
            // BTYPE=11 (reserved block type).
            c.send_frame(true, RSV1, BINARY, &[0xff, 0xff, 0xff, 0xff]);
            c.expect_fail(1007);
        }),
        case("13.2.2 compressed text that inflates to invalid UTF-8: 1007", |s| {
            let (mut c, _) = open_pmd(s, PMD_OFFER);
            let mut data = text_payload(500);
            data.extend_from_slice(b"\xed\xa0\x80 surrogate");
            c.send_compressed(TEXT, &data);
            c.expect_fail(1007);
        }),
        case("13.2.3 compressed text ending inside a code point: 1007", |s| {
            let (mut c, _) = open_pmd(s, PMD_OFFER);
            let mut data = text_payload(100);
            data.extend_from_slice(b"\xf0\x9d\x84");
            c.send_compressed(TEXT, &data);
            c.expect_fail(1007);
        }),
        case("13.2.4 compressed text with a code point split across fragments", |s| {
            let (mut c, _) = open_pmd(s, PMD_OFFER);
            let data = "\u{1D11E}\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5}".repeat(50).into_bytes();
            let z = deflate(&data);
            let bytes = c.fragmented_bytes(TEXT, RSV1, &split_n(&z, 7));
            c.send_raw(&bytes);
            c.expect_text(&data);
            c.close_normally();
        }),
    ];
    for (i, (name, opcode)) in [("ping", PING), ("pong", PONG), ("close", CLOSE)]
        .into_iter()
        .enumerate()
    {
        cases.push(case(format!("13.1.{} RSV1 on {name}: 1002", i + 3), move |s| {
            let (mut c, _) = open_pmd(s, PMD_OFFER);
            c.echo(TEXT, b"before");
            let payload = if opcode == CLOSE {
                close_payload(1000, b"")
            } else {
                b"x".to_vec()
            };
            c.send_frame(true, RSV1, opcode, &payload);
            c.expect_fail(1002);
        }));
    }
    for (i, len) in [0usize, 1, 16, 125, 126, 1000, 64 * KIB, MIB].into_iter().enumerate() {
        cases.push(case(
            format!("12.1.{} compressed text of {len} bytes: echoed", i + 1),
            move |s| {
                let (mut c, _) = open_pmd(s, PMD_OFFER);
                let data = text_payload(len);
                c.send_compressed(TEXT, &data);
                c.expect_text(&data);
                c.close_normally();
            },
        ));
    }
    for (i, len) in [1usize, 125, 64 * KIB, 256 * KIB].into_iter().enumerate() {
        cases.push(case(
            format!("12.2.{} compressed incompressible binary of {len} bytes: echoed", i + 1),
            move |s| {
                let (mut c, _) = open_pmd(s, PMD_OFFER);
                let data = random_bytes(len, len as u64);
                c.send_compressed(BINARY, &data);
                c.expect_msg(BINARY, &data);
                c.close_normally();
            },
        ));
    }
    Group {
        title: "12-13 permessage-deflate (shared)",
        args: vec![],
        cases,
    }
}

/// Sends `messages` compressed with one compressor (context kept) and expects each back.
fn context_round_trip(
    c: &mut Client,
    compressor: &mut Compress,
    messages: &[Vec<u8>],
    fresh_each: bool,
    server_context: bool,
) {
    for (i, data) in messages.iter().enumerate() {
        if fresh_each {
            compressor.reset();
        }
        let z = deflate_with(compressor, data);
        if i > 0 && !fresh_each && data == &messages[0] {
            // The repeat refers back into the previous message's window.
            assert!(
                z.len() < data.len() / 10,
                "the repeated message compressed to {} bytes",
                z.len()
            );
        }
        c.send_frame(true, RSV1, TEXT, &z);
        let m = c.expect_text(data);
        if i > 0 && data == &messages[0] {
            // The server's reply: small if it keeps its window, full size if it must not.
            if server_context {
                assert!(
                    m.compressed && m.wire_len < data.len() / 10,
                    "repeat echoed in {} bytes",
                    m.wire_len
                );
            } else {
                assert!(
                    m.wire_len > data.len() / 3,
                    "server_no_context_takeover not honoured ({} bytes)",
                    m.wire_len
                );
            }
        }
    }
}

/// Groups 13.x with `--ws-compression context`.
pub fn deflate_context() -> Group {
    let messages = || -> Vec<Vec<u8>> {
        let first = random_text(4000, 13);
        let mut v = vec![first.clone()];
        for i in 0..8 {
            v.push(first.clone());
            v.push(text_payload(1000 + i * 500));
        }
        v
    };
    let cases = vec![
        case(
            "13.3.1 plain offer: context takeover kept (no no_context_takeover)",
            |s| {
                let (mut c, params) = open_pmd(s, "permessage-deflate");
                assert!(!params.iter().any(|p| p.contains("no_context_takeover")), "{params:?}");
                c.close_normally();
            },
        ),
        case(
            "13.3.2 17 messages with one client window; the server's replies with one window",
            move |s| {
                let (mut c, _) = open_pmd(s, "permessage-deflate");
                let mut z = Compress::new(Compression::new(6), false);
                context_round_trip(&mut c, &mut z, &messages(), false, true);
                c.close_normally();
            },
        ),
        case(
            "13.3.3 browser offer (client_max_window_bits) with context takeover",
            move |s| {
                let (mut c, params) = open_pmd(s, PMD_OFFER);
                assert!(!params.iter().any(|p| p.contains("no_context_takeover")), "{params:?}");
                let mut z = Compress::new(Compression::new(9), false);
                context_round_trip(&mut c, &mut z, &messages(), false, true);
                c.close_normally();
            },
        ),
        case(
            "13.4.1 client_no_context_takeover offered: answered, fresh windows work",
            move |s| {
                let (mut c, params) = open_pmd(s, "permessage-deflate; client_no_context_takeover");
                assert!(params.contains(&"client_no_context_takeover".into()), "{params:?}");
                let mut z = Compress::new(Compression::new(1), false);
                context_round_trip(&mut c, &mut z, &messages(), true, true);
                c.close_normally();
            },
        ),
        case(
            "13.4.2 server_no_context_takeover offered: answered, replies inflate alone",
            move |s| {
                let (mut c, params) = open_pmd(s, "permessage-deflate; server_no_context_takeover");
                assert!(params.contains(&"server_no_context_takeover".into()), "{params:?}");
                let mut z = Compress::new(Compression::new(6), false);
                context_round_trip(&mut c, &mut z, &messages(), false, false);
                c.close_normally();
            },
        ),
        case(
            "13.5.1 compressed, uncompressed, compressed: the window survives",
            |s| {
                let (mut c, _) = open_pmd(s, "permessage-deflate");
                let mut z = Compress::new(Compression::new(6), false);
                let data = random_text(3000, 51);
                c.send_frame(true, RSV1, TEXT, &deflate_with(&mut z, &data));
                c.expect_text(&data);
                c.echo(TEXT, b"an uncompressed message in between");
                let again = deflate_with(&mut z, &data);
                assert!(again.len() < data.len() / 10, "{} bytes", again.len());
                c.send_frame(true, RSV1, TEXT, &again);
                c.expect_text(&data);
                c.close_normally();
            },
        ),
        case("13.5.2 fragmented compressed messages with context takeover", |s| {
            let (mut c, _) = open_pmd(s, "permessage-deflate");
            let mut z = Compress::new(Compression::new(6), false);
            for i in 0..5 {
                let data = text_payload(20_000 + i * 1000);
                let compressed = deflate_with(&mut z, &data);
                let bytes = c.fragmented_bytes(TEXT, RSV1, &split_n(&compressed, 4));
                c.send_raw(&bytes);
                c.expect_text(&data);
            }
            c.close_normally();
        }),
        case("13.5.3 64 KiB incompressible binaries with context takeover", |s| {
            let (mut c, _) = open_pmd(s, "permessage-deflate");
            let mut z = Compress::new(Compression::new(6), false);
            for i in 0..4 {
                let data = random_bytes(64 * KIB, 50 + i);
                c.send_frame(true, RSV1, BINARY, &deflate_with(&mut z, &data));
                c.expect_msg(BINARY, &data);
            }
            c.close_normally();
        }),
    ];
    Group {
        title: "13 permessage-deflate (--ws-compression context)",
        args: vec!["--ws-compression", "context"],
        cases,
    }
}

/// `--ws-compression off`.
pub fn deflate_off() -> Group {
    let cases = vec![
        case("13.6.1 offer ignored: no Sec-WebSocket-Extensions", |s| {
            let (mut c, resp) = Client::open_with(s, &offer(PMD_OFFER));
            assert_eq!(resp.header("sec-websocket-extensions"), None);
            c.echo(TEXT, b"plain");
            c.close_normally();
        }),
        case("13.6.2 RSV1 without the extension: 1002", |s| {
            let (mut c, _) = Client::open_with(s, &offer(PMD_OFFER));
            c.echo(TEXT, b"before");
            c.send_compressed(TEXT, &text_payload(1000));
            c.expect_fail(1002);
        }),
    ];
    Group {
        title: "13 permessage-deflate (--ws-compression off)",
        args: vec!["--ws-compression", "off"],
        cases,
    }
}
