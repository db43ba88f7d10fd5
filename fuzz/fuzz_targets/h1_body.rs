//! Request body framing (`Content-Length` and chunked) on arbitrary bytes
//! split at an arbitrary point.
//!
//! Invariants: no panic; the body decoded is the same whichever the split;
//! never more body than the limit; what follows the body is left intact.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tether_proto::h1::decode::{BodyDecoder, Decoded};

const MAX_BODY: u64 = 64 * 1024;

fn decode(input: &[u8], split: usize, chunked: bool) -> (Result<Vec<u8>, String>, Vec<u8>) {
    let mut dec = if chunked {
        BodyDecoder::chunked(MAX_BODY, 1024, 16)
    } else {
        BodyDecoder::length(input.len() as u64 / 2)
    };
    let mut pieces = [&input[..split], &input[split..]].into_iter();
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    loop {
        match dec.decode(&mut buf) {
            Ok(Decoded::Data(d)) => {
                body.extend_from_slice(&d);
                assert!(body.len() as u64 <= MAX_BODY.max(input.len() as u64 / 2));
            }
            Ok(Decoded::End(_)) => {
                let mut rest = buf.to_vec();
                for p in pieces {
                    rest.extend_from_slice(p);
                }
                return (Ok(body), rest);
            }
            Ok(Decoded::NeedMore) => match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None => return (Err("incomplete".into()), Vec::new()),
            },
            Err(e) => return (Err(e.to_string()), Vec::new()),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, split, input @ ..] = data else {
        return;
    };
    let chunked = mode & 1 == 0;
    let split = usize::from(*split).min(input.len());
    let whole = decode(input, 0, chunked);
    let halves = decode(input, split, chunked);
    assert_eq!(whole, halves, "split at {split}");
    if let (Ok(body), rest) = &whole {
        assert!(body.len() + rest.len() <= input.len());
        assert!(input.ends_with(rest), "what follows the body is untouched");
    }
});
