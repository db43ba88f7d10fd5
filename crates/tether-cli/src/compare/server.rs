//! The server `compare` measures: `tether serve`'s app with its defaults,
//! started in this process on a free port (its own thread and runtime, so
//! the clients' work is not scheduled among its own), and the server's own
//! byte counters read from `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use tether::server::{Server, ServerStats, SharedHandler};
use tokio::sync::oneshot;

use super::Base;
use crate::bench::{read_some, send};
use crate::config::ServeConfig;
use crate::serve::{app, h1_config, hub};

/// A server running on its own thread until dropped.
pub struct Local {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Local {
    pub fn start() -> anyhow::Result<Local> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("compare-server".into())
            .spawn(move || {
                let ready = ready_tx.clone();
                let result = (|| {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    rt.block_on(async move {
                        let c = ServeConfig {
                            demo: false,
                            ..ServeConfig::default()
                        };
                        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                        let addr = listener.local_addr()?;
                        let hub = hub(&c)?;
                        let _upkeep = hub.spawn_upkeep();
                        let stats = Arc::new(ServerStats::default());
                        let handler: SharedHandler = Arc::new(app(&c, &hub, &stats));
                        let server = Server::new(h1_config(&c), handler).with_stats(stats);
                        let _ = ready.send(Ok(addr));
                        server
                            .serve(listener, async move {
                                let _ = stopped.await;
                            })
                            .await?;
                        anyhow::Ok(())
                    })
                })();
                if let Err(e) = result {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .context("spawning the server thread")?;
        let addr = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the server did not start within 10 s")??;
        Ok(Local {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The server's `tether_wire_bytes_total`, summed over protocols: what it
/// read and wrote, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ServerBytes {
    pub read: u64,
    pub written: u64,
}

/// Reads the server's counters from `base/metrics` on a connection of its
/// own (closed by the server after the answer; through TLS for an
/// `https://` server). Returns them and the bytes this scrape itself sent
/// and received (the plaintext, as the server counts it), which the server
/// counts once the connection has ended.
pub async fn scrape(base: &Base) -> anyhow::Result<(ServerBytes, ServerBytes)> {
    let mut stream = base.connect().await?;
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        base.authority()
    );
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        send(&mut stream, request.as_bytes(), Duration::from_secs(10)).await?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = read_some(&mut stream, &mut chunk).await.context("reading /metrics")?;
            if n == 0 {
                return anyhow::Ok(());
            }
            response.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .with_context(|| format!("{base}/metrics: no complete answer within 10 s"))??;
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no complete answer from {base}/metrics");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{base}/metrics answered {}", head.lines().next().unwrap_or(""));
    }
    let mut bytes = ServerBytes::default();
    let mut seen = false;
    for line in body.lines().filter(|l| l.starts_with("tether_wire_bytes_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(n) = value.parse::<f64>() else { continue };
        seen = true;
        if labels.contains("direction=\"in\"") {
            bytes.read += n as u64;
        } else if labels.contains("direction=\"out\"") {
            bytes.written += n as u64;
        }
    }
    if !seen {
        bail!("{base}/metrics has no tether_wire_bytes_total: is it a tether server?");
    }
    let own = ServerBytes {
        read: request.len() as u64,
        written: response.len() as u64,
    };
    Ok((bytes, own))
}

/// Whether the server counted what the clients counted, both ways.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Agreement {
    /// What the clients wrote and read (the server should have read and
    /// written the same).
    pub clients: ServerBytes,
    /// The server's counters' growth over the run (less the bytes of the
    /// scrapes that read them).
    pub server: ServerBytes,
    pub agrees: bool,
}

/// Runs `work`, which returns its result and every byte its clients read
/// and wrote (all their connections closed), and checks the server's
/// counters grew by exactly that. The server adds a connection's bytes
/// when the connection ends, which it sees a moment after the client
/// closed: the counters are read again for up to 2 s until they match.
pub async fn checked<T, F>(base: &Base, work: F) -> anyhow::Result<(T, Agreement)>
where
    F: std::future::Future<Output = anyhow::Result<(T, ServerBytes)>>,
{
    let (before, mut scrapes) = settled(base).await?;
    let (result, clients) = work.await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        // Each scrape's own bytes are counted once its connection ended:
        // those before this one are in `after`, this one's is not.
        let (after, own) = scrape(base).await?;
        let server = ServerBytes {
            read: after.read.saturating_sub(before.read + scrapes.read),
            written: after.written.saturating_sub(before.written + scrapes.written),
        };
        scrapes.read += own.read;
        scrapes.written += own.written;
        let agrees = server == clients;
        if agrees || tokio::time::Instant::now() >= deadline {
            return Ok((
                result,
                Agreement {
                    clients,
                    server,
                    agrees,
                },
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A reading of the counters with nothing still to be added from earlier
/// connections (a scrape's own connection is counted a moment after it
/// ended): read until one reading is the previous plus that scrape's own
/// bytes. Returns the reading and the bytes of the scrape that took it.
async fn settled(base: &Base) -> anyhow::Result<(ServerBytes, ServerBytes)> {
    let (mut last, mut own) = scrape(base).await?;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (now, now_own) = scrape(base).await?;
        let settled = now.read == last.read + own.read && now.written == last.written + own.written;
        (last, own) = (now, now_own);
        if settled {
            break;
        }
    }
    Ok((last, own))
}
