//! Static files: serves a directory tree for GET and HEAD.
//!
//! # Theory of operation
//!
//! [`StaticFiles`] turns a request into a file in three steps, and every step
//! can only refuse, never widen, what the previous one allowed:
//!
//! 1. **Lexical mapping** (no file system access). The URI path (minus an
//!    optional mount prefix, see [`StaticFiles::strip_prefix`]) is split on
//!    `/` and each segment percent-decoded on its own, so `%2F` can never
//!    create a separator. Invalid percent-encoding is `400 Bad Request`; a
//!    segment that decodes to `.` or `..`, or contains `/`, `\` or NUL, or is
//!    not UTF-8, is `404 Not Found`. Empty segments (`//`) are skipped.
//! 2. **Confinement.** The segments are joined onto the canonical root, the
//!    result is canonicalized (following every symlink) and must still lie
//!    inside the canonical root. A symlink that leads outside the root
//!    answers **`403 Forbidden`** (it exists, but this server will not serve
//!    it); symlinks that stay inside are followed and served. A path that
//!    does not exist, or crosses a file (`a.txt/b`), is `404`; a permission
//!    error from the file system is `403`; other errors are `404`.
//! 3. **Serving.** A directory requested without a trailing slash is
//!    redirected (`301`) to the slash form, so relative links in its index
//!    resolve; with the slash, its `index.html` (confined the same way) is
//!    served, and there is no directory listing (`404`). A regular file is
//!    opened and `fstat`ed; anything else (FIFOs, devices) is `404`.
//!
//! Responses carry `Content-Type` (guessed from the extension, `text/*` with
//! `; charset=utf-8`, else `application/octet-stream`), `Content-Length`,
//! a weak `ETag` derived from size and modification time, `Last-Modified`
//! and `Accept-Ranges: none` (`Range` is ignored: always the whole file).
//! `If-None-Match` (a list or `*`, weak comparison) answers `304 Not
//! Modified` and, when present, makes `If-Modified-Since` ignored, as
//! RFC 9110 §13.2.2 requires; otherwise `If-Modified-Since` answers 304 when
//! the file's modification time (whole seconds) is not later. A 304 carries
//! `ETag` and `Last-Modified` and no body. HEAD gets exactly the GET headers
//! and no body; other methods get `405` with `Allow: GET, HEAD`.
//!
//! The file system work of one request (canonicalize, stat, open, and the
//! read of a small file) runs in a single `spawn_blocking` call. Files up to
//! [`FULL_READ_LIMIT`] are read whole into a [`Body::Full`]; larger ones are
//! streamed as a [`Body::Stream`] in [`CHUNK_SIZE`] chunks by a spawned task
//! reading a `tokio::fs::File`, through a two-slot channel so a slow client
//! holds at most a few chunks in memory. `Content-Length` is always set so
//! the connection uses length framing; if the file shrinks while streaming,
//! the stream ends with an error and the connection is closed rather than
//! sending a short body. The check in step 2 and the open in step 3 are not
//! atomic: whoever can rewrite symlinks inside the root while the server
//! runs can race them, so the root must be trusted content.

use std::borrow::Cow;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{
    ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, LOCATION,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use tokio::io::AsyncReadExt;

use super::body::Body;
use super::handler::{Handler, HandlerFuture, Request, Response};
use super::router::{empty, method_not_allowed, not_found, text};

/// Files up to this size are read whole and sent as one [`Body::Full`].
pub const FULL_READ_LIMIT: u64 = 64 * 1024;
/// Larger files are streamed in chunks of this size.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// The file served for a request naming a directory (with a trailing slash).
pub const INDEX_FILE: &str = "index.html";

/// The largest modification time `Last-Modified` can express (year 9999).
const MAX_HTTP_DATE_SECS: u64 = 253_402_300_799;

/// Serves the files under a root directory. See the [module documentation](self).
#[derive(Debug)]
pub struct StaticFiles {
    inner: Arc<Inner>,
}

#[derive(Debug, Clone)]
struct Inner {
    root: PathBuf,
    /// The root, canonicalized on first successful use.
    canonical_root: OnceLock<PathBuf>,
    /// Stripped from request paths before mapping; "" or "/x/y" (no trailing slash).
    mount: String,
}

impl StaticFiles {
    /// Serves the files under `root`. The root need not exist yet: it is
    /// resolved (canonicalized) on the first request that finds it, and
    /// requests before that get `404`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            inner: Arc::new(Inner {
                root: root.into(),
                canonical_root: OnceLock::new(),
                mount: String::new(),
            }),
        }
    }

    /// Maps only request paths under `prefix` (e.g. `/static`), with the
    /// prefix removed: `/static/css/a.css` is `<root>/css/a.css`. Paths not
    /// under the prefix get `404`. Use it when the handler is mounted with
    /// [`Router::prefix`](super::router::Router::prefix), which passes the
    /// whole path on. A trailing slash on `prefix` is ignored.
    pub fn strip_prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let trimmed = prefix.trim_end_matches('/');
        let mount = if trimmed.is_empty() || trimmed.starts_with('/') {
            trimmed.to_owned()
        } else {
            format!("/{trimmed}")
        };
        Arc::make_mut(&mut self.inner).mount = mount;
        self
    }

    /// The root directory, as given to [`StaticFiles::new`].
    pub fn root(&self) -> &Path {
        &self.inner.root
    }
}

impl Handler for StaticFiles {
    fn call(&self, req: Request) -> HandlerFuture {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { inner.serve(req).await })
    }
}

/// A request path after the lexical step: decoded segments, no `.`/`..`.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    segments: Vec<String>,
    /// The path ended in `/`: the client means a directory.
    dir: bool,
}

/// The validators a request sent.
#[derive(Debug, Default)]
struct Conditions {
    /// Every `If-None-Match` field value; `None` when there is none.
    if_none_match: Option<Vec<HeaderValue>>,
    /// `If-Modified-Since`, when present and a valid HTTP date.
    if_modified_since: Option<SystemTime>,
}

/// What the blocking file system step decided.
enum Outcome {
    /// A complete response.
    Ready(Response),
    /// The path names a directory but lacks the trailing slash.
    Redirect,
    /// A 200 response whose body still has to be streamed from `file`.
    Stream { resp: Response, file: File, len: u64 },
}

impl Inner {
    async fn serve(self: Arc<Self>, req: Request) -> Response {
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => return method_not_allowed(&[Method::GET, Method::HEAD]),
        };
        let Some(rel) = self.unmount(req.uri().path()) else {
            return not_found();
        };
        let target = match decode_path(rel) {
            Ok(target) => target,
            Err(status) => return error_response(status),
        };
        let conditions = Conditions::from_headers(req.headers());
        let inner = Arc::clone(&self);
        let outcome = tokio::task::spawn_blocking(move || inner.resolve(&target, &conditions, head)).await;
        match outcome {
            Ok(Outcome::Ready(resp)) => resp,
            Ok(Outcome::Redirect) => redirect_to_directory(req.uri()),
            Ok(Outcome::Stream { mut resp, file, len }) => {
                *resp.body_mut() = stream_file(file, len);
                resp
            }
            Err(e) => {
                tracing::error!(error = %e, "static file task failed");
                text(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
            }
        }
    }

    /// The part of `path` under the mount prefix, `None` when outside it.
    fn unmount<'a>(&self, path: &'a str) -> Option<&'a str> {
        let rest = path.strip_prefix(self.mount.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }

    fn canonical_root(&self) -> Option<&Path> {
        if let Some(root) = self.canonical_root.get() {
            return Some(root);
        }
        let root = std::fs::canonicalize(&self.root).ok()?;
        Some(self.canonical_root.get_or_init(|| root))
    }

    /// Steps 2 and 3 of the module documentation; blocking.
    fn resolve(&self, target: &Target, conditions: &Conditions, head: bool) -> Outcome {
        let Some(root) = self.canonical_root() else {
            return status_outcome(StatusCode::NOT_FOUND);
        };
        let mut path = root.to_path_buf();
        path.extend(&target.segments);
        let (mut path, mut meta) = match confine(&path, root) {
            Ok(found) => found,
            Err(status) => return status_outcome(status),
        };
        if meta.is_dir() {
            if !target.dir {
                return Outcome::Redirect;
            }
            (path, meta) = match confine(&path.join(INDEX_FILE), root) {
                Ok(found) => found,
                Err(status) => return status_outcome(status),
            };
        } else if target.dir {
            // `file.txt/` names no directory.
            return status_outcome(StatusCode::NOT_FOUND);
        }
        if !meta.is_file() {
            return status_outcome(StatusCode::NOT_FOUND);
        }
        match serve_file(&path, conditions, head) {
            Ok(outcome) => outcome,
            Err(e) => status_outcome(io_status(&e)),
        }
    }
}

/// Canonicalizes `path` and checks it is inside `root` (already canonical).
fn confine(path: &Path, root: &Path) -> Result<(PathBuf, Metadata), StatusCode> {
    let canonical = std::fs::canonicalize(path).map_err(|e| io_status(&e))?;
    if !canonical.starts_with(root) {
        return Err(StatusCode::FORBIDDEN);
    }
    let meta = std::fs::metadata(&canonical).map_err(|e| io_status(&e))?;
    Ok((canonical, meta))
}

/// Opens the (confined, regular) file and builds the answer; blocking.
fn serve_file(path: &Path, conditions: &Conditions, head: bool) -> io::Result<Outcome> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(status_outcome(StatusCode::NOT_FOUND));
    }
    let len = meta.len();
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok());
    let etag = mtime.map(|m| format!("W/\"{len:x}-{:x}.{:x}\"", m.as_secs(), m.subsec_nanos()));
    // Last-Modified has whole seconds; compare If-Modified-Since at that resolution.
    let modified = mtime
        .filter(|m| m.as_secs() <= MAX_HTTP_DATE_SECS)
        .map(|m| UNIX_EPOCH + Duration::from_secs(m.as_secs()));

    let mut resp = empty(StatusCode::OK);
    let headers = resp.headers_mut();
    if let Some(value) = etag.as_deref().and_then(|e| HeaderValue::from_str(e).ok()) {
        headers.insert(ETAG, value);
    }
    if let Some(value) = modified.and_then(|t| HeaderValue::from_str(&httpdate::fmt_http_date(t)).ok()) {
        headers.insert(LAST_MODIFIED, value);
    }
    if conditions.not_modified(etag.as_deref(), modified) {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok(Outcome::Ready(resp));
    }
    headers.insert(CONTENT_TYPE, content_type(path));
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("none"));
    if head || len > FULL_READ_LIMIT {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        return Ok(if head {
            Outcome::Ready(resp)
        } else {
            Outcome::Stream { resp, file, len }
        });
    }
    // `take`: a file that grew since the fstat is cut at the size it had.
    let mut data = Vec::with_capacity(len as usize);
    file.take(len).read_to_end(&mut data)?;
    headers.insert(CONTENT_LENGTH, HeaderValue::from(data.len()));
    *resp.body_mut() = Body::Full(Bytes::from(data));
    Ok(Outcome::Ready(resp))
}

/// Streams exactly `len` bytes of `file` in [`CHUNK_SIZE`] chunks from a
/// spawned task.
fn stream_file(file: File, len: u64) -> Body {
    let (tx, body) = Body::channel(2);
    tokio::spawn(async move {
        let mut reader = tokio::fs::File::from_std(file).take(len);
        let mut remaining = len;
        while remaining > 0 {
            let want = remaining.min(CHUNK_SIZE as u64) as usize;
            let mut buf = BytesMut::with_capacity(want);
            while buf.len() < want {
                match reader.read_buf(&mut buf).await {
                    Ok(0) => {
                        let e = io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being sent");
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            remaining -= buf.len() as u64;
            if tx.send(Ok(buf.freeze())).await.is_err() {
                return; // The response was dropped: the client is gone.
            }
        }
    });
    body
}

impl Conditions {
    fn from_headers(headers: &HeaderMap) -> Self {
        let mut inm = headers.get_all(IF_NONE_MATCH).iter().peekable();
        let if_none_match = inm.peek().is_some().then(|| inm.cloned().collect());
        let if_modified_since = headers
            .get(IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| httpdate::parse_http_date(s.trim()).ok());
        Self {
            if_none_match,
            if_modified_since,
        }
    }

    /// Whether the representation with these validators is "not modified"
    /// for this request (RFC 9110 §13.2.2, steps 3 and 4, GET/HEAD).
    fn not_modified(&self, etag: Option<&str>, modified: Option<SystemTime>) -> bool {
        match &self.if_none_match {
            Some(values) => values
                .iter()
                .any(|v| v.to_str().is_ok_and(|list| none_match_hits(list, etag))),
            None => match (self.if_modified_since, modified) {
                (Some(since), Some(modified)) => modified <= since,
                _ => false,
            },
        }
    }
}

/// Whether an `If-None-Match` field value matches an existing file with
/// `etag`: `*`, or a listed entity tag that compares weakly equal.
fn none_match_hits(list: &str, etag: Option<&str>) -> bool {
    let list = list.trim();
    if list == "*" {
        return true;
    }
    let Some(ours) = etag.map(opaque_tag) else {
        return false;
    };
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        if rest.is_empty() {
            return false;
        }
        let tag = rest.strip_prefix("W/").unwrap_or(rest);
        match tag
            .strip_prefix('"')
            .and_then(|t| t.find('"').map(|end| (&t[..end], &t[end + 1..])))
        {
            Some((opaque, after)) => {
                if opaque == ours {
                    return true;
                }
                rest = after;
            }
            // Not an entity tag: skip this element.
            None => match rest.find(',') {
                Some(comma) => rest = &rest[comma + 1..],
                None => return false,
            },
        }
    }
}

/// `abc` from `W/"abc"` or `"abc"`.
fn opaque_tag(etag: &str) -> &str {
    let tag = etag.strip_prefix("W/").unwrap_or(etag);
    tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(tag)
}

/// Step 1: splits and decodes a request path (after the mount prefix).
fn decode_path(path: &str) -> Result<Target, StatusCode> {
    let mut segments = Vec::new();
    for raw in path.split('/').filter(|s| !s.is_empty()) {
        let bytes = percent_decode(raw)?;
        let segment = match bytes {
            Cow::Borrowed(b) => std::str::from_utf8(b).map(str::to_owned).ok(),
            Cow::Owned(b) => String::from_utf8(b).ok(),
        }
        .ok_or(StatusCode::NOT_FOUND)?;
        if segment == "." || segment == ".." || segment.contains(['/', '\\', '\0']) {
            return Err(StatusCode::NOT_FOUND);
        }
        segments.push(segment);
    }
    Ok(Target {
        segments,
        dir: path.ends_with('/'),
    })
}

/// Strict percent-decoding: `%` must be followed by two hex digits (else 400).
fn percent_decode(s: &str) -> Result<Cow<'_, [u8]>, StatusCode> {
    if !s.contains('%') {
        return Ok(Cow::Borrowed(s.as_bytes()));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).and_then(|&b| hex(b));
            let lo = bytes.get(i + 2).and_then(|&b| hex(b));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(StatusCode::BAD_REQUEST);
            };
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(Cow::Owned(out))
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The `Content-Type` for `path`, from its extension.
fn content_type(path: &Path) -> HeaderValue {
    match mime_guess::from_path(path).first_raw() {
        Some(mime) if mime.starts_with("text/") || mime == "application/javascript" => {
            HeaderValue::from_str(&format!("{mime}; charset=utf-8"))
                .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
        }
        Some(mime) => HeaderValue::from_static(mime),
        None => HeaderValue::from_static("application/octet-stream"),
    }
}

/// `301` to the same path with a trailing slash (and the same query).
/// Leading slashes are collapsed to one so `//host` cannot become a
/// scheme-relative redirect to another site.
fn redirect_to_directory(uri: &Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    let mut location = String::with_capacity(path.len() + 2 + uri.query().map_or(0, |q| q.len() + 1));
    location.push('/');
    location.push_str(path);
    location.push('/');
    if let Some(query) = uri.query() {
        location.push('?');
        location.push_str(query);
    }
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            let mut resp = text(StatusCode::MOVED_PERMANENTLY, "moved permanently\n");
            resp.headers_mut().insert(LOCATION, value);
            resp
        }
        Err(_) => not_found(),
    }
}

fn io_status(e: &io::Error) -> StatusCode {
    match e.kind() {
        io::ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        _ => StatusCode::NOT_FOUND,
    }
}

fn error_response(status: StatusCode) -> Response {
    match status {
        StatusCode::BAD_REQUEST => text(status, "bad request\n"),
        StatusCode::FORBIDDEN => text(status, "forbidden\n"),
        _ => not_found(),
    }
}

fn status_outcome(status: StatusCode) -> Outcome {
    Outcome::Ready(error_response(status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::body::RequestBody;
    use crate::server::router::Router;
    use http::header::ALLOW;
    use std::fs;
    use std::os::unix::fs::symlink;
    use tempfile::TempDir;

    /// A fixed modification time for the fixture files: 2020-01-02 03:04:05 UTC.
    const MTIME_SECS: u64 = 1_577_934_245;

    struct Fixture {
        /// Holds `www/` (the root) and `outside/`.
        base: TempDir,
        /// Another temporary directory, for symlinks that leave the tree.
        elsewhere: TempDir,
        big: Vec<u8>,
    }

    impl Fixture {
        fn root(&self) -> PathBuf {
            self.base.path().join("www")
        }
        fn files(&self) -> StaticFiles {
            StaticFiles::new(self.root())
        }
    }

    fn write(path: &Path, data: &[u8]) {
        fs::write(path, data).unwrap();
        let file = File::options().write(true).open(path).unwrap();
        file.set_modified(UNIX_EPOCH + Duration::from_secs(MTIME_SECS)).unwrap();
    }

    fn fixture() -> Fixture {
        let base = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let www = base.path().join("www");
        fs::create_dir_all(www.join("sub")).unwrap();
        fs::create_dir_all(www.join("empty")).unwrap();
        fs::create_dir_all(www.join("a")).unwrap();
        write(&www.join("index.html"), b"<h1>root</h1>");
        write(&www.join("hello.txt"), b"hello, world\n");
        write(&www.join("style.css"), b"body {}");
        write(&www.join("app.js"), b"let x = 1;");
        write(&www.join("app.mjs"), b"export {}");
        write(&www.join("data.json"), b"{}");
        write(&www.join("logo.png"), b"\x89PNG");
        write(&www.join("blob"), b"\x00\x01");
        write(&www.join("file.unknownext"), b"?");
        write(&www.join("sub/index.html"), b"<h1>sub</h1>");
        write(&www.join("sub/page.html"), b"<p>page</p>");
        write(&www.join("exact64k.bin"), &vec![b'x'; 64 * 1024]);
        // Not a multiple of the chunk size, so the last chunk is short.
        let big: Vec<u8> = (0..300 * 1024 + 7).map(|i: u32| (i * 31 % 251) as u8).collect();
        write(&www.join("big.bin"), &big);
        // Targets outside the root: beside it and in another temp dir.
        write(&base.path().join("x"), b"outside x");
        write(&base.path().join("secret.txt"), b"outside secret");
        write(&elsewhere.path().join("secret.txt"), b"elsewhere secret");
        symlink(elsewhere.path().join("secret.txt"), www.join("leak.txt")).unwrap();
        symlink(elsewhere.path(), www.join("leakdir")).unwrap();
        symlink("hello.txt", www.join("alias.txt")).unwrap();
        symlink("sub", www.join("subalias")).unwrap();
        symlink("missing.txt", www.join("dangling.txt")).unwrap();
        Fixture { base, elsewhere, big }
    }

    fn req(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(RequestBody::empty()).unwrap()
    }

    async fn get(h: &impl Handler, uri: &str) -> Response {
        h.call(req(Method::GET, uri, &[])).await
    }

    async fn get_with(h: &impl Handler, uri: &str, headers: &[(&str, &str)]) -> Response {
        h.call(req(Method::GET, uri, headers)).await
    }

    /// The whole body, and the size of each chunk for a stream.
    async fn collect(resp: Response) -> (Vec<u8>, Vec<usize>) {
        match resp.into_body() {
            Body::Empty => (Vec::new(), Vec::new()),
            Body::Full(b) => (b.to_vec(), vec![b.len()]),
            Body::Stream(mut rx) => {
                let (mut all, mut sizes) = (Vec::new(), Vec::new());
                while let Some(chunk) = rx.recv().await {
                    let chunk = chunk.unwrap();
                    sizes.push(chunk.len());
                    all.extend_from_slice(&chunk);
                }
                (all, sizes)
            }
        }
    }

    fn header(resp: &Response, name: http::header::HeaderName) -> &str {
        resp.headers()
            .get(&name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    #[tokio::test]
    async fn serves_a_file_with_headers() {
        let f = fixture();
        let resp = get(&f.files(), "/hello.txt?cache=bust").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, CONTENT_TYPE), "text/plain; charset=utf-8");
        assert_eq!(header(&resp, CONTENT_LENGTH), "13");
        assert_eq!(header(&resp, LAST_MODIFIED), "Thu, 02 Jan 2020 03:04:05 GMT");
        assert_eq!(header(&resp, ACCEPT_RANGES), "none");
        let etag = header(&resp, ETAG);
        assert!(etag.starts_with("W/\"") && etag.ends_with('"'), "{etag}");
        assert!(matches!(resp.body(), Body::Full(_)));
        assert_eq!(collect(resp).await.0, b"hello, world\n");
    }

    #[tokio::test]
    async fn content_types() {
        let f = fixture();
        let files = f.files();
        for (path, expected) in [
            ("/index.html", "text/html; charset=utf-8"),
            ("/hello.txt", "text/plain; charset=utf-8"),
            ("/style.css", "text/css; charset=utf-8"),
            ("/app.js", "text/javascript; charset=utf-8"),
            ("/app.mjs", "application/javascript; charset=utf-8"),
            ("/data.json", "application/json"),
            ("/logo.png", "image/png"),
            ("/blob", "application/octet-stream"),
            ("/file.unknownext", "application/octet-stream"),
            ("/", "text/html; charset=utf-8"),
        ] {
            let resp = get(&files, path).await;
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            assert_eq!(header(&resp, CONTENT_TYPE), expected, "{path}");
        }
    }

    #[tokio::test]
    async fn etag_changes_with_the_file() {
        let f = fixture();
        let files = f.files();
        let before = header(&get(&files, "/hello.txt").await, ETAG).to_owned();
        write(&f.root().join("hello.txt"), b"hello, world!\n");
        let after = header(&get(&files, "/hello.txt").await, ETAG).to_owned();
        assert_ne!(before, after);
    }

    #[tokio::test]
    async fn if_none_match_gives_304() {
        let f = fixture();
        let files = f.files();
        let etag = header(&get(&files, "/hello.txt").await, ETAG).to_owned();
        let strong_form = etag.trim_start_matches("W/").to_owned();
        let listed = format!("\"nope\", W/\"x,y\" ,{etag}");
        for inm in [etag.as_str(), &strong_form, &listed, "*"] {
            let resp = get_with(&files, "/hello.txt", &[("if-none-match", inm)]).await;
            assert_eq!(resp.status(), StatusCode::NOT_MODIFIED, "{inm}");
            assert_eq!(header(&resp, ETAG), etag);
            assert_eq!(header(&resp, LAST_MODIFIED), "Thu, 02 Jan 2020 03:04:05 GMT");
            assert!(resp.headers().get(CONTENT_LENGTH).is_none());
            assert!(resp.headers().get(CONTENT_TYPE).is_none());
            assert!(matches!(resp.body(), Body::Empty));
        }
        // Several header fields are one list.
        let resp = files
            .call(req(
                Method::GET,
                "/hello.txt",
                &[("if-none-match", "\"a\""), ("if-none-match", &etag)],
            ))
            .await;
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
        for inm in ["\"nope\"", "W/\"nope\", \"other\"", "garbage", ""] {
            let resp = get_with(&files, "/hello.txt", &[("if-none-match", inm)]).await;
            assert_eq!(resp.status(), StatusCode::OK, "{inm}");
        }
    }

    #[tokio::test]
    async fn if_modified_since_gives_304() {
        let f = fixture();
        let files = f.files();
        for ims in ["Thu, 02 Jan 2020 03:04:05 GMT", "Fri, 03 Jan 2020 00:00:00 GMT"] {
            let resp = get_with(&files, "/hello.txt", &[("if-modified-since", ims)]).await;
            assert_eq!(resp.status(), StatusCode::NOT_MODIFIED, "{ims}");
            assert!(resp.headers().get(ETAG).is_some());
            assert!(matches!(resp.body(), Body::Empty));
        }
        for ims in ["Thu, 02 Jan 2020 03:04:04 GMT", "not a date"] {
            let resp = get_with(&files, "/hello.txt", &[("if-modified-since", ims)]).await;
            assert_eq!(resp.status(), StatusCode::OK, "{ims}");
        }
    }

    #[tokio::test]
    async fn if_none_match_takes_precedence_over_if_modified_since() {
        let f = fixture();
        let files = f.files();
        let etag = header(&get(&files, "/hello.txt").await, ETAG).to_owned();
        let fresh = "Fri, 03 Jan 2020 00:00:00 GMT";
        let resp = get_with(
            &files,
            "/hello.txt",
            &[("if-none-match", "\"other\""), ("if-modified-since", fresh)],
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let stale = "Wed, 01 Jan 2020 00:00:00 GMT";
        let resp = get_with(
            &files,
            "/hello.txt",
            &[("if-none-match", &etag), ("if-modified-since", stale)],
        )
        .await;
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    }

    #[tokio::test]
    async fn head_has_get_headers_and_no_body() {
        let f = fixture();
        let files = f.files();
        for path in ["/hello.txt", "/big.bin", "/sub/"] {
            let got = get(&files, path).await;
            let head = files.call(req(Method::HEAD, path, &[])).await;
            assert_eq!(head.status(), StatusCode::OK);
            assert_eq!(head.headers(), got.headers(), "{path}");
            assert!(matches!(head.body(), Body::Empty));
        }
        let head = files.call(req(Method::HEAD, "/big.bin", &[])).await;
        assert_eq!(header(&head, CONTENT_LENGTH), f.big.len().to_string());
        let head = files
            .call(req(Method::HEAD, "/hello.txt", &[("if-none-match", "*")]))
            .await;
        assert_eq!(head.status(), StatusCode::NOT_MODIFIED);
        assert!(matches!(head.body(), Body::Empty));
    }

    #[tokio::test]
    async fn other_methods_get_405() {
        let f = fixture();
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            let resp = f.files().call(req(method.clone(), "/hello.txt", &[])).await;
            assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
            assert_eq!(header(&resp, ALLOW), "GET, HEAD");
        }
    }

    #[tokio::test]
    async fn traversal_attempts_are_refused() {
        let f = fixture();
        let files = f.files();
        for path in [
            "/../etc/passwd",
            "/../x",
            "/../secret.txt",
            "/%2e%2e/%2e%2e/etc/passwd",
            "/%2E%2E/secret.txt",
            "/a/%2e%2e/%2e%2e/x",
            "/a/../../x",
            "/..%2fx",
            "/%2e%2e%2fsecret.txt",
            "/%2e%2e%5cx",
            "/..\\x",
            "/a/./../hello.txt",
            "/hello.txt%00.png",
            "/%ff",
            "/sub%2fpage.html",
        ] {
            let resp = get(&files, path).await;
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
            let (body, _) = collect(resp).await;
            assert_eq!(body, b"not found\n", "{path}");
        }
        for path in ["/%zz", "/hello%2", "/hello.txt%", "/%2g"] {
            assert_eq!(get(&files, path).await.status(), StatusCode::BAD_REQUEST, "{path}");
        }
        // Encoded ordinary characters are fine.
        let resp = get(&files, "/%68ello%2Etxt").await;
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn symlink_out_of_the_root_is_403() {
        let f = fixture();
        let files = f.files();
        for path in ["/leak.txt", "/leakdir/secret.txt"] {
            let resp = get(&files, path).await;
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path}");
            assert_eq!(collect(resp).await.0, b"forbidden\n");
        }
        assert!(f.elsewhere.path().join("secret.txt").exists());
        assert_eq!(get(&files, "/dangling.txt").await.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn symlink_inside_the_root_is_served() {
        let f = fixture();
        let files = f.files();
        let resp = get(&files, "/alias.txt").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(collect(resp).await.0, b"hello, world\n");
        let resp = get(&files, "/subalias/page.html").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(collect(resp).await.0, b"<p>page</p>");
    }

    #[tokio::test]
    async fn a_root_that_is_a_symlink_works() {
        let f = fixture();
        let link = f.elsewhere.path().join("www-link");
        symlink(f.root(), &link).unwrap();
        let resp = get(&StaticFiles::new(&link), "/hello.txt").await;
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn directory_index_and_redirect() {
        let f = fixture();
        let files = f.files();
        let resp = get(&files, "/").await;
        assert_eq!(collect(resp).await.0, b"<h1>root</h1>");
        let resp = get(&files, "/sub/").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(collect(resp).await.0, b"<h1>sub</h1>");
        for (path, location) in [
            ("/sub", "/sub/"),
            ("/sub?x=1", "/sub/?x=1"),
            ("//sub", "/sub/"),
            ("/subalias", "/subalias/"),
        ] {
            let resp = get(&files, path).await;
            assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY, "{path}");
            assert_eq!(header(&resp, LOCATION), location, "{path}");
        }
        // No listing; a file is not a directory.
        assert_eq!(get(&files, "/empty/").await.status(), StatusCode::NOT_FOUND);
        assert_eq!(get(&files, "/hello.txt/").await.status(), StatusCode::NOT_FOUND);
        assert_eq!(get(&files, "/hello.txt/x").await.status(), StatusCode::NOT_FOUND);
        assert_eq!(get(&files, "/missing.txt").await.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn index_symlinked_out_of_the_root_is_403() {
        let f = fixture();
        fs::create_dir(f.root().join("trap")).unwrap();
        symlink(f.elsewhere.path().join("secret.txt"), f.root().join("trap/index.html")).unwrap();
        assert_eq!(get(&f.files(), "/trap/").await.status(), StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn large_file_is_streamed_in_chunks() {
        let f = fixture();
        let resp = get(&f.files(), "/big.bin").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, CONTENT_LENGTH), f.big.len().to_string());
        assert_eq!(header(&resp, CONTENT_TYPE), "application/octet-stream");
        assert!(matches!(resp.body(), Body::Stream(_)));
        let (body, sizes) = collect(resp).await;
        assert_eq!(body.len(), f.big.len());
        assert!(body == f.big, "streamed bytes differ from the file");
        assert_eq!(sizes, [CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE, 44 * 1024 + 7]);
    }

    #[tokio::test]
    async fn full_read_limit_is_inclusive() {
        let f = fixture();
        let resp = get(&f.files(), "/exact64k.bin").await;
        assert!(matches!(resp.body(), Body::Full(_)));
        assert_eq!(header(&resp, CONTENT_LENGTH), "65536");
        write(&f.root().join("exact64k.bin"), &vec![b'y'; 64 * 1024 + 1]);
        let resp = get(&f.files(), "/exact64k.bin").await;
        assert!(matches!(resp.body(), Body::Stream(_)));
        let (body, sizes) = collect(resp).await;
        assert_eq!(body.len(), 64 * 1024 + 1);
        assert_eq!(sizes, [CHUNK_SIZE, 1]);
    }

    #[tokio::test]
    async fn dropping_a_streamed_response_stops_the_reader() {
        let f = fixture();
        let resp = get(&f.files(), "/big.bin").await;
        let Body::Stream(mut rx) = resp.into_body() else {
            panic!("expected a stream")
        };
        assert_eq!(rx.recv().await.unwrap().unwrap().len(), CHUNK_SIZE);
        drop(rx);
        // Nothing to observe but the absence of a hang or panic.
        tokio::task::yield_now().await;
    }

    #[tokio::test]
    async fn mounted_under_a_router_prefix() {
        let f = fixture();
        let router = Router::new().prefix("/static/", f.files().strip_prefix("/static/"));
        let resp = get(&router, "/static/hello.txt").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(collect(resp).await.0, b"hello, world\n");
        let resp = get(&router, "/static/sub").await;
        assert_eq!(header(&resp, LOCATION), "/static/sub/");
        assert_eq!(collect(get(&router, "/static/").await).await.0, b"<h1>root</h1>");
        // Called directly: outside the mount is 404, the bare mount redirects.
        let files = f.files().strip_prefix("static");
        assert_eq!(get(&files, "/hello.txt").await.status(), StatusCode::NOT_FOUND);
        assert_eq!(get(&files, "/staticx/hello.txt").await.status(), StatusCode::NOT_FOUND);
        assert_eq!(header(&get(&files, "/static").await, LOCATION), "/static/");
    }

    #[tokio::test]
    async fn missing_root_is_404_until_it_appears() {
        let dir = tempfile::tempdir().unwrap();
        let files = StaticFiles::new(dir.path().join("later"));
        assert_eq!(get(&files, "/a.txt").await.status(), StatusCode::NOT_FOUND);
        fs::create_dir(dir.path().join("later")).unwrap();
        write(&dir.path().join("later/a.txt"), b"a");
        assert_eq!(get(&files, "/a.txt").await.status(), StatusCode::OK);
    }

    #[test]
    fn decode_path_segments() {
        let t = decode_path("/a//b%20c/").unwrap();
        assert_eq!(
            t,
            Target {
                segments: vec!["a".into(), "b c".into()],
                dir: true
            }
        );
        assert_eq!(
            decode_path("").unwrap(),
            Target {
                segments: vec![],
                dir: false
            }
        );
        assert_eq!(decode_path("/..").unwrap_err(), StatusCode::NOT_FOUND);
        assert_eq!(decode_path("/a%").unwrap_err(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn entity_tag_lists() {
        let ours = Some("W/\"abc\"");
        assert!(none_match_hits("\"abc\"", ours));
        assert!(none_match_hits("W/\"abc\"", ours));
        assert!(none_match_hits(" \"x\",\t W/\"abc\" ", ours));
        assert!(none_match_hits("bogus, \"abc\"", ours));
        assert!(!none_match_hits("\"abc", ours));
        assert!(!none_match_hits("\"ab\", \"abcd\"", ours));
        assert!(none_match_hits("*", None));
        assert!(!none_match_hits("\"abc\"", None));
    }
}
