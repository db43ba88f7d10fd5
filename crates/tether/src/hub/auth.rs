//! Who may publish through the HTTP API: publisher keys.
//!
//! Theory of operation. [`PublishKeys`] holds the keys a server accepts on
//! `POST /publish/{channel}` as `Authorization: Bearer KEY` (several, so a
//! key can be rotated: add the new one, move the publishers, remove the
//! old). With no key configured the API is open (the hub's development
//! mode). A presented key is compared with every configured key in
//! constant time (`subtle`), all of them, so neither the time nor the
//! order reveals which one matched or how much of a key was right. Keys
//! never reach a log: `Debug` prints how many there are, not what they
//! are.

use http::{header, HeaderMap};
use subtle::ConstantTimeEq;

/// The keys `POST /publish/{channel}` accepts (see the module documentation).
#[derive(Clone, Default)]
pub struct PublishKeys {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for PublishKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublishKeys({} configured)", self.keys.len())
    }
}

/// Why a publish request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefused {
    /// No `Authorization: Bearer …` field.
    #[error("a publisher key is required: Authorization: Bearer KEY")]
    Missing,
    /// A key that is not one of the configured ones.
    #[error("the publisher key is not valid")]
    Invalid,
}

impl KeyRefused {
    /// The `WWW-Authenticate` challenge for this refusal (RFC 6750 §3).
    pub fn challenge(self) -> &'static str {
        match self {
            KeyRefused::Missing => "Bearer realm=\"tether\"",
            KeyRefused::Invalid => "Bearer realm=\"tether\", error=\"invalid_token\"",
        }
    }
}

impl PublishKeys {
    /// Accepts these keys (empty ones are ignored); none: the API is open.
    pub fn new<I, K>(keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
    {
        let keys = keys
            .into_iter()
            .map(|k| k.as_ref().to_vec())
            .filter(|k| !k.is_empty())
            .collect();
        Self { keys }
    }

    /// Whether any key is configured (otherwise publishing is open).
    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Checks a request's `Authorization` field.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), KeyRefused> {
        if !self.required() {
            return Ok(());
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()))
            .ok_or(KeyRefused::Missing)?;
        // Every key is compared, whatever matched first.
        let mut any = subtle::Choice::from(0);
        for key in &self.keys {
            any |= key.as_slice().ct_eq(presented);
        }
        if bool::from(any) {
            Ok(())
        } else {
            Err(KeyRefused::Invalid)
        }
    }
}

/// The token of `Bearer TOKEN` (the scheme case-insensitive, RFC 7235).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let text = value.trim_ascii();
    let (scheme, token) = text.split_at(text.iter().position(|b| *b == b' ')?);
    let token = token.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn keys_are_checked_and_rotated() {
        let open = PublishKeys::default();
        assert_eq!(open.check(&HeaderMap::new()), Ok(()));
        let keys = PublishKeys::new(["old-key", "new-key", ""]);
        assert!(keys.required());
        assert_eq!(keys.check(&with("Bearer old-key")), Ok(()));
        assert_eq!(keys.check(&with("bearer   new-key ")), Ok(()));
        assert_eq!(keys.check(&with("Bearer new-ke")), Err(KeyRefused::Invalid));
        assert_eq!(keys.check(&with("Bearer new-key2")), Err(KeyRefused::Invalid));
        assert_eq!(keys.check(&with("Basic new-key")), Err(KeyRefused::Missing));
        assert_eq!(keys.check(&with("Bearer ")), Err(KeyRefused::Missing));
        assert_eq!(keys.check(&HeaderMap::new()), Err(KeyRefused::Missing));
        assert_eq!(format!("{keys:?}"), "PublishKeys(2 configured)");
    }
}
