//! Byte-level tests of the connection state machine, with virtual time.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::close::{CloseCode, CloseFrame};
use super::connection::{Event, QueueOverflow, WsConfig, WsConnection, WsEnd, WsState};
use super::deflate::{CompressionMode, DeflateParams, MessageCompressor};
use super::error::{ProtocolError, SendError};
use super::frame::{encode_frame, EncodedFrame, FrameHeader, OpCode};
use super::message::Message;
use crate::wire::{Traffic, WireBytes};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn t0() -> Instant {
    // Any fixed origin works: the engine only compares instants it was given.
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// A raw frame: `b0` is the whole first byte (FIN, RSV, opcode).
fn raw(b0: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let opcode = OpCode::from_u8(b0 & 0x0F).unwrap_or(OpCode::Binary);
    let mut header = FrameHeader::new(opcode, payload.len() as u64, mask);
    header.fin = b0 & 0x80 != 0;
    header.rsv1 = b0 & 0x40 != 0;
    header.rsv2 = b0 & 0x20 != 0;
    header.rsv3 = b0 & 0x10 != 0;
    let mut out = BytesMut::new();
    encode_frame(&mut out, &header, payload);
    out[0] = b0;
    out.to_vec()
}

/// A masked (client-to-server) frame.
fn c(b0: u8, payload: &[u8]) -> Vec<u8> {
    raw(b0, Some(KEY), payload)
}

/// An unmasked (server-to-client) frame.
fn s(b0: u8, payload: &[u8]) -> Vec<u8> {
    raw(b0, None, payload)
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn server() -> WsConnection {
    WsConnection::server(WsConfig::default(), None, t0())
}

fn client() -> WsConnection {
    WsConnection::client(WsConfig::default(), None, || KEY, t0())
}

fn shared_params() -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    }
}

fn context_params() -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        ..shared_params()
    }
}

fn events(conn: &mut WsConnection) -> Vec<Event> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

fn transmit(conn: &mut WsConnection) -> Vec<u8> {
    conn.take_output(t0()).to_vec()
}

/// Feeds `input` in the given pieces; returns the events and the bytes written.
fn run_pieces(mut conn: WsConnection, pieces: &[&[u8]]) -> (Vec<Event>, Vec<u8>, WsConnection) {
    for piece in pieces {
        conn.handle_input(piece, t0());
    }
    let ev = events(&mut conn);
    let out = transmit(&mut conn);
    (ev, out, conn)
}

fn run(conn: WsConnection, input: &[u8]) -> (Vec<Event>, Vec<u8>, WsConnection) {
    run_pieces(conn, &[input])
}

fn text(s: &str) -> Event {
    Event::Message(Message::Text(s.into()))
}

fn binary(b: &[u8]) -> Event {
    Event::Message(Message::Binary(Bytes::copy_from_slice(b)))
}

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut v = code.to_be_bytes().to_vec();
    v.extend_from_slice(reason.as_bytes());
    v
}

fn close_event(code: u16, reason: &str) -> Event {
    Event::Message(Message::Close(Some(super::close::CloseFrame {
        code: CloseCode(code),
        reason: reason.into(),
    })))
}

/// Server-side failure: the error event is last and a Close with `code` went out.
fn assert_server_fails(input: &[u8], error: ProtocolError) {
    assert_fails_with(server(), input, error);
}

fn assert_fails_with(conn: WsConnection, input: &[u8], error: ProtocolError) {
    let code = error.close_code().0;
    let is_server = conn.role() == super::Role::Server;
    let (ev, out, conn) = run(conn, input);
    assert_eq!(ev.last(), Some(&Event::ProtocolError(error.clone())), "events {ev:?}");
    // The Close frame the engine queued carries the code (parse it as the peer would).
    let (header, n) = FrameHeader::decode(&out).unwrap().unwrap();
    assert_eq!(header.opcode, OpCode::Close);
    let mut payload = out[n..].to_vec();
    if let Some(key) = header.mask {
        super::mask::apply_mask(&mut payload, key, 0);
    }
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code, "{error:?}");
    assert_eq!(conn.state(), WsState::Closed);
    assert!(conn.poll_close().is_some() || !is_server);
}

// ---------------------------------------------------------------------------
// Frames

#[test]
fn unfragmented_text_and_binary() {
    let input = cat(&[c(0x81, b"Hello"), c(0x82, &[1, 2, 3])]);
    let (ev, out, _) = run(server(), &input);
    assert_eq!(ev, vec![text("Hello"), binary(&[1, 2, 3])]);
    assert!(out.is_empty());
}

#[test]
fn all_three_length_encodings() {
    for len in [0usize, 125, 126, 65535, 65536, 70000] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let (ev, _, _) = run(server(), &c(0x82, &payload));
        assert_eq!(ev, vec![binary(&payload)], "len {len}");
    }
    // Non-minimal encodings are accepted.
    let mut frame = vec![0x82, 0x80 | 126, 0, 3];
    frame.extend_from_slice(&KEY);
    frame.extend(b"abc".iter().zip(KEY.iter().cycle()).map(|(b, k)| b ^ k));
    assert_eq!(run(server(), &frame).0, vec![binary(b"abc")]);
}

#[test]
fn payload_is_zero_copy_from_read_buffer() {
    let mut conn = server();
    let input = c(0x82, &[7; 1000]);
    conn.handle_input(&input, t0());
    match conn.poll_event() {
        Some(Event::Message(Message::Binary(b))) => assert_eq!(b.len(), 1000),
        other => panic!("{other:?}"),
    }
}

#[test]
fn server_rejects_unmasked_client_frame() {
    assert_server_fails(&s(0x81, b"hi"), ProtocolError::UnmaskedClientFrame);
}

#[test]
fn client_rejects_masked_server_frame() {
    assert_fails_with(client(), &c(0x81, b"hi"), ProtocolError::MaskedServerFrame);
    let (ev, _, _) = run(client(), &s(0x81, b"hi"));
    assert_eq!(ev, vec![text("hi")]);
}

#[test]
fn client_masks_every_frame_with_keys_from_source() {
    let mut next = 0u8;
    let mut conn = WsConnection::client(
        WsConfig::default(),
        None,
        move || {
            next += 1;
            [next, 0, 0, next]
        },
        t0(),
    );
    conn.send_text("ab").unwrap();
    conn.send_binary(vec![1u8, 2]).unwrap();
    let out = transmit(&mut conn);
    assert_eq!(
        out,
        [0x81, 0x82, 1, 0, 0, 1, b'a' ^ 1, b'b', 0x82, 0x82, 2, 0, 0, 2, 1 ^ 2, 2]
    );
    // And a server decodes them.
    assert_eq!(run(server(), &out).0, vec![text("ab"), binary(&[1, 2])]);
}

#[test]
fn server_frames_are_unmasked_and_minimal() {
    let mut conn = server();
    conn.send_text("Hello").unwrap();
    conn.send_binary(vec![0u8; 300]).unwrap();
    let out = transmit(&mut conn);
    assert_eq!(&out[..7], &[0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
    assert_eq!(&out[7..11], &[0x82, 126, 0x01, 0x2c]);
    assert_eq!(out.len(), 11 + 300);
}

#[test]
fn control_frame_rules() {
    assert_server_fails(&c(0x89, &[0; 126]), ProtocolError::ControlFrameTooLong);
    assert_server_fails(&c(0x09, b"x"), ProtocolError::FragmentedControlFrame);
    assert_server_fails(
        &c(0x08, &close_payload(1000, "")),
        ProtocolError::FragmentedControlFrame,
    );
    // 125 is fine.
    let (ev, _, _) = run(server(), &c(0x89, &[1; 125]));
    assert_eq!(ev, vec![Event::Message(Message::Ping(Bytes::from(vec![1; 125])))]);
}

#[test]
fn reserved_opcodes_fail_with_1002() {
    for op in (0x3..=0x7).chain(0xB..=0xF) {
        assert_server_fails(&c(0x80 | op, b""), ProtocolError::ReservedOpcode(op));
    }
}

#[test]
fn rsv_bits_without_extension_fail() {
    for b0 in [0xC1u8, 0xA1, 0x91] {
        assert_server_fails(&c(b0, b"x"), ProtocolError::ReservedBitsSet);
    }
}

#[test]
fn rsv1_only_on_first_data_frame_with_deflate() {
    let deflate = || WsConnection::server(WsConfig::default(), Some(shared_params()), t0());
    // RSV1 on a continuation.
    assert_fails_with(
        deflate(),
        &cat(&[c(0x01, b"a"), c(0xC0, b"b")]),
        ProtocolError::Rsv1NotOnFirstDataFrame,
    );
    // RSV1 on control frames.
    assert_fails_with(deflate(), &c(0xC9, b""), ProtocolError::Rsv1NotOnFirstDataFrame);
    assert_fails_with(deflate(), &c(0xC8, b""), ProtocolError::Rsv1NotOnFirstDataFrame);
    // RSV2/RSV3 still rejected with deflate.
    assert_fails_with(deflate(), &c(0xA1, b""), ProtocolError::ReservedBitsSet);
}

#[test]
fn continuation_without_message_fails() {
    assert_server_fails(&c(0x80, b"x"), ProtocolError::UnexpectedContinuation);
}

#[test]
fn new_data_frame_inside_fragmented_message_fails() {
    assert_server_fails(
        &cat(&[c(0x01, b"a"), c(0x81, b"b")]),
        ProtocolError::ExpectedContinuation,
    );
    assert_server_fails(
        &cat(&[c(0x02, b"a"), c(0x02, b"b")]),
        ProtocolError::ExpectedContinuation,
    );
}

#[test]
fn sixty_four_bit_length_msb_fails() {
    let mut frame = vec![0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0];
    frame.extend_from_slice(&KEY);
    assert_server_fails(&frame, ProtocolError::PayloadLengthMsbSet);
}

// ---------------------------------------------------------------------------
// Fragmentation and control frames

#[test]
fn fragmented_message_with_ping_in_the_middle() {
    let input = cat(&[c(0x01, b"Hel"), c(0x89, b"ping!"), c(0x00, b"l"), c(0x80, b"o")]);
    let (ev, out, _) = run(server(), &input);
    assert_eq!(
        ev,
        vec![
            Event::Message(Message::Ping(Bytes::from_static(b"ping!"))),
            text("Hello")
        ]
    );
    // Automatic pong with the same payload, sent at once.
    assert_eq!(out, s(0x8A, b"ping!"));
}

#[test]
fn fragmented_message_with_close_in_the_middle() {
    let input = cat(&[c(0x01, b"Hel"), c(0x88, &close_payload(1000, "bye")), c(0x80, b"lo")]);
    let (ev, out, conn) = run(server(), &input);
    assert_eq!(ev, vec![close_event(1000, "bye")]);
    assert_eq!(out, s(0x88, &close_payload(1000, "")));
    assert_eq!(conn.state(), WsState::Closed);
    assert!(conn.poll_close().is_some());
}

#[test]
fn auto_pong_can_be_disabled_and_pongs_surface() {
    let config = WsConfig {
        auto_pong: false,
        ..WsConfig::default()
    };
    let (ev, out, _) = run(
        WsConnection::server(config.clone(), None, t0()),
        &cat(&[c(0x89, b"a"), c(0x8A, b"b")]),
    );
    assert!(out.is_empty());
    assert_eq!(
        ev,
        vec![
            Event::Message(Message::Ping(Bytes::from_static(b"a"))),
            Event::Message(Message::Pong(Bytes::from_static(b"b")))
        ]
    );
}

// ---------------------------------------------------------------------------
// UTF-8

#[test]
fn utf8_code_point_split_across_fragments_is_valid() {
    let euro = "€".as_bytes();
    let input = cat(&[c(0x01, &euro[..1]), c(0x00, &euro[1..2]), c(0x80, &euro[2..])]);
    assert_eq!(run(server(), &input).0, vec![text("€")]);
}

#[test]
fn invalid_utf8_fails_fast_on_first_fragment() {
    // The first fragment is invalid; no further fragment is needed to fail.
    let mut first = "κόσμε".as_bytes().to_vec();
    first.extend_from_slice(&[0xed, 0xa0, 0x80]);
    assert_server_fails(&c(0x01, &first), ProtocolError::InvalidUtf8);
}

#[test]
fn invalid_utf8_fails_fast_inside_a_partial_frame() {
    // Only part of one frame's payload has arrived: the invalid byte is enough.
    let frame = c(0x81, &[b'a', b'b', 0xff, b'c', b'd', b'e']);
    let header_len = 6;
    let (ev, _, _) = run(server(), &frame[..header_len + 3]);
    assert_eq!(ev, vec![Event::ProtocolError(ProtocolError::InvalidUtf8)]);
    // A valid prefix alone does not fail.
    let (ev, _, _) = run(server(), &frame[..header_len + 2]);
    assert!(ev.is_empty());
}

#[test]
fn text_ending_inside_a_code_point_fails() {
    assert_server_fails(&c(0x81, &[b'a', 0xe2, 0x82]), ProtocolError::InvalidUtf8);
    assert_server_fails(
        &cat(&[c(0x01, b"a"), c(0x80, &[0xf0, 0x9f])]),
        ProtocolError::InvalidUtf8,
    );
}

#[test]
fn binary_is_not_utf8_validated() {
    assert_eq!(run(server(), &c(0x82, &[0xff])).0, vec![binary(&[0xff])]);
}

// ---------------------------------------------------------------------------
// Close

#[test]
fn close_echoes_code_without_reason() {
    let (ev, out, conn) = run(server(), &c(0x88, &close_payload(4001, "app reason")));
    assert_eq!(ev, vec![close_event(4001, "app reason")]);
    assert_eq!(out, s(0x88, &close_payload(4001, "")));
    assert_eq!(conn.state(), WsState::Closed);
}

#[test]
fn close_without_code_echoed_empty() {
    let (ev, out, _) = run(server(), &c(0x88, b""));
    assert_eq!(ev, vec![Event::Message(Message::Close(None))]);
    assert_eq!(out, s(0x88, b""));
}

#[test]
fn close_payload_rules() {
    assert_server_fails(&c(0x88, &[0x03]), ProtocolError::OneByteClosePayload);
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        assert_server_fails(
            &c(0x88, &close_payload(code, "")),
            ProtocolError::InvalidCloseCode(code),
        );
    }
    let mut bad_reason = close_payload(1000, "");
    bad_reason.extend_from_slice(&[
        0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80,
    ]);
    assert_server_fails(&c(0x88, &bad_reason), ProtocolError::InvalidCloseReason);
}

#[test]
fn input_after_peer_close_is_ignored() {
    let input = cat(&[c(0x88, &close_payload(1000, "")), c(0x81, b"late"), vec![0xff, 0xff]]);
    let (ev, _, _) = run(server(), &input);
    assert_eq!(ev, vec![close_event(1000, "")]);
}

#[test]
fn user_close_validation() {
    let mut conn = server();
    for code in [1005u16, 1006, 1015, 999, 1004, 2000, 5000] {
        assert_eq!(
            conn.close(CloseCode(code), "", t0()),
            Err(SendError::InvalidCloseCode(code))
        );
    }
    assert_eq!(
        conn.close(CloseCode::NORMAL, &"x".repeat(124), t0()),
        Err(SendError::CloseReasonTooLong(124))
    );
    assert_eq!(conn.state(), WsState::Open);
    conn.close(CloseCode::NORMAL, &"x".repeat(123), t0()).unwrap();
    assert_eq!(conn.state(), WsState::Closing);
    assert_eq!(conn.send(Message::Close(None)), Err(SendError::Closed));
}

#[test]
fn a_close_message_without_a_frame_closes_with_1000() {
    // Through `send` (its timer armed at the next call with the time)...
    let mut conn = server();
    conn.send(Message::Close(None)).unwrap();
    assert_eq!(conn.state(), WsState::Closing);
    assert_eq!(
        conn.take_output(secs(1)),
        Bytes::from(s(0x88, &close_payload(1000, "")))
    );
    assert_eq!(conn.poll_timeout(), Some(secs(1) + Duration::from_secs(5)));
    // ... and through `close_with`, with a frame or without.
    let mut conn = server();
    conn.close_with(None, t0()).unwrap();
    assert_eq!(transmit(&mut conn), s(0x88, &close_payload(1000, "")));
    let mut conn = server();
    let frame = CloseFrame {
        code: CloseCode(4000),
        reason: "done".into(),
    };
    conn.close_with(Some(&frame), t0()).unwrap();
    assert_eq!(transmit(&mut conn), s(0x88, &close_payload(4000, "done")));
}

#[test]
fn nothing_is_sent_after_close() {
    let mut conn = server();
    conn.close(CloseCode::GOING_AWAY, "bye", t0()).unwrap();
    assert_eq!(conn.send_text("x"), Err(SendError::Closed));
    assert_eq!(conn.ping(Bytes::new()), Err(SendError::Closed));
    assert_eq!(conn.send_encoded(&EncodedFrame::text("x")), Err(SendError::Closed));
    assert_eq!(conn.close(CloseCode::NORMAL, "", t0()), Err(SendError::Closed));
    assert_eq!(transmit(&mut conn), s(0x88, &close_payload(1001, "bye")));
    // A ping from the peer is surfaced but not answered.
    conn.handle_input(&c(0x89, b"p"), t0());
    assert_eq!(
        events(&mut conn),
        vec![Event::Message(Message::Ping(Bytes::from_static(b"p")))]
    );
    assert!(transmit(&mut conn).is_empty());
}

#[test]
fn data_after_sending_close_is_ignored_until_peer_close() {
    let mut conn = server();
    // A fragmented message is in progress when we close.
    conn.handle_input(&c(0x01, b"par"), t0());
    conn.close(CloseCode::NORMAL, "", t0()).unwrap();
    transmit(&mut conn);
    let input = cat(&[
        c(0x80, b"tial"),
        c(0x81, b"new"),
        c(0x02, b"x"),
        c(0x88, &close_payload(1000, "")),
    ]);
    conn.handle_input(&input, t0());
    assert_eq!(events(&mut conn), vec![close_event(1000, "")]);
    assert!(transmit(&mut conn).is_empty(), "no second close");
    assert_eq!(conn.state(), WsState::Closed);
    assert!(conn.poll_close().is_some());
}

#[test]
fn close_handshake_deadline() {
    let config = WsConfig {
        close_timeout: Duration::from_secs(5),
        ..WsConfig::default()
    };
    let mut conn = WsConnection::server(config.clone(), None, t0());
    assert_eq!(conn.poll_timeout(), None);
    conn.close(CloseCode::NORMAL, "", t0()).unwrap();
    transmit(&mut conn);
    assert_eq!(conn.poll_timeout(), Some(t0() + Duration::from_secs(5)));
    conn.handle_timeout(t0() + Duration::from_secs(4));
    assert!(conn.poll_close().is_none());
    conn.handle_timeout(t0() + Duration::from_secs(5));
    assert!(conn.poll_close().is_some());
    assert_eq!(conn.state(), WsState::Closed);
    assert_eq!(conn.poll_timeout(), None);
}

#[test]
fn a_message_and_a_close_in_one_read_get_the_reply_before_the_close_reply() {
    // The bytes: `hi`, then Close 1000, in one segment.
    let mut conn = server();
    conn.handle_input(b"\x81\x82\0\0\0\0hi\x88\x82\0\0\0\0\x03\xe8", t0());
    assert_eq!(conn.state(), WsState::Open, "the close waits behind the message");
    assert_eq!(conn.poll_event(), Some(text("hi")));
    conn.send_text("hi").unwrap();
    assert_eq!(conn.poll_event(), Some(close_event(1000, "")));
    assert_eq!(conn.poll_event(), None);
    assert_eq!(
        transmit(&mut conn),
        cat(&[s(0x81, b"hi"), s(0x88, &close_payload(1000, ""))])
    );
    assert!(conn.poll_close().is_some());
    assert_eq!(conn.poll_close(), Some(WsEnd::Closed));
}

#[test]
fn every_message_before_a_violation_is_delivered_and_answered_first() {
    let mut conn = server();
    let input = cat(&[c(0x81, b"one"), c(0x82, b"two"), c(0x83, b"bad opcode")]);
    conn.handle_input(&input, t0());
    assert_eq!(conn.poll_event(), Some(text("one")));
    conn.send_text("1").unwrap();
    assert_eq!(conn.poll_event(), Some(binary(b"two")));
    conn.send_text("2").unwrap();
    assert_eq!(
        conn.poll_event(),
        Some(Event::ProtocolError(ProtocolError::ReservedOpcode(3)))
    );
    let out = transmit(&mut conn);
    assert!(out.starts_with(&cat(&[s(0x81, b"1"), s(0x81, b"2")])), "{out:?}");
    assert_eq!((out[6], &out[8..10]), (0x88, &[0x03, 0xEA][..]), "then the 1002 close");
    assert_eq!(conn.poll_close(), Some(WsEnd::ProtocolError));
}

#[test]
fn messages_buffered_when_the_transport_ends_are_still_delivered() {
    let mut conn = server();
    conn.handle_input(&cat(&[c(0x81, b"a"), c(0x81, b"b"), c(0x81, b"partial")])[..14], t0());
    conn.handle_eof(t0());
    assert_eq!(events(&mut conn), vec![text("a"), text("b"), Event::AbnormalClosure]);
    assert_eq!(conn.poll_close(), Some(WsEnd::Abnormal));
}

#[test]
fn control_frames_after_a_waiting_message_wait_with_it() {
    // A ping behind an untaken message is answered once the message is taken.
    let mut conn = server();
    conn.handle_input(&cat(&[c(0x81, b"m"), c(0x89, b"p")]), t0());
    assert!(transmit(&mut conn).is_empty());
    assert_eq!(conn.poll_event(), Some(text("m")));
    assert_eq!(
        conn.poll_event(),
        Some(Event::Message(Message::Ping(Bytes::from_static(b"p"))))
    );
    assert_eq!(transmit(&mut conn), s(0x8A, b"p"));
}

fn limited(limit: usize, overflow: QueueOverflow) -> WsConnection {
    let config = WsConfig {
        max_queued_bytes: limit,
        queue_overflow: overflow,
        ..WsConfig::default()
    };
    WsConnection::server(config, None, t0())
}

#[test]
fn a_full_queue_refuses_and_pauses_reading_under_refuse() {
    let mut conn = limited(100, QueueOverflow::Refuse);
    assert!(conn.can_send(98), "98 + 2 header bytes fit");
    assert!(!conn.can_send(10_000) || conn.queued_bytes() == 0);
    conn.send_binary(vec![0u8; 150]).unwrap(); // an empty queue takes any message
    assert!(!conn.can_send(1));
    assert!(!conn.wants_read());
    assert_eq!(
        conn.send_text("x"),
        Err(SendError::QueueFull {
            queued: 154,
            limit: 100
        })
    );
    assert_eq!(conn.state(), WsState::Open, "refusing changes nothing");
    conn.handle_written(60, t0());
    assert!(conn.can_send(1) && conn.wants_read());
}

#[test]
fn a_full_queue_closes_the_slow_consumer_with_1008_under_close() {
    let mut conn = limited(100, QueueOverflow::Close);
    conn.send_binary(vec![0u8; 150]).unwrap();
    assert!(conn.wants_read(), "the close policy never pauses reading");
    assert_eq!(
        conn.send_text("x"),
        Err(SendError::SlowConsumer {
            queued: 154,
            limit: 100
        })
    );
    assert_eq!(conn.state(), WsState::Closing);
    assert_eq!(conn.send_text("x"), Err(SendError::Closed));
    assert!(
        !conn.wants_read(),
        "nothing is read while our close waits to be written"
    );
    // The close frame follows what was queued; its timer starts with the
    // first offer to write it.
    assert!(conn.poll_transmit(secs(2)).count() > 0);
    assert_eq!(conn.poll_timeout(), Some(secs(7)));
    let out = transmit(&mut conn);
    assert!(out.ends_with(&s(0x88, &close_payload(1008, "slow consumer"))));
    assert!(conn.wants_read(), "written: read on, for the peer's close");
    conn.handle_timeout(secs(7));
    assert_eq!(conn.poll_close(), Some(WsEnd::CloseTimeout));
}

#[test]
fn automatic_pongs_bypass_the_limit_and_pause_reading_under_either_policy() {
    for overflow in [QueueOverflow::Close, QueueOverflow::Refuse] {
        let mut conn = limited(100, overflow);
        conn.send_binary(vec![0u8; 150]).unwrap();
        // A ping behind a large reply is answered, not punished.
        conn.handle_input(&cat(&[c(0x89, b"p"), c(0x89, b"q")]), secs(1));
        assert_eq!(conn.state(), WsState::Open, "{overflow:?}");
        assert!(!conn.wants_read(), "{overflow:?}: pongs over the limit pause reading");
        conn.handle_written(100, secs(2));
        assert!(conn.wants_read(), "{overflow:?}: below the limit again");
        let out = transmit(&mut conn);
        assert!(out.ends_with(&cat(&[s(0x8A, b"p"), s(0x8A, b"q")])), "{overflow:?}");
    }
}

#[test]
fn replies_bypass_the_limit_under_refuse_and_obey_it_under_close() {
    let mut conn = limited(100, QueueOverflow::Refuse);
    conn.send_binary(vec![0u8; 150]).unwrap();
    conn.send_reply(Message::Binary(Bytes::from(vec![1u8; 150]))).unwrap();
    conn.send_reply(Message::Pong(Bytes::from_static(b"x"))).unwrap();
    assert_eq!(conn.queued_bytes(), 2 * 154 + 3);
    assert!(!conn.wants_read(), "answers over the limit pause reading");
    assert_eq!(
        conn.send_reply(Message::Ping(Bytes::from(vec![0u8; 126]))),
        Err(SendError::ControlPayloadTooLong(126))
    );
    let mut conn = limited(100, QueueOverflow::Close);
    conn.send_binary(vec![0u8; 150]).unwrap();
    assert!(matches!(
        conn.send_reply(Message::Binary(Bytes::from(vec![1u8; 150]))),
        Err(SendError::SlowConsumer { .. })
    ));
    assert_eq!(conn.state(), WsState::Closing);
}

#[test]
fn a_queue_room_admits_by_the_engine_s_rule_and_send_admitted_queues_without_it() {
    let mut conn = limited(100, QueueOverflow::Refuse);
    conn.send_binary(vec![0u8; 60]).unwrap();
    let mut room = conn.queue_room();
    assert_eq!(room.admit(30), Ok(()), "62 + 32 fit 100");
    assert_eq!(room.admit(30), Err(SendError::QueueFull { queued: 94, limit: 100 }));
    // Meanwhile the engine queued an answer; the admitted message still goes in.
    conn.handle_input(&c(0x89, b"p"), t0());
    conn.send_admitted(Message::Binary(Bytes::from(vec![1u8; 30]))).unwrap();
    assert_eq!(conn.queued_bytes(), 62 + 3 + 32);
    let mut room = limited(100, QueueOverflow::Close).queue_room();
    assert_eq!(room.admit_frame(100), Ok(()), "an empty queue takes any one frame");
    assert!(matches!(room.admit(1), Err(SendError::SlowConsumer { .. })));
    assert_eq!(room.admit(1), Err(SendError::Closed), "then it is closing");
    let mut closing = server();
    closing.close(CloseCode::NORMAL, "", t0()).unwrap();
    assert_eq!(closing.queue_room().admit(1), Err(SendError::Closed));
    assert_eq!(
        closing.send_admitted(Message::Binary(Bytes::new())),
        Err(SendError::Closed)
    );
}

#[test]
fn output_that_makes_no_progress_ends_the_connection_at_the_write_timeout() {
    let config = WsConfig {
        write_timeout: Duration::from_secs(30),
        ..WsConfig::default()
    };
    let mut conn = WsConnection::server(config, None, t0());
    conn.send_binary(vec![1u8; 1000]).unwrap();
    // Not offered yet: no timer (a send carries no time).
    assert_eq!(conn.poll_timeout(), None);
    assert_eq!(conn.poll_transmit(secs(10)).count(), 1);
    assert_eq!(conn.poll_timeout(), Some(secs(40)));
    // Progress restarts it; the rest stalls.
    conn.handle_written(500, secs(20));
    assert_eq!(conn.poll_timeout(), Some(secs(50)));
    conn.handle_timeout(secs(49));
    assert_eq!(conn.state(), WsState::Open);
    conn.handle_timeout(secs(50));
    assert!(conn.poll_close().is_some());
    assert_eq!(conn.poll_close(), Some(WsEnd::WriteTimeout));
    assert_eq!(conn.queued_bytes(), 0, "what cannot be written is dropped");
    assert_eq!(conn.send_text("x"), Err(SendError::Closed));
    assert_eq!(conn.poll_timeout(), None);
    // Written in full, nothing is pending.
    let mut conn = server();
    conn.send_text("x").unwrap();
    transmit(&mut conn);
    assert_eq!(conn.poll_timeout(), None);
}

#[test]
fn the_write_timeout_also_bounds_a_close_that_cannot_be_written() {
    let config = WsConfig {
        write_timeout: Duration::from_secs(3),
        close_timeout: Duration::from_secs(60),
        ..WsConfig::default()
    };
    let mut conn = WsConnection::server(config, None, t0());
    conn.close(CloseCode::NORMAL, "", t0()).unwrap();
    assert_eq!(conn.poll_transmit(t0()).count(), 1);
    assert_eq!(conn.poll_timeout(), Some(secs(3)));
    conn.handle_timeout(secs(3));
    assert_eq!(conn.poll_close(), Some(WsEnd::WriteTimeout));
}

#[test]
fn shutdown_closes_an_open_connection_with_1001_once() {
    let mut conn = server();
    conn.handle_shutdown(t0());
    assert_eq!(
        transmit(&mut conn),
        s(0x88, &close_payload(1001, "server shutting down"))
    );
    assert_eq!(conn.poll_timeout(), Some(secs(5)));
    conn.handle_shutdown(secs(1));
    assert!(
        transmit(&mut conn).is_empty(),
        "a closing connection finishes its handshake"
    );
    conn.handle_input(&c(0x88, &close_payload(1001, "")), secs(1));
    assert_eq!(conn.poll_close(), Some(WsEnd::Closed));
    let mut cli = client();
    cli.handle_shutdown(t0());
    assert!(transmit(&mut cli).starts_with(&[0x88, 0x80 | 12]));
}

#[test]
fn stats_count_messages_bytes_and_who_closed() {
    let mut conn = server();
    let input = cat(&[c(0x81, b"one"), c(0x82, b"two"), c(0x89, b"p")]);
    conn.handle_input(&input, t0());
    assert_eq!(events(&mut conn).len(), 3);
    conn.send_text("reply").unwrap();
    conn.send_encoded(&EncodedFrame::text("shared")).unwrap();
    let written = transmit(&mut conn).len();
    conn.handle_input(&c(0x88, &close_payload(4000, "bye")), t0());
    let _ = events(&mut conn);
    let written = written + transmit(&mut conn).len();
    let stats = conn.stats();
    assert_eq!(
        (stats.messages_in, stats.messages_out),
        (2, 2),
        "pings and closes are not messages"
    );
    assert_eq!(
        stats.traffic.received.total() as usize,
        input.len() + c(0x88, &close_payload(4000, "bye")).len()
    );
    assert_eq!(stats.traffic.sent.total() as usize, written);
    assert_eq!((stats.close_received, stats.close_sent), (4000, 4000));
    assert_eq!(stats.closed_here_first, Some(false), "the peer closed first");
    let mut conn = server();
    conn.close(CloseCode::GOING_AWAY, "", t0()).unwrap();
    conn.handle_input(&c(0x88, b""), t0());
    let stats = conn.stats();
    assert_eq!(
        (stats.close_sent, stats.close_received, stats.closed_here_first),
        (1001, 1005, Some(true))
    );
}

#[test]
fn quiescent_only_when_open_with_nothing_in_progress() {
    let mut conn = server();
    assert!(conn.is_quiescent(), "a fresh connection");
    let frame = c(0x82, b"hello");
    conn.handle_input(&frame[..3], t0());
    assert!(!conn.is_quiescent(), "a partial frame header is buffered");
    conn.handle_input(&frame[3..], t0());
    assert!(!conn.is_quiescent(), "an event waits to be taken");
    assert_eq!(events(&mut conn), vec![binary(b"hello")]);
    assert!(conn.is_quiescent());
    conn.handle_input(&c(0x02, b"first half"), t0());
    assert!(events(&mut conn).is_empty());
    assert!(!conn.is_quiescent(), "a fragmented message is in progress");
    conn.handle_input(&c(0x80, b""), t0());
    assert_eq!(events(&mut conn), vec![binary(b"first half")]);
    assert!(conn.is_quiescent());
    conn.send_text("out").unwrap();
    assert!(!conn.is_quiescent(), "output is queued");
    transmit(&mut conn);
    assert!(conn.is_quiescent());
    conn.handle_input(&c(0x89, b"p"), t0());
    assert_eq!(events(&mut conn).len(), 1);
    assert!(!conn.is_quiescent(), "the automatic pong is queued");
    transmit(&mut conn);
    assert!(conn.is_quiescent());
    conn.close(CloseCode::NORMAL, "", t0()).unwrap();
    transmit(&mut conn);
    assert!(!conn.is_quiescent(), "closing");
}

#[test]
fn retained_buffers_are_kept_between_messages_and_released_on_request() {
    let mut conn = server();
    conn.handle_input(&c(0x82, b"one"), t0());
    assert_eq!(events(&mut conn), vec![binary(b"one")]);
    assert_eq!(
        conn.buffer_capacity(),
        0,
        "by default a drained connection holds nothing"
    );

    conn.set_retain_buffers(true);
    conn.handle_input(&c(0x82, b"two"), t0());
    assert_eq!(events(&mut conn), vec![binary(b"two")]);
    let kept = conn.buffer_capacity();
    assert!(kept > 0, "retained");
    for i in 0..50u8 {
        conn.handle_input(&c(0x82, &[i; 100]), t0());
        assert_eq!(events(&mut conn), vec![binary(&[i; 100])]);
    }
    assert!(conn.buffer_capacity() <= kept.max(64 * 1024), "bounded, not growing");
    assert!(conn.is_quiescent(), "retention does not count as work in progress");
    conn.release_buffers();
    assert_eq!(conn.buffer_capacity(), 0);

    // The output buffer: kept after its bytes are taken, freed on release.
    conn.send_text("reply").unwrap();
    assert_eq!(transmit(&mut conn), s(0x81, b"reply"));
    assert!(conn.buffer_capacity() > 0, "output buffer retained");
    conn.send_text("again").unwrap();
    assert_eq!(transmit(&mut conn), s(0x81, b"again"));
    conn.release_buffers();
    assert_eq!(conn.buffer_capacity(), 0);

    // A read buffer grown past the limit is freed even with retention on.
    conn.handle_input(&c(0x82, &vec![7u8; 40 * 1024]), t0());
    assert_eq!(events(&mut conn).len(), 1);
    assert!(conn.buffer_capacity() < 40 * 1024, "{}", conn.buffer_capacity());
}

fn secs(n: u64) -> Instant {
    t0() + Duration::from_secs(n)
}

fn heartbeat(ping: Option<u64>, idle: Option<u64>) -> WsConfig {
    WsConfig {
        ping_interval: ping.map(Duration::from_secs),
        idle_timeout: idle.map(Duration::from_secs),
        ..WsConfig::default()
    }
}

#[test]
fn heartbeat_pings_every_interval_while_pongs_come_back() {
    let mut conn = WsConnection::server(heartbeat(Some(10), None), None, t0());
    assert_eq!(conn.poll_timeout(), Some(secs(10)));
    conn.handle_timeout(secs(9));
    assert!(transmit(&mut conn).is_empty(), "nothing before the interval");
    conn.handle_timeout(secs(10));
    assert_eq!(transmit(&mut conn), s(0x89, b"tether"));
    assert_eq!(conn.poll_timeout(), Some(secs(20)));
    conn.handle_input(&c(0x8A, b"tether"), secs(11));
    assert_eq!(
        events(&mut conn),
        vec![Event::Message(Message::Pong(Bytes::from_static(b"tether")))]
    );
    conn.handle_timeout(secs(20));
    assert_eq!(
        transmit(&mut conn),
        s(0x89, b"tether"),
        "answered: the next ping, no close"
    );
    assert_eq!(conn.state(), WsState::Open);
}

#[test]
fn heartbeat_without_pong_closes_with_1011_then_stops_firing() {
    let mut conn = WsConnection::server(heartbeat(Some(10), None), None, t0());
    conn.handle_timeout(secs(10));
    transmit(&mut conn);
    // Data is not a pong: the peer must answer the ping itself.
    conn.handle_input(&c(0x82, b"data"), secs(15));
    conn.handle_timeout(secs(20));
    assert_eq!(transmit(&mut conn), s(0x88, &close_payload(1011, "ping timeout")));
    assert_eq!(conn.state(), WsState::Closing);
    assert_eq!(conn.poll_timeout(), Some(secs(25)), "only the close deadline remains");
    conn.handle_timeout(secs(21));
    assert!(transmit(&mut conn).is_empty(), "no ping after the close");
    conn.handle_timeout(secs(25));
    assert!(conn.poll_close().is_some());
}

#[test]
fn heartbeat_ping_bypasses_a_full_queue() {
    let config = WsConfig {
        max_queued_bytes: 16,
        ..heartbeat(Some(1), None)
    };
    let mut conn = WsConnection::server(config.clone(), None, t0());
    conn.send_binary(vec![0u8; 64]).unwrap();
    assert!(matches!(
        conn.send_binary(vec![0u8; 1]),
        Err(SendError::QueueFull { .. })
    ));
    conn.handle_timeout(secs(1));
    let out = transmit(&mut conn);
    assert!(out.ends_with(&s(0x89, b"tether")), "the ping is queued behind the data");
}

#[test]
fn client_heartbeat_pings_are_masked() {
    let mut cli = WsConnection::client(heartbeat(Some(3), None), None, || KEY, t0());
    cli.handle_timeout(secs(3));
    assert_eq!(transmit(&mut cli), c(0x89, b"tether"));
}

#[test]
fn idle_timeout_closes_with_1001_and_restarts_with_any_input() {
    let mut conn = WsConnection::server(heartbeat(None, Some(30)), None, t0());
    assert_eq!(conn.poll_timeout(), Some(secs(30)));
    // A partial frame is input too.
    conn.handle_input(&c(0x82, b"abc")[..3], secs(20));
    assert_eq!(conn.poll_timeout(), Some(secs(50)));
    conn.handle_timeout(secs(49));
    assert!(transmit(&mut conn).is_empty());
    // Bytes read straight into the engine's buffer count as well.
    let rest = &c(0x82, b"abc")[3..];
    conn.read_buffer().extend_from_slice(rest);
    conn.handle_read(rest.len(), secs(40));
    assert_eq!(events(&mut conn), vec![binary(b"abc")]);
    assert_eq!(conn.poll_timeout(), Some(secs(70)));
    conn.handle_timeout(secs(70));
    assert_eq!(transmit(&mut conn), s(0x88, &close_payload(1001, "idle timeout")));
    assert_eq!(conn.state(), WsState::Closing);
    assert_eq!(conn.poll_timeout(), Some(secs(75)));
}

#[test]
fn idle_timeout_and_heartbeat_share_one_deadline_queue() {
    let mut conn = WsConnection::server(heartbeat(Some(10), Some(25)), None, t0());
    assert_eq!(conn.poll_timeout(), Some(secs(10)));
    conn.handle_timeout(secs(10));
    transmit(&mut conn);
    conn.handle_input(&c(0x8A, b"tether"), secs(12)); // the pong is input: idle restarts
    assert_eq!(conn.poll_timeout(), Some(secs(20)));
    conn.handle_timeout(secs(20));
    transmit(&mut conn);
    assert_eq!(conn.poll_timeout(), Some(secs(30)));
    conn.handle_input(&c(0x8A, b"tether"), secs(21));
    conn.handle_timeout(secs(30));
    transmit(&mut conn);
    conn.handle_timeout(secs(40)); // no pong for the ping at 30
    assert_eq!(transmit(&mut conn), s(0x88, &close_payload(1011, "ping timeout")));
}

#[test]
fn server_closes_transport_after_handshake_client_waits() {
    // Server initiates; client replies; server closes TCP.
    let mut srv = server();
    srv.close(CloseCode::NORMAL, "done", t0()).unwrap();
    let to_client = transmit(&mut srv);
    assert!(srv.poll_close().is_none());

    let mut cli = client();
    cli.handle_input(&to_client, t0());
    assert_eq!(events(&mut cli), vec![close_event(1000, "done")]);
    assert_eq!(cli.state(), WsState::CloseReceived);
    let to_server = transmit(&mut cli);
    assert_eq!(cli.state(), WsState::Closed);
    assert!(cli.poll_close().is_none(), "client waits for the server's TCP close");
    assert_eq!(cli.poll_timeout(), Some(t0() + Duration::from_secs(5)));

    srv.handle_input(&to_server, t0());
    assert_eq!(events(&mut srv), vec![close_event(1000, "")]);
    assert!(srv.poll_close().is_some());

    cli.handle_eof(t0());
    assert!(cli.poll_close().is_some());
    assert!(events(&mut cli).is_empty(), "clean close: no abnormal event");
}

#[test]
fn client_closes_transport_itself_at_deadline() {
    let mut cli = client();
    cli.close(CloseCode::NORMAL, "", t0()).unwrap();
    transmit(&mut cli);
    cli.handle_input(&s(0x88, &close_payload(1000, "")), t0() + Duration::from_secs(1));
    assert_eq!(cli.state(), WsState::Closed);
    assert!(cli.poll_close().is_none());
    cli.handle_timeout(t0() + Duration::from_secs(5));
    assert!(cli.poll_close().is_some());
}

#[test]
fn eof_without_close_is_abnormal() {
    let mut conn = server();
    conn.handle_input(&c(0x01, b"part"), t0());
    conn.handle_eof(t0());
    assert_eq!(events(&mut conn), vec![Event::AbnormalClosure]);
    assert!(conn.poll_close().is_some());
    assert_eq!(conn.send_text("x"), Err(SendError::Closed));
}

// ---------------------------------------------------------------------------
// Limits

#[test]
fn message_size_limit_checked_on_declared_frame_length() {
    let config = WsConfig {
        max_message_size: 100,
        ..WsConfig::default()
    };
    let frame = c(0x82, &[0; 101]);
    // Only the header arrived: already rejected.
    let (ev, _, _) = run(WsConnection::server(config.clone(), None, t0()), &frame[..8]);
    assert_eq!(
        ev,
        vec![Event::ProtocolError(ProtocolError::MessageTooLarge { limit: 100 })]
    );
    assert_fails_with(
        WsConnection::server(config.clone(), None, t0()),
        &frame,
        ProtocolError::MessageTooLarge { limit: 100 },
    );
    assert_eq!(
        run(WsConnection::server(config.clone(), None, t0()), &c(0x82, &[0; 100]))
            .0
            .len(),
        1
    );
}

#[test]
fn message_size_limit_across_fragments() {
    let config = WsConfig {
        max_message_size: 100,
        ..WsConfig::default()
    };
    let input = cat(&[c(0x02, &[0; 60]), c(0x00, &[0; 40]), c(0x80, &[0; 1])]);
    assert_fails_with(
        WsConnection::server(config.clone(), None, t0()),
        &input,
        ProtocolError::MessageTooLarge { limit: 100 },
    );
}

#[test]
fn frame_size_limit() {
    let config = WsConfig {
        max_frame_size: 10,
        ..WsConfig::default()
    };
    let input = c(0x02, &[0; 11]);
    assert_fails_with(
        WsConnection::server(config.clone(), None, t0()),
        &input,
        ProtocolError::FrameTooLarge { len: 11, limit: 10 },
    );
    // Many small frames may still make a bigger message.
    let ok = cat(&[c(0x02, &[0; 10]), c(0x80, &[0; 10])]);
    assert_eq!(
        run(WsConnection::server(config.clone(), None, t0()), &ok).0,
        vec![binary(&[0; 20])]
    );
}

#[test]
fn send_queue_backpressure() {
    let config = WsConfig {
        max_queued_bytes: 100,
        ..WsConfig::default()
    };
    let mut conn = WsConnection::server(config.clone(), None, t0());
    conn.send_binary(vec![0u8; 150]).unwrap(); // one message may overshoot
    assert_eq!(conn.queued_bytes(), 154);
    assert!(!conn.can_send(1));
    assert!(!conn.wants_read(), "reading pauses while the queue is full");
    assert_eq!(
        conn.send_text("x"),
        Err(SendError::QueueFull {
            queued: 154,
            limit: 100
        })
    );
    // Automatic pongs and close bypass the limit.
    conn.handle_input(&c(0x89, b"p"), t0());
    assert_eq!(conn.queued_bytes(), 157);
    let out = transmit(&mut conn);
    assert_eq!(out.len(), 157);
    assert_eq!(conn.queued_bytes(), 0);
    assert!(conn.wants_read());
    conn.send_text("x").unwrap();
    assert_eq!(conn.ping(vec![0u8; 126]), Err(SendError::ControlPayloadTooLong(126)));
}

#[test]
fn encoded_frame_is_shared_not_copied() {
    let frame = EncodedFrame::binary(&[5; 4000]);
    let mut a = server();
    let mut b = server();
    a.send_encoded(&frame).unwrap();
    b.send_encoded(&frame).unwrap();
    let chunk_a = a.poll_transmit(t0()).next().unwrap().as_ptr();
    let chunk_b = b.poll_transmit(t0()).next().unwrap().as_ptr();
    assert_eq!(chunk_a, frame.as_bytes().as_ptr());
    assert_eq!(chunk_b, frame.as_bytes().as_ptr());
    assert_eq!(client().send_encoded(&frame), Err(SendError::EncodedFrameOnClient));
}

#[test]
fn large_server_payload_queued_without_copy() {
    let payload = Bytes::from(vec![9u8; 10_000]);
    let mut conn = server();
    conn.send_binary(payload.clone()).unwrap();
    let chunks: Vec<&[u8]> = conn.poll_transmit(t0()).collect();
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[0], &[0x82, 126, 0x27, 0x10]);
    assert_eq!(chunks[1].as_ptr(), payload.as_ptr());
    conn.handle_written(10_004, t0());
    assert_eq!(conn.poll_transmit(t0()).count(), 0);
}

#[test]
fn idle_connection_holds_no_buffers() {
    let mut conn = WsConnection::server(WsConfig::default(), Some(shared_params()), t0());
    let input = cat(&[c(0x01, b"frag"), c(0x89, b"x"), c(0x80, b"ment"), c(0x82, &[1; 5000])]);
    conn.handle_input(&input[..input.len() - 100], t0());
    conn.handle_input(&input[input.len() - 100..], t0());
    conn.send_text("a reasonably long message that will be compressed")
        .unwrap();
    assert_eq!(events(&mut conn).len(), 3);
    transmit(&mut conn);
    assert_eq!(conn.buffer_capacity(), 0);
    assert!(!conn.holds_zlib_state(), "shared mode keeps no zlib state");
    println!("size_of::<WsConnection>() = {}", std::mem::size_of::<WsConnection>());
    // A parked callback-served WebSocket is this struct in a slab slot:
    // keep it small: 392, as before the limits moved into one shared `Arc`,
    // with the output queue both engines use and the end-of-connection
    // statistics (48 bytes) now inside, and 16 more for the bytes sent by
    // part (`wire::Traffic`; the slot is still the size of a parked held
    // HTTP request's, which is larger).
    assert!(std::mem::size_of::<WsConnection>() <= 408);
}

// ---------------------------------------------------------------------------
// permessage-deflate through the connection

fn compressed_client_frame(message: &[u8], b0: u8) -> Vec<u8> {
    let compressed = MessageCompressor::new(15, 6, true).compress(message);
    c(b0, &compressed)
}

#[test]
fn rfc7692_hello_through_connection() {
    let conn = WsConnection::server(WsConfig::default(), Some(shared_params()), t0());
    let frame = c(0xC1, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    assert_eq!(run(conn, &frame).0, vec![text("Hello")]);
    // Same bytes as two fragments (§7.2.3.1 second example).
    let conn = WsConnection::server(WsConfig::default(), Some(shared_params()), t0());
    let frames = cat(&[c(0x41, &[0xf2, 0x48, 0xcd]), c(0x80, &[0xc9, 0xc9, 0x07, 0x00])]);
    assert_eq!(run(conn, &frames).0, vec![text("Hello")]);
}

#[test]
fn compressed_frame_without_negotiation_fails() {
    assert_server_fails(&compressed_client_frame(b"Hello", 0xC1), ProtocolError::ReservedBitsSet);
}

#[test]
fn compressed_invalid_utf8_fails_1007() {
    let conn = WsConnection::server(WsConfig::default(), Some(shared_params()), t0());
    assert_fails_with(
        conn,
        &compressed_client_frame(&[b'a', 0xff], 0xC1),
        ProtocolError::InvalidUtf8,
    );
}

#[test]
fn corrupt_compressed_data_fails() {
    let conn = WsConnection::server(WsConfig::default(), Some(shared_params()), t0());
    assert_fails_with(
        conn,
        &c(0xC2, &[0xff, 0xff, 0xff]),
        ProtocolError::InvalidCompressedData,
    );
}

#[test]
fn compression_bomb_rejected_with_1009() {
    let config = WsConfig {
        max_message_size: 1 << 20,
        ..WsConfig::default()
    };
    let conn = WsConnection::server(config.clone(), Some(shared_params()), t0());
    let bomb = compressed_client_frame(&vec![0u8; 10 << 20], 0xC2);
    assert!(bomb.len() < 64 * 1024);
    assert_fails_with(conn, &bomb, ProtocolError::MessageTooLarge { limit: 1 << 20 });
}

fn round_trip(params: DeflateParams, context: bool) {
    let config = WsConfig::default();
    let mut cli = WsConnection::client(config.clone(), Some(params), || [1, 2, 3, 4], t0());
    let mut srv = WsConnection::server(config.clone(), Some(params), t0());
    let messages: Vec<String> = (0..4)
        .map(|i| format!("message number {i}: {}", "lorem ipsum ".repeat(20)))
        .collect();
    for m in &messages {
        cli.send_text(m.as_str()).unwrap();
        srv.send_text(m.as_str()).unwrap();
    }
    cli.send_text("tiny").unwrap(); // under min_message_size: sent uncompressed
    let to_server = transmit(&mut cli);
    let to_client = transmit(&mut srv);
    // The compressed frames carry RSV1; the tiny one does not.
    assert_eq!(to_server[0] & 0x40, 0x40);
    let mut expected: Vec<Event> = messages.iter().map(|m| text(m)).collect();
    assert_eq!(
        run(
            WsConnection::client(config.clone(), Some(params), || [0; 4], t0()),
            &to_client
        )
        .0,
        expected
    );
    expected.push(text("tiny"));
    srv.handle_input(&to_server, t0());
    assert_eq!(events(&mut srv), expected);
    assert_eq!(srv.holds_zlib_state(), context);
    assert_eq!(cli.holds_zlib_state(), context);
}

#[test]
fn deflate_round_trip_without_context_takeover() {
    round_trip(shared_params(), false);
}

#[test]
fn deflate_round_trip_with_context_takeover() {
    round_trip(context_params(), true);
}

#[test]
fn negotiated_window_bits_round_trip() {
    let params = DeflateParams {
        server_max_window_bits: 9,
        client_max_window_bits: 8,
        ..context_params()
    };
    round_trip(params, true);
    let _ = CompressionMode::Context;
}

// ---------------------------------------------------------------------------
// Split invariance and robustness

fn corpus() -> Vec<(&'static str, Vec<u8>, bool)> {
    let mut bad_utf8 = "κόσμε".as_bytes().to_vec();
    bad_utf8.extend_from_slice(&[0xed, 0xa0, 0x80, b'x']);
    let euro = "€".as_bytes();
    vec![
        ("text+binary", cat(&[c(0x81, b"Hello"), c(0x82, &[0; 300])]), false),
        ("lengths", cat(&[c(0x82, &[1; 126]), c(0x82, &[2; 65536])]), false),
        (
            "ping in fragments",
            cat(&[c(0x01, b"Hel"), c(0x89, b"p"), c(0x80, b"lo")]),
            false,
        ),
        (
            "close in fragments",
            cat(&[c(0x01, b"Hel"), c(0x88, &close_payload(1000, "x")), c(0x80, b"lo")]),
            false,
        ),
        (
            "utf8 split",
            cat(&[c(0x01, &euro[..1]), c(0x00, &euro[1..2]), c(0x80, &euro[2..])]),
            false,
        ),
        ("utf8 invalid", cat(&[c(0x01, &bad_utf8), c(0x80, b"more")]), false),
        ("unmasked", cat(&[c(0x81, b"ok"), s(0x81, b"hi")]), false),
        ("reserved opcode", cat(&[c(0x81, b"ok"), c(0x83, b"")]), false),
        ("one byte close", cat(&[c(0x81, b"ok"), c(0x88, &[3])]), false),
        ("bad close code", c(0x88, &close_payload(1005, "")), false),
        (
            "msb length",
            vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
            false,
        ),
        ("continuation first", c(0x80, b"x"), false),
        (
            "compressed",
            cat(&[
                compressed_client_frame(b"Hello Hello Hello", 0xC1),
                c(0x41, &[0xf2, 0x48]),
                c(0x89, b""),
                c(0x80, &[0xcd, 0xc9, 0xc9, 0x07, 0x00]),
            ]),
            true,
        ),
        ("bomb", compressed_client_frame(&vec![0u8; 2 << 20], 0xC2), true),
    ]
}

fn split_invariance_config() -> WsConfig {
    WsConfig {
        max_message_size: 1 << 20,
        ..WsConfig::default()
    }
}

fn make(deflate: bool) -> WsConnection {
    WsConnection::server(split_invariance_config(), deflate.then(shared_params), t0())
}

#[test]
fn every_split_point_gives_the_same_events() {
    for (name, input, deflate) in corpus() {
        let (whole_events, whole_out, _) = run(make(deflate), &input);
        assert!(!whole_events.is_empty(), "{name}");
        // Two pieces split at every byte (sampled for very long inputs).
        let step = if input.len() > 4096 { 97 } else { 1 };
        for split in (0..=input.len()).step_by(step) {
            let (ev, out, _) = run_pieces(make(deflate), &[&input[..split], &input[split..]]);
            assert_eq!(ev, whole_events, "{name} split at {split}");
            assert_eq!(out, whole_out, "{name} split at {split}");
        }
        // Byte by byte.
        if input.len() <= 4096 {
            let pieces: Vec<&[u8]> = input.chunks(1).collect();
            let (ev, out, _) = run_pieces(make(deflate), &pieces);
            assert_eq!(ev, whole_events, "{name} byte by byte");
            assert_eq!(out, whole_out, "{name} byte by byte");
        }
    }
}

#[test]
fn read_buffer_api_equals_feed() {
    for (name, input, deflate) in corpus() {
        let (expected, expected_out, _) = run(make(deflate), &input);
        let mut conn = make(deflate);
        for piece in input.chunks(1000) {
            let buf = conn.read_buffer();
            assert!(buf.capacity() - buf.len() >= 1000);
            buf.extend_from_slice(piece);
            conn.handle_read(piece.len(), t0());
        }
        assert_eq!(events(&mut conn), expected, "{name}");
        assert_eq!(transmit(&mut conn), expected_out, "{name}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..600),
        splits in proptest::collection::vec(any::<usize>(), 0..8),
        client_role in any::<bool>(),
        deflate in 0u8..3,
    ) {
        let params = match deflate { 0 => None, 1 => Some(shared_params()), _ => Some(context_params()) };
        let config = WsConfig { max_message_size: 4096, max_frame_size: 2048, ..WsConfig::default() };
        let make = || if client_role {
            WsConnection::client(config.clone(), params, || [9, 8, 7, 6], t0())
        } else {
            WsConnection::server(config.clone(), params, t0())
        };
        let mut points: Vec<usize> = splits.iter().map(|s| s % (data.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut last = 0;
        for p in points {
            pieces.push(&data[last..p]);
            last = p;
        }
        pieces.push(&data[last..]);
        let (split_events, split_out, mut conn) = run_pieces(make(), &pieces);
        let (whole_events, whole_out, _) = run(make(), &data);
        prop_assert_eq!(split_events, whole_events);
        prop_assert_eq!(split_out, whole_out);
        conn.handle_eof(t0());
        conn.handle_timeout(t0() + Duration::from_secs(10));
        prop_assert!(conn.poll_close().is_some());
    }

    #[test]
    fn framed_random_messages_round_trip(
        messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..6),
        chunk in 1usize..200,
        deflate in 0u8..3,
    ) {
        let params = match deflate { 0 => None, 1 => Some(shared_params()), _ => Some(context_params()) };
        let config = WsConfig::default();
        let mut cli = WsConnection::client(config.clone(), params, || [1, 3, 5, 7], t0());
        for m in &messages {
            cli.send_binary(m.clone()).unwrap();
        }
        let wire = transmit(&mut cli);
        let mut srv = WsConnection::server(config.clone(), params, t0());
        for piece in wire.chunks(chunk) {
            srv.handle_input(piece, t0());
        }
        let expected: Vec<Event> = messages.iter().map(|m| binary(m)).collect();
        prop_assert_eq!(events(&mut srv), expected);
    }
}

/// Reading the rest of a large frame straight into the engine's buffer:
/// the reservation grows with what has arrived (a peer that declares a
/// large frame and sends nothing gets at most 64 KiB), and the payload
/// comes out intact, unmasked, whatever the read sizes.
#[test]
fn read_buffer_for_a_large_frame_grows_with_what_arrived() {
    let payload: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(|i| (i * 31 % 251) as u8).collect();
    let frame = c(0x82, &payload);
    let header_len = frame.len() - payload.len();
    let mut conn = server();
    conn.handle_input(&frame[..header_len], t0());
    assert_eq!(conn.payload_remaining(), payload.len());
    // Declared 3 MiB, nothing sent: a small reservation only.
    let reserved = conn.read_buffer().capacity();
    assert!((4096..=64 * 1024 + 4096).contains(&reserved), "{reserved}");
    let mut at = header_len;
    let mut reads = 0;
    while at < frame.len() {
        let buf = conn.read_buffer();
        let arrived = buf.len();
        let spare = buf.capacity() - buf.len();
        assert!(spare > 0);
        // Proportional to what arrived (the buffer's own growth may double
        // what was asked for), never the whole declared frame at once.
        let bound = 4 * (64 * 1024).max(arrived) + 4096;
        assert!(buf.capacity() <= bound, "capacity {} after {arrived}", buf.capacity());
        // Reads of uneven sizes, as a socket gives them.
        let n = spare
            .min(frame.len() - at)
            .min(if reads % 3 == 0 { 1000 } else { usize::MAX });
        buf.extend_from_slice(&frame[at..at + n]);
        at += n;
        reads += 1;
        conn.handle_read(n, t0());
    }
    assert!(reads < 60, "{reads} reads");
    assert_eq!(conn.payload_remaining(), 0);
    match conn.poll_event() {
        Some(Event::Message(Message::Binary(b))) => assert!(b[..] == payload[..], "payload differs"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_frame_deflated_once_decodes_on_every_connection_that_agreed_and_is_refused_elsewhere() {
    let text_msg = format!("{{\"prices\":[{}]}}", "101.25,".repeat(200));
    let frame = EncodedFrame::deflated_text(&text_msg, 15, 6);
    assert!(frame.len() < text_msg.len() / 4, "{} bytes", frame.len());
    assert_eq!(frame.as_bytes()[0], 0xC1, "FIN, RSV1, text");
    // Two connections without server context takeover: the same bytes
    // decode on both, before and after messages of their own.
    for _ in 0..2 {
        let mut srv = WsConnection::server(WsConfig::default(), Some(shared_params()), t0());
        assert_eq!(srv.shared_deflate_window(), Some(15));
        srv.send_text(text_msg.as_str()).unwrap();
        srv.send_encoded(&frame).unwrap();
        srv.send_encoded(&frame).unwrap();
        srv.send_text("after").unwrap();
        let wire = transmit(&mut srv);
        let cli = WsConnection::client(WsConfig::default(), Some(shared_params()), || KEY, t0());
        let (got, _, _) = run(cli, &wire);
        assert_eq!(
            got,
            vec![text(&text_msg), text(&text_msg), text(&text_msg), text("after")]
        );
    }
    // With context takeover, or without deflate, or a smaller window: refused.
    let small_window = DeflateParams {
        server_max_window_bits: 10,
        ..shared_params()
    };
    for params in [Some(context_params()), None, Some(small_window)] {
        let mut srv = WsConnection::server(WsConfig::default(), params, t0());
        assert_eq!(srv.send_encoded(&frame), Err(SendError::DeflateNotAgreed), "{params:?}");
        srv.send_encoded(&EncodedFrame::text(&text_msg)).unwrap();
    }
    let mut cli = client();
    assert_eq!(cli.send_encoded(&frame), Err(SendError::EncodedFrameOnClient));
}

fn wire(overhead: usize, payload: usize) -> WireBytes {
    WireBytes {
        overhead: overhead as u64,
        payload: payload as u64,
    }
}

/// Masked client frames of 125, 126 and 65,536 payload bytes have 6, 8 and
/// 14 header bytes (2, 4 or 10, and the 4-byte key); the server's unmasked
/// answers 2, 4 and 10.
#[test]
fn traffic_splits_frame_headers_from_payloads_both_ways() {
    for (len, header_in, header_out) in [(125, 6, 2), (126, 8, 4), (65_536, 14, 10)] {
        let mut conn = server();
        let frame = c(0x82, &vec![7u8; len]);
        assert_eq!(frame.len(), header_in + len);
        conn.handle_input(&frame, t0());
        let Some(Event::Message(Message::Binary(data))) = conn.poll_event() else {
            panic!("a binary message")
        };
        conn.send_binary(data).unwrap();
        let written = transmit(&mut conn);
        assert_eq!(written.len(), header_out + len);
        assert_eq!(
            conn.traffic(),
            Traffic {
                received: wire(header_in, len),
                sent: wire(header_out, len),
            },
            "{len}"
        );
        assert_eq!(conn.stats().traffic, conn.traffic());
    }
}

/// However the bytes are split into reads, each byte is counted once, and
/// only once it is known to be a header or a payload.
#[test]
fn traffic_counts_partial_frames_as_they_become_known() {
    let input = cat(&[c(0x81, b"hello"), c(0x89, b"p"), c(0x82, &[1u8; 300])]);
    let total = wire(3 * 6 + 2, 5 + 1 + 300);
    for split in 0..=input.len() {
        let mut conn = server();
        conn.handle_input(&input[..split], t0());
        let _ = events(&mut conn);
        let partial = conn.traffic().received;
        assert!(
            partial.overhead <= total.overhead && partial.payload <= total.payload,
            "split {split}"
        );
        conn.handle_input(&input[split..], t0());
        let _ = events(&mut conn);
        assert_eq!(conn.traffic().received, total, "split {split}");
    }
    // Split byte by byte (reads into the engine's own buffer): the same.
    let mut conn = server();
    for b in &input {
        conn.read_buffer().extend_from_slice(&[*b]);
        conn.handle_read(1, t0());
        let _ = events(&mut conn);
    }
    assert_eq!(conn.traffic().received, total);
}

/// The client masks what it sends (4 more header bytes) and reads unmasked
/// frames; a shared frame counts its header too; bytes after the peer's
/// Close are read and counted as overhead.
#[test]
fn traffic_of_a_client_shared_frames_and_bytes_after_close() {
    let mut cli = client();
    cli.send_text("hi").unwrap();
    cli.handle_input(&s(0x81, b"there"), t0());
    let _ = events(&mut cli);
    assert_eq!(transmit(&mut cli).len(), 6 + 2);
    assert_eq!(
        cli.traffic(),
        Traffic {
            received: wire(2, 5),
            sent: wire(6, 2),
        }
    );

    let mut conn = server();
    let big = EncodedFrame::binary(&[0u8; 70_000]);
    assert_eq!(big.header_len(), 10);
    assert_eq!(EncodedFrame::text("x").header_len(), 2);
    conn.send_encoded(&big).unwrap();
    conn.send_encoded(&EncodedFrame::text(&"y".repeat(200))).unwrap();
    let mut input = c(0x88, &close_payload(1000, ""));
    input.extend_from_slice(b"junk");
    conn.handle_input(&input, t0());
    let _ = events(&mut conn);
    let written = transmit(&mut conn).len();
    let t = conn.traffic();
    // 10 + 70,000, 4 + 200, and the close echo: 2 + 2.
    assert_eq!(t.sent, wire(10 + 4 + 2, 70_000 + 200 + 2));
    assert_eq!(t.sent.total() as usize, written);
    // The close frame (6 + 2), then 4 bytes that can only be dropped.
    assert_eq!(t.received, wire(6 + 4, 2));
}

/// The HTTP exchange that opened the connection is part of its traffic.
#[test]
fn the_handshake_counts_into_the_connection_traffic() {
    let mut conn = server();
    let handshake = Traffic {
        received: wire(180, 0),
        sent: wire(129, 0),
    };
    conn.count_handshake(handshake);
    assert_eq!(conn.traffic(), handshake);
    conn.handle_input(&c(0x81, b"a"), t0());
    let _ = events(&mut conn);
    assert_eq!(conn.traffic().received, wire(186, 1));
    conn.release_buffers();
    assert_eq!(conn.traffic().sent, wire(129, 0));
}

/// A compressed message counts its payload as sent: compressed.
#[test]
fn traffic_counts_deflated_payloads_as_on_the_wire() {
    let mut conn = WsConnection::server(WsConfig::default(), Some(shared_params()), t0());
    conn.send_text("a".repeat(4000)).unwrap();
    let written = transmit(&mut conn);
    assert_eq!(written[0], 0xC1, "FIN, RSV1, text");
    let header = match written[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    assert_eq!(conn.traffic().sent, wire(header, written.len() - header));
    assert!(written.len() < 200, "compressed");
}
