//! Messages and their assembly from data frames (RFC 6455 §5.4, §5.6).
//!
//! Theory of operation: a message is one Text or Binary frame, or such a frame
//! with FIN clear followed by Continuation frames up to one with FIN set.
//! Control frames may sit between the fragments; the connection handles them
//! immediately and never passes them here. The assembler holds at most one
//! message in progress:
//! - an unfragmented uncompressed message is passed through as the frame's
//!   own `Bytes` (zero copy: split from the read buffer, unmasked in place);
//! - fragments are appended to one buffer, released when the message ends;
//! - a compressed message (RSV1 on its first frame) is collected compressed
//!   and inflated once at its end, the size limit enforced on the inflated
//!   output while inflating.
//!
//! Uncompressed text is validated as UTF-8 as its bytes arrive (the
//! connection feeds partial frame payloads through [`MessageAssembler::validate_text`]),
//! so an invalid sequence fails the connection at once; compressed text is
//! validated after inflating. Size limits are checked before a frame's payload
//! arrives (declared length) by the connection, and again here.

use std::fmt;
use std::ops::Deref;

use bytes::{Bytes, BytesMut};

use super::close::CloseFrame;
use super::deflate::{InflateError, MessageDecompressor};
use super::error::ProtocolError;
use super::frame::{FrameHeader, OpCode};
use super::utf8::{self, InvalidUtf8, Utf8Validator};

/// `Bytes` known to be valid UTF-8.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    pub const fn from_static(text: &'static str) -> Self {
        Utf8Bytes(Bytes::from_static(text.as_bytes()))
    }

    /// Wraps bytes the caller has already validated.
    ///
    /// # Safety
    /// `bytes` must be valid UTF-8: [`Utf8Bytes::as_str`] hands them out as
    /// a `str` without checking again. (Debug builds check.)
    #[allow(unsafe_code)]
    pub(crate) unsafe fn from_validated(bytes: Bytes) -> Self {
        debug_assert!(std::str::from_utf8(&bytes).is_ok());
        Utf8Bytes(bytes)
    }

    #[allow(unsafe_code)]
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor validates the bytes (or receives a `str`),
        // and the bytes are immutable. Re-validating here would cost a pass over
        // the text on every access.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl TryFrom<Bytes> for Utf8Bytes {
    type Error = InvalidUtf8;
    fn try_from(bytes: Bytes) -> Result<Self, InvalidUtf8> {
        utf8::validate(&bytes)?;
        Ok(Utf8Bytes(bytes))
    }
}

impl From<String> for Utf8Bytes {
    fn from(text: String) -> Self {
        Utf8Bytes(Bytes::from(text))
    }
}

impl From<&str> for Utf8Bytes {
    fn from(text: &str) -> Self {
        Utf8Bytes(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl Deref for Utf8Bytes {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A complete message, received or to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(Utf8Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// `None`: the Close frame carried no code.
    Close(Option<CloseFrame>),
}

/// The message in progress between its first and last fragment.
#[derive(Debug)]
struct PartialMessage {
    text: bool,
    compressed: bool,
    buffer: BytesMut,
}

/// Assembles data frames into messages.
#[derive(Debug, Default)]
pub struct MessageAssembler {
    partial: Option<PartialMessage>,
    utf8: Utf8Validator,
}

impl MessageAssembler {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn in_progress(&self) -> bool {
        self.partial.is_some()
    }

    /// Bytes buffered for the message in progress (compressed size if compressed).
    pub fn buffered_len(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.buffer.len())
    }

    /// Whether the payload of a frame with this (already validated) header is
    /// uncompressed text, to be validated with [`validate_text`](Self::validate_text) as it arrives.
    pub fn is_plain_text(&self, header: &FrameHeader) -> bool {
        match header.opcode {
            OpCode::Text => !header.rsv1,
            OpCode::Continuation => self.partial.as_ref().is_some_and(|p| p.text && !p.compressed),
            _ => false,
        }
    }

    /// Validates the next unmasked bytes of uncompressed text (fail fast).
    pub fn validate_text(&mut self, chunk: &[u8]) -> Result<(), ProtocolError> {
        self.utf8.feed(chunk).map_err(|_| ProtocolError::InvalidUtf8)
    }

    /// Abandons the message in progress (close received or sent, failure).
    pub fn discard(&mut self) {
        self.partial = None;
        self.utf8.reset();
    }

    /// Takes a complete data frame whose payload is unmasked and, if plain
    /// text, already passed through [`validate_text`](Self::validate_text).
    /// The frame's place in the sequence must have been checked by the caller.
    pub fn push_frame(
        &mut self,
        header: &FrameHeader,
        payload: Bytes,
        max_message_size: usize,
        decompressor: Option<&mut MessageDecompressor>,
    ) -> Result<Option<Message>, ProtocolError> {
        let too_big = ProtocolError::MessageTooLarge {
            limit: max_message_size,
        };
        let (text, compressed, data) = match (header.opcode, self.partial.take()) {
            (OpCode::Text | OpCode::Binary, None) => {
                let text = header.opcode == OpCode::Text;
                if !header.fin {
                    self.partial = Some(PartialMessage {
                        text,
                        compressed: header.rsv1,
                        buffer: BytesMut::from(&payload[..]),
                    });
                    return Ok(None);
                }
                (text, header.rsv1, payload)
            }
            (OpCode::Continuation, Some(mut partial)) => {
                if partial.buffer.len() + payload.len() > max_message_size {
                    return Err(too_big);
                }
                partial.buffer.extend_from_slice(&payload);
                if !header.fin {
                    self.partial = Some(partial);
                    return Ok(None);
                }
                (partial.text, partial.compressed, partial.buffer.freeze())
            }
            _ => unreachable!("frame sequence is checked by the connection"),
        };
        let data = if compressed {
            let decompressor = decompressor.ok_or(ProtocolError::ReservedBitsSet)?;
            let inflated = decompressor.decompress(&data, max_message_size).map_err(|e| match e {
                InflateError::TooLarge => too_big,
                InflateError::Corrupt => ProtocolError::InvalidCompressedData,
            })?;
            let inflated = Bytes::from(inflated);
            if text {
                self.validate_text(&inflated)?;
            }
            inflated
        } else {
            if data.len() > max_message_size {
                return Err(too_big);
            }
            data
        };
        if text {
            self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
            // SAFETY: every byte of `data` went through `self.utf8` (as it
            // arrived, or after inflating), and `finish` says it ended on a
            // whole code point.
            #[allow(unsafe_code)]
            let text = unsafe { Utf8Bytes::from_validated(data) };
            Ok(Some(Message::Text(text)))
        } else {
            Ok(Some(Message::Binary(data)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(opcode: OpCode, fin: bool, len: usize) -> FrameHeader {
        let mut h = FrameHeader::new(opcode, len as u64, None);
        h.fin = fin;
        h
    }

    fn push(
        a: &mut MessageAssembler,
        opcode: OpCode,
        fin: bool,
        data: &[u8],
    ) -> Result<Option<Message>, ProtocolError> {
        let h = header(opcode, fin, data.len());
        if a.is_plain_text(&h) {
            a.validate_text(data)?;
        }
        a.push_frame(&h, Bytes::copy_from_slice(data), 100, None)
    }

    #[test]
    fn unfragmented_is_zero_copy() {
        let mut a = MessageAssembler::new();
        let payload = Bytes::from_static(b"abc");
        let m = a
            .push_frame(&header(OpCode::Binary, true, 3), payload.clone(), 100, None)
            .unwrap();
        match m {
            Some(Message::Binary(b)) => assert_eq!(b.as_ptr(), payload.as_ptr()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fragments_assemble_and_buffer_is_released() {
        let mut a = MessageAssembler::new();
        assert_eq!(
            push(&mut a, OpCode::Text, false, "hé".as_bytes()[..2].as_ref()),
            Ok(None)
        );
        assert!(a.in_progress());
        assert_eq!(
            push(&mut a, OpCode::Continuation, false, &"hé".as_bytes()[2..]),
            Ok(None)
        );
        assert_eq!(
            push(&mut a, OpCode::Continuation, true, b"!"),
            Ok(Some(Message::Text("hé!".into())))
        );
        assert!(!a.in_progress());
        assert_eq!(a.buffered_len(), 0);
    }

    #[test]
    fn size_limit_across_fragments() {
        let mut a = MessageAssembler::new();
        push(&mut a, OpCode::Binary, false, &[0; 60]).unwrap();
        assert_eq!(
            push(&mut a, OpCode::Continuation, true, &[0; 41]),
            Err(ProtocolError::MessageTooLarge { limit: 100 })
        );
    }

    #[test]
    fn text_ending_inside_code_point_fails() {
        let mut a = MessageAssembler::new();
        push(&mut a, OpCode::Text, false, b"a").unwrap();
        assert_eq!(
            push(&mut a, OpCode::Continuation, true, &[0xe2, 0x82]),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn utf8_bytes_conversions() {
        assert!(Utf8Bytes::try_from(Bytes::from_static(&[0xff])).is_err());
        let t = Utf8Bytes::try_from(Bytes::from_static("ok".as_bytes())).unwrap();
        assert_eq!(&*t, "ok");
        assert_eq!(Utf8Bytes::from(String::from("x")).as_str(), "x");
    }
}
