//! Where a client connects: a URL's origin (scheme, host, port) and the
//! request target, read with `http::Uri`. Shared by the HTTP and
//! WebSocket clients.

use http::Uri;

/// A URL the clients can reach, split into what each step needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// `host:port` to connect to (brackets kept for IPv6).
    pub(crate) connect: String,
    /// The origin, `scheme://host:port` (the scheme in lower case: `http`
    /// or `https`, `ws` or `wss`): the pool's key, so `http://x:443` and
    /// `https://x:443` never share a connection.
    pub(crate) origin: String,
    /// The `Host` field: the authority as written in the URL.
    pub(crate) host_header: String,
    /// The request target in origin form (`/path?query`).
    pub(crate) path: String,
    /// Whether the scheme is the TLS one (`https`, `wss`).
    pub(crate) tls: bool,
    /// The host as TLS names it (SNI, the certificate check): the URL's
    /// host without IPv6 brackets.
    pub(crate) server_name: String,
}

/// Why a URL cannot be used: not a URL with the expected scheme (or its
/// TLS variant), or no host, or userinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InvalidTarget;

impl Target {
    /// Reads `url`, which must use `scheme` (`http` or `ws`) or its TLS
    /// variant (`https`, `wss`); the port defaults to 80, or 443 with TLS.
    pub(crate) fn parse(url: &str, scheme: &str) -> Result<Self, InvalidTarget> {
        let uri: Uri = url.parse().map_err(|_| InvalidTarget)?;
        let tls_scheme = format!("{scheme}s");
        let tls = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case(scheme) => false,
            Some(s) if s.eq_ignore_ascii_case(&tls_scheme) => true,
            _ => return Err(InvalidTarget),
        };
        let authority = uri.authority().ok_or(InvalidTarget)?;
        if authority.as_str().contains('@') || authority.host().is_empty() {
            return Err(InvalidTarget);
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host = authority.host();
        let connect = format!("{host}:{port}");
        let path = match uri.path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') => pq.as_str().to_string(),
            Some(pq) => format!("/{}", pq.as_str()),
            None => "/".to_string(),
        };
        Ok(Target {
            origin: format!("{}://{connect}", if tls { tls_scheme.as_str() } else { scheme }),
            connect,
            host_header: authority.as_str().to_string(),
            path,
            tls,
            server_name: host.trim_start_matches('[').trim_end_matches(']').to_string(),
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
        assert!(!t.tls);
        let t = Target::parse("ws://localhost", "ws").unwrap();
        assert_eq!(
            (t.connect.as_str(), t.path.as_str(), t.host_header.as_str()),
            ("localhost:80", "/", "localhost")
        );
        let t = Target::parse("http://[::1]:8080/a", "http").unwrap();
        assert_eq!(t.connect, "[::1]:8080");
        assert_eq!(t.server_name, "::1");
        let t = Target::parse("http://example.test?q", "http").unwrap();
        assert_eq!(t.path, "/?q");
        assert_eq!(Target::parse("http://x/", "ws"), Err(InvalidTarget));
        assert_eq!(Target::parse("ws:///x", "ws"), Err(InvalidTarget));
        assert_eq!(Target::parse("http://u@x/", "http"), Err(InvalidTarget));
        assert_eq!(Target::parse("https://x/", "ws"), Err(InvalidTarget));
    }

    #[test]
    fn tls_urls_default_to_443_and_are_other_origins() {
        let t = Target::parse("wss://Example.test/chat", "ws").unwrap();
        assert!(t.tls);
        assert_eq!(
            (t.connect.as_str(), t.origin.as_str(), t.server_name.as_str()),
            ("Example.test:443", "wss://Example.test:443", "Example.test")
        );
        let plain = Target::parse("http://x:443/", "http").unwrap();
        let tls = Target::parse("HTTPS://x:443/", "http").unwrap();
        assert_eq!(plain.connect, tls.connect);
        assert_ne!(plain.origin, tls.origin);
        assert_eq!(tls.origin, "https://x:443");
        assert_eq!(Target::parse("https://[::1]/", "http").unwrap().connect, "[::1]:443");
    }
}
