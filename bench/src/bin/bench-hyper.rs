//! hyper 1.x reference server: HTTP/1.1 keep-alive, the same routes and
//! bodies as `tether serve`:
//!
//! - `GET /healthz` → `200 ok` (`text/plain; charset=utf-8`, 2 bytes)
//! - `POST /echo` (also GET/HEAD) → the request body back with its
//!   `Content-Type` (default `application/octet-stream`)
//! - anything else → `404`
//!
//! Configured for speed as hyper documents it: `http1::Builder` with
//! keep-alive (the default), `pipeline_flush(true)` so pipelined responses go
//! out in one write, `TCP_NODELAY` on accepted sockets, one task per
//! connection via `hyper_util::rt::TokioIo`.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

const MAX_BODY: usize = 16 * 1024 * 1024;

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            r
        }
        (&Method::GET | &Method::HEAD | &Method::POST, "/echo") => {
            let ct = req
                .headers()
                .get(CONTENT_TYPE)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
            let body = http_body_util::Limited::new(req.into_body(), MAX_BODY);
            match body.collect().await {
                Ok(b) => {
                    let mut r = Response::new(Full::new(b.to_bytes()));
                    r.headers_mut().insert(CONTENT_TYPE, ct);
                    r
                }
                Err(_) => status(StatusCode::PAYLOAD_TOO_LARGE),
            }
        }
        _ => status(StatusCode::NOT_FOUND),
    };
    Ok(resp)
}

fn status(s: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = s;
    r
}

fn main() {
    let args = tether_bench::Args::parse("bench-hyper");
    args.runtime().block_on(async {
        let listener = args.bind().await;
        let mut builder = http1::Builder::new();
        builder.keep_alive(true).pipeline_flush(true);
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(_) => continue,
            };
            let _ = stream.set_nodelay(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service_fn(handle));
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
}
