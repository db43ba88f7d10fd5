//! permessage-deflate (RFC 7692): negotiation and per-message (de)compression.
//!
//! Theory of operation.
//!
//! *Negotiation* (§7). The client sends one or more offers in
//! `Sec-WebSocket-Extensions` (comma separated; parameters `;` separated;
//! values may be quoted). The server takes the first `permessage-deflate` offer
//! it can honour and answers with the parameters it chose. An offer with an
//! unknown or duplicated parameter or a bad value is declined and the next one
//! tried. Choices made here where the RFC leaves room:
//! - `server_max_window_bits=8`: zlib cannot deflate with an 8-bit window (it
//!   silently uses 9), and the server may not exceed what the client asked, so
//!   an offer whose effective server window would be 8 is **declined**.
//! - `client_max_window_bits` (with or without a value) is answered only when
//!   offered, always with an explicit value: min(offered or 15, configured).
//!   An 8-bit client window is fine: we inflate with 9 (a larger window decodes
//!   any stream made with a smaller one).
//! - `server_max_window_bits` is answered only when offered (the RFC forbids it
//!   otherwise); without it the server still deflates with its configured
//!   window, which any 15-bit inflater decodes.
//! - [`CompressionMode::Shared`] answers `server_no_context_takeover;
//!   client_no_context_takeover` to every offer; [`CompressionMode::Context`]
//!   echoes the no-context-takeover parameters the client offered.
//! - The client side ([`client_offer`]) never offers `client_max_window_bits`
//!   (so a server can never pick 8 for us) and adds a fallback offer without
//!   `server_max_window_bits` when it asks for a smaller server window.
//!
//! *Messages* (§7.2). A message is deflated with a sync flush and the trailing
//! `00 00 FF FF` is stripped; the receiver appends it again and inflates. The
//! inflater produces output chunk by chunk and stops as soon as the output
//! passes the message size limit (a few KiB can inflate to gigabytes), so the
//! output buffer never grows past `limit + 1` bytes.
//!
//! *Memory*. With no context takeover in a direction, a message needs no
//! state from the previous one, so the (de)compressor is not kept by the
//! connection at all: a per-thread one is reset and reused for each message
//! (one per window size), and an idle connection holds no zlib window. With
//! context takeover the connection owns its (de)compressor, created lazily on
//! the first compressed message and kept for the connection's life.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use http::HeaderValue;

/// The four bytes a sync flush ends with, stripped on send, appended on receive.
pub const SYNC_FLUSH_TRAILER: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];
const EXTENSION_NAME: &str = "permessage-deflate";

/// What the local endpoint is willing to negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressionMode {
    /// Never negotiate permessage-deflate.
    #[default]
    Off,
    /// No context takeover in either direction: no per-connection zlib memory.
    Shared,
    /// Context takeover (better ratio, a zlib window per connection and direction).
    Context,
}

/// Compression settings (used by the handshake and by the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressionConfig {
    pub mode: CompressionMode,
    /// zlib level 0-9.
    pub level: u32,
    /// Largest window the server deflates with (9-15; 8 is raised to 9).
    pub server_max_window_bits: u8,
    /// Largest window the server asks a client to deflate with (8-15), when the client allows it.
    pub client_max_window_bits: u8,
    /// Messages shorter than this are sent uncompressed (RSV1 clear).
    pub min_message_size: usize,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            mode: CompressionMode::Off,
            level: 6,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            min_message_size: 32,
        }
    }
}

/// The negotiated permessage-deflate parameters, as in RFC 7692 (server and
/// client named from the protocol's point of view, not the local role).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    /// Window the server deflates with (8-15).
    pub server_max_window_bits: u8,
    /// Window the client deflates with (8-15).
    pub client_max_window_bits: u8,
}

/// The server's answer to an offer, ready for the `Sec-WebSocket-Extensions` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflateAgreement {
    pub params: DeflateParams,
    pub response: HeaderValue,
}

/// The server did not accept our offer in a way we can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionResponseError {
    #[error("server accepted an extension that was not offered")]
    NotOffered,
    #[error("server accepted permessage-deflate more than once")]
    Duplicate,
    #[error("invalid permessage-deflate parameters in response")]
    InvalidParams,
}

// ---------------------------------------------------------------------------
// Header parsing

/// One element of an extension list: a name and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ExtensionElement {
    name: String,
    params: Vec<(String, Option<String>)>,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Splits on `sep` outside quoted strings.
fn split_outside_quotes(s: &[u8], sep: u8) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let (mut start, mut in_quotes, mut escaped) = (0, false, false);
    for (i, &b) in s.iter().enumerate() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quotes = false;
            }
        } else if b == b'"' {
            in_quotes = true;
        } else if b == sep {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_value(raw: &[u8]) -> Option<String> {
    if let [b'"', inner @ .., b'"'] = raw {
        let mut out = Vec::with_capacity(inner.len());
        let mut escaped = false;
        for &b in inner {
            if escaped {
                out.push(b);
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                return None;
            } else {
                out.push(b);
            }
        }
        // RFC 7692 §7: a quoted value must still be a token once unquoted.
        (!escaped && is_token(&out)).then(|| String::from_utf8(out).expect("tokens are ASCII"))
    } else {
        is_token(raw).then(|| String::from_utf8(raw.to_vec()).expect("tokens are ASCII"))
    }
}

/// Parses one element; `None` if it is malformed.
fn parse_element(raw: &[u8]) -> Option<ExtensionElement> {
    let mut parts = split_outside_quotes(raw, b';').into_iter().map(trim_ows);
    let name = parts.next()?;
    if !is_token(name) {
        return None;
    }
    let mut params = Vec::new();
    for part in parts {
        let (key, value) = match part.iter().position(|&b| b == b'=') {
            Some(eq) => (trim_ows(&part[..eq]), Some(parse_value(trim_ows(&part[eq + 1..]))?)),
            None => (part, None),
        };
        if !is_token(key) {
            return None;
        }
        params.push((String::from_utf8(key.to_vec()).expect("tokens are ASCII"), value));
    }
    Some(ExtensionElement {
        name: String::from_utf8(name.to_vec()).expect("tokens are ASCII"),
        params,
    })
}

/// All elements of all header lines, in order; malformed elements are `None`.
fn parse_extension_list<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Vec<Option<ExtensionElement>> {
    let mut elements = Vec::new();
    for value in values {
        for raw in split_outside_quotes(value.as_bytes(), b',') {
            let raw = trim_ows(raw);
            if !raw.is_empty() {
                elements.push(parse_element(raw));
            }
        }
    }
    elements
}

/// The permessage-deflate parameters of one offer or response.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct DeflateParamSet {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value.
    client_max_window_bits: Option<Option<u8>>,
}

fn parse_window_bits(value: &str) -> Option<u8> {
    // 8..15 written without leading zeros or signs.
    match value {
        "8" | "9" | "10" | "11" | "12" | "13" | "14" | "15" => value.parse().ok(),
        _ => None,
    }
}

/// `None` on an unknown or duplicated parameter or a bad value.
fn parse_deflate_params(params: &[(String, Option<String>)]) -> Option<DeflateParamSet> {
    let mut set = DeflateParamSet::default();
    let mut seen = [false; 4];
    for (name, value) in params {
        let index = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => {
                value.is_none().then_some(())?;
                set.server_no_context_takeover = true;
                0
            }
            "client_no_context_takeover" => {
                value.is_none().then_some(())?;
                set.client_no_context_takeover = true;
                1
            }
            "server_max_window_bits" => {
                set.server_max_window_bits = Some(parse_window_bits(value.as_deref()?)?);
                2
            }
            "client_max_window_bits" => {
                set.client_max_window_bits = Some(match value {
                    None => None,
                    Some(v) => Some(parse_window_bits(v)?),
                });
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[index], true) {
            return None;
        }
    }
    Some(set)
}

/// Server side: picks the first acceptable permessage-deflate offer among the
/// `Sec-WebSocket-Extensions` values. `None`: no compression.
pub fn negotiate<'a>(
    offers: impl IntoIterator<Item = &'a HeaderValue>,
    config: &CompressionConfig,
) -> Option<DeflateAgreement> {
    if config.mode == CompressionMode::Off {
        return None;
    }
    let shared = config.mode == CompressionMode::Shared;
    let our_server_bits = config.server_max_window_bits.clamp(9, 15);
    let our_client_bits = config.client_max_window_bits.clamp(8, 15);
    for element in parse_extension_list(offers).into_iter().flatten() {
        if !element.name.eq_ignore_ascii_case(EXTENSION_NAME) {
            continue;
        }
        let Some(offer) = parse_deflate_params(&element.params) else {
            continue; // declined: try the next offer
        };
        let answered_server_bits = match offer.server_max_window_bits {
            Some(asked) if asked.min(our_server_bits) < 9 => continue, // zlib cannot deflate with 8
            Some(asked) => Some(asked.min(our_server_bits)),
            None => None,
        };
        let answered_client_bits = offer
            .client_max_window_bits
            .map(|asked| asked.unwrap_or(15).min(our_client_bits));
        let params = DeflateParams {
            server_no_context_takeover: shared || offer.server_no_context_takeover,
            client_no_context_takeover: shared || offer.client_no_context_takeover,
            server_max_window_bits: answered_server_bits.unwrap_or(our_server_bits),
            client_max_window_bits: answered_client_bits.unwrap_or(15),
        };
        let mut response = String::from(EXTENSION_NAME);
        if params.server_no_context_takeover {
            response.push_str("; server_no_context_takeover");
        }
        if params.client_no_context_takeover {
            response.push_str("; client_no_context_takeover");
        }
        if let Some(bits) = answered_server_bits {
            response.push_str(&format!("; server_max_window_bits={bits}"));
        }
        if let Some(bits) = answered_client_bits {
            response.push_str(&format!("; client_max_window_bits={bits}"));
        }
        let response = HeaderValue::from_str(&response).expect("ASCII header value");
        return Some(DeflateAgreement { params, response });
    }
    None
}

/// Client side: the `Sec-WebSocket-Extensions` offer for `config`, `None` when off.
pub fn client_offer(config: &CompressionConfig) -> Option<String> {
    let mut base = String::from(EXTENSION_NAME);
    match config.mode {
        CompressionMode::Off => return None,
        CompressionMode::Shared => base.push_str("; server_no_context_takeover; client_no_context_takeover"),
        CompressionMode::Context => {}
    }
    let server_bits = config.server_max_window_bits.clamp(9, 15);
    if server_bits < 15 {
        // A fallback without the window limit, for servers that cannot honour it.
        Some(format!("{base}; server_max_window_bits={server_bits}, {base}"))
    } else {
        Some(base)
    }
}

/// Client side: validates the server's `Sec-WebSocket-Extensions` answer to
/// [`client_offer`]`(config)`. `Ok(None)`: the server declined compression.
pub fn accept_response<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
    config: &CompressionConfig,
) -> Result<Option<DeflateParams>, ExtensionResponseError> {
    let mut accepted = None;
    for element in parse_extension_list(values) {
        let element = element.ok_or(ExtensionResponseError::InvalidParams)?;
        if config.mode == CompressionMode::Off || !element.name.eq_ignore_ascii_case(EXTENSION_NAME) {
            return Err(ExtensionResponseError::NotOffered);
        }
        if accepted.is_some() {
            return Err(ExtensionResponseError::Duplicate);
        }
        let set = parse_deflate_params(&element.params).ok_or(ExtensionResponseError::InvalidParams)?;
        // We never offer client_max_window_bits, so the server must not answer it.
        if set.client_max_window_bits.is_some() {
            return Err(ExtensionResponseError::InvalidParams);
        }
        accepted = Some(DeflateParams {
            server_no_context_takeover: set.server_no_context_takeover,
            // In Shared mode we promised not to take over context, whatever the answer.
            client_no_context_takeover: set.client_no_context_takeover || config.mode == CompressionMode::Shared,
            server_max_window_bits: set.server_max_window_bits.unwrap_or(15),
            client_max_window_bits: 15,
        });
    }
    Ok(accepted)
}

// ---------------------------------------------------------------------------
// Compression

thread_local! {
    /// Per-thread compressors for no-context-takeover messages, keyed by (window bits, level).
    static SHARED_COMPRESSORS: RefCell<Vec<(u8, u32, Compress)>> = const { RefCell::new(Vec::new()) };
    /// Per-thread decompressors for no-context-takeover messages, keyed by window bits.
    static SHARED_DECOMPRESSORS: RefCell<Vec<(u8, Decompress)>> = const { RefCell::new(Vec::new()) };
}

/// Deflates outgoing messages for one direction of one connection.
pub struct MessageCompressor {
    window_bits: u8,
    level: u32,
    no_context_takeover: bool,
    /// Only with context takeover; created on the first message.
    owned: Option<Compress>,
}

impl std::fmt::Debug for MessageCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageCompressor")
            .field("window_bits", &self.window_bits)
            .field("no_context_takeover", &self.no_context_takeover)
            .field("allocated", &self.owned.is_some())
            .finish()
    }
}

impl MessageCompressor {
    /// `window_bits` below 9 is raised to 9 (zlib's minimum for raw deflate).
    pub fn new(window_bits: u8, level: u32, no_context_takeover: bool) -> Self {
        MessageCompressor {
            window_bits: window_bits.clamp(9, 15),
            level: level.min(9),
            no_context_takeover,
            owned: None,
        }
    }

    /// Compresses one whole message; the result has the sync-flush trailer stripped.
    pub fn compress(&mut self, message: &[u8]) -> Vec<u8> {
        let (bits, level) = (self.window_bits, self.level);
        let new = || Compress::new_with_window_bits(Compression::new(level), false, bits);
        if self.no_context_takeover {
            SHARED_COMPRESSORS.with(|cell| {
                let mut list = cell.borrow_mut();
                let index = match list.iter().position(|(b, l, _)| *b == bits && *l == level) {
                    Some(index) => {
                        list[index].2.reset();
                        index
                    }
                    None => {
                        list.push((bits, level, new()));
                        list.len() - 1
                    }
                };
                deflate_sync(&mut list[index].2, message)
            })
        } else {
            deflate_sync(self.owned.get_or_insert_with(new), message)
        }
    }

    /// Whether this connection currently owns zlib state.
    pub fn holds_zlib_state(&self) -> bool {
        self.owned.is_some()
    }
}

fn deflate_sync(compress: &mut Compress, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    let mut consumed = 0;
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        let before = compress.total_in();
        compress
            .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
            .expect("deflate on a healthy stream cannot fail");
        consumed += (compress.total_in() - before) as usize;
        // Done when all input is in and zlib stopped with output room left.
        if consumed == input.len() && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&SYNC_FLUSH_TRAILER) {
        out.truncate(out.len() - SYNC_FLUSH_TRAILER.len());
    }
    out
}

/// Why inflating a message failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    #[error("inflated message over the size limit")]
    TooLarge,
    #[error("corrupt deflate data")]
    Corrupt,
}

/// Inflates incoming messages for one direction of one connection.
pub struct MessageDecompressor {
    window_bits: u8,
    no_context_takeover: bool,
    owned: Option<Decompress>,
}

impl std::fmt::Debug for MessageDecompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageDecompressor")
            .field("window_bits", &self.window_bits)
            .field("no_context_takeover", &self.no_context_takeover)
            .field("allocated", &self.owned.is_some())
            .finish()
    }
}

impl MessageDecompressor {
    /// `window_bits` 8 is raised to 9: a larger window inflates any smaller one's output.
    pub fn new(window_bits: u8, no_context_takeover: bool) -> Self {
        MessageDecompressor {
            window_bits: window_bits.clamp(9, 15),
            no_context_takeover,
            owned: None,
        }
    }

    /// Inflates one whole message (trailer stripped, as on the wire), failing
    /// with [`InflateError::TooLarge`] as soon as the output passes `limit`.
    pub fn decompress(&mut self, compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
        let bits = self.window_bits;
        if self.no_context_takeover {
            SHARED_DECOMPRESSORS.with(|cell| {
                let mut list = cell.borrow_mut();
                let index = match list.iter().position(|(b, _)| *b == bits) {
                    Some(index) => {
                        list[index].1.reset(false);
                        index
                    }
                    None => {
                        list.push((bits, Decompress::new_with_window_bits(false, bits)));
                        list.len() - 1
                    }
                };
                inflate_message(&mut list[index].1, compressed, limit).map(|(out, _)| out)
            })
        } else {
            let decompress = self
                .owned
                .get_or_insert_with(|| Decompress::new_with_window_bits(false, bits));
            let (out, stream_ended) = inflate_message(decompress, compressed, limit)?;
            if stream_ended {
                // The peer ended its deflate stream (BFINAL): the next message starts a new one.
                decompress.reset(false);
            }
            Ok(out)
        }
    }

    /// Whether this connection currently owns zlib state.
    pub fn holds_zlib_state(&self) -> bool {
        self.owned.is_some()
    }
}

/// Inflates `compressed` followed by the sync-flush trailer. Returns the output
/// and whether the deflate stream ended (BFINAL).
pub fn inflate_message(
    decompress: &mut Decompress,
    compressed: &[u8],
    limit: usize,
) -> Result<(Vec<u8>, bool), InflateError> {
    let initial = compressed.len().saturating_mul(2).max(64).min(limit.saturating_add(1));
    let mut out = Vec::with_capacity(initial);
    if inflate_into(decompress, compressed, &mut out, limit)? {
        return Ok((out, true));
    }
    let ended = inflate_into(decompress, &SYNC_FLUSH_TRAILER, &mut out, limit)?;
    Ok((out, ended))
}

/// Inflates all of `input` into `out`, growing `out` (doubling) but never past
/// `limit + 1` bytes of capacity. Returns whether the stream ended.
pub fn inflate_into(
    decompress: &mut Decompress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<bool, InflateError> {
    let cap_limit = limit.saturating_add(1);
    loop {
        if out.len() == out.capacity() {
            if out.len() >= cap_limit {
                return Err(InflateError::TooLarge);
            }
            let target = out.capacity().saturating_mul(2).max(4096).min(cap_limit);
            out.reserve_exact(target - out.len());
        }
        let (in_before, out_before) = (decompress.total_in(), out.len());
        let status = decompress
            .decompress_vec(input, out, FlushDecompress::Sync)
            .map_err(|_| InflateError::Corrupt)?;
        let consumed = (decompress.total_in() - in_before) as usize;
        input = &input[consumed..];
        if out.len() > limit {
            return Err(InflateError::TooLarge);
        }
        if status == Status::StreamEnd {
            return Ok(true);
        }
        let room_left = out.len() < out.capacity();
        if input.is_empty() && room_left {
            return Ok(false);
        }
        if consumed == 0 && out.len() == out_before && room_left {
            return Err(InflateError::Corrupt); // no progress possible
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn config(mode: CompressionMode) -> CompressionConfig {
        CompressionConfig {
            mode,
            ..CompressionConfig::default()
        }
    }

    fn negotiate_str(offer: &str, config: &CompressionConfig) -> Option<(DeflateParams, String)> {
        let value = hv(offer);
        negotiate([&value], config).map(|a| (a.params, a.response.to_str().unwrap().to_owned()))
    }

    #[test]
    fn off_never_negotiates() {
        assert_eq!(negotiate_str("permessage-deflate", &config(CompressionMode::Off)), None);
    }

    #[test]
    fn browser_offer_with_bare_client_max_window_bits() {
        let (params, response) = negotiate_str(
            "permessage-deflate; client_max_window_bits",
            &config(CompressionMode::Context),
        )
        .unwrap();
        assert_eq!(response, "permessage-deflate; client_max_window_bits=15");
        assert_eq!(
            params,
            DeflateParams {
                server_no_context_takeover: false,
                client_no_context_takeover: false,
                server_max_window_bits: 15,
                client_max_window_bits: 15
            }
        );
    }

    #[test]
    fn client_max_window_bits_never_answered_unless_offered() {
        let mut cfg = config(CompressionMode::Context);
        cfg.client_max_window_bits = 10;
        let (params, response) = negotiate_str("permessage-deflate", &cfg).unwrap();
        assert_eq!(response, "permessage-deflate");
        assert_eq!(params.client_max_window_bits, 15);
        let (_, response) = negotiate_str("permessage-deflate; client_max_window_bits", &cfg).unwrap();
        assert_eq!(response, "permessage-deflate; client_max_window_bits=10");
    }

    #[test]
    fn shared_mode_answers_no_context_takeover_both_ways() {
        let (params, response) = negotiate_str("permessage-deflate", &config(CompressionMode::Shared)).unwrap();
        assert_eq!(
            response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert!(params.server_no_context_takeover && params.client_no_context_takeover);
    }

    #[test]
    fn context_mode_echoes_offered_no_context_takeover() {
        let (params, response) = negotiate_str(
            "permessage-deflate; server_no_context_takeover",
            &config(CompressionMode::Context),
        )
        .unwrap();
        assert_eq!(response, "permessage-deflate; server_no_context_takeover");
        assert!(params.server_no_context_takeover && !params.client_no_context_takeover);
    }

    #[test]
    fn server_max_window_bits_answered_with_same_or_smaller() {
        let mut cfg = config(CompressionMode::Context);
        let (params, response) = negotiate_str("permessage-deflate; server_max_window_bits=10", &cfg).unwrap();
        assert_eq!(response, "permessage-deflate; server_max_window_bits=10");
        assert_eq!(params.server_max_window_bits, 10);
        cfg.server_max_window_bits = 9;
        let (_, response) = negotiate_str("permessage-deflate; server_max_window_bits=12", &cfg).unwrap();
        assert_eq!(response, "permessage-deflate; server_max_window_bits=9");
        // Not offered: never answered, even with a smaller configured window.
        let (params, response) = negotiate_str("permessage-deflate", &cfg).unwrap();
        assert_eq!(response, "permessage-deflate");
        assert_eq!(params.server_max_window_bits, 9);
    }

    #[test]
    fn server_window_of_8_declines_offer_and_tries_next() {
        let cfg = config(CompressionMode::Context);
        assert_eq!(
            negotiate_str("permessage-deflate; server_max_window_bits=8", &cfg),
            None
        );
        let (_, response) =
            negotiate_str("permessage-deflate; server_max_window_bits=8, permessage-deflate", &cfg).unwrap();
        assert_eq!(response, "permessage-deflate");
    }

    #[test]
    fn client_window_of_8_is_accepted() {
        let (params, response) = negotiate_str(
            "permessage-deflate; client_max_window_bits=8",
            &config(CompressionMode::Context),
        )
        .unwrap();
        assert_eq!(response, "permessage-deflate; client_max_window_bits=8");
        assert_eq!(params.client_max_window_bits, 8);
    }

    #[test]
    fn bad_offers_declined_and_next_tried() {
        let cfg = config(CompressionMode::Context);
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        ] {
            assert_eq!(negotiate_str(bad, &cfg), None, "{bad}");
            let with_fallback = format!("{bad}, permessage-deflate; client_no_context_takeover");
            let (_, response) = negotiate_str(&with_fallback, &cfg).unwrap();
            assert_eq!(response, "permessage-deflate; client_no_context_takeover", "{bad}");
        }
    }

    #[test]
    fn quoted_values_and_several_lines() {
        let cfg = config(CompressionMode::Context);
        let (params, _) = negotiate_str("permessage-deflate; server_max_window_bits=\"11\"", &cfg).unwrap();
        assert_eq!(params.server_max_window_bits, 11);
        let a = hv("x-webkit-deflate-frame, foo; bar=\"a,b;c\"");
        let b = hv("permessage-deflate ; client_max_window_bits = 9");
        let agreement = negotiate([&a, &b], &cfg).unwrap();
        assert_eq!(agreement.params.client_max_window_bits, 9);
    }

    #[test]
    fn client_offer_and_response() {
        let shared = config(CompressionMode::Shared);
        assert_eq!(
            client_offer(&shared).unwrap(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let mut small = config(CompressionMode::Context);
        small.server_max_window_bits = 10;
        assert_eq!(
            client_offer(&small).unwrap(),
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        );
        assert_eq!(client_offer(&config(CompressionMode::Off)), None);

        let ok = hv("permessage-deflate; server_no_context_takeover; server_max_window_bits=12");
        let params = accept_response([&ok], &shared).unwrap().unwrap();
        assert_eq!(params.server_max_window_bits, 12);
        assert!(params.client_no_context_takeover); // promised in Shared mode
        assert_eq!(accept_response([], &shared), Ok(None));
        for bad in [
            "permessage-deflate; client_max_window_bits=10",
            "permessage-deflate; foo",
            "permessage-deflate, permessage-deflate",
            "x-other",
        ] {
            assert!(accept_response([&hv(bad)], &shared).is_err(), "{bad}");
        }
        assert_eq!(
            accept_response([&hv("permessage-deflate")], &config(CompressionMode::Off)),
            Err(ExtensionResponseError::NotOffered)
        );
    }

    #[test]
    fn rfc7692_hello_example_decodes() {
        // RFC 7692 §7.2.3.1.
        let mut d = MessageDecompressor::new(15, true);
        let out = d.decompress(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 1024).unwrap();
        assert_eq!(out, b"Hello");
        // §7.2.3.2: the same message sent twice with context takeover.
        let mut d = MessageDecompressor::new(15, false);
        assert_eq!(
            d.decompress(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 1024).unwrap(),
            b"Hello"
        );
        assert_eq!(d.decompress(&[0xf2, 0x00, 0x11, 0x00, 0x00], 1024).unwrap(), b"Hello");
    }

    #[test]
    fn compress_strips_trailer_and_matches_rfc_hello() {
        let mut c = MessageCompressor::new(15, 6, true);
        let out = c.compress(b"Hello");
        assert!(!out.ends_with(&SYNC_FLUSH_TRAILER));
        assert_eq!(out, [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    }

    #[test]
    fn round_trip_without_context_takeover() {
        let mut c = MessageCompressor::new(15, 6, true);
        let mut d = MessageDecompressor::new(15, true);
        for i in 0..5 {
            let message = format!("message {i} {}", "abc".repeat(100 * i));
            let compressed = c.compress(message.as_bytes());
            // Each message decodes on its own, with a fresh inflater.
            let mut fresh = MessageDecompressor::new(15, false);
            assert_eq!(fresh.decompress(&compressed, 1 << 20).unwrap(), message.as_bytes());
            assert_eq!(d.decompress(&compressed, 1 << 20).unwrap(), message.as_bytes());
        }
        assert!(!c.holds_zlib_state() && !d.holds_zlib_state());
    }

    #[test]
    fn round_trip_with_context_takeover_uses_history() {
        let mut c = MessageCompressor::new(15, 6, false);
        let mut d = MessageDecompressor::new(15, false);
        let message = b"the same fairly long message, repeated across messages".to_vec();
        let first = c.compress(&message);
        let second = c.compress(&message);
        assert!(second.len() < first.len(), "second message refers to the first");
        assert_eq!(d.decompress(&first, 1024).unwrap(), message);
        assert_eq!(d.decompress(&second, 1024).unwrap(), message);
        assert!(c.holds_zlib_state() && d.holds_zlib_state());
        // Without the history, the second message does not decode to the same text.
        let mut fresh = MessageDecompressor::new(15, true);
        assert_ne!(fresh.decompress(&second, 1024).ok(), Some(message));
    }

    #[test]
    fn small_windows_round_trip() {
        for bits in 8..=15u8 {
            let mut c = MessageCompressor::new(bits, 6, false);
            let mut d = MessageDecompressor::new(bits, false);
            let message: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8 ^ (i / 700) as u8).collect();
            let compressed = c.compress(&message);
            assert_eq!(d.decompress(&compressed, 1 << 20).unwrap(), message, "bits {bits}");
        }
    }

    #[test]
    fn empty_message() {
        let mut c = MessageCompressor::new(15, 6, true);
        let compressed = c.compress(b"");
        assert_eq!(compressed, [0x00]);
        let mut d = MessageDecompressor::new(15, true);
        assert_eq!(d.decompress(&compressed, 10).unwrap(), b"");
        assert_eq!(d.decompress(&[], 10).unwrap(), b"");
    }

    #[test]
    fn compression_bomb_stops_at_limit() {
        let zeros = vec![0u8; 10 << 20];
        let compressed = MessageCompressor::new(15, 9, true).compress(&zeros);
        assert!(compressed.len() < 64 * 1024);
        let limit = 1 << 20;
        let mut decompress = Decompress::new_with_window_bits(false, 15);
        let mut out = Vec::new();
        assert_eq!(
            inflate_into(&mut decompress, &compressed, &mut out, limit),
            Err(InflateError::TooLarge)
        );
        // Never inflated (or allocated) more than the limit plus one byte.
        assert!(out.capacity() <= limit + 1, "capacity {}", out.capacity());
        assert!(decompress.total_out() <= limit as u64 + 1);
        assert_eq!(
            MessageDecompressor::new(15, true).decompress(&compressed, limit),
            Err(InflateError::TooLarge)
        );
        // Exactly at the limit is fine.
        let exact = MessageCompressor::new(15, 9, true).compress(&zeros[..limit]);
        assert_eq!(
            MessageDecompressor::new(15, true)
                .decompress(&exact, limit)
                .unwrap()
                .len(),
            limit
        );
    }

    #[test]
    fn corrupt_data_is_an_error() {
        let mut d = MessageDecompressor::new(15, true);
        assert_eq!(
            d.decompress(&[0xff, 0xff, 0xff, 0xff], 1024),
            Err(InflateError::Corrupt)
        );
    }
}
