//! The opening handshake (RFC 6455 §4), server and client side.
//!
//! Theory of operation: the HTTP/1.1 engine parses the request (or response)
//! head; this module only judges it. [`accept`] checks a client's upgrade
//! request and returns either what the 101 response must carry
//! ([`Accepted::response_headers`]) or a [`HandshakeError`] that says which
//! status and headers to answer with:
//! - not HTTP/1.1 or later, not `GET`, `Upgrade` without the `websocket` token,
//!   `Connection` without the `upgrade` token (a comma-separated,
//!   case-insensitive list, possibly over several lines), a
//!   `Sec-WebSocket-Key` that is not base64 of exactly 16 bytes: **400**;
//! - `Sec-WebSocket-Version` missing or not `13`: **426** with
//!   `Sec-WebSocket-Version: 13`;
//! - an `Origin` not on a non-empty allow-list: **403** (cross-site WebSocket
//!   hijacking defence; a request without `Origin` is not from a browser and
//!   is allowed).
//!
//! The subprotocol is the first one offered by the client that the server
//! supports. permessage-deflate is negotiated by `deflate.rs`.
//!
//! The client side ([`ClientHandshake`]) writes the request head for a key the
//! caller supplies (this crate has no random number generator) and checks the
//! 101 response: status, `Upgrade`/`Connection` tokens, the exact
//! `Sec-WebSocket-Accept`, a subprotocol that was offered, and extension
//! parameters it can honour.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use http::header::{
    CONNECTION, ORIGIN, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use sha1::{Digest, Sha1};

use super::deflate::{self, CompressionConfig, DeflateParams, ExtensionResponseError};

/// The GUID of RFC 6455 §1.3.
pub const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha1.finalize())
}

/// Iterates the comma-separated tokens of every line of a header.
pub fn header_tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(|token| token.trim_ascii())
        .filter(|token| !token.is_empty())
}

/// Whether a header's token list contains `token` (ASCII case-insensitive).
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    header_tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether a request asks for a WebSocket upgrade at all (for routing).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    has_token(headers, &UPGRADE, "websocket") && has_token(headers, &CONNECTION, "upgrade")
}

/// Server handshake settings.
#[derive(Debug, Clone, Default)]
pub struct HandshakeConfig {
    /// Supported subprotocols (any order; the client's order decides).
    pub subprotocols: Vec<String>,
    /// Allowed `Origin` values (ASCII case-insensitive); empty allows all.
    pub allowed_origins: Vec<String>,
}

/// A rejected upgrade request and how to answer it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("WebSocket needs HTTP/1.1 or later")]
    HttpVersion,
    #[error("WebSocket handshake must use GET")]
    Method,
    #[error("Upgrade header lacks the websocket token")]
    Upgrade,
    #[error("Connection header lacks the upgrade token")]
    Connection,
    #[error("unsupported Sec-WebSocket-Version (only 13)")]
    Version,
    #[error("Sec-WebSocket-Key missing, repeated, or not base64 of 16 bytes")]
    Key,
    #[error("Origin not allowed")]
    Origin,
}

impl HandshakeError {
    /// The status code to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeError::Version => StatusCode::UPGRADE_REQUIRED,
            HandshakeError::Origin => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Extra headers for the error response (`Sec-WebSocket-Version: 13` with 426).
    pub fn response_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let HandshakeError::Version = self {
            headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        headers
    }
}

/// A successful server handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The `Sec-WebSocket-Accept` value.
    pub accept: HeaderValue,
    /// The chosen subprotocol, if any.
    pub subprotocol: Option<HeaderValue>,
    /// The negotiated permessage-deflate parameters, for `WsConnection::server`.
    pub deflate: Option<DeflateParams>,
    /// The `Sec-WebSocket-Extensions` response value, if compression was negotiated.
    pub extensions: Option<HeaderValue>,
}

impl Accepted {
    /// The headers of the `101 Switching Protocols` response.
    pub fn response_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(5);
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(SEC_WEBSOCKET_ACCEPT, self.accept.clone());
        if let Some(protocol) = &self.subprotocol {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, protocol.clone());
        }
        if let Some(extensions) = &self.extensions {
            headers.insert(SEC_WEBSOCKET_EXTENSIONS, extensions.clone());
        }
        headers
    }
}

/// Checks a client's upgrade request (see the module documentation).
/// `compression` is the connection's ([`WsConfig::compression`](super::WsConfig::compression)):
/// the same setting decides what is agreed here and how the engine compresses.
pub fn accept(
    request: &http::request::Parts,
    config: &HandshakeConfig,
    compression: &CompressionConfig,
) -> Result<Accepted, HandshakeError> {
    accept_head(&request.method, request.version, &request.headers, config, compression)
}

/// [`accept`] on the pieces of a request head.
pub fn accept_head(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
    config: &HandshakeConfig,
    compression: &CompressionConfig,
) -> Result<Accepted, HandshakeError> {
    if version < Version::HTTP_11 {
        return Err(HandshakeError::HttpVersion);
    }
    if method != Method::GET {
        return Err(HandshakeError::Method);
    }
    if !has_token(headers, &UPGRADE, "websocket") {
        return Err(HandshakeError::Upgrade);
    }
    if !has_token(headers, &CONNECTION, "upgrade") {
        return Err(HandshakeError::Connection);
    }
    let mut versions = headers.get_all(SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.as_bytes().trim_ascii() == b"13" => {}
        _ => return Err(HandshakeError::Version),
    }
    let mut keys = headers.get_all(SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) => key.as_bytes().trim_ascii(),
        _ => return Err(HandshakeError::Key),
    };
    match BASE64.decode(key) {
        Ok(decoded) if decoded.len() == 16 => {}
        _ => return Err(HandshakeError::Key),
    }
    check_origin(headers, &config.allowed_origins)?;

    let subprotocol = header_tokens(headers, &SEC_WEBSOCKET_PROTOCOL)
        .find(|offered| config.subprotocols.iter().any(|ours| ours.as_bytes() == *offered))
        .map(|chosen| HeaderValue::from_bytes(chosen).expect("a token from a header value"));
    let agreement = deflate::negotiate(headers.get_all(SEC_WEBSOCKET_EXTENSIONS), compression);
    Ok(Accepted {
        accept: HeaderValue::from_str(&accept_key(key)).expect("base64 is a valid header value"),
        subprotocol,
        deflate: agreement.as_ref().map(|a| a.params),
        extensions: agreement.map(|a| a.response),
    })
}

/// Origin check: a present `Origin` not in a non-empty `allowed` list is
/// refused ([`HandshakeError::Origin`], 403). A missing `Origin` is allowed.
pub fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), HandshakeError> {
    if allowed.is_empty() {
        return Ok(());
    }
    let mut origins = headers.get_all(ORIGIN).iter();
    match (origins.next(), origins.next()) {
        (None, _) => Ok(()),
        (Some(origin), None)
            if allowed
                .iter()
                .any(|a| a.as_bytes().eq_ignore_ascii_case(origin.as_bytes().trim_ascii())) =>
        {
            Ok(())
        }
        _ => Err(HandshakeError::Origin),
    }
}

/// Why a client handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientHandshakeError {
    #[error("host or path contains a control character")]
    InvalidTarget,
    #[error("expected status 101, got {0}")]
    Status(StatusCode),
    #[error("response Upgrade header lacks websocket")]
    Upgrade,
    #[error("response Connection header lacks upgrade")]
    Connection,
    #[error("Sec-WebSocket-Accept missing or wrong")]
    Accept,
    #[error("server chose a subprotocol that was not offered")]
    Subprotocol,
    #[error("extension negotiation: {0}")]
    Extension(#[from] ExtensionResponseError),
    /// The bytes are not an HTTP/1.1 response head.
    #[error("malformed handshake response")]
    MalformedResponse,
    /// The response head is longer than [`MAX_RESPONSE_HEAD`].
    #[error("handshake response head over {MAX_RESPONSE_HEAD} bytes")]
    ResponseTooLarge,
}

/// Longest handshake response head a client accepts.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Most header fields in a handshake response.
const MAX_RESPONSE_FIELDS: usize = 64;

/// What a successful client handshake agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAccepted {
    pub subprotocol: Option<String>,
    /// For `WsConnection::client`.
    pub deflate: Option<DeflateParams>,
}

/// The client side of one handshake.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    key: String,
    subprotocols: Vec<String>,
    compression: CompressionConfig,
}

impl ClientHandshake {
    /// `key` must be 16 random bytes, fresh per connection.
    pub fn new(key: [u8; 16], subprotocols: Vec<String>, compression: CompressionConfig) -> Self {
        ClientHandshake {
            key: BASE64.encode(key),
            subprotocols,
            compression,
        }
    }

    /// The `Sec-WebSocket-Key` value.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Writes `GET path HTTP/1.1` and the upgrade headers, then `extra`
    /// headers, then the blank line.
    pub fn write_request(
        &self,
        host: &str,
        path: &str,
        extra: &HeaderMap,
        out: &mut Vec<u8>,
    ) -> Result<(), ClientHandshakeError> {
        let bad = |s: &str| s.bytes().any(|b| b.is_ascii_control() || b == b' ');
        if bad(host) || bad(path) || !path.starts_with('/') && path != "*" {
            return Err(ClientHandshakeError::InvalidTarget);
        }
        out.extend_from_slice(b"GET ");
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut line = |name: &str, value: &[u8]| {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        };
        line("Host", host.as_bytes());
        line("Upgrade", b"websocket");
        line("Connection", b"Upgrade");
        line("Sec-WebSocket-Key", self.key.as_bytes());
        line("Sec-WebSocket-Version", b"13");
        if !self.subprotocols.is_empty() {
            line("Sec-WebSocket-Protocol", self.subprotocols.join(", ").as_bytes());
        }
        if let Some(offer) = deflate::client_offer(&self.compression) {
            line("Sec-WebSocket-Extensions", offer.as_bytes());
        }
        for (name, value) in extra {
            line(name.as_str(), value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// [`write_request`](Self::write_request) into a new buffer, without extra headers.
    pub fn request_head(&self, host: &str, path: &str) -> Result<Vec<u8>, ClientHandshakeError> {
        let mut out = Vec::with_capacity(256);
        self.write_request(host, path, &HeaderMap::new(), &mut out)?;
        Ok(out)
    }

    /// Reads the server's answer from the front of `buf` (the bytes read so
    /// far): `Ok(None)` while the head is incomplete, else what was agreed
    /// and the head's length (bytes after it belong to the WebSocket).
    pub fn handle_response(&self, buf: &[u8]) -> Result<Option<(ClientAccepted, usize)>, ClientHandshakeError> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
        let mut resp = httparse::Response::new(&mut storage);
        let head_len = match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => return Ok(None),
            Ok(httparse::Status::Partial) => return Err(ClientHandshakeError::ResponseTooLarge),
            Err(_) => return Err(ClientHandshakeError::MalformedResponse),
        };
        if head_len > MAX_RESPONSE_HEAD {
            return Err(ClientHandshakeError::ResponseTooLarge);
        }
        let status =
            StatusCode::from_u16(resp.code.unwrap_or(0)).map_err(|_| ClientHandshakeError::MalformedResponse)?;
        let mut headers = HeaderMap::with_capacity(resp.headers.len());
        for h in resp.headers.iter() {
            let name =
                HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| ClientHandshakeError::MalformedResponse)?;
            let value = HeaderValue::from_bytes(h.value).map_err(|_| ClientHandshakeError::MalformedResponse)?;
            headers.append(name, value);
        }
        Ok(Some((self.validate_response(status, &headers)?, head_len)))
    }

    /// Checks the server's response head.
    pub fn validate_response(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Result<ClientAccepted, ClientHandshakeError> {
        if status != StatusCode::SWITCHING_PROTOCOLS {
            return Err(ClientHandshakeError::Status(status));
        }
        if !has_token(headers, &UPGRADE, "websocket") {
            return Err(ClientHandshakeError::Upgrade);
        }
        if !has_token(headers, &CONNECTION, "upgrade") {
            return Err(ClientHandshakeError::Connection);
        }
        let expected = accept_key(self.key.as_bytes());
        let mut accepts = headers.get_all(SEC_WEBSOCKET_ACCEPT).iter();
        match (accepts.next(), accepts.next()) {
            (Some(value), None) if value.as_bytes().trim_ascii() == expected.as_bytes() => {}
            _ => return Err(ClientHandshakeError::Accept),
        }
        let mut protocols = headers.get_all(SEC_WEBSOCKET_PROTOCOL).iter();
        let subprotocol = match (protocols.next(), protocols.next()) {
            (None, _) => None,
            (Some(value), None) => {
                let chosen = value.to_str().map_err(|_| ClientHandshakeError::Subprotocol)?.trim();
                if !self.subprotocols.iter().any(|p| p == chosen) {
                    return Err(ClientHandshakeError::Subprotocol);
                }
                Some(chosen.to_owned())
            }
            _ => return Err(ClientHandshakeError::Subprotocol),
        };
        let deflate = deflate::accept_response(headers.get_all(SEC_WEBSOCKET_EXTENSIONS), &self.compression)?;
        Ok(ClientAccepted { subprotocol, deflate })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::deflate::CompressionMode;

    /// The handshake with compression off (most tests are about the rest).
    fn accept(request: &http::request::Parts, config: &HandshakeConfig) -> Result<Accepted, HandshakeError> {
        super::accept(request, config, &CompressionConfig::default())
    }

    const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(lines: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = http::Request::builder().method("GET").uri("/chat");
        for (name, value) in lines {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn good() -> Vec<(&'static str, &'static str)> {
        vec![
            ("Host", "server.example.com"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", RFC_KEY),
            ("Sec-WebSocket-Version", "13"),
        ]
    }

    fn without(name: &str) -> Vec<(&'static str, &'static str)> {
        good()
            .into_iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case(name))
            .collect()
    }

    fn with(name: &'static str, value: &'static str) -> Vec<(&'static str, &'static str)> {
        let mut lines = without(name);
        lines.push((name, value));
        lines
    }

    #[test]
    fn rfc_accept_example() {
        assert_eq!(accept_key(RFC_KEY.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let accepted = accept(&request(&good()), &HandshakeConfig::default()).unwrap();
        assert_eq!(accepted.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let headers = accepted.response_headers();
        assert_eq!(headers[UPGRADE], "websocket");
        assert_eq!(headers[CONNECTION], "Upgrade");
        assert_eq!(headers[SEC_WEBSOCKET_ACCEPT], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(!headers.contains_key(SEC_WEBSOCKET_PROTOCOL));
        assert!(!headers.contains_key(SEC_WEBSOCKET_EXTENSIONS));
    }

    #[test]
    fn method_must_be_get() {
        let mut parts = request(&good());
        parts.method = Method::POST;
        let err = accept(&parts, &HandshakeConfig::default()).unwrap_err();
        assert_eq!(
            (err.clone(), err.status()),
            (HandshakeError::Method, StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn http_10_rejected() {
        let mut parts = request(&good());
        parts.version = Version::HTTP_10;
        assert_eq!(
            accept(&parts, &HandshakeConfig::default()),
            Err(HandshakeError::HttpVersion)
        );
    }

    #[test]
    fn upgrade_token_case_insensitive() {
        let cfg = HandshakeConfig::default();
        assert!(accept(&request(&with("Upgrade", "WebSocket")), &cfg).is_ok());
        assert!(accept(&request(&with("Upgrade", "foo, WEBSOCKET")), &cfg).is_ok());
        assert_eq!(
            accept(&request(&with("Upgrade", "websocketx")), &cfg),
            Err(HandshakeError::Upgrade)
        );
        assert_eq!(
            accept(&request(&without("Upgrade")), &cfg),
            Err(HandshakeError::Upgrade)
        );
    }

    #[test]
    fn connection_token_list() {
        let cfg = HandshakeConfig::default();
        assert!(accept(&request(&with("Connection", "keep-alive, Upgrade")), &cfg).is_ok());
        assert!(accept(&request(&with("Connection", "keep-alive,upgrade")), &cfg).is_ok());
        let mut lines = with("Connection", "keep-alive");
        lines.push(("Connection", "UPGRADE"));
        assert!(accept(&request(&lines), &cfg).is_ok(), "token on a second header line");
        assert_eq!(
            accept(&request(&with("Connection", "keep-alive, upgraded")), &cfg),
            Err(HandshakeError::Connection)
        );
        assert_eq!(
            accept(&request(&without("Connection")), &cfg),
            Err(HandshakeError::Connection)
        );
    }

    #[test]
    fn bad_version_gets_426_with_version_header() {
        let cfg = HandshakeConfig::default();
        for lines in [
            with("Sec-WebSocket-Version", "8"),
            without("Sec-WebSocket-Version"),
            with("Sec-WebSocket-Version", "13, 8"),
        ] {
            let err = accept(&request(&lines), &cfg).unwrap_err();
            assert_eq!(err, HandshakeError::Version);
            assert_eq!(err.status(), StatusCode::UPGRADE_REQUIRED);
            assert_eq!(err.response_headers()[SEC_WEBSOCKET_VERSION], "13");
        }
        assert!(HandshakeError::Key.response_headers().is_empty());
    }

    #[test]
    fn key_must_decode_to_16_bytes() {
        let cfg = HandshakeConfig::default();
        for key in [
            "",
            "not base64!",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "dGhlIHNhbXBsZSBub25jZQ",
        ] {
            let err = accept(&request(&with("Sec-WebSocket-Key", key)), &cfg).unwrap_err();
            assert_eq!(
                (err.clone(), err.status()),
                (HandshakeError::Key, StatusCode::BAD_REQUEST),
                "{key:?}"
            );
        }
        assert_eq!(
            accept(&request(&without("Sec-WebSocket-Key")), &cfg),
            Err(HandshakeError::Key)
        );
        let mut twice = good();
        twice.push(("Sec-WebSocket-Key", RFC_KEY));
        assert_eq!(accept(&request(&twice), &cfg), Err(HandshakeError::Key));
    }

    #[test]
    fn origin_allow_list() {
        let cfg = HandshakeConfig {
            allowed_origins: vec!["https://app.example".into()],
            ..HandshakeConfig::default()
        };
        assert!(accept(&request(&good()), &cfg).is_ok(), "no Origin: not a browser");
        assert!(accept(&request(&with("Origin", "https://APP.example")), &cfg).is_ok());
        let err = accept(&request(&with("Origin", "https://evil.example")), &cfg).unwrap_err();
        assert_eq!(
            (err.clone(), err.status()),
            (HandshakeError::Origin, StatusCode::FORBIDDEN)
        );
        // Empty list allows all.
        assert!(accept(
            &request(&with("Origin", "https://evil.example")),
            &HandshakeConfig::default()
        )
        .is_ok());
    }

    #[test]
    fn subprotocol_first_client_offer_supported() {
        let cfg = HandshakeConfig {
            subprotocols: vec!["graphql-ws".into(), "chat".into()],
            ..HandshakeConfig::default()
        };
        let mut lines = with("Sec-WebSocket-Protocol", "superchat, chat");
        lines.push(("Sec-WebSocket-Protocol", "graphql-ws"));
        let accepted = accept(&request(&lines), &cfg).unwrap();
        assert_eq!(accepted.subprotocol.unwrap(), "chat");
        let none = accept(&request(&with("Sec-WebSocket-Protocol", "other")), &cfg).unwrap();
        assert_eq!(none.subprotocol, None);
    }

    #[test]
    fn extensions_negotiated() {
        let compression = CompressionConfig {
            mode: CompressionMode::Shared,
            ..Default::default()
        };
        let accepted = super::accept(
            &request(&with(
                "Sec-WebSocket-Extensions",
                "permessage-deflate; client_max_window_bits",
            )),
            &HandshakeConfig::default(),
            &compression,
        )
        .unwrap();
        assert!(accepted.deflate.is_some());
        assert_eq!(
            accepted.response_headers()[SEC_WEBSOCKET_EXTENSIONS],
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=15"
        );
    }

    fn client() -> ClientHandshake {
        ClientHandshake::new(
            *b"the sample nonce",
            vec!["chat".into(), "superchat".into()],
            CompressionConfig {
                mode: CompressionMode::Shared,
                ..Default::default()
            },
        )
    }

    #[test]
    fn client_request_head() {
        let c = client();
        assert_eq!(c.key(), RFC_KEY);
        let head = String::from_utf8(c.request_head("server.example.com", "/chat").unwrap()).unwrap();
        assert_eq!(
            head,
            "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: chat, superchat\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n"
        );
        assert_eq!(c.request_head("a\r\nb", "/"), Err(ClientHandshakeError::InvalidTarget));
        assert_eq!(c.request_head("a", "/x y"), Err(ClientHandshakeError::InvalidTarget));
    }

    #[test]
    fn client_request_accepted_by_server() {
        // Parse our own request head with httparse and accept it.
        let c = client();
        let head = c.request_head("h", "/").unwrap();
        let mut raw_headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut raw_headers);
        assert!(req.parse(&head).unwrap().is_complete());
        let mut headers = HeaderMap::new();
        for h in req.headers.iter() {
            headers.append(
                HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(h.value).unwrap(),
            );
        }
        let cfg = HandshakeConfig {
            subprotocols: vec!["superchat".into()],
            ..Default::default()
        };
        let compression = CompressionConfig {
            mode: CompressionMode::Context,
            ..Default::default()
        };
        let accepted = accept_head(&Method::GET, Version::HTTP_11, &headers, &cfg, &compression).unwrap();
        let agreed = c
            .validate_response(StatusCode::SWITCHING_PROTOCOLS, &accepted.response_headers())
            .unwrap();
        assert_eq!(agreed.subprotocol.as_deref(), Some("superchat"));
        let params = agreed.deflate.unwrap();
        assert!(params.server_no_context_takeover && params.client_no_context_takeover);
        assert_eq!(Some(params), accepted.deflate);
    }

    fn response(lines: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (n, v) in lines {
            headers.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn client_validates_response() {
        let c = client();
        let ok = [
            ("Upgrade", "websocket"),
            ("Connection", "upgrade"),
            ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ];
        assert!(c
            .validate_response(StatusCode::SWITCHING_PROTOCOLS, &response(&ok))
            .is_ok());
        assert_eq!(
            c.validate_response(StatusCode::OK, &response(&ok)),
            Err(ClientHandshakeError::Status(StatusCode::OK))
        );
        let mut wrong_accept = ok;
        wrong_accept[2].1 = "s3pPLMBiTxaQ9kYGzzhZRbK+xOx=";
        assert_eq!(
            c.validate_response(StatusCode::SWITCHING_PROTOCOLS, &response(&wrong_accept)),
            Err(ClientHandshakeError::Accept)
        );
        assert_eq!(
            c.validate_response(StatusCode::SWITCHING_PROTOCOLS, &response(&ok[1..])),
            Err(ClientHandshakeError::Upgrade)
        );
        assert_eq!(
            c.validate_response(StatusCode::SWITCHING_PROTOCOLS, &response(&[ok[0], ok[2]])),
            Err(ClientHandshakeError::Connection)
        );
        let mut proto = ok.to_vec();
        proto.push(("Sec-WebSocket-Protocol", "other"));
        assert_eq!(
            c.validate_response(StatusCode::SWITCHING_PROTOCOLS, &response(&proto)),
            Err(ClientHandshakeError::Subprotocol)
        );
        let mut ext = ok.to_vec();
        ext.push((
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits=9",
        ));
        assert!(matches!(
            c.validate_response(StatusCode::SWITCHING_PROTOCOLS, &response(&ext)),
            Err(ClientHandshakeError::Extension(_))
        ));
    }

    #[test]
    fn client_reads_the_response_from_bytes_at_any_split() {
        let c = client();
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        let mut wire = head.to_vec();
        wire.extend_from_slice(b"\x81\x02hi");
        for split in 0..head.len() {
            assert_eq!(c.handle_response(&wire[..split]), Ok(None), "split {split}");
        }
        let (accepted, len) = c.handle_response(&wire).unwrap().unwrap();
        assert_eq!(len, head.len(), "what follows the head is the WebSocket's");
        assert_eq!(accepted.subprotocol, None);
        assert_eq!(
            c.handle_response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            Err(ClientHandshakeError::Status(StatusCode::OK))
        );
        assert_eq!(
            c.handle_response(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(ClientHandshakeError::MalformedResponse)
        );
        let endless = [
            b"HTTP/1.1 101 Switching Protocols\r\nX: ".as_slice(),
            &[b'a'; MAX_RESPONSE_HEAD],
        ]
        .concat();
        assert_eq!(c.handle_response(&endless), Err(ClientHandshakeError::ResponseTooLarge));
    }
}
