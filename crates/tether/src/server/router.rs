//! Request routing: picks one handler per request from its path, and
//! optionally its method.
//!
//! # Theory of operation
//!
//! A [`Router`] is built once, before the server starts, and is then shared
//! read-only by every connection; it is itself a [`Handler`], so routers nest.
//! A request is matched on its URI **path only** (the query is ignored), as
//! sent: not percent-decoded and not normalised (`/a/../b` is not `/b`).
//! Handlers that map paths to resources, such as
//! [`StaticFiles`](super::static_files::StaticFiles), do their own decoding
//! and checking. The order is:
//!
//! 1. an exact route ([`Router::route`]) whose path equals the request path;
//! 2. otherwise the **longest** prefix route ([`Router::prefix`]) that the
//!    path starts with (a plain string prefix: end it with `/` to match whole
//!    segments only);
//! 3. otherwise the fallback ([`Router::fallback`]), by default
//!    `404 Not Found` with a short text body.
//!
//! Matching is one binary search of the exact routes plus a scan of the prefixes, kept longest
//! first, and allocates nothing. The request is passed on unchanged: a prefix
//! handler sees the full path, prefix included.
//!
//! Methods are a separate layer: a [`MethodRouter`] (built with
//! [`MethodRouter::on`], [`methods`] or [`get`]) sends each allowed method to
//! its handler and answers every other method with
//! `405 Method Not Allowed` and an `Allow` header listing the allowed ones.
//! The small helpers [`text`], [`empty`], [`not_found`] and
//! [`method_not_allowed`] build the common responses.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, StatusCode};

use super::body::Body;
use super::handler::{Handler, HandlerFuture, Request, Response, SharedHandler};

/// Routes requests by path: exact routes, then the longest prefix, then the
/// fallback. See the [module documentation](self).
pub struct Router {
    /// Exact routes sorted by path length, then bytes ([`route_order`]),
    /// found by binary search: cheaper per request than hashing the path
    /// with std's SipHash, and paths of other lengths are passed over
    /// without comparing bytes.
    exact: Vec<(Box<str>, SharedHandler)>,
    /// Prefix routes, longest prefix first.
    prefixes: Vec<(String, SharedHandler)>,
    fallback: SharedHandler,
}

impl Router {
    /// An empty router: every request gets the default `404 Not Found`.
    pub fn new() -> Self {
        Self {
            exact: Vec::new(),
            prefixes: Vec::new(),
            fallback: Arc::new(default_fallback),
        }
    }

    /// Sends requests whose path is exactly `path` to `handler`.
    ///
    /// # Panics
    ///
    /// If `path` does not start with `/`, or if it is already routed: both
    /// are programming errors best caught when the router is built.
    pub fn route(mut self, path: impl Into<String>, handler: impl Handler) -> Self {
        let path: Box<str> = path.into().into_boxed_str();
        assert!(path.starts_with('/'), "route path {path:?} must start with '/'");
        match self.exact.binary_search_by(|(p, _)| route_order(p, &path)) {
            Ok(_) => panic!("route {path:?} is already registered"),
            Err(at) => self.exact.insert(at, (path, Arc::new(handler))),
        }
        self
    }

    /// Sends requests whose path starts with `prefix` to `handler`, unless an
    /// exact route or a longer prefix matches. The handler sees the whole
    /// path, prefix included.
    ///
    /// # Panics
    ///
    /// If `prefix` does not start with `/`, or if it is already registered.
    pub fn prefix(mut self, prefix: impl Into<String>, handler: impl Handler) -> Self {
        let prefix = prefix.into();
        assert!(prefix.starts_with('/'), "route prefix {prefix:?} must start with '/'");
        assert!(
            self.prefixes.iter().all(|(p, _)| *p != prefix),
            "route prefix {prefix:?} is already registered"
        );
        // Keep the list sorted longest first so the first match is the longest.
        let at = self.prefixes.partition_point(|(p, _)| p.len() >= prefix.len());
        self.prefixes.insert(at, (prefix, Arc::new(handler)));
        self
    }

    /// Answers requests no route matches (replacing the default 404).
    pub fn fallback(mut self, handler: impl Handler) -> Self {
        self.fallback = Arc::new(handler);
        self
    }

    /// The handler that answers requests for `path` (a URI path, no query).
    fn select(&self, path: &str) -> &SharedHandler {
        if let Ok(i) = self.exact.binary_search_by(|(p, _)| route_order(p, path)) {
            return &self.exact[i].1;
        }
        self.prefixes
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map_or(&self.fallback, |(_, h)| h)
    }
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let exact: Vec<&str> = self.exact.iter().map(|(p, _)| &**p).collect();
        let prefixes: Vec<&str> = self.prefixes.iter().map(|(p, _)| p.as_str()).collect();
        f.debug_struct("Router")
            .field("exact", &exact)
            .field("prefixes", &prefixes)
            .finish_non_exhaustive()
    }
}

/// The order of exact routes: by length, then by bytes.
fn route_order(route: &str, path: &str) -> std::cmp::Ordering {
    route
        .len()
        .cmp(&path.len())
        .then_with(|| route.as_bytes().cmp(path.as_bytes()))
}

impl Handler for Router {
    fn call(&self, req: Request) -> HandlerFuture {
        self.select(req.uri().path()).call(req)
    }

    fn resolve(&self, req: &Request) -> Option<&dyn Handler> {
        Some(&**self.select(req.uri().path()))
    }
}

async fn default_fallback(_req: Request) -> Response {
    not_found()
}

/// Dispatches on the request method; any method without a handler gets
/// `405 Method Not Allowed` with an `Allow` header.
///
/// HEAD is not implied by GET: list it explicitly (as [`get`] does).
pub struct MethodRouter {
    routes: Vec<(Method, SharedHandler)>,
    /// The `Allow` header value, kept in step with `routes`.
    allow: HeaderValue,
}

impl MethodRouter {
    /// A method router that allows nothing (every request gets a 405).
    pub fn new() -> Self {
        Self {
            routes: Vec::new(),
            allow: HeaderValue::from_static(""),
        }
    }

    /// Sends requests with `method` to `handler`, replacing any handler
    /// already registered for it.
    pub fn on(self, method: Method, handler: impl Handler) -> Self {
        self.on_shared(method, Arc::new(handler))
    }

    fn on_shared(mut self, method: Method, handler: SharedHandler) -> Self {
        match self.routes.iter_mut().find(|(m, _)| *m == method) {
            Some(slot) => slot.1 = handler,
            None => self.routes.push((method, handler)),
        }
        let methods: Vec<Method> = self.routes.iter().map(|(m, _)| m.clone()).collect();
        self.allow = allow_value(&methods);
        self
    }
}

impl Default for MethodRouter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MethodRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodRouter")
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

impl MethodRouter {
    fn select(&self, method: &Method) -> Option<&SharedHandler> {
        self.routes.iter().find(|(m, _)| m == method).map(|(_, h)| h)
    }
}

impl Handler for MethodRouter {
    fn call(&self, req: Request) -> HandlerFuture {
        match self.select(req.method()) {
            Some(h) => h.call(req),
            None => {
                let resp = method_not_allowed_with(self.allow.clone());
                Box::pin(async move { resp })
            }
        }
    }

    /// The method's handler; none (this router answers 405) otherwise.
    fn resolve(&self, req: &Request) -> Option<&dyn Handler> {
        self.select(req.method()).map(|h| &**h)
    }
}

/// Sends each of the `allowed` methods to `handler`; every other method gets
/// `405 Method Not Allowed` with `Allow` listing `allowed` in order.
pub fn methods(allowed: &[Method], handler: impl Handler) -> MethodRouter {
    let handler: SharedHandler = Arc::new(handler);
    allowed
        .iter()
        .fold(MethodRouter::new(), |r, m| r.on_shared(m.clone(), Arc::clone(&handler)))
}

/// Sends GET and HEAD to `handler` (the connection leaves out the body of a
/// HEAD response); other methods get a 405 with `Allow: GET, HEAD`.
pub fn get(handler: impl Handler) -> MethodRouter {
    methods(&[Method::GET, Method::HEAD], handler)
}

/// A response with `status` and a static `text/plain; charset=utf-8` body.
pub fn text(status: StatusCode, body: &'static str) -> Response {
    let mut resp = Response::new(Body::Full(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// A response with `status`, no headers and no body.
pub fn empty(status: StatusCode) -> Response {
    let mut resp = Response::new(Body::Empty);
    *resp.status_mut() = status;
    resp
}

/// `404 Not Found` with a short text body (the router's default fallback).
pub fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// `405 Method Not Allowed` with an `Allow` header listing `allowed`.
pub fn method_not_allowed(allowed: &[Method]) -> Response {
    method_not_allowed_with(allow_value(allowed))
}

fn method_not_allowed_with(allow: HeaderValue) -> Response {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    resp.headers_mut().insert(ALLOW, allow);
    resp
}

/// `GET, HEAD` from `[GET, HEAD]`.
fn allow_value(methods: &[Method]) -> HeaderValue {
    let list = methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
    // Method names are tokens, so the joined list is always a valid value.
    HeaderValue::from_str(&list).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::body::RequestBody;

    fn req(method: Method, uri: &str) -> Request {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(RequestBody::empty())
            .unwrap()
    }

    fn body_of(resp: &Response) -> &[u8] {
        match resp.body() {
            Body::Full(b) => b,
            Body::Empty => b"",
            Body::Stream(_) | Body::File(_) => panic!("unexpected streaming body"),
        }
    }

    /// A handler that answers 200 with `name` as its body.
    fn named(name: &'static str) -> impl Handler {
        move |_req: Request| async move { text(StatusCode::OK, name) }
    }

    async fn hit(h: &impl Handler, method: Method, uri: &str) -> Response {
        h.call(req(method, uri)).await
    }

    fn sample() -> Router {
        Router::new()
            .route("/healthz", named("health"))
            .route("/static/special", named("special"))
            .prefix("/static/", named("static"))
            .prefix("/static/img/", named("img"))
            .prefix("/s", named("s"))
    }

    #[tokio::test]
    async fn exact_route_matches_only_the_exact_path() {
        let r = sample();
        let resp = hit(&r, Method::GET, "/healthz").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body_of(&resp), b"health");
        assert_eq!(hit(&r, Method::GET, "/healthz/").await.status(), StatusCode::NOT_FOUND);
        assert_eq!(hit(&r, Method::GET, "/healthzz").await.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn many_exact_routes_of_equal_and_different_lengths() {
        let paths = [
            "/b",
            "/a",
            "/abc",
            "/ab",
            "/zz",
            "/a/b/c",
            "/",
            "/aa",
            "/ba",
            "/abd",
            "/long/path/here",
        ];
        let names: Vec<&'static str> = paths
            .iter()
            .map(|p| &*Box::leak(format!("n{p}").into_boxed_str()))
            .collect();
        let mut r = Router::new();
        for (p, n) in paths.iter().zip(&names) {
            r = r.route(*p, named(n));
        }
        for (p, n) in paths.iter().zip(&names) {
            assert_eq!(body_of(&hit(&r, Method::GET, p).await), n.as_bytes(), "{p}");
        }
        for missing in ["/c", "/abe", "/a/b", "/zzz", "/long/path/herE"] {
            assert_eq!(
                hit(&r, Method::GET, missing).await.status(),
                StatusCode::NOT_FOUND,
                "{missing}"
            );
        }
    }

    #[tokio::test]
    async fn query_is_ignored() {
        let r = sample();
        assert_eq!(body_of(&hit(&r, Method::GET, "/healthz?verbose=1").await), b"health");
        assert_eq!(body_of(&hit(&r, Method::GET, "/static/a.css?v=3").await), b"static");
    }

    #[tokio::test]
    async fn absolute_form_uses_the_path() {
        let r = sample();
        assert_eq!(
            body_of(&hit(&r, Method::GET, "http://example.com/healthz").await),
            b"health"
        );
    }

    #[tokio::test]
    async fn longest_prefix_wins_regardless_of_registration_order() {
        let r = sample();
        assert_eq!(body_of(&hit(&r, Method::GET, "/static/img/logo.png").await), b"img");
        assert_eq!(body_of(&hit(&r, Method::GET, "/static/css/a.css").await), b"static");
        assert_eq!(body_of(&hit(&r, Method::GET, "/static/").await), b"static");
        // "/static" does not start with "/static/" but does with "/s".
        assert_eq!(body_of(&hit(&r, Method::GET, "/static").await), b"s");
        assert_eq!(body_of(&hit(&r, Method::GET, "/sx").await), b"s");
    }

    #[tokio::test]
    async fn exact_route_beats_prefix() {
        let r = sample();
        assert_eq!(body_of(&hit(&r, Method::GET, "/static/special").await), b"special");
        assert_eq!(body_of(&hit(&r, Method::GET, "/static/special2").await), b"static");
    }

    #[tokio::test]
    async fn default_fallback_is_404_text() {
        let resp = hit(&Router::new(), Method::GET, "/nope").await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(body_of(&resp), b"not found\n");
    }

    #[tokio::test]
    async fn custom_fallback() {
        let r = sample().fallback(named("fallback"));
        assert_eq!(body_of(&hit(&r, Method::GET, "/elsewhere").await), b"fallback");
        assert_eq!(body_of(&hit(&r, Method::GET, "/healthz").await), b"health");
    }

    #[tokio::test]
    async fn prefix_handler_sees_the_full_uri() {
        let r = Router::new().prefix("/api/", |req: Request| async move {
            let mut resp = empty(StatusCode::NO_CONTENT);
            resp.headers_mut()
                .insert("x-seen", HeaderValue::from_str(&req.uri().to_string()).unwrap());
            resp
        });
        let resp = hit(&r, Method::GET, "/api/v1?x=1").await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(resp.headers()["x-seen"], "/api/v1?x=1");
    }

    /// The server routes by reference (`handler::resolve`) and then calls
    /// the handler found: the same answers as calling the router itself,
    /// nested routers and method routers included.
    #[tokio::test]
    async fn resolving_then_calling_answers_like_calling() {
        let inner = Router::new()
            .route("/api/v1/ping", get(named("pong")))
            .route("/api/v1/post", methods(&[Method::POST], named("posted")));
        let r = Router::new().prefix("/api/", inner).route("/healthz", named("health"));
        let cases = [
            (Method::GET, "/api/v1/ping"),
            (Method::HEAD, "/api/v1/ping"),
            (Method::DELETE, "/api/v1/ping"),
            (Method::POST, "/api/v1/post"),
            (Method::GET, "/api/v1/post"),
            (Method::GET, "/api/v1/missing"),
            (Method::GET, "/healthz"),
            (Method::GET, "/nowhere"),
        ];
        for (method, uri) in cases {
            let called = hit(&r, method.clone(), uri).await;
            let request = req(method.clone(), uri);
            let leaf = crate::server::handler::resolve(&r, &request);
            let resolved = leaf.call(request).await;
            assert_eq!(resolved.status(), called.status(), "{method} {uri}");
            assert_eq!(body_of(&resolved), body_of(&called), "{method} {uri}");
            assert_eq!(resolved.headers(), called.headers(), "{method} {uri}");
        }
        // A method the route does not allow stops at its method router,
        // which answers the 405 itself.
        let request = req(Method::DELETE, "/api/v1/ping");
        let leaf = crate::server::handler::resolve(&r, &request);
        let answer = leaf.call(request).await;
        assert_eq!(answer.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(answer.headers()[http::header::ALLOW], "GET, HEAD");
    }

    #[tokio::test]
    async fn routers_nest() {
        let inner = Router::new().route("/api/v1/ping", named("pong"));
        let r = Router::new().prefix("/api/", inner);
        assert_eq!(body_of(&hit(&r, Method::GET, "/api/v1/ping").await), b"pong");
        assert_eq!(
            hit(&r, Method::GET, "/api/v1/other").await.status(),
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn methods_answers_405_with_allow() {
        let r = Router::new().route("/thing", methods(&[Method::GET, Method::HEAD], named("thing")));
        assert_eq!(body_of(&hit(&r, Method::GET, "/thing").await), b"thing");
        assert_eq!(body_of(&hit(&r, Method::HEAD, "/thing").await), b"thing");
        let resp = hit(&r, Method::POST, "/thing").await;
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[ALLOW], "GET, HEAD");
        assert_eq!(body_of(&resp), b"method not allowed\n");
        let custom = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(hit(&r, custom, "/thing").await.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn get_allows_get_and_head() {
        let m = get(named("g"));
        assert_eq!(hit(&m, Method::HEAD, "/").await.status(), StatusCode::OK);
        let resp = hit(&m, Method::DELETE, "/").await;
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[ALLOW], "GET, HEAD");
    }

    #[tokio::test]
    async fn method_router_dispatches_per_method_and_replaces() {
        let m = MethodRouter::new()
            .on(Method::GET, named("read"))
            .on(Method::POST, named("write-old"))
            .on(Method::POST, named("write"));
        assert_eq!(body_of(&hit(&m, Method::GET, "/").await), b"read");
        assert_eq!(body_of(&hit(&m, Method::POST, "/").await), b"write");
        let resp = hit(&m, Method::PUT, "/").await;
        assert_eq!(resp.headers()[ALLOW], "GET, POST");
        let resp = hit(&MethodRouter::new(), Method::GET, "/").await;
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[ALLOW], "");
    }

    #[test]
    fn helpers() {
        let resp = text(StatusCode::IM_A_TEAPOT, "short and stout");
        assert_eq!(resp.status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(body_of(&resp), b"short and stout");
        let resp = empty(StatusCode::NO_CONTENT);
        assert!(matches!(resp.body(), Body::Empty));
        assert!(resp.headers().is_empty());
        let resp = method_not_allowed(&[Method::GET, Method::OPTIONS]);
        assert_eq!(resp.headers()[ALLOW], "GET, OPTIONS");
    }

    #[test]
    #[should_panic(expected = "already registered")]
    fn duplicate_route_panics() {
        let _ = Router::new().route("/a", named("1")).route("/a", named("2"));
    }

    #[test]
    #[should_panic(expected = "must start with '/'")]
    fn relative_prefix_panics() {
        let _ = Router::new().prefix("static/", named("1"));
    }
}
