//! Feeds arbitrary bytes to a WebSocket connection, in arbitrary pieces.
//!
//! The first input byte chooses the set-up (role, compression mode), the
//! second the size of the pieces; the rest is the byte stream from the peer.
//! Every event is drained, text and binary messages are echoed back (so the
//! send path and the compressor run too), and output is drained. Invariants
//! checked: no panic; after EOF and the close deadline the transport must close.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tether_proto::ws::{DeflateParams, Event, Message, WsConfig, WsConnection};

fuzz_target!(|data: &[u8]| {
    let [setup, piece, stream @ ..] = data else {
        return;
    };
    let deflate = match setup & 0b11 {
        0 | 3 => None,
        1 => Some(DeflateParams {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        }),
        _ => Some(DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 9 + (setup >> 4) % 7,
            client_max_window_bits: 8 + (setup >> 4) % 8,
        }),
    };
    let config = WsConfig {
        max_frame_size: 64 * 1024,
        max_message_size: 256 * 1024,
        max_queued_bytes: 512 * 1024,
        ..WsConfig::default()
    };
    let mut conn = if setup & 0b100 == 0 {
        WsConnection::server(config.clone(), deflate, std::time::Instant::now())
    } else {
        WsConnection::client(config.clone(), deflate, || [0x12, 0x34, 0x56, 0x78], std::time::Instant::now())
    };
    let now = Instant::now();
    let piece = usize::from(*piece).max(1);
    for chunk in stream.chunks(piece) {
        conn.handle_input(chunk, now);
        while let Some(event) = conn.poll_event() {
            match event {
                Event::Message(Message::Text(text)) => {
                    let _ = conn.send_text(text);
                }
                Event::Message(Message::Binary(data)) => {
                    let _ = conn.send_binary(data);
                }
                _ => {}
            }
        }
        let _ = conn.take_output(now);
    }
    conn.handle_eof(now);
    conn.handle_timeout(now + Duration::from_secs(60));
    assert!(conn.poll_close().is_some());
});
