//! Autobahn group 6: UTF-8 handling of text messages.

use super::harness::*;

/// Valid texts, echoed unchanged.
const VALID: [(&str, &[u8]); 16] = [
    ("empty", b""),
    ("ASCII", b"Hello, world!"),
    (
        "2-byte",
        "Hello-\u{b5}@\u{df}\u{f6}\u{e4}\u{fc}\u{e0}\u{e1}-UTF-8!!".as_bytes(),
    ),
    ("Greek kosme", "\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5}".as_bytes()),
    ("4-byte musical symbol", "\u{1D11E}".as_bytes()),
    ("emoji sequence", "\u{1F600}\u{1F44D}\u{1F3FD}".as_bytes()),
    ("U+0000", b"\0"),
    ("U+0080", &[0xC2, 0x80]),
    ("U+07FF", &[0xDF, 0xBF]),
    ("U+0800", &[0xE0, 0xA0, 0x80]),
    ("U+D7FF (last before surrogates)", &[0xED, 0x9F, 0xBF]),
    ("U+E000 (first after surrogates)", &[0xEE, 0x80, 0x80]),
    ("U+FFFD and U+FFFF", &[0xEF, 0xBF, 0xBD, 0xEF, 0xBF, 0xBF]),
    ("U+10000", &[0xF0, 0x90, 0x80, 0x80]),
    ("U+10FFFF", &[0xF4, 0x8F, 0xBF, 0xBF]),
    ("BOM", &[0xEF, 0xBB, 0xBF, b'x']),
];

/// Invalid sequences, each embedded as "abc" + seq + "xyz" (or at the end for truncations).
const INVALID: [(&str, &[u8]); 28] = [
    ("lone continuation 0x80", &[0x80]),
    ("lone continuation 0xBF", &[0xBF]),
    ("several continuation bytes", &[0x80, 0xBF, 0x80, 0xBF]),
    ("start byte then space", &[0xC2, b' ']),
    ("3-byte start then ASCII", &[0xE2, 0x28, 0xA1]),
    ("overlong NUL C0 80", &[0xC0, 0x80]),
    ("overlong slash C0 AF", &[0xC0, 0xAF]),
    ("overlong C1 BF", &[0xC1, 0xBF]),
    ("overlong 3-byte E0 80 80", &[0xE0, 0x80, 0x80]),
    ("overlong 3-byte E0 9F BF", &[0xE0, 0x9F, 0xBF]),
    ("overlong 4-byte F0 80 80 80", &[0xF0, 0x80, 0x80, 0x80]),
    ("overlong 4-byte F0 8F BF BF", &[0xF0, 0x8F, 0xBF, 0xBF]),
    ("surrogate U+D800", &[0xED, 0xA0, 0x80]),
    ("surrogate U+DB7F", &[0xED, 0xAD, 0xBF]),
    ("surrogate U+DC00", &[0xED, 0xB0, 0x80]),
    ("surrogate U+DFFF", &[0xED, 0xBF, 0xBF]),
    ("surrogate pair U+D800 U+DC00", &[0xED, 0xA0, 0x80, 0xED, 0xB0, 0x80]),
    ("U+110000 (F4 90 80 80)", &[0xF4, 0x90, 0x80, 0x80]),
    ("F5 start byte", &[0xF5, 0x80, 0x80, 0x80]),
    ("F7 BF BF BF", &[0xF7, 0xBF, 0xBF, 0xBF]),
    ("5-byte sequence", &[0xF8, 0x88, 0x80, 0x80, 0x80]),
    ("6-byte sequence", &[0xFC, 0x84, 0x80, 0x80, 0x80, 0x80]),
    ("byte FE", &[0xFE]),
    ("byte FF", &[0xFF]),
    ("2-byte sequence missing its last byte (mid-text)", &[0xC2]),
    ("3-byte sequence missing its last byte (mid-text)", &[0xE2, 0x82]),
    ("4-byte sequence missing its last byte (mid-text)", &[0xF0, 0x9D, 0x84]),
    ("4-byte start followed by a 2-byte sequence", &[0xF0, 0xC2, 0xB5]),
];

/// Sequences truncated at the very end of the message.
const TRUNCATED: [(&str, &[u8]); 4] = [
    ("2-byte", &[0xCE]),
    ("3-byte", &[0xE2, 0x82]),
    ("4-byte, 3 of 4", &[0xF0, 0x9D, 0x84]),
    ("4-byte, 1 of 4", &[0xF0]),
];

/// Immediately invalid prefixes for the fail-fast cases.
const FAIL_FAST: [(&str, &[u8]); 4] = [
    ("overlong C0 80", &[0xC0, 0x80]),
    ("surrogate ED A0 80", &[0xED, 0xA0, 0x80]),
    ("over U+10FFFF F4 90 80 80", &[0xF4, 0x90, 0x80, 0x80]),
    ("lone continuation 0x80", &[0x80]),
];

fn embed(seq: &[u8]) -> Vec<u8> {
    let mut v = b"abc".to_vec();
    v.extend_from_slice(seq);
    v.extend_from_slice(b"xyz");
    v
}

pub fn utf8() -> Group {
    let mut cases = Vec::new();
    for (i, (name, text)) in VALID.into_iter().enumerate() {
        cases.push(case(format!("6.1.{} valid {name}: echoed", i + 1), move |s| {
            let mut c = Client::open(s);
            c.echo(TEXT, text);
            c.close_normally();
        }));
    }
    // A text with 1-, 2-, 3- and 4-byte code points, split at every byte offset.
    let mixed = "a\u{b5}\u{20ac}\u{1D11E}z\u{3ba}\u{1f79}";
    let bytes = mixed.as_bytes();
    for at in 1..bytes.len() {
        cases.push(case(
            format!("6.2.{at} valid text split into 2 fragments at byte {at}"),
            move |s| {
                let mut c = Client::open(s);
                let frames = c.fragmented_bytes(TEXT, 0, &[&mixed.as_bytes()[..at], &mixed.as_bytes()[at..]]);
                c.send_raw(&frames);
                c.expect_text(mixed.as_bytes());
                c.close_normally();
            },
        ));
    }
    // The 4-byte code point of `mixed` starts at byte 6: split inside it with a ping between.
    for at in 7..10 {
        cases.push(case(
            format!(
                "6.2.{} code point split at byte {at} with a ping between the fragments",
                at + 50
            ),
            move |s| {
                let mut c = Client::open(s);
                let b = mixed.as_bytes();
                let bytes = c.frames(&[
                    (false, 0, TEXT, &b[..at]),
                    (true, 0, PING, b"p"),
                    (true, 0, CONT, &b[at..]),
                ]);
                c.send_raw(&bytes);
                c.expect_pong(b"p");
                c.expect_text(b);
                c.close_normally();
            },
        ));
    }
    cases.push(case("6.2.99 valid text, one byte per fragment", move |s| {
        let mut c = Client::open(s);
        let parts: Vec<&[u8]> = mixed.as_bytes().chunks(1).collect();
        let frames = c.fragmented_bytes(TEXT, 0, &parts);
        c.send_raw(&frames);
        c.expect_text(mixed.as_bytes());
        c.close_normally();
    }));
    cases.push(case("6.2.100 valid text, one frame written byte by byte", move |s| {
        let mut c = Client::open(s);
        let frame = c.frame_bytes(true, 0, TEXT, mixed.as_bytes());
        c.send_chopped(&frame, 1);
        c.expect_text(mixed.as_bytes());
        c.close_normally();
    }));
    for (i, (name, seq)) in INVALID.into_iter().enumerate() {
        cases.push(case(format!("6.3.{} invalid {name}: 1007", i + 1), move |s| {
            let mut c = Client::open(s);
            c.echo(TEXT, b"valid first");
            c.send_frame(true, 0, TEXT, &embed(seq));
            c.expect_fail(1007);
        }));
    }
    for (i, (name, seq)) in INVALID.into_iter().enumerate() {
        cases.push(case(
            format!("6.3.{} invalid {name}, written byte by byte: 1007", i + 51),
            move |s| {
                let mut c = Client::open(s);
                let frame = c.frame_bytes(true, 0, TEXT, &embed(seq));
                // The server may fail before the last bytes are written.
                c.send_chopped_until_closed(&frame, 1);
                c.expect_fail(1007);
            },
        ));
    }
    for (i, (name, seq)) in INVALID.into_iter().enumerate().step_by(3) {
        cases.push(case(
            format!("6.3.{} invalid {name} in the second fragment: 1007", i + 101),
            move |s| {
                let mut c = Client::open(s);
                let frames = c.fragmented_bytes(TEXT, 0, &[b"valid start ", &embed(seq), b" end"]);
                c.send_raw(&frames);
                c.expect_fail(1007);
            },
        ));
    }
    for (i, (name, seq)) in TRUNCATED.into_iter().enumerate() {
        cases.push(case(
            format!("6.5.{} message ends inside a {name} sequence: 1007", i + 1),
            move |s| {
                let mut c = Client::open(s);
                let mut text = "\u{3ba}\u{1f79}\u{3c3}\u{3bc}".as_bytes().to_vec();
                text.extend_from_slice(seq);
                c.send_frame(true, 0, TEXT, &text);
                c.expect_fail(1007);
            },
        ));
        cases.push(case(
            format!("6.5.{} fragmented message ends inside a {name} sequence: 1007", i + 11),
            move |s| {
                let mut c = Client::open(s);
                let frames = c.fragmented_bytes(TEXT, 0, &["\u{3ba}\u{1f79}".as_bytes(), seq]);
                c.send_raw(&frames);
                c.expect_fail(1007);
            },
        ));
    }
    for (i, (name, seq)) in FAIL_FAST.into_iter().enumerate() {
        cases.push(case(
            format!(
                "6.4.{} fail fast: first fragment (FIN=0) with {name}: 1007 before the rest is sent",
                i + 1
            ),
            move |s| {
                let mut c = Client::open(s);
                let mut first = b"Hello-".to_vec();
                first.extend_from_slice(seq);
                c.send_frame(false, 0, TEXT, &first);
                c.expect_fail(1007);
            },
        ));
        cases.push(case(
            format!("6.4.{} fail fast: later fragment (FIN=0) with {name}: 1007", i + 11),
            move |s| {
                let mut c = Client::open(s);
                let mut second = b"-edited".to_vec();
                second.extend_from_slice(seq);
                let frames = c.frames(&[
                    (false, 0, TEXT, "\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5}".as_bytes()),
                    (false, 0, CONT, &second),
                ]);
                c.send_raw(&frames);
                c.expect_fail(1007);
            },
        ));
        cases.push(case(
            format!(
                "6.4.{} fail fast inside one frame: {name} in the first bytes of a 4 KiB frame",
                i + 21
            ),
            move |s| {
                let mut c = Client::open(s);
                let mut payload = b"Hello-".to_vec();
                payload.extend_from_slice(seq);
                payload.resize(4096, b'x');
                let frame = c.frame_bytes(true, 0, TEXT, &payload);
                // Header (4) + mask key (4) + the first 16 payload bytes only.
                c.send_raw(&frame[..8 + 16]);
                c.expect_fail(1007);
            },
        ));
    }
    // An invalid multibyte sequence split across two fragments, at every offset.
    let split_invalid: [(&str, &[u8]); 4] = [
        ("surrogate ED A0 80", &[0xED, 0xA0, 0x80]),
        ("overlong F0 80 80 80", &[0xF0, 0x80, 0x80, 0x80]),
        ("U+110000 F4 90 80 80", &[0xF4, 0x90, 0x80, 0x80]),
        ("overlong E0 80 AF", &[0xE0, 0x80, 0xAF]),
    ];
    let mut n = 40;
    for (name, seq) in split_invalid {
        for at in 1..seq.len() {
            n += 1;
            cases.push(case(
                format!("6.4.{n} {name} split across fragments after byte {at}: 1007 before the final fragment"),
                move |s| {
                    let mut c = Client::open(s);
                    let mut first = b"abc".to_vec();
                    first.extend_from_slice(&seq[..at]);
                    let mut second = seq[at..].to_vec();
                    second.extend_from_slice(b"xyz");
                    // Both fragments FIN=0: the server must fail without the end of the message.
                    let bytes = c.frames(&[(false, 0, TEXT, &first), (false, 0, CONT, &second)]);
                    c.send_raw(&bytes);
                    c.expect_fail(1007);
                },
            ));
        }
    }
    // The shortest prefixes that can never become valid: the server must fail on
    // the first impossible byte, with the rest of the frame not sent.
    let impossible: [(&str, &[u8]); 6] = [
        ("C0", &[0xC0]),
        ("C1", &[0xC1]),
        ("ED A0", &[0xED, 0xA0]),
        ("F4 90", &[0xF4, 0x90]),
        ("F5", &[0xF5]),
        ("E0 80", &[0xE0, 0x80]),
    ];
    for (i, (name, prefix)) in impossible.into_iter().enumerate() {
        cases.push(case(
            format!(
                "6.4.{} fail fast on the impossible prefix {name}, written byte by byte",
                i + 31
            ),
            move |s| {
                let mut c = Client::open(s);
                let mut payload = b"abc".to_vec();
                payload.extend_from_slice(prefix);
                let sent = 8 + payload.len();
                payload.resize(4096, b'x');
                let frame = c.frame_bytes(true, 0, TEXT, &payload);
                c.send_chopped_until_closed(&frame[..sent], 1);
                c.expect_fail(1007);
            },
        ));
    }
    Group {
        title: "6 UTF-8",
        args: vec![],
        cases,
    }
}
