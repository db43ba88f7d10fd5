//! Where a client connects: a URL's origin (scheme, host, port) and the
//! request target, read with `http::Uri`. Shared by the HTTP and
//! WebSocket clients.

use http::Uri;

/// A URL the clients can reach, split into what each step needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The origin (`host:port`, brackets kept for IPv6), the pool's key.
    pub(crate) connect: String,
    /// The `Host` field: the authority as written in the URL.
    pub(crate) host_header: String,
    /// The request target in origin form (`/path?query`).
    pub(crate) path: String,
}

/// Why a URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TargetError {
    /// Not a URL with `scheme`, or no host, or userinfo.
    Invalid,
    /// The TLS scheme (`https`, `wss`), which this build cannot speak yet.
    Tls,
}

impl Target {
    /// Reads `url`, which must use `scheme` (`http` or `ws`; `https` and
    /// `wss` are refused as TLS); the port defaults to 80.
    pub(crate) fn parse(url: &str, scheme: &str) -> Result<Self, TargetError> {
        let uri: Uri = url.parse().map_err(|_| TargetError::Invalid)?;
        let tls = format!("{scheme}s");
        match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case(scheme) => {}
            Some(s) if s.eq_ignore_ascii_case(&tls) => return Err(TargetError::Tls),
            _ => return Err(TargetError::Invalid),
        }
        let authority = uri.authority().ok_or(TargetError::Invalid)?;
        if authority.as_str().contains('@') || authority.host().is_empty() {
            return Err(TargetError::Invalid);
        }
        let port = authority.port_u16().unwrap_or(80);
        let connect = format!("{}:{port}", authority.host());
        let path = match uri.path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') => pq.as_str().to_string(),
            Some(pq) => format!("/{}", pq.as_str()),
            None => "/".to_string(),
        };
        Ok(Target {
            connect,
            host_header: authority.as_str().to_string(),
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("ws://127.0.0.1:9000/echo?x=1", "ws").unwrap();
        assert_eq!((t.connect.as_str(), t.path.as_str()), ("127.0.0.1:9000", "/echo?x=1"));
        let t = Target::parse("ws://localhost", "ws").unwrap();
        assert_eq!(
            (t.connect.as_str(), t.path.as_str(), t.host_header.as_str()),
            ("localhost:80", "/", "localhost")
        );
        let t = Target::parse("http://[::1]:8080/a", "http").unwrap();
        assert_eq!(t.connect, "[::1]:8080");
        let t = Target::parse("http://example.test?q", "http").unwrap();
        assert_eq!(t.path, "/?q");
        assert_eq!(Target::parse("wss://x/", "ws"), Err(TargetError::Tls));
        assert_eq!(Target::parse("https://x/", "http"), Err(TargetError::Tls));
        assert_eq!(Target::parse("http://x/", "ws"), Err(TargetError::Invalid));
        assert_eq!(Target::parse("ws:///x", "ws"), Err(TargetError::Invalid));
        assert_eq!(Target::parse("http://u@x/", "http"), Err(TargetError::Invalid));
    }
}
