//! tokio-tungstenite reference server: a WebSocket echo at `/echo`, as in
//! tokio-tungstenite's own `echo-server` example (data messages forwarded
//! back with `StreamExt::forward`, which flushes only when the stream has
//! nothing more ready; pings answered by tungstenite itself). Other paths
//! get `404`. Default `WebSocketConfig`, `TCP_NODELAY` on accepted sockets.

use futures_util::{future, StreamExt, TryStreamExt};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

#[allow(clippy::result_large_err)]
fn check_path(req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() == "/echo" {
        Ok(resp)
    } else {
        let mut e = ErrorResponse::new(None);
        *e.status_mut() = StatusCode::NOT_FOUND;
        Err(e)
    }
}

fn main() {
    let args = tether_bench::Args::parse("bench-tungstenite");
    args.runtime().block_on(async {
        let listener = args.bind().await;
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(_) => continue,
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, check_path).await else {
                    return;
                };
                let (write, read) = ws.split();
                let _ = read
                    .try_filter(|m| future::ready(m.is_text() || m.is_binary()))
                    .forward(write)
                    .await;
            });
        }
    });
}
