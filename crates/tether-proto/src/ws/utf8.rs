//! Incremental UTF-8 validation across fragments (RFC 6455 §8.1).
//!
//! Theory of operation: a text message may be split into fragments (and a
//! fragment into reads) at any byte, including inside a code point. The
//! validator runs `simdutf8`'s `compat` API over each chunk: `valid_up_to`
//! says how far the chunk is valid, and `error_len` distinguishes a definitely
//! invalid sequence (`Some`: fail now, "fail fast") from a sequence that is
//! merely cut off by the end of the chunk (`None`). The cut-off tail (at most
//! 3 bytes) is kept and completed by the next chunk's first bytes. At the end
//! of the message a kept tail means the message ended inside a code point,
//! which is an error. Because `error_len` is `Some` for any prefix that can
//! never become valid (e.g. `ED A0`, `F4 90`, `C0`), an invalid sequence is
//! reported as soon as its first impossible byte has been seen.

use simdutf8::compat;

/// The text was not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid UTF-8")]
pub struct InvalidUtf8;

/// Validates one text message fed as any number of chunks.
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    /// Bytes of a code point cut off by the end of the previous chunk.
    incomplete: [u8; 4],
    incomplete_len: u8,
}

impl Utf8Validator {
    pub const fn new() -> Self {
        Utf8Validator {
            incomplete: [0; 4],
            incomplete_len: 0,
        }
    }

    /// Validates the next chunk. Fails as soon as an invalid sequence is seen.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), InvalidUtf8> {
        if self.incomplete_len > 0 {
            // Complete the code point left over from the previous chunk.
            while let Some((&byte, rest)) = chunk.split_first() {
                let len = self.incomplete_len as usize;
                self.incomplete[len] = byte;
                self.incomplete_len += 1;
                chunk = rest;
                match compat::from_utf8(&self.incomplete[..len + 1]) {
                    Ok(_) => {
                        self.incomplete_len = 0;
                        break;
                    }
                    Err(e) if e.error_len().is_some() => return self.fail(),
                    Err(_) => {} // still incomplete (at most 4 bytes, so this ends)
                }
            }
            if self.incomplete_len > 0 {
                return Ok(()); // chunk exhausted inside the code point
            }
        }
        match compat::from_utf8(chunk) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => self.fail(),
            Err(e) => {
                let tail = &chunk[e.valid_up_to()..];
                self.incomplete[..tail.len()].copy_from_slice(tail);
                self.incomplete_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// Ends the message: fails if it ended inside a code point. Resets the validator.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        if self.incomplete_len > 0 {
            self.fail()
        } else {
            Ok(())
        }
    }

    /// Forgets any partial code point (message abandoned).
    pub fn reset(&mut self) {
        self.incomplete_len = 0;
    }

    fn fail(&mut self) -> Result<(), InvalidUtf8> {
        self.incomplete_len = 0;
        Err(InvalidUtf8)
    }
}

/// Validates a complete byte string (close reasons, unfragmented messages).
pub fn validate(bytes: &[u8]) -> Result<&str, InvalidUtf8> {
    compat::from_utf8(bytes).map_err(|_| InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(chunks: &[&[u8]]) -> Result<(), InvalidUtf8> {
        let mut v = Utf8Validator::new();
        for chunk in chunks {
            v.feed(chunk)?;
        }
        v.finish()
    }

    #[test]
    fn code_point_split_at_every_position_is_valid() {
        let text = "aé€😀z".as_bytes();
        for i in 0..=text.len() {
            for j in i..=text.len() {
                assert_eq!(feed_all(&[&text[..i], &text[i..j], &text[j..]]), Ok(()));
            }
        }
        // One byte at a time.
        let chunks: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(feed_all(&chunks), Ok(()));
    }

    #[test]
    fn invalid_fails_fast_on_first_chunk() {
        let mut v = Utf8Validator::new();
        // "κόσμε" then an invalid byte, then more bytes that will never come.
        let mut first = "κόσμε".as_bytes().to_vec();
        first.extend_from_slice(&[0xce, 0xbc, 0xed, 0xa0, 0x80]); // surrogate
        assert_eq!(v.feed(&first), Err(InvalidUtf8));
    }

    #[test]
    fn impossible_prefix_fails_before_completion() {
        // ED A0 can never start a valid sequence (surrogates): fail without the 3rd byte.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[b'a', 0xed]), Ok(()));
        assert_eq!(v.feed(&[0xa0]), Err(InvalidUtf8));
        // F4 90 is above U+10FFFF.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xf4, 0x90]), Err(InvalidUtf8));
        // F5 and C0 never valid.
        assert_eq!(Utf8Validator::new().feed(&[0xf5]), Err(InvalidUtf8));
        assert_eq!(Utf8Validator::new().feed(&[0xc0]), Err(InvalidUtf8));
    }

    #[test]
    fn incomplete_at_end_fails() {
        assert_eq!(feed_all(&[&[b'a', 0xe2, 0x82]]), Err(InvalidUtf8));
        assert_eq!(feed_all(&[&[0xf0], &[0x9f], &[0x98]]), Err(InvalidUtf8));
    }

    #[test]
    fn finish_resets() {
        let mut v = Utf8Validator::new();
        v.feed(&[0xe2]).unwrap();
        assert!(v.finish().is_err());
        assert!(v.feed(b"ok").is_ok());
        assert!(v.finish().is_ok());
    }

    #[test]
    fn validate_whole() {
        assert!(validate("héllo".as_bytes()).is_ok());
        assert!(validate(&[0xff]).is_err());
    }
}
