//! Static files: serves a directory tree for GET and HEAD, as nginx does:
//! validators and `304`, byte ranges, precompressed siblings,
//! `Cache-Control`.
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
//! **Precompressed siblings** (on by default, [`StaticFiles::precompressed`]).
//! Next to the file, `NAME.br` and `NAME.gz` (confined like any file, and
//! regular files) are other representations of it. When either exists the
//! response says `Vary: Accept-Encoding`, and the one the request's
//! `Accept-Encoding` prefers is served: the highest q-value among `br` and
//! `gzip` (`x-gzip`; `*` stands for a coding not listed; `q=0` excludes),
//! `br` on a tie; with none acceptable (or no `Accept-Encoding`: identity),
//! the file itself. A sibling is served with `Content-Encoding`, the
//! original's `Content-Type`, and its own length, modification time and
//! entity tag (the coding is part of the tag, so caches and `If-Range`
//! never mix representations). Everything below (validators, ranges)
//! applies to the representation chosen.
//!
//! **Headers.** `Content-Type` (guessed from the extension, `text/*` with
//! `; charset=utf-8`, else `application/octet-stream`), `Content-Length`,
//! a strong `ETag` derived from size and modification time in nanoseconds
//! (as nginx's, with the coding appended for a sibling), `Last-Modified`,
//! `Accept-Ranges: bytes`, and `Cache-Control` when one is configured
//! ([`StaticFiles::cache_control`]; none by default, like nginx without
//! `expires`: caches then revalidate by heuristics, with the validators).
//!
//! **Conditional requests.** `If-None-Match` (a list or `*`, weak
//! comparison) answers `304 Not Modified` and, when present, makes
//! `If-Modified-Since` ignored, as RFC 9110 §13.2.2 requires; otherwise
//! `If-Modified-Since` answers 304 when the modification time (whole
//! seconds) is not later. A 304 carries `ETag`, `Last-Modified`,
//! `Cache-Control` and `Vary`, and no body. HEAD gets exactly the GET
//! headers (of a whole-file answer) and no body; other methods get `405`
//! with `Allow: GET, HEAD`.
//!
//! **Ranges** (RFC 9110 §14, GET only: HEAD and every other method ignore
//! `Range`). `Range: bytes=` with `first-last`, `first-` and `-suffix`
//! specs. A `Range` that is not valid syntax, or not in `bytes`, is
//! ignored (`200`, the whole file). `If-Range` is checked first: an entity
//! tag that is not strongly equal to the representation's, or a date that
//! is not exactly its `Last-Modified`, makes the answer the whole file
//! (`200`). The satisfiable specs are sorted and coalesced (overlapping or
//! adjacent ones merge); none satisfiable is `416` with `Content-Range:
//! bytes */LEN`; one is `206` with `Content-Range: bytes FIRST-LAST/LEN`;
//! several are `206` `multipart/byteranges` (each part with its
//! `Content-Type` and `Content-Range`). More than [`MAX_RANGES`] after
//! coalescing, or more than [`MAX_RANGE_SPECS`] specs written, is answered
//! with the whole file, as nginx does beyond `max_ranges`: a request made
//! of many tiny ranges costs the server more than the file.
//!
//! **Reading.** The file system work of one request (canonicalize, stat,
//! the siblings' stats, open, and the read of a small answer) runs in a
//! single `spawn_blocking` call. Answers whose body is up to
//! [`FULL_READ_LIMIT`] bytes are read whole (positioned reads, `pread`)
//! into a [`Body::Full`]. A larger answer of one slice of the file (the
//! whole file, or one range) is a [`Body::File`]: on a plain TCP
//! connection it goes from the page cache to the socket with `sendfile(2)`,
//! never copied into this process; on TLS or a Unix socket it is read in
//! [`CHUNK_SIZE`] chunks on the blocking pool (see `super::file_body`). A
//! larger multipart answer is always streamed that way. `Content-Length`
//! is always set so the connection uses length framing; if the file shrinks
//! while it is sent, the response ends with an error and the connection is
//! closed rather than sending a short body.
//!
//! The check in step 2 and the open in step 3 are not atomic: whoever can
//! rewrite symlinks inside the root while the server runs can race them,
//! so the root must be trusted content.

use std::borrow::Cow;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, LOCATION, RANGE, VARY,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};

use super::body::Body;
use super::file_body::{stream_pieces, FileRange, Piece};
use super::handler::{Handler, HandlerFuture, Request, Response};
use super::router::{empty, method_not_allowed, not_found, text};

/// Answers up to this size are read whole and sent as one [`Body::Full`].
pub const FULL_READ_LIMIT: u64 = 64 * 1024;
/// Larger ones, read in user space (TLS, a Unix socket, multipart ranges),
/// are streamed in chunks of this size.
pub use super::file_body::CHUNK_SIZE;
/// The file served for a request naming a directory (with a trailing slash).
pub const INDEX_FILE: &str = "index.html";
/// The most ranges one `206` carries (after coalescing); beyond, the whole file.
pub const MAX_RANGES: usize = 16;
/// The most range specs a `Range` header may list; beyond, it is ignored.
pub const MAX_RANGE_SPECS: usize = 100;

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
    /// Sent with every `200`, `206` and `304`.
    cache_control: Option<HeaderValue>,
    /// Look for `.br` and `.gz` siblings.
    precompressed: bool,
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
                cache_control: None,
                precompressed: true,
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

    /// Sends `Cache-Control: VALUE` with every `200`, `206` and `304`
    /// (e.g. `no-cache`, or `public, max-age=3600`). Default: none.
    pub fn cache_control(mut self, value: HeaderValue) -> Self {
        Arc::make_mut(&mut self.inner).cache_control = Some(value);
        self
    }

    /// Whether `NAME.br` and `NAME.gz` siblings are served to clients that
    /// accept them (see the module documentation). Default: on.
    pub fn precompressed(mut self, on: bool) -> Self {
        Arc::make_mut(&mut self.inner).precompressed = on;
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

/// What a request asks of the representation: its validators, its range,
/// the codings it accepts.
#[derive(Debug, Default)]
struct Conditions {
    /// Every `If-None-Match` field value; `None` when there is none.
    if_none_match: Option<Vec<HeaderValue>>,
    /// `If-Modified-Since`, when present and a valid HTTP date.
    if_modified_since: Option<SystemTime>,
    /// `Range` (GET only).
    range: Option<HeaderValue>,
    /// `If-Range`.
    if_range: Option<HeaderValue>,
    /// The q-values (in thousandths) of the codings it accepts.
    accepted: Accepted,
}

/// A content coding of a precompressed sibling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Br,
    Gzip,
}

impl Coding {
    /// Preferred first on a tie.
    const ALL: [Coding; 2] = [Coding::Br, Coding::Gzip];

    fn token(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// The sibling's file name suffix.
    fn suffix(self) -> &'static str {
        match self {
            Coding::Br => ".br",
            Coding::Gzip => ".gz",
        }
    }
}

/// `Accept-Encoding`'s q-values (thousandths) for the codings we have
/// siblings for; 0: not acceptable.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Accepted {
    br: u16,
    gzip: u16,
}

impl Accepted {
    /// Parses every `Accept-Encoding` field value (RFC 9110 §12.5.3). An
    /// element with a malformed q-value is skipped.
    fn from_headers(headers: &HeaderMap) -> Self {
        let (mut br, mut gzip, mut star) = (None, None, None);
        for value in headers.get_all(ACCEPT_ENCODING) {
            let Ok(list) = value.to_str() else { continue };
            for element in list.split(',') {
                let mut parts = element.split(';');
                let coding = parts.next().unwrap_or("").trim();
                let mut q = Some(1000);
                for param in parts {
                    if let Some((name, value)) = param.split_once('=') {
                        if name.trim().eq_ignore_ascii_case("q") {
                            q = parse_qvalue(value.trim());
                        }
                    }
                }
                let Some(q) = q else { continue };
                if coding.eq_ignore_ascii_case("br") {
                    br = Some(q);
                } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                    gzip = Some(q);
                } else if coding == "*" {
                    star = Some(q);
                }
            }
        }
        Self {
            br: br.or(star).unwrap_or(0),
            gzip: gzip.or(star).unwrap_or(0),
        }
    }

    fn q(&self, coding: Coding) -> u16 {
        match coding {
            Coding::Br => self.br,
            Coding::Gzip => self.gzip,
        }
    }

    /// Of `available`, the acceptable coding with the highest q (the
    /// first listed on a tie).
    fn choose(&self, available: &[Coding]) -> Option<Coding> {
        let mut best: Option<Coding> = None;
        for &c in available {
            if self.q(c) > 0 && best.is_none_or(|b| self.q(c) > self.q(b)) {
                best = Some(c);
            }
        }
        best
    }
}

/// A q-value (`0`, `0.5`, `1.000`) in thousandths; `None` when malformed.
fn parse_qvalue(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value = frac.bytes().fold(0u16, |n, b| n * 10 + u16::from(b - b'0')) * 10u16.pow(3 - frac.len() as u32);
    match int {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}

/// The representation chosen for a request: the file to read and how to
/// describe it.
struct Representation {
    path: PathBuf,
    content_type: HeaderValue,
    coding: Option<Coding>,
    /// Another representation exists: the answer depends on `Accept-Encoding`.
    vary: bool,
}

/// What the blocking file system step decided.
enum Outcome {
    /// A complete response.
    Ready(Response),
    /// The path names a directory but lacks the trailing slash.
    Redirect,
    /// A response whose body (`pieces`) still has to be streamed from `file`.
    Stream {
        resp: Response,
        file: File,
        pieces: Vec<Piece>,
    },
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
        let conditions = Conditions::from_headers(req.headers(), !head);
        let inner = Arc::clone(&self);
        let outcome = tokio::task::spawn_blocking(move || inner.resolve(&target, &conditions, head)).await;
        match outcome {
            Ok(Outcome::Ready(resp)) => resp,
            Ok(Outcome::Redirect) => redirect_to_directory(req.uri()),
            Ok(Outcome::Stream { mut resp, file, pieces }) => {
                *resp.body_mut() = match pieces[..] {
                    // One slice of the file: `sendfile` where the connection allows.
                    [Piece::File { offset, len }] => Body::File(FileRange::new(file, offset, len)),
                    _ => stream_pieces(Arc::new(file), pieces),
                };
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
        // As requested (siblings are looked for next to this name).
        let mut requested = root.to_path_buf();
        requested.extend(&target.segments);
        let (mut path, mut meta) = match confine(&requested, root) {
            Ok(found) => found,
            Err(status) => return status_outcome(status),
        };
        if meta.is_dir() {
            if !target.dir {
                return Outcome::Redirect;
            }
            requested = path.join(INDEX_FILE);
            (path, meta) = match confine(&requested, root) {
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
        let representation = self.representation(&requested, path, root, &conditions.accepted);
        match serve_file(&representation, conditions, head, self.cache_control.as_ref()) {
            Ok(outcome) => outcome,
            Err(e) => status_outcome(io_status(&e)),
        }
    }

    /// The file itself, or the precompressed sibling of `requested` the
    /// request prefers; blocking.
    fn representation(&self, requested: &Path, path: PathBuf, root: &Path, accepted: &Accepted) -> Representation {
        let content_type = content_type(&path);
        let mut available: [Option<(Coding, PathBuf)>; 2] = [None, None];
        if self.precompressed {
            for (slot, coding) in available.iter_mut().zip(Coding::ALL) {
                let mut name = requested.as_os_str().to_owned();
                name.push(coding.suffix());
                *slot = match confine(Path::new(&name), root) {
                    Ok((sibling, meta)) if meta.is_file() => Some((coding, sibling)),
                    _ => None,
                };
            }
        }
        let codings: Vec<Coding> = available.iter().flatten().map(|(c, _)| *c).collect();
        let vary = !codings.is_empty();
        match accepted.choose(&codings) {
            Some(chosen) => {
                let sibling = available
                    .into_iter()
                    .flatten()
                    .find(|(c, _)| *c == chosen)
                    .map(|(_, p)| p)
                    .unwrap_or(path);
                Representation {
                    path: sibling,
                    content_type,
                    coding: Some(chosen),
                    vary,
                }
            }
            None => Representation {
                path,
                content_type,
                coding: None,
                vary,
            },
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

/// Opens the (confined, regular) file of `rep` and builds the answer; blocking.
fn serve_file(
    rep: &Representation,
    conditions: &Conditions,
    head: bool,
    cache_control: Option<&HeaderValue>,
) -> io::Result<Outcome> {
    let file = File::open(&rep.path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(status_outcome(StatusCode::NOT_FOUND));
    }
    let len = meta.len();
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok());
    let coding = rep.coding.map_or_else(String::new, |c| format!("-{}", c.token()));
    let etag = mtime.map(|m| format!("\"{len:x}-{:x}.{:x}{coding}\"", m.as_secs(), m.subsec_nanos()));
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
    if let Some(value) = cache_control {
        headers.insert(CACHE_CONTROL, value.clone());
    }
    if rep.vary {
        headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    if conditions.not_modified(etag.as_deref(), modified) {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok(Outcome::Ready(resp));
    }
    headers.insert(CONTENT_TYPE, rep.content_type.clone());
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(coding) = rep.coding {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
    }
    let ranges = match &conditions.range {
        Some(range) if conditions.if_range_holds(etag.as_deref(), modified) => {
            range.to_str().map_or(Ranges::Ignore, |r| parse_ranges(r, len))
        }
        _ => Ranges::Ignore,
    };
    let pieces = match ranges {
        Ranges::Ignore => {
            if head || len > FULL_READ_LIMIT {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
                return Ok(if head {
                    Outcome::Ready(resp)
                } else {
                    Outcome::Stream {
                        resp,
                        file,
                        pieces: vec![Piece::File { offset: 0, len }],
                    }
                });
            }
            // `take`: a file that grew since the fstat is cut at the size it had.
            let mut data = Vec::with_capacity(len as usize);
            file.take(len).read_to_end(&mut data)?;
            headers.insert(CONTENT_LENGTH, HeaderValue::from(data.len()));
            *resp.body_mut() = Body::Full(Bytes::from(data));
            return Ok(Outcome::Ready(resp));
        }
        Ranges::Unsatisfiable => {
            let mut resp = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
            let headers = resp.headers_mut();
            headers.insert(CONTENT_RANGE, content_range(None, len));
            headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            if rep.vary {
                headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
            }
            return Ok(Outcome::Ready(resp));
        }
        Ranges::Satisfiable(ranges) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            let headers = resp.headers_mut();
            if let [(start, end)] = ranges[..] {
                headers.insert(CONTENT_RANGE, content_range(Some((start, end)), len));
                vec![Piece::File {
                    offset: start,
                    len: end - start,
                }]
            } else {
                let boundary = format!("{:016x}", rand::random::<u64>());
                let content_type =
                    HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}")).expect("hex digits");
                let part_type = headers.insert(CONTENT_TYPE, content_type).expect("set above");
                multipart(&ranges, len, &boundary, &part_type)
            }
        }
    };
    let total: u64 = pieces.iter().map(Piece::len).sum();
    resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(total));
    if total > FULL_READ_LIMIT {
        return Ok(Outcome::Stream { resp, file, pieces });
    }
    let mut data = Vec::with_capacity(total as usize);
    for piece in &pieces {
        match piece {
            Piece::Text(b) => data.extend_from_slice(b),
            Piece::File { offset, len } => {
                let start = data.len();
                data.resize(start + *len as usize, 0);
                file.read_exact_at(&mut data[start..], *offset)?;
            }
        }
    }
    *resp.body_mut() = Body::Full(Bytes::from(data));
    Ok(Outcome::Ready(resp))
}

/// `bytes FIRST-LAST/LEN` for the half-open range `start..end`, or
/// `bytes */LEN` for none.
fn content_range(range: Option<(u64, u64)>, len: u64) -> HeaderValue {
    let value = match range {
        Some((start, end)) => format!("bytes {start}-{}/{len}", end - 1),
        None => format!("bytes */{len}"),
    };
    HeaderValue::from_str(&value).expect("digits")
}

/// The body of a `multipart/byteranges` answer (RFC 9110 §14.6): each
/// range after its boundary and part headers, then the closing boundary.
fn multipart(ranges: &[(u64, u64)], len: u64, boundary: &str, part_type: &HeaderValue) -> Vec<Piece> {
    let mut pieces = Vec::with_capacity(ranges.len() * 2 + 1);
    let part_type = String::from_utf8_lossy(part_type.as_bytes());
    for (i, &(start, end)) in ranges.iter().enumerate() {
        let lead = if i == 0 { "" } else { "\r\n" };
        let head = format!(
            "{lead}--{boundary}\r\nContent-Type: {part_type}\r\nContent-Range: bytes {start}-{}/{len}\r\n\r\n",
            end - 1
        );
        pieces.push(Piece::Text(Bytes::from(head)));
        pieces.push(Piece::File {
            offset: start,
            len: end - start,
        });
    }
    pieces.push(Piece::Text(Bytes::from(format!("\r\n--{boundary}--\r\n"))));
    pieces
}

/// What a `Range` header asks of a representation of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Ranges {
    /// Not valid syntax, not in bytes, or too many ranges: the whole file.
    Ignore,
    /// No range overlaps the representation: `416`.
    Unsatisfiable,
    /// Half-open ranges, sorted, coalesced, within `0..len`.
    Satisfiable(Vec<(u64, u64)>),
}

/// Parses `Range: bytes=...` (RFC 9110 §14.1.2) against a length.
fn parse_ranges(value: &str, len: u64) -> Ranges {
    let Some((unit, set)) = value.split_once('=') else {
        return Ranges::Ignore;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ranges::Ignore;
    }
    let mut ranges = Vec::new();
    let mut specs = 0;
    for spec in set.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        specs += 1;
        if specs > MAX_RANGE_SPECS {
            return Ranges::Ignore;
        }
        let Some((first, last)) = spec.split_once('-') else {
            return Ranges::Ignore;
        };
        let (first, last) = (first.trim(), last.trim());
        if first.is_empty() {
            // `-suffix`: the last `suffix` bytes.
            let Some(suffix) = parse_digits(last) else {
                return Ranges::Ignore;
            };
            if suffix > 0 && len > 0 {
                ranges.push((len.saturating_sub(suffix), len));
            }
            continue;
        }
        let Some(first) = parse_digits(first) else {
            return Ranges::Ignore;
        };
        let end = if last.is_empty() {
            len
        } else {
            let Some(last) = parse_digits(last) else {
                return Ranges::Ignore;
            };
            if last < first {
                return Ranges::Ignore;
            }
            last.saturating_add(1).min(len)
        };
        if first < len {
            ranges.push((first, end));
        }
    }
    if specs == 0 {
        return Ranges::Ignore;
    }
    if ranges.is_empty() {
        return Ranges::Unsatisfiable;
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    if merged.len() > MAX_RANGES {
        return Ranges::Ignore;
    }
    Ranges::Satisfiable(merged)
}

/// A non-empty run of ASCII digits (a number too large saturates).
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

impl Conditions {
    /// The request's conditions; its `Range` only for a GET (`get`).
    fn from_headers(headers: &HeaderMap, get: bool) -> Self {
        let mut inm = headers.get_all(IF_NONE_MATCH).iter().peekable();
        let if_none_match = inm.peek().is_some().then(|| inm.cloned().collect());
        let if_modified_since = headers
            .get(IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| httpdate::parse_http_date(s.trim()).ok());
        let range = if get { headers.get(RANGE).cloned() } else { None };
        Self {
            if_none_match,
            if_modified_since,
            if_range: range.as_ref().and_then(|_| headers.get(IF_RANGE).cloned()),
            range,
            accepted: Accepted::from_headers(headers),
        }
    }

    /// Whether a `Range` may be honoured (RFC 9110 §13.1.5): no
    /// `If-Range`, or one naming this representation: an entity tag
    /// strongly equal to `etag`, or exactly its `Last-Modified` date.
    fn if_range_holds(&self, etag: Option<&str>, modified: Option<SystemTime>) -> bool {
        let Some(value) = &self.if_range else {
            return true;
        };
        let Ok(value) = value.to_str().map(str::trim) else {
            return false;
        };
        if value.starts_with('"') || value.starts_with("W/") {
            // Weak tags never match (strong comparison).
            return etag.is_some_and(|ours| !ours.starts_with("W/") && value == ours);
        }
        match (httpdate::parse_http_date(value), modified) {
            (Ok(date), Some(modified)) => date == modified,
            _ => false,
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

    /// The whole body, and the size of each chunk for a stream (a file
    /// body as the chunks a transport without `sendfile` gets).
    async fn collect(resp: Response) -> (Vec<u8>, Vec<usize>) {
        let body = match resp.into_body() {
            Body::File(range) => range.into_stream(),
            other => other,
        };
        match body {
            Body::Empty | Body::File(_) => (Vec::new(), Vec::new()),
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
        assert_eq!(header(&resp, ACCEPT_RANGES), "bytes");
        let etag = header(&resp, ETAG);
        assert!(etag.starts_with('"') && etag.ends_with('"'), "strong: {etag}");
        assert!(resp.headers().get(VARY).is_none(), "no sibling, no Vary");
        assert!(resp.headers().get(CACHE_CONTROL).is_none(), "none by default");
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
    async fn large_file_is_a_file_body_read_in_chunks_without_sendfile() {
        let f = fixture();
        let resp = get(&f.files(), "/big.bin").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, CONTENT_LENGTH), f.big.len().to_string());
        assert_eq!(header(&resp, CONTENT_TYPE), "application/octet-stream");
        assert!(matches!(resp.body(), Body::File(r) if r.len() == f.big.len() as u64));
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
        assert!(matches!(resp.body(), Body::File(_)));
        let (body, sizes) = collect(resp).await;
        assert_eq!(body.len(), 64 * 1024 + 1);
        assert_eq!(sizes, [CHUNK_SIZE, 1]);
    }

    #[tokio::test]
    async fn dropping_a_streamed_response_stops_the_reader() {
        let f = fixture();
        let resp = get(&f.files(), "/big.bin").await;
        let Body::File(range) = resp.into_body() else {
            panic!("expected a file body")
        };
        let Body::Stream(mut rx) = range.into_stream() else {
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
    fn range_headers() {
        use Ranges::*;
        let sat = |v: &[(u64, u64)]| Satisfiable(v.to_vec());
        assert_eq!(parse_ranges("bytes=0-99", 1000), sat(&[(0, 100)]));
        assert_eq!(parse_ranges("bytes=100-", 1000), sat(&[(100, 1000)]));
        assert_eq!(parse_ranges("bytes=-500", 1000), sat(&[(500, 1000)]));
        assert_eq!(parse_ranges("bytes=-5000", 1000), sat(&[(0, 1000)]));
        assert_eq!(
            parse_ranges("Bytes = 0-0 , 999-5000", 1000),
            sat(&[(0, 1), (999, 1000)])
        );
        // Overlapping and adjacent ranges coalesce, in order.
        assert_eq!(
            parse_ranges("bytes=500-599,0-9,10-19,550-700", 1000),
            sat(&[(0, 20), (500, 701)])
        );
        // Unsatisfiable specs are dropped; none left is 416.
        assert_eq!(parse_ranges("bytes=1000-,0-1", 1000), sat(&[(0, 2)]));
        assert_eq!(parse_ranges("bytes=1000-2000", 1000), Unsatisfiable);
        assert_eq!(parse_ranges("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(parse_ranges("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_ranges("bytes=99999999999999999999999-", 10), Unsatisfiable);
        // Invalid syntax or another unit: ignored (the whole file).
        for bad in [
            "bytes=5-1",
            "bytes=a-b",
            "bytes=",
            "bytes=,",
            "items=0-1",
            "bytes 0-1",
            "bytes=1",
            "bytes=--1",
        ] {
            assert_eq!(parse_ranges(bad, 1000), Ignore, "{bad}");
        }
        // Too many: the whole file.
        let many: Vec<String> = (0..MAX_RANGES as u64 + 1)
            .map(|i| format!("{}-{}", i * 10, i * 10))
            .collect();
        assert_eq!(parse_ranges(&format!("bytes={}", many.join(",")), 1000), Ignore);
        let specs = vec!["0-0"; MAX_RANGE_SPECS + 1].join(",");
        assert_eq!(parse_ranges(&format!("bytes={specs}"), 1000), Ignore);
    }

    #[test]
    fn accept_encoding_q_values() {
        let accepted = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            Accepted::from_headers(&h)
        };
        let both = [Coding::Br, Coding::Gzip];
        assert_eq!(accepted("gzip, deflate, br").choose(&both), Some(Coding::Br));
        assert_eq!(accepted("gzip, br;q=0.5").choose(&both), Some(Coding::Gzip));
        assert_eq!(accepted("br;q=0, gzip").choose(&both), Some(Coding::Gzip));
        assert_eq!(accepted("br;q=0").choose(&[Coding::Br]), None);
        assert_eq!(accepted("*").choose(&both), Some(Coding::Br));
        assert_eq!(accepted("*;q=0.1, gzip;q=0.2").choose(&both), Some(Coding::Gzip));
        assert_eq!(accepted("*, br;q=0").choose(&both), Some(Coding::Gzip));
        assert_eq!(accepted("identity").choose(&both), None);
        assert_eq!(accepted("x-gzip").choose(&both), Some(Coding::Gzip));
        assert_eq!(accepted("GZIP;Q=1.000").choose(&both), Some(Coding::Gzip));
        assert_eq!(
            accepted("br;q=2, gzip;q=0.001").choose(&both),
            Some(Coding::Gzip),
            "a bad q is skipped"
        );
        assert_eq!(Accepted::from_headers(&HeaderMap::new()).choose(&both), None);
        assert_eq!(parse_qvalue("0.5"), Some(500));
        assert_eq!(parse_qvalue("1."), Some(1000));
        assert_eq!(parse_qvalue("0.0001"), None);
        assert_eq!(parse_qvalue("1.5"), None);
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
