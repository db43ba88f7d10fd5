//! Channel names: 1 to 128 bytes of `[A-Za-z0-9_.:-]`.
//!
//! A name is checked once, where it enters (a WebSocket command, an HTTP
//! path, a broker message), and is then a [`ChannelName`]: cheap to clone
//! (shared), safe to put into JSON, a URL path, an SSE field or a Redis key
//! without escaping.

use std::fmt;
use std::sync::Arc;

/// The longest channel name, in bytes.
pub const MAX_CHANNEL_NAME: usize = 128;

/// A valid channel name (see the module documentation).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a string is not a channel name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    /// The name is empty.
    #[error("a channel name cannot be empty")]
    Empty,
    /// The name is longer than [`MAX_CHANNEL_NAME`] bytes.
    #[error("a channel name is at most {MAX_CHANNEL_NAME} bytes (this one has {0})")]
    TooLong(usize),
    /// A character outside `[A-Za-z0-9_.:-]`.
    #[error("a channel name uses only letters, digits and _ . : - ({0:?} at byte {1} is not allowed)")]
    BadCharacter(char, usize),
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
}

impl ChannelName {
    /// Checks `name`.
    pub fn new(name: &str) -> Result<Self, ChannelNameError> {
        if name.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if name.len() > MAX_CHANNEL_NAME {
            return Err(ChannelNameError::TooLong(name.len()));
        }
        if let Some((at, c)) = name.char_indices().find(|&(_, c)| !c.is_ascii() || !allowed(c as u8)) {
            return Err(ChannelNameError::BadCharacter(c, at));
        }
        Ok(Self(name.into()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for ChannelName {
    type Err = ChannelNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["c", "chat:room-1", "ticker.EURUSD", "a_b", &"x".repeat(128)] {
            assert_eq!(ChannelName::new(good).unwrap().as_str(), good);
        }
        assert_eq!(ChannelName::new(""), Err(ChannelNameError::Empty));
        assert_eq!(ChannelName::new(&"x".repeat(129)), Err(ChannelNameError::TooLong(129)));
        for (bad, c, at) in [
            ("a b", ' ', 1),
            ("a/b", '/', 1),
            ("\"", '"', 0),
            ("é", 'é', 0),
            ("a\nb", '\n', 1),
            ("a*", '*', 1),
        ] {
            assert_eq!(
                ChannelName::new(bad),
                Err(ChannelNameError::BadCharacter(c, at)),
                "{bad:?}"
            );
        }
    }
}
