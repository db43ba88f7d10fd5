//! Frame header codec (RFC 6455 §5.2).
//!
//! Theory of operation: [`FrameHeader::decode`] looks at the start of the read
//! buffer and returns `Ok(None)` until the whole header (2 to 14 bytes) is
//! there. Rules that depend only on the header bytes are checked here, in the
//! order of the bytes they need, so the same input split anywhere fails with
//! the same error: reserved opcodes and fragmented control frames (byte 0),
//! control payloads over 125 (byte 1), a 64-bit length with its top bit set
//! (bytes 2..10). Non-minimal length encodings are accepted on receive.
//! Rules that depend on the connection (masking by role, RSV bits by
//! extension, fragmentation sequence, size limits) live in `connection.rs`.
//!
//! Encoding always uses the minimal length form. [`EncodedFrame`] is a whole
//! unmasked server frame built once into `Bytes`, to be shared by many
//! connections (broadcast).

use bytes::{BufMut, Bytes, BytesMut};

use super::error::ProtocolError;
use super::mask::apply_mask;

/// Longest possible header: 2 + 8 (length) + 4 (mask key).
pub const MAX_HEADER_LEN: usize = 14;
/// Longest control frame payload.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The frame opcodes defined by RFC 6455 (others are reserved and rejected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    /// `None` for the reserved opcodes 0x3-0x7 and 0xB-0xF.
    pub fn from_u8(value: u8) -> Option<OpCode> {
        Some(match value {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }

    pub fn is_data(self) -> bool {
        !self.is_control()
    }
}

/// A decoded or to-be-encoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub rsv1: bool,
    pub rsv2: bool,
    pub rsv3: bool,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

impl FrameHeader {
    /// A final frame with no RSV bits.
    pub fn new(opcode: OpCode, payload_len: u64, mask: Option<[u8; 4]>) -> Self {
        FrameHeader {
            fin: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask,
            payload_len,
        }
    }

    /// Decodes a header from the start of `buf`: `Ok(None)` if more bytes are
    /// needed, `Ok(Some((header, header_len)))` otherwise.
    pub fn decode(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let Some(&b0) = buf.first() else {
            return Ok(None);
        };
        let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(ProtocolError::ReservedOpcode(b0 & 0x0F))?;
        let fin = b0 & 0x80 != 0;
        if opcode.is_control() && !fin {
            return Err(ProtocolError::FragmentedControlFrame);
        }
        let Some(&b1) = buf.get(1) else {
            return Ok(None);
        };
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        if opcode.is_control() && len7 as usize > MAX_CONTROL_PAYLOAD {
            return Err(ProtocolError::ControlFrameTooLong);
        }
        let (payload_len, mut pos) = match len7 {
            126 => {
                let Some(b) = buf.get(2..4) else {
                    return Ok(None);
                };
                (u16::from_be_bytes([b[0], b[1]]) as u64, 4)
            }
            127 => {
                let Some(b) = buf.get(2..10) else {
                    // The top bit is in byte 2: check it as soon as it is there.
                    if buf.get(2).is_some_and(|&b2| b2 & 0x80 != 0) {
                        return Err(ProtocolError::PayloadLengthMsbSet);
                    }
                    return Ok(None);
                };
                let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(ProtocolError::PayloadLengthMsbSet);
                }
                (len, 10)
            }
            n => (n as u64, 2),
        };
        let mask = if masked {
            let Some(key) = buf.get(pos..pos + 4) else {
                return Ok(None);
            };
            pos += 4;
            Some([key[0], key[1], key[2], key[3]])
        } else {
            None
        };
        Ok(Some((
            FrameHeader {
                fin,
                rsv1: b0 & 0x40 != 0,
                rsv2: b0 & 0x20 != 0,
                rsv3: b0 & 0x10 != 0,
                opcode,
                mask,
                payload_len,
            },
            pos,
        )))
    }

    /// Length of the encoded header.
    pub fn encoded_len(&self) -> usize {
        let len_bytes = match self.payload_len {
            0..=125 => 0,
            126..=0xFFFF => 2,
            _ => 8,
        };
        2 + len_bytes + if self.mask.is_some() { 4 } else { 0 }
    }

    /// Encodes the header with the minimal length encoding; returns the
    /// buffer and how many of its bytes are used.
    pub fn encode(&self) -> ([u8; MAX_HEADER_LEN], usize) {
        let mut out = [0u8; MAX_HEADER_LEN];
        out[0] = (self.fin as u8) << 7
            | (self.rsv1 as u8) << 6
            | (self.rsv2 as u8) << 5
            | (self.rsv3 as u8) << 4
            | self.opcode as u8;
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut pos = match self.payload_len {
            len @ 0..=125 => {
                out[1] = mask_bit | len as u8;
                2
            }
            len @ 126..=0xFFFF => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            }
            len => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&len.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            out[pos..pos + 4].copy_from_slice(&key);
            pos += 4;
        }
        (out, pos)
    }
}

/// Appends a whole frame (header, then the payload masked if `header.mask` is set).
#[inline]
pub fn encode_frame(out: &mut BytesMut, header: &FrameHeader, payload: &[u8]) {
    debug_assert_eq!(header.payload_len, payload.len() as u64);
    let (head, head_len) = header.encode();
    out.reserve(head_len + payload.len());
    out.put_slice(&head[..head_len]);
    let start = out.len();
    out.put_slice(payload);
    if let Some(key) = header.mask {
        apply_mask(&mut out[start..], key, 0);
    }
}

/// A complete, unmasked, final server data frame encoded once, to be sent to
/// many connections with `WsConnection::send_encoded` (cloning is a reference
/// count increment). A plain frame is valid on every server connection; a
/// deflated one ([`EncodedFrame::deflated_text`]) only on those that agreed
/// to permessage-deflate without server context takeover and a window at
/// least as large (`WsConnection::shared_deflate_window`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame {
    bytes: Bytes,
    /// The window a deflated frame was compressed with (RSV1 set).
    deflate_window: Option<u8>,
}

impl EncodedFrame {
    pub fn text(text: &str) -> Self {
        Self::data(OpCode::Text, text.as_bytes(), None)
    }

    pub fn binary(data: &[u8]) -> Self {
        Self::data(OpCode::Binary, data, None)
    }

    /// A text message compressed once, on its own (no context), with a
    /// `window_bits` window (9 to 15) at zlib `level`, for every connection
    /// that can take it (see the type's documentation).
    pub fn deflated_text(text: &str, window_bits: u8, level: u32) -> Self {
        let mut compressor = super::deflate::MessageCompressor::new(window_bits, level, true);
        let payload = compressor.compress(text.as_bytes());
        Self::data(OpCode::Text, &payload, Some(window_bits.clamp(9, 15)))
    }

    fn data(opcode: OpCode, payload: &[u8], deflate_window: Option<u8>) -> Self {
        let mut out = BytesMut::new();
        let mut header = FrameHeader::new(opcode, payload.len() as u64, None);
        header.rsv1 = deflate_window.is_some();
        encode_frame(&mut out, &header, payload);
        EncodedFrame {
            bytes: out.freeze(),
            deflate_window,
        }
    }

    /// The wire bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// For a deflated frame, the window it was compressed with.
    pub fn deflate_window(&self) -> Option<u8> {
        self.deflate_window
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Bytes of its header (2, 4 or 10: a server frame has no mask); the
    /// rest is payload.
    pub fn header_len(&self) -> usize {
        match self.bytes.get(1).map(|b| b & 0x7f) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2.min(self.bytes.len()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        FrameHeader::decode(buf)
    }

    #[test]
    fn seven_bit_length() {
        let (h, n) = decode_all(&[0x81, 0x05]).unwrap().unwrap();
        assert_eq!(
            (h.opcode, h.fin, h.payload_len, h.mask, n),
            (OpCode::Text, true, 5, None, 2)
        );
        assert_eq!(decode_all(&[0x81]).unwrap(), None);
    }

    #[test]
    fn sixteen_bit_length() {
        let (h, n) = decode_all(&[0x82, 126, 0x01, 0x00]).unwrap().unwrap();
        assert_eq!((h.payload_len, n), (256, 4));
        assert_eq!(decode_all(&[0x82, 126, 0x01]).unwrap(), None);
    }

    #[test]
    fn sixty_four_bit_length() {
        let (h, n) = decode_all(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap().unwrap();
        assert_eq!((h.payload_len, n), (65536, 10));
        assert_eq!(decode_all(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0]).unwrap(), None);
    }

    #[test]
    fn sixty_four_bit_length_with_msb_set_is_rejected() {
        let frame = [0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(decode_all(&frame), Err(ProtocolError::PayloadLengthMsbSet));
        // Detected as soon as the byte carrying the bit arrives.
        assert_eq!(decode_all(&frame[..3]), Err(ProtocolError::PayloadLengthMsbSet));
    }

    #[test]
    fn non_minimal_lengths_accepted() {
        let (h, _) = decode_all(&[0x82, 126, 0, 5]).unwrap().unwrap();
        assert_eq!(h.payload_len, 5);
        let (h, _) = decode_all(&[0x82, 127, 0, 0, 0, 0, 0, 0, 0, 5]).unwrap().unwrap();
        assert_eq!(h.payload_len, 5);
    }

    #[test]
    fn mask_key_decoded() {
        let (h, n) = decode_all(&[0x81, 0x85, 1, 2, 3, 4]).unwrap().unwrap();
        assert_eq!((h.mask, n), (Some([1, 2, 3, 4]), 6));
        assert_eq!(decode_all(&[0x81, 0x85, 1, 2, 3]).unwrap(), None);
    }

    #[test]
    fn reserved_opcodes_rejected() {
        for op in (0x3..=0x7).chain(0xB..=0xF) {
            assert_eq!(decode_all(&[0x80 | op]), Err(ProtocolError::ReservedOpcode(op)));
        }
        for op in [0x0, 0x1, 0x2, 0x8, 0x9, 0xA] {
            assert!(decode_all(&[0x80 | op]).is_ok());
        }
    }

    #[test]
    fn control_frame_rules() {
        assert_eq!(decode_all(&[0x09, 0x00]), Err(ProtocolError::FragmentedControlFrame));
        assert_eq!(
            decode_all(&[0x89, 126, 0, 126]),
            Err(ProtocolError::ControlFrameTooLong)
        );
        assert!(decode_all(&[0x89, 125]).unwrap().is_some());
        // Data frames may exceed 125 and be non-final.
        assert!(decode_all(&[0x01, 126, 0, 200]).unwrap().is_some());
    }

    #[test]
    fn rsv_bits_decoded() {
        let (h, _) = decode_all(&[0xF1, 0]).unwrap().unwrap();
        assert!(h.rsv1 && h.rsv2 && h.rsv3);
    }

    #[test]
    fn encode_uses_minimal_lengths_and_round_trips() {
        for (len, head_len) in [(0u64, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let mut h = FrameHeader::new(OpCode::Binary, len, mask);
                h.rsv1 = true;
                let (buf, n) = h.encode();
                assert_eq!(n, head_len + if mask.is_some() { 4 } else { 0 });
                assert_eq!(n, h.encoded_len());
                assert_eq!(FrameHeader::decode(&buf[..n]).unwrap(), Some((h, n)));
            }
        }
    }

    #[test]
    fn encode_frame_masks_payload() {
        let mut out = BytesMut::new();
        encode_frame(
            &mut out,
            &FrameHeader::new(OpCode::Text, 5, Some([0x37, 0xfa, 0x21, 0x3d])),
            b"Hello",
        );
        // RFC 6455 §5.7 masked "Hello".
        assert_eq!(
            &out[..],
            &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }

    #[test]
    fn encoded_frame_for_broadcast() {
        let frame = EncodedFrame::text("Hello");
        assert_eq!(&frame.as_bytes()[..], &[0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
    }
}
