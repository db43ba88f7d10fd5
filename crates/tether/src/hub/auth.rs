//! Who may publish and who may listen: publisher keys for the HTTP API and
//! signed client tokens for every transport.
//!
//! Theory of operation, keys. [`PublishKeys`] holds the keys a server accepts on
//! `POST /publish/{channel}` as `Authorization: Bearer KEY` (several, so a
//! key can be rotated: add the new one, move the publishers, remove the
//! old). With no key configured the API is open (the hub's development
//! mode). A presented key is compared with every configured key in
//! constant time (`subtle`), all of them, so neither the time nor the
//! order reveals which one matched or how much of a key was right. Keys
//! never reach a log: `Debug` prints how many there are, not what they
//! are.
//!
//! Theory of operation, tokens. With a [`TokenVerifier`] configured (an
//! HS256 secret, or an RS256/ES256 public key), a client must present a
//! JWT (`jsonwebtoken` checks the signature, the algorithm, which must be
//! the configured one, so `alg: none` or a public key used as an HMAC
//! secret fail, and `exp`). Its claims become [`Grants`]: `sub`, the
//! client's identity; `exp`; `subscribe` and `publish`, lists of channel
//! names or `prefix*` patterns. A channel `user:{sub}` is the subject's own
//! without being listed. Where a token comes from (a query parameter, the
//! first WebSocket message) is the transports' business (`http`,
//! `session`); this module only verifies and answers "may this client
//! subscribe to / publish on this channel".

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{header, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use subtle::ConstantTimeEq;

use super::ChannelName;

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

/// Verifies client tokens (see the module documentation).
#[derive(Clone)]
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenVerifier({:?})", self.validation.algorithms)
    }
}

/// Why a token was refused, or a key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token was presented.
    #[error("a token is required")]
    Missing,
    /// Its `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// A bad signature, a different algorithm, a malformed token or
    /// missing claims.
    #[error("the token is not valid: {0}")]
    Invalid(String),
    /// The configured verification key could not be read.
    #[error("the token key: {0}")]
    Key(String),
}

/// The claims a token carries, as sent.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    /// The client's identity (`sub`).
    pub subject: Arc<str>,
    /// When the token expires (`exp`, seconds since the Unix epoch).
    pub expires: u64,
    subscribe: Vec<String>,
    publish: Vec<String>,
}

impl TokenVerifier {
    /// HS256 with a shared secret (at least 32 bytes: a shorter one is
    /// refused, as it can be guessed).
    pub fn hs256(secret: &[u8]) -> Result<Self, TokenError> {
        if secret.len() < 32 {
            return Err(TokenError::Key("an HS256 secret must be at least 32 bytes".into()));
        }
        Ok(Self::with(DecodingKey::from_secret(secret), Algorithm::HS256))
    }

    /// RS256 or ES256 with a PEM public key (an RSA key gives RS256, a P-256
    /// EC key ES256).
    pub fn public_key_pem(pem: &[u8]) -> Result<Self, TokenError> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Self::with(key, Algorithm::RS256));
        }
        match DecodingKey::from_ec_pem(pem) {
            Ok(key) => Ok(Self::with(key, Algorithm::ES256)),
            Err(e) => Err(TokenError::Key(format!("not an RSA or EC public key in PEM: {e}"))),
        }
    }

    fn with(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self { key, validation }
    }

    /// Verifies a token: its signature, algorithm and `exp`.
    pub fn verify(&self, token: &str) -> Result<Grants, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid(e.to_string()),
        })?;
        let c = data.claims;
        Ok(Grants {
            subject: c.sub.into(),
            expires: c.exp,
            subscribe: c.subscribe,
            publish: c.publish,
        })
    }
}

/// Signs HS256 client tokens, as an application's backend does (the
/// server's own use is `tether serve --dev-tokens`, the demo's endpoint).
#[derive(Clone)]
pub struct TokenSigner {
    key: EncodingKey,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(HS256)")
    }
}

impl TokenSigner {
    /// HS256 with a shared secret (at least 32 bytes, as for the verifier).
    pub fn hs256(secret: &[u8]) -> Result<Self, TokenError> {
        if secret.len() < 32 {
            return Err(TokenError::Key("an HS256 secret must be at least 32 bytes".into()));
        }
        Ok(Self {
            key: EncodingKey::from_secret(secret),
        })
    }

    /// A token for `subject`, valid for `ttl`, allowing these channel
    /// patterns (exact names or `prefix*`); returns it and its `exp`.
    pub fn sign(
        &self,
        subject: &str,
        ttl: Duration,
        subscribe: Vec<String>,
        publish: Vec<String>,
    ) -> Result<(String, u64), TokenError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let exp = (now + ttl).as_secs();
        let claims = Claims {
            sub: subject.to_string(),
            exp,
            subscribe,
            publish,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(|e| TokenError::Key(e.to_string()))?;
        Ok((token, exp))
    }
}

impl Grants {
    /// Whether the token allows subscribing to `channel`.
    pub fn may_subscribe(&self, channel: &ChannelName) -> bool {
        self.own(channel) || matches_any(&self.subscribe, channel.as_str())
    }

    /// Whether the token allows publishing on `channel`.
    pub fn may_publish(&self, channel: &ChannelName) -> bool {
        self.own(channel) || matches_any(&self.publish, channel.as_str())
    }

    /// `user:{sub}` belongs to its subject.
    fn own(&self, channel: &ChannelName) -> bool {
        channel
            .as_str()
            .strip_prefix("user:")
            .is_some_and(|rest| rest == &*self.subject)
    }

    /// How long until the token expires (zero once it has).
    pub fn remaining(&self) -> Duration {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Duration::from_secs(self.expires).saturating_sub(now)
    }

    /// Whether it has expired.
    pub fn expired(&self) -> bool {
        self.remaining().is_zero()
    }
}

/// Whether `name` is one of `patterns` (exact, or a `prefix*`).
fn matches_any(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

/// The token of `Bearer TOKEN` (the scheme case-insensitive, RFC 7235).
pub(crate) fn bearer(value: &[u8]) -> Option<&[u8]> {
    let text = value.trim_ascii();
    let (scheme, token) = text.split_at(text.iter().position(|b| *b == b' ')?);
    let token = token.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    fn token(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn signed_tokens_verify_with_the_same_secret_only() {
        let signer = TokenSigner::hs256(SECRET).unwrap();
        let (t, exp) = signer
            .sign("ada", Duration::from_secs(60), vec!["demo.*".into()], vec![])
            .unwrap();
        let g = TokenVerifier::hs256(SECRET).unwrap().verify(&t).unwrap();
        assert_eq!((&*g.subject, g.expires), ("ada", exp));
        assert!(g.may_subscribe(&ChannelName::new("demo.chat").unwrap()));
        assert!(!g.may_publish(&ChannelName::new("demo.chat").unwrap()));
        let other = TokenVerifier::hs256(b"another-secret-of-at-least-32-bytes").unwrap();
        assert!(matches!(other.verify(&t), Err(TokenError::Invalid(_))));
        assert!(TokenSigner::hs256(b"short").is_err());
    }

    #[test]
    fn tokens_are_verified_and_their_grants_applied() {
        let v = TokenVerifier::hs256(SECRET).unwrap();
        let t = token(
            serde_json::json!({"sub": "ada", "exp": now() + 60, "subscribe": ["chat:*", "news"], "publish": ["chat:room1"]}),
            SECRET,
        );
        let g = v.verify(&t).unwrap();
        let ch = |n: &str| ChannelName::new(n).unwrap();
        assert!(g.may_subscribe(&ch("chat:room2")) && g.may_subscribe(&ch("news")));
        assert!(!g.may_subscribe(&ch("newsroom")) && !g.may_subscribe(&ch("ticker:x")));
        assert!(g.may_publish(&ch("chat:room1")) && !g.may_publish(&ch("chat:room2")));
        assert!(g.may_subscribe(&ch("user:ada")) && g.may_publish(&ch("user:ada")));
        assert!(!g.may_subscribe(&ch("user:bob")) && !g.may_subscribe(&ch("user:adam")));
        assert!(!g.expired() && g.remaining() <= Duration::from_secs(60));

        let expired = token(serde_json::json!({"sub": "ada", "exp": now() - 1}), SECRET);
        assert_eq!(v.verify(&expired), Err(TokenError::Expired));
        let other_key = token(
            serde_json::json!({"sub": "ada", "exp": now() + 60}),
            b"another-secret-another-secret-xx",
        );
        assert!(matches!(v.verify(&other_key), Err(TokenError::Invalid(_))));
        let no_sub = token(serde_json::json!({"exp": now() + 60}), SECRET);
        assert!(matches!(v.verify(&no_sub), Err(TokenError::Invalid(_))));
        // alg: none, with a valid-looking body, and a tampered payload.
        let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s);
        let body = b64(&format!(r#"{{"sub":"ada","exp":{}}}"#, now() + 60));
        let none = format!("{}.{body}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
        assert!(matches!(v.verify(&none), Err(TokenError::Invalid(_))));
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = b64(&format!(r#"{{"sub":"root","exp":{},"subscribe":["*"]}}"#, now() + 60));
        parts[1] = &forged;
        assert!(matches!(v.verify(&parts.join(".")), Err(TokenError::Invalid(_))));
        assert!(TokenVerifier::hs256(b"short").is_err());
        assert!(TokenVerifier::public_key_pem(b"not a key").is_err());
    }

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
