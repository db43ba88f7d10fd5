//! The WebSocket server handshake on an arbitrary request head, and the
//! client's reading of an arbitrary response.
//!
//! Invariants: no panic; an accepted handshake's 101 carries exactly the
//! accept key of the request's key; a refusal has a 4xx status; the
//! client's parse is the same however much of the input it saw first.

#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use libfuzzer_sys::fuzz_target;
use tether_proto::ws::handshake::{accept_head, accept_key, ClientHandshake, HandshakeConfig};
use tether_proto::ws::{CompressionConfig, CompressionMode};

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    if mode & 1 == 0 {
        server(rest, *mode);
    } else {
        client(rest);
    }
});

fn server(head: &[u8], mode: u8) {
    let mut storage = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut storage);
    let Ok(httparse::Status::Complete(_)) = req.parse(head) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(h.value))
        else {
            return;
        };
        headers.append(name, value);
    }
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes()).unwrap_or(Method::GET);
    let version = if req.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let config = HandshakeConfig {
        subprotocols: vec!["chat".into(), "superchat".into()],
        allowed_origins: if mode & 2 == 0 { vec![] } else { vec!["http://ok.example".into()] },
    };
    let compression = CompressionConfig {
        mode: [CompressionMode::Off, CompressionMode::Shared, CompressionMode::Context][usize::from(mode >> 2) % 3],
        ..CompressionConfig::default()
    };
    match accept_head(&method, version, &headers, &config, &compression) {
        Ok(accepted) => {
            let response = accepted.response_headers();
            let key = headers.get("sec-websocket-key").expect("accepted without a key");
            assert_eq!(response["sec-websocket-accept"], accept_key(key.as_bytes()).as_str());
        }
        Err(e) => assert!(e.status().is_client_error()),
    }
}

fn client(response: &[u8]) {
    let hs = ClientHandshake::new(
        [7; 16],
        vec!["chat".into()],
        CompressionConfig {
            mode: CompressionMode::Shared,
            ..CompressionConfig::default()
        },
    );
    let whole = hs.handle_response(response);
    if let Ok(Some((_, len))) = &whole {
        assert!(*len <= response.len());
        // A prefix that holds the whole head reads the same.
        assert_eq!(format!("{:?}", hs.handle_response(&response[..*len])), format!("{whole:?}"));
    }
}
