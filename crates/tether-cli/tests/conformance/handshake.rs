//! The HTTP side of the opening handshake (RFC 6455 §4.2).

use super::harness::*;

/// The sample key of RFC 6455 §1.3 and its accept value.
const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A request head: the request line, Host, then `headers` (name, value) in order.
fn request(port: u16, method: &str, version: &str, headers: &[(&str, &str)]) -> String {
    let mut r = format!("{method} /echo {version}\r\nHost: {}\r\n", host(port));
    for (name, value) in headers {
        r.push_str(&format!("{name}: {value}\r\n"));
    }
    r.push_str("\r\n");
    r
}

/// The standard upgrade headers with `replace` applied: a (name, Some(value))
/// overrides or adds, (name, None) removes.
fn upgrade_headers<'a>(replace: &[(&'a str, Option<&'a str>)]) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", RFC_KEY),
        ("Sec-WebSocket-Version", "13"),
    ];
    for &(name, value) in replace {
        let pos = h.iter().position(|(n, _)| n.eq_ignore_ascii_case(name));
        match (pos, value) {
            (Some(i), Some(v)) => h[i] = (name, v),
            (Some(i), None) => {
                h.remove(i);
            }
            (None, Some(v)) => h.push((name, v)),
            (None, None) => {}
        }
    }
    h
}

/// Sends a handshake that must be refused with `status`, then checks the
/// connection still serves `GET /healthz` (keep-alive).
#[track_caller]
fn refused(s: &Server, method: &str, headers: &[(&str, &str)], status: u16) -> HttpResponse {
    let mut c = Client::connect(s.port);
    let resp = c.http(&request(s.port, method, "HTTP/1.1", headers));
    assert_eq!(resp.status, status, "response:\n{}", resp.head);
    assert_eq!(resp.header("sec-websocket-accept"), None);
    assert_ne!(
        resp.header("connection").map(|v| v.to_ascii_lowercase()).as_deref(),
        Some("upgrade")
    );
    let health = c.http(&format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", host(s.port)));
    assert_eq!(health.status, 200, "GET /healthz on the same connection after {status}");
    assert_eq!(health.body, b"ok");
    resp
}

/// Sends a handshake that must be accepted; checks the 101 and one echo.
#[track_caller]
fn accepted(s: &Server, headers: &[(&str, &str)]) -> HttpResponse {
    let mut c = Client::connect(s.port);
    c.send_raw(request(s.port, "GET", "HTTP/1.1", headers).as_bytes());
    let resp = c.read_response(false);
    assert_eq!(resp.status, 101, "response:\n{}", resp.head);
    assert_eq!(resp.header("sec-websocket-accept"), Some(RFC_ACCEPT));
    assert!(resp
        .header("upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
    assert!(resp
        .header("connection")
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))));
    c.echo(TEXT, b"accepted");
    c.close_normally();
    resp
}

pub fn handshake() -> Group {
    let cases = vec![
        case("H.1 valid handshake: 101 with the RFC 6455 accept value", |s| {
            assert_eq!(accept_key(RFC_KEY), RFC_ACCEPT, "the harness's own accept computation");
            let resp = accepted(s, &upgrade_headers(&[]));
            assert_eq!(resp.header("sec-websocket-extensions"), None);
            assert_eq!(resp.header("sec-websocket-protocol"), None);
        }),
        case(
            "H.2 Sec-WebSocket-Version: 8: 426 with Sec-WebSocket-Version: 13",
            |s| {
                let resp = refused(s, "GET", &upgrade_headers(&[("Sec-WebSocket-Version", Some("8"))]), 426);
                assert_eq!(resp.header("sec-websocket-version"), Some("13"));
            },
        ),
        case(
            "H.3 no Sec-WebSocket-Version: 426 with Sec-WebSocket-Version: 13",
            |s| {
                let resp = refused(s, "GET", &upgrade_headers(&[("Sec-WebSocket-Version", None)]), 426);
                assert_eq!(resp.header("sec-websocket-version"), Some("13"));
            },
        ),
        case("H.4 no Sec-WebSocket-Key: 400", |s| {
            refused(s, "GET", &upgrade_headers(&[("Sec-WebSocket-Key", None)]), 400);
        }),
        case("H.5 key of 15 bytes: 400", |s| {
            refused(
                s,
                "GET",
                &upgrade_headers(&[("Sec-WebSocket-Key", Some("AAAAAAAAAAAAAAAAAAAA"))]),
                400,
            );
        }),
        case("H.6 key of 17 bytes: 400", |s| {
            refused(
                s,
                "GET",
                &upgrade_headers(&[("Sec-WebSocket-Key", Some("AAAAAAAAAAAAAAAAAAAAAAA="))]),
                400,
            );
        }),
        case("H.7 key that is not base64: 400", |s| {
            refused(
                s,
                "GET",
                &upgrade_headers(&[("Sec-WebSocket-Key", Some("not a base64 key!!!!!!=="))]),
                400,
            );
        }),
        case("H.8 two keys: 400", |s| {
            let mut h = upgrade_headers(&[]);
            h.push(("Sec-WebSocket-Key", "x3JJHMbDL1EzLkh9GBhXDw=="));
            refused(s, "GET", &h, 400);
        }),
        case("H.9 POST: 400", |s| {
            refused(s, "POST", &upgrade_headers(&[("Content-Length", Some("0"))]), 400);
        }),
        case("H.10 Upgrade: h2c: 400", |s| {
            refused(s, "GET", &upgrade_headers(&[("Upgrade", Some("h2c"))]), 400);
        }),
        case("H.11 Connection without the upgrade token: 400", |s| {
            refused(s, "GET", &upgrade_headers(&[("Connection", Some("keep-alive"))]), 400);
        }),
        case("H.12 HTTP/1.0 upgrade request: 400", |s| {
            let mut c = Client::connect(s.port);
            let resp = c.http(&request(s.port, "GET", "HTTP/1.0", &upgrade_headers(&[])));
            assert_eq!(resp.status, 400, "{}", resp.head);
        }),
        case("H.13 Connection: keep-alive, Upgrade: 101", |s| {
            accepted(s, &upgrade_headers(&[("Connection", Some("keep-alive, Upgrade"))]));
        }),
        case("H.14 Upgrade: WebSocket (mixed case): 101", |s| {
            accepted(s, &upgrade_headers(&[("Upgrade", Some("WebSocket"))]));
        }),
        case("H.15 lowercase header names and values: 101", |s| {
            let h = vec![
                ("upgrade", "websocket"),
                ("connection", "upgrade"),
                ("sec-websocket-key", RFC_KEY),
                ("sec-websocket-version", "13"),
            ];
            accepted(s, &h);
        }),
        case("H.16 Connection split over two header lines: 101", |s| {
            let mut h = upgrade_headers(&[("Connection", Some("keep-alive"))]);
            h.push(("Connection", "Upgrade"));
            accepted(s, &h);
        }),
        case(
            "H.17 unsupported subprotocol offered: 101 without Sec-WebSocket-Protocol",
            |s| {
                let resp = accepted(
                    s,
                    &upgrade_headers(&[("Sec-WebSocket-Protocol", Some("chat, superchat"))]),
                );
                assert_eq!(resp.header("sec-websocket-protocol"), None);
            },
        ),
        case("H.18 a frame pipelined behind the handshake request is echoed", |s| {
            let mut c = Client::connect(s.port);
            let mut bytes = request(s.port, "GET", "HTTP/1.1", &upgrade_headers(&[])).into_bytes();
            bytes.extend(c.frame_bytes(true, 0, TEXT, b"pipelined"));
            c.send_raw(&bytes);
            let resp = c.read_response(false);
            assert_eq!(resp.status, 101);
            c.expect_text(b"pipelined");
            c.close_normally();
        }),
        case(
            "H.19 three refused handshakes, then /healthz, then a WebSocket on one connection",
            |s| {
                let mut c = Client::connect(s.port);
                for (replace, status) in [
                    (("Sec-WebSocket-Version", Some("8")), 426),
                    (("Sec-WebSocket-Key", None), 400),
                    (("Upgrade", Some("h2c")), 400),
                ] {
                    let resp = c.http(&request(s.port, "GET", "HTTP/1.1", &upgrade_headers(&[replace])));
                    assert_eq!(resp.status, status, "{}", resp.head);
                }
                let health = c.http(&format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", host(s.port)));
                assert_eq!(health.status, 200);
                c.send_raw(request(s.port, "GET", "HTTP/1.1", &upgrade_headers(&[])).as_bytes());
                let resp = c.read_response(false);
                assert_eq!(resp.status, 101, "{}", resp.head);
                c.echo(TEXT, b"finally");
                c.close_normally();
            },
        ),
    ];
    Group {
        title: "handshake",
        args: vec![],
        cases,
    }
}

pub fn origin() -> Group {
    let cases = vec![
        case("O.1 Origin on the allow-list: 101", |s| {
            accepted(s, &upgrade_headers(&[("Origin", Some("http://good.example"))]));
        }),
        case("O.2 Origin not on the allow-list: 403, connection kept", |s| {
            refused(
                s,
                "GET",
                &upgrade_headers(&[("Origin", Some("http://evil.example"))]),
                403,
            );
        }),
        case("O.3 no Origin (not a browser): 101", |s| {
            accepted(s, &upgrade_headers(&[]));
        }),
        case("O.4 allowed Origin in another case: 101", |s| {
            accepted(s, &upgrade_headers(&[("Origin", Some("HTTP://GOOD.EXAMPLE"))]));
        }),
        case("O.5 allowed Origin as a prefix of another host: 403", |s| {
            refused(
                s,
                "GET",
                &upgrade_headers(&[("Origin", Some("http://good.example.evil.example"))]),
                403,
            );
        }),
        case("O.6 allowed host on another port: 403", |s| {
            refused(
                s,
                "GET",
                &upgrade_headers(&[("Origin", Some("http://good.example:8080"))]),
                403,
            );
        }),
        case("O.7 Origin: null: 403", |s| {
            refused(s, "GET", &upgrade_headers(&[("Origin", Some("null"))]), 403);
        }),
    ];
    Group {
        title: "handshake origin (--allowed-origin http://good.example)",
        args: vec!["--allowed-origin", "http://good.example"],
        cases,
    }
}
