//! Close codes and Close frame payloads (RFC 6455 §5.5.1, §7.4).
//!
//! Theory of operation: a Close payload is empty, or a 2-byte big-endian code
//! followed by a UTF-8 reason. A one-byte payload is a protocol error. The
//! codes that may appear on the wire are 1000-1003, 1007-1014 (IANA
//! registered; 1012-1014 were added after the RFC) and 3000-4999 (libraries,
//! applications). 0-999, 1004 (reserved), 1005/1006/1015 (local-only
//! pseudo-codes that must never be sent), 1016-2999 and 5000+ are rejected
//! with 1002, both when received and when the local user tries to send them.
//! A reason that is not UTF-8 is answered with 1007.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::ProtocolError;
use super::message::Utf8Bytes;
use super::utf8;

/// Longest close reason: a control payload is at most 125 bytes, 2 are the code.
pub const MAX_CLOSE_REASON: usize = 123;

/// A close status code (RFC 6455 §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: CloseCode = CloseCode(1000);
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// Local-only: the peer's Close had no code. Never sent.
    pub const NO_STATUS_RECEIVED: CloseCode = CloseCode(1005);
    /// Local-only: the connection ended without a Close frame. Never sent.
    pub const ABNORMAL_CLOSURE: CloseCode = CloseCode(1006);
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    pub const BAD_GATEWAY: CloseCode = CloseCode(1014);

    /// Whether the code may appear in a Close frame on the wire (sent or received).
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode(code)
    }
}

/// The code and reason of a Close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    pub code: CloseCode,
    pub reason: Utf8Bytes,
}

/// Parses a received Close payload: `None` for an empty payload (no code).
pub fn parse_close_payload(payload: &Bytes) -> Result<Option<CloseFrame>, ProtocolError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ProtocolError::OneByteClosePayload),
        _ => {
            let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
            if !code.is_valid_on_wire() {
                return Err(ProtocolError::InvalidCloseCode(code.0));
            }
            utf8::validate(&payload[2..]).map_err(|_| ProtocolError::InvalidCloseReason)?;
            // SAFETY: validated on the line above.
            #[allow(unsafe_code)]
            let reason = unsafe { Utf8Bytes::from_validated(payload.slice(2..)) };
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

/// Encodes a Close payload. `None` gives the empty payload (no code).
pub fn encode_close_payload(frame: Option<(CloseCode, &str)>) -> Bytes {
    match frame {
        None => Bytes::new(),
        Some((code, reason)) => {
            let mut out = BytesMut::with_capacity(2 + reason.len());
            out.put_u16(code.0);
            out.put_slice(reason.as_bytes());
            out.freeze()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(code: u16, reason: &[u8]) -> Bytes {
        let mut v = code.to_be_bytes().to_vec();
        v.extend_from_slice(reason);
        Bytes::from(v)
    }

    fn expected_valid(code: u32) -> bool {
        (1000..=1003).contains(&code) || (1007..=1014).contains(&code) || (3000..=4999).contains(&code)
    }

    #[test]
    fn close_code_table_exhaustive() {
        for code in (0u32..=5000).chain([65535]) {
            let result = parse_close_payload(&payload(code as u16, b""));
            if expected_valid(code) {
                assert_eq!(result.unwrap().unwrap().code, CloseCode(code as u16), "{code}");
            } else {
                assert_eq!(result, Err(ProtocolError::InvalidCloseCode(code as u16)), "{code}");
                assert_eq!(
                    ProtocolError::InvalidCloseCode(code as u16).close_code(),
                    CloseCode::PROTOCOL_ERROR
                );
            }
        }
        for code in [1004, 1005, 1006, 1015, 1016, 2999, 5000, 999, 0] {
            assert!(!CloseCode(code).is_valid_on_wire(), "{code}");
        }
    }

    #[test]
    fn empty_payload_has_no_code() {
        assert_eq!(parse_close_payload(&Bytes::new()), Ok(None));
    }

    #[test]
    fn one_byte_payload_is_protocol_error() {
        let err = parse_close_payload(&Bytes::from_static(&[0x03])).unwrap_err();
        assert_eq!(err, ProtocolError::OneByteClosePayload);
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn reason_must_be_utf8() {
        let err = parse_close_payload(&payload(1000, &[0xce, 0xba, 0xff])).unwrap_err();
        assert_eq!(err, ProtocolError::InvalidCloseReason);
        assert_eq!(err.close_code(), CloseCode::INVALID_PAYLOAD);
        let ok = parse_close_payload(&payload(1000, "bye κ".as_bytes()))
            .unwrap()
            .unwrap();
        assert_eq!(ok.reason.as_str(), "bye κ");
    }

    #[test]
    fn encode_round_trip() {
        let bytes = encode_close_payload(Some((CloseCode::GOING_AWAY, "later")));
        assert_eq!(&bytes[..], &[0x03, 0xE9, b'l', b'a', b't', b'e', b'r']);
        let frame = parse_close_payload(&bytes).unwrap().unwrap();
        assert_eq!(frame.code, CloseCode::GOING_AWAY);
        assert!(encode_close_payload(None).is_empty());
    }
}
