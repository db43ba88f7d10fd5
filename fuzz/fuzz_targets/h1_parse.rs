//! The HTTP/1.1 request-head parser on arbitrary bytes.
//!
//! Invariants: no panic; a parsed head consumes no more than it was given
//! and leaves the rest in the buffer; the same input, parsed again from a
//! fresh buffer, gives the same result (no hidden state); an incomplete
//! head never exceeds the head limit.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tether_proto::h1::{parse, Config};

fuzz_target!(|data: &[u8]| {
    let config = Config {
        max_head: 4096,
        max_target: 1024,
        ..Config::default()
    };
    let mut buf = BytesMut::from(data);
    let first = parse::parse_request(&mut buf, &config);
    match &first {
        Ok(Some(_)) => assert!(buf.len() < data.len(), "a head consumed nothing"),
        Ok(None) => {
            assert_eq!(buf.len(), data.len(), "an incomplete head consumed bytes");
            assert!(data.len() <= config.max_head, "incomplete over the limit");
        }
        Err(e) => assert!(e.status().is_client_error() || e.status().is_server_error()),
    }
    let again = parse::parse_request(&mut BytesMut::from(data), &config);
    assert_eq!(format!("{first:?}"), format!("{again:?}"));
});
