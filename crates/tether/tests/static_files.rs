//! Static files over real sockets, as nginx serves them: byte ranges (one,
//! several as `multipart/byteranges`, `416`, `If-Range`, ignored for HEAD),
//! precompressed `.br`/`.gz` siblings by `Accept-Encoding`, a large file
//! sent with `sendfile` (whole and in one range) or streamed (several
//! ranges), keep-alive and pipelining around file bodies, a file that
//! shrinks while it is sent, and `Cache-Control`.

mod common;

use std::path::Path;

use std::time::Duration;

use common::*;
use http::HeaderValue;
use tether::server::{Server, StaticFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// A file of `len` bytes whose every byte tells its offset.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

struct Site {
    dir: tempfile::TempDir,
    small: Vec<u8>,
    big: Vec<u8>,
}

fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let small = pattern(1000);
    let big = pattern(3 * 1024 * 1024 + 17);
    std::fs::write(dir.path().join("small.bin"), &small).unwrap();
    std::fs::write(dir.path().join("big.bin"), &big).unwrap();
    std::fs::write(dir.path().join("app.js"), b"console.log('plain')").unwrap();
    std::fs::write(dir.path().join("app.js.gz"), b"GZ-BYTES").unwrap();
    std::fs::write(dir.path().join("app.js.br"), b"BR-BYTES!").unwrap();
    std::fs::write(dir.path().join("only-gz.css"), b"body{}").unwrap();
    std::fs::write(dir.path().join("only-gz.css.gz"), b"GZCSS").unwrap();
    Site { dir, small, big }
}

async fn serve(root: &Path, files: impl FnOnce(StaticFiles) -> StaticFiles) -> Serving {
    Serving::start(Server::new(config(), files(StaticFiles::new(root)))).await
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// The parts of a `multipart/byteranges` body: (Content-Range, bytes).
fn parts(body: &[u8], boundary: &str) -> Vec<(String, Vec<u8>)> {
    let delimiter = format!("--{boundary}");
    let text = body.to_vec();
    let mut out = Vec::new();
    let mut at = 0;
    let find = |from: usize, needle: &[u8]| {
        text[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    loop {
        let start = find(at, delimiter.as_bytes()).expect("a boundary");
        let after = start + delimiter.len();
        if text[after..].starts_with(b"--") {
            assert_eq!(&text[after..], b"--\r\n", "the closing boundary ends the body");
            return out;
        }
        let head_end = find(after, b"\r\n\r\n").expect("part headers");
        let head = String::from_utf8(text[after..head_end].to_vec()).unwrap();
        let range = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Range: "))
            .expect("Content-Range")
            .to_owned();
        assert!(head.contains("Content-Type: application/octet-stream"), "{head}");
        let data_start = head_end + 4;
        let next = find(data_start, format!("\r\n{delimiter}").as_bytes()).expect("next boundary");
        out.push((range, text[data_start..next].to_vec()));
        at = next + 2;
    }
}

#[tokio::test]
async fn single_ranges_are_206_with_content_range() {
    let site = site();
    let server = serve(site.dir.path(), |f| f).await;
    let mut c = Client::connect(server.port).await;
    let whole = c.send_and_read(&request("GET", "/small.bin", &[])).await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    for (range, start, end) in [
        ("bytes=0-99", 0, 100),
        ("bytes=-500", 500, 1000),
        ("bytes=100-", 100, 1000),
        ("bytes=990-5000", 990, 1000),
        ("bytes=5-5", 5, 6),
    ] {
        let r = c
            .send_and_read(&request("GET", "/small.bin", &[("Range", range)]))
            .await;
        assert_eq!(r.status, 206, "{range}: {}", r.head);
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {start}-{}/1000", end - 1).as_str())
        );
        assert_eq!(r.header("content-length"), Some((end - start).to_string().as_str()));
        assert_eq!(r.body, site.small[start..end], "{range}");
        assert_eq!(r.header("etag"), whole.header("etag"));
    }
    // Keep-alive continues after each.
    assert_eq!(c.send_and_read(&request("GET", "/small.bin", &[])).await.status, 200);
}

#[tokio::test]
async fn several_ranges_are_multipart_and_coalesce() {
    let site = site();
    let server = serve(site.dir.path(), |f| f).await;
    let mut c = Client::connect(server.port).await;
    let r = c
        .send_and_read(&request("GET", "/small.bin", &[("Range", "bytes=900-,0-9,5-19,-50")]))
        .await;
    assert_eq!(r.status, 206, "{}", r.head);
    let content_type = r.header("content-type").unwrap();
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap_or_else(|| panic!("{content_type}"));
    assert!(r.header("content-range").is_none());
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string().as_str()));
    let got = parts(&r.body, boundary);
    assert_eq!(
        got,
        [
            ("bytes 0-19/1000".to_owned(), site.small[0..20].to_vec()),
            ("bytes 900-999/1000".to_owned(), site.small[900..].to_vec()),
        ]
    );
    // Ranges that coalesce into one: a plain 206.
    let r = c
        .send_and_read(&request("GET", "/small.bin", &[("Range", "bytes=0-9,10-19")]))
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 0-19/1000"));
    assert_eq!(r.body, site.small[..20]);
}

#[tokio::test]
async fn unsatisfiable_invalid_and_conditional_ranges() {
    let site = site();
    let server = serve(site.dir.path(), |f| f).await;
    let mut c = Client::connect(server.port).await;
    let r = c
        .send_and_read(&request("GET", "/small.bin", &[("Range", "bytes=1000-")]))
        .await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */1000"));
    // Invalid syntax or another unit: the whole file.
    for range in ["bytes=9-1", "lines=1-2", "bytes=x"] {
        let r = c
            .send_and_read(&request("GET", "/small.bin", &[("Range", range)]))
            .await;
        assert_eq!(r.status, 200, "{range}");
        assert_eq!(r.body, site.small);
    }
    // HEAD ignores Range.
    c.send(&request("HEAD", "/small.bin", &[("Range", "bytes=0-1")])).await;
    let r = c.head_response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1000"));
    // If-Range: the current ETag or Last-Modified honours the range; anything else is the whole file.
    let whole = c.send_and_read(&request("GET", "/small.bin", &[])).await;
    let etag = whole.header("etag").unwrap().to_owned();
    let modified = whole.header("last-modified").unwrap().to_owned();
    for (if_range, status) in [
        (etag.as_str(), 206),
        (modified.as_str(), 206),
        ("\"other\"", 200),
        (&format!("W/{etag}"), 200),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 200),
    ] {
        let r = c
            .send_and_read(&request(
                "GET",
                "/small.bin",
                &[("Range", "bytes=0-9"), ("If-Range", if_range)],
            ))
            .await;
        assert_eq!(r.status, status, "If-Range: {if_range}");
        let expected = if status == 206 {
            &site.small[..10]
        } else {
            &site.small[..]
        };
        assert_eq!(r.body, expected);
    }
}

#[tokio::test]
async fn a_large_file_is_streamed_whole_and_in_ranges() {
    let site = site();
    let server = serve(site.dir.path(), |f| f).await;
    let mut c = Client::connect(server.port).await;
    let r = c.send_and_read(&request("GET", "/big.bin", &[])).await;
    assert_eq!(r.status, 200);
    assert!(r.body == site.big, "whole");
    let len = site.big.len();
    let range = format!("bytes=1-{},{}-", len / 2, len - 100_000);
    let r = c.send_and_read(&request("GET", "/big.bin", &[("Range", &range)])).await;
    assert_eq!(r.status, 206);
    let boundary = r.header("content-type").unwrap().rsplit('=').next().unwrap().to_owned();
    let got = parts(&r.body, &boundary);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, format!("bytes 1-{}/{len}", len / 2));
    assert!(got[0].1 == site.big[1..=len / 2]);
    assert!(got[1].1 == site.big[len - 100_000..]);
    let r = c
        .send_and_read(&request("GET", "/big.bin", &[("Range", "bytes=-70000")]))
        .await;
    assert_eq!(r.status, 206);
    assert!(r.body == site.big[len - 70_000..]);
}

#[tokio::test]
async fn file_bodies_keep_the_connection_pipelined_and_counted() {
    let site = site();
    let server = serve(site.dir.path(), |f| f).await;
    let mut c = Client::connect(server.port).await;
    // HEAD of a large file: its length, no body; the connection goes on.
    c.send(&request("HEAD", "/big.bin", &[])).await;
    let r = c.head_response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(&*site.big.len().to_string()));
    assert!(r.body.is_empty());
    // Two large answers pipelined in one write, then a small one: each in
    // order, whole, on the same connection.
    let mut two = request("GET", "/big.bin", &[]);
    two.extend(request("GET", "/big.bin", &[("Range", "bytes=100000-")]));
    two.extend(request("GET", "/small.bin", &[]));
    c.send(&two).await;
    let first = c.response().await;
    assert!(first.status == 200 && first.body == site.big, "first");
    let second = c.response().await;
    assert!(second.status == 206 && second.body == site.big[100_000..], "second");
    let third = c.response().await;
    assert!(third.status == 200 && third.body == site.small, "third");
    third.assert_keeps_alive(5, 100);
    drop(c);
    // Every body byte is counted as payload (the HEAD's none).
    let sent = site.big.len() * 2 - 100_000 + site.small.len();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while (server.stats.traffic().http.sent.payload as usize) < sent && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.stats.traffic().http.sent.payload as usize, sent);
}

#[tokio::test]
async fn a_file_that_shrinks_while_it_is_sent_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shrinking.bin");
    std::fs::write(&path, pattern(32 * 1024 * 1024)).unwrap();
    let server = serve(dir.path(), |f| f).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    s.write_all(&request("GET", "/shrinking.bin", &[])).await.unwrap();
    // The answer starts; then the file loses most of its bytes.
    let mut got = vec![0u8; 64 * 1024];
    let n = timeout(Duration::from_secs(5), s.read(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(n > 0);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1024 * 1024)
        .unwrap();
    let mut total = n;
    let ended = timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut got).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection closed instead of hanging");
    assert!(total < 32 * 1024 * 1024, "never the whole promised length: {total}");
}

#[tokio::test]
async fn a_client_that_stops_reading_a_file_body_is_closed_at_the_write_timeout() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.bin"), pattern(32 * 1024 * 1024)).unwrap();
    let config = tether::proto::h1::Config {
        write_timeout: Duration::from_millis(500),
        ..config()
    };
    let server = Serving::start(Server::new(config, StaticFiles::new(dir.path()))).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    s.write_all(&request("GET", "/big.bin", &[])).await.unwrap();
    // Read nothing: the socket buffers fill, sendfile makes no progress.
    let cause = tether::server::CloseCause::WriteTimeout as usize;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.stats.closed[cause].load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(std::time::Instant::now() < deadline, "closed for its write timeout");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut total = 0;
    let mut buf = vec![0u8; 1 << 16];
    let _ = timeout(Duration::from_secs(10), async {
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            total += n;
        }
    })
    .await;
    assert!(total < 32 * 1024 * 1024, "cut short: {total}");
}

#[tokio::test]
async fn precompressed_siblings_follow_accept_encoding() {
    let site = site();
    let server = serve(site.dir.path(), |f| f).await;
    let mut c = Client::connect(server.port).await;
    let mut etags = Vec::new();
    for (accept, coding, body) in [
        (None, None, &b"console.log('plain')"[..]),
        (Some("gzip, deflate, br"), Some("br"), b"BR-BYTES!"),
        (Some("gzip"), Some("gzip"), b"GZ-BYTES"),
        (Some("br;q=0.5, gzip"), Some("gzip"), b"GZ-BYTES"),
        (Some("br;q=0, gzip;q=0"), None, b"console.log('plain')"),
        (Some("identity"), None, b"console.log('plain')"),
    ] {
        let headers: Vec<_> = accept.map(|a| ("Accept-Encoding", a)).into_iter().collect();
        let r = c.send_and_read(&request("GET", "/app.js", &headers)).await;
        assert_eq!(r.status, 200, "{accept:?}");
        assert_eq!(r.header("content-encoding"), coding, "{accept:?}");
        assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{accept:?}");
        assert_eq!(r.header("content-type"), Some("text/javascript; charset=utf-8"));
        assert_eq!(r.body, body, "{accept:?}");
        etags.push((coding, r.header("etag").unwrap().to_owned()));
    }
    let distinct: std::collections::HashSet<_> = etags.iter().map(|(c, e)| (*c, e.clone())).collect();
    assert_eq!(distinct.len(), 3, "one ETag per representation: {etags:?}");
    // Only a .gz: br is not invented.
    let r = c
        .send_and_read(&request("GET", "/only-gz.css", &[("Accept-Encoding", "br")]))
        .await;
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.body, b"body{}");
    // Ranges apply to the encoded representation.
    let r = c
        .send_and_read(&request(
            "GET",
            "/app.js",
            &[("Accept-Encoding", "br"), ("Range", "bytes=0-1")],
        ))
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 0-1/9"));
    assert_eq!(r.body, b"BR");
    // No siblings: no Vary.
    let r = c
        .send_and_read(&request("GET", "/small.bin", &[("Accept-Encoding", "gzip, br")]))
        .await;
    assert!(r.header("vary").is_none() && r.header("content-encoding").is_none());
    // Off: the file itself.
    let plain = serve(site.dir.path(), |f| f.precompressed(false)).await;
    let mut c = Client::connect(plain.port).await;
    let r = c
        .send_and_read(&request("GET", "/app.js", &[("Accept-Encoding", "br")]))
        .await;
    assert_eq!(r.body, b"console.log('plain')");
    assert!(r.header("vary").is_none());
}

#[tokio::test]
async fn a_sibling_outside_the_root_is_not_served() {
    let site = site();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("secret.gz"), b"SECRET").unwrap();
    std::fs::write(site.dir.path().join("page.txt"), b"page").unwrap();
    std::os::unix::fs::symlink(elsewhere.path().join("secret.gz"), site.dir.path().join("page.txt.gz")).unwrap();
    let server = serve(site.dir.path(), |f| f).await;
    let mut c = Client::connect(server.port).await;
    let r = c
        .send_and_read(&request("GET", "/page.txt", &[("Accept-Encoding", "gzip")]))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"page");
    assert!(r.header("content-encoding").is_none());
}

#[tokio::test]
async fn cache_control_is_sent_when_configured() {
    let site = site();
    let server = serve(site.dir.path(), |f| {
        f.cache_control(HeaderValue::from_static("public, max-age=60"))
    })
    .await;
    let mut c = Client::connect(server.port).await;
    let r = c.send_and_read(&request("GET", "/small.bin", &[])).await;
    assert_eq!(r.header("cache-control"), Some("public, max-age=60"));
    let etag = r.header("etag").unwrap().to_owned();
    let r = c
        .send_and_read(&request("GET", "/small.bin", &[("If-None-Match", &etag)]))
        .await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("cache-control"), Some("public, max-age=60"));
    let r = c
        .send_and_read(&request("GET", "/small.bin", &[("Range", "bytes=0-0")]))
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("cache-control"), Some("public, max-age=60"));
    // Not configured: none.
    let plain = serve(site.dir.path(), |f| f).await;
    let mut c = Client::connect(plain.port).await;
    let r = c.send_and_read(&request("GET", "/small.bin", &[])).await;
    assert!(r.header("cache-control").is_none());
}
