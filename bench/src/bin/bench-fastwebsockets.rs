//! fastwebsockets reference server: a WebSocket echo at `/echo` with the
//! crate's hyper upgrade helper, as in fastwebsockets' own `echo_server`
//! example (`FragmentCollector`, `tokio::task::unconstrained`, auto pong and
//! auto close on). Also answers `GET /healthz` → `200 ok` like tether.

use bytes::Bytes;
use fastwebsockets::{upgrade, OpCode, WebSocketError};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

async fn handle_client(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = fastwebsockets::FragmentCollector::new(fut.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
    Ok(())
}

async fn handle(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, WebSocketError> {
    match req.uri().path() {
        "/echo" if upgrade::is_upgrade_request(&req) => {
            let (resp, fut) = upgrade::upgrade(&mut req)?;
            tokio::spawn(async move {
                let _ = tokio::task::unconstrained(handle_client(fut)).await;
            });
            let (parts, _) = resp.into_parts();
            Ok(Response::from_parts(parts, Full::new(Bytes::new())))
        }
        "/healthz" => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            Ok(r)
        }
        _ => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NOT_FOUND;
            Ok(r)
        }
    }
}

fn main() {
    let args = tether_bench::Args::parse("bench-fastwebsockets");
    args.runtime().block_on(async {
        let listener = args.bind().await;
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(_) => continue,
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let conn = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .with_upgrades();
                let _ = conn.await;
            });
        }
    });
}
