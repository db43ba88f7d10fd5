//! The write side both WebSocket drivers share (the [`super::WebSocket`]
//! handle and callback-served connections): chunks taken from the engine
//! and not yet written, written with one vectored write at a time, and
//! when they last made progress (a queue that makes none for the write
//! timeout is dropped: that is I/O, not protocol, so it lives here and not
//! in the engine).

use std::collections::VecDeque;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tether_proto::ws::{CloseCode, WsConnection, WsState};
use tokio::io::AsyncWrite;
use tokio::time::Instant;

/// What one [`Outgoing::poll_flush`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flushed {
    /// Bytes were written.
    Wrote,
    /// The transport failed or took nothing: the queue is dropped and the
    /// engine has been told the transport is gone (`handle_eof`).
    Failed,
    /// Nothing was written (nothing queued, or the transport is full).
    Nothing,
}

/// Chunks taken from the engine, not yet written.
pub(crate) struct Outgoing {
    chunks: VecDeque<Bytes>,
    len: usize,
    /// When the queue last made progress (or got its first chunk).
    progress: Instant,
}

impl Outgoing {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            chunks: VecDeque::new(),
            len: 0,
            progress: now,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Bytes queued here (the engine may hold more).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }

    /// Frees the queue's memory while it is empty (for connections that
    /// stay idle on a task).
    pub(crate) fn shrink_when_empty(&mut self) {
        if self.chunks.is_empty() && self.chunks.capacity() > 0 {
            self.chunks = VecDeque::new();
        }
    }

    /// When a non-empty queue that makes no progress should be dropped.
    pub(crate) fn stall_deadline(&self, write_timeout: Duration) -> Option<Instant> {
        (!self.chunks.is_empty()).then(|| self.progress + write_timeout)
    }

    /// Takes the engine's output and writes what `io` accepts; `now` is
    /// read only when something is queued or written.
    // Inlined into each driver's loop: measured +89 instructions per echoed
    // message as a call (callgrind), back to 3,920 inlined.
    #[inline]
    pub(crate) fn poll_flush<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        engine: &mut WsConnection,
        io: &mut W,
        cx: &mut Context<'_>,
        mut now: impl FnMut() -> Instant,
    ) -> Flushed {
        while let Some(chunk) = engine.poll_transmit() {
            if self.chunks.is_empty() {
                self.progress = now();
            }
            self.len += chunk.len();
            self.chunks.push_back(chunk);
        }
        let mut flushed = Flushed::Nothing;
        while !self.chunks.is_empty() {
            match crate::io::poll_write_bufs(io, cx, self.chunks.iter().map(|b| &b[..])) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.clear();
                    engine.handle_eof();
                    return Flushed::Failed;
                }
                Poll::Ready(Ok(written)) => {
                    flushed = Flushed::Wrote;
                    self.len -= written;
                    self.progress = now();
                    advance(&mut self.chunks, written);
                }
                Poll::Pending => break,
            }
        }
        flushed
    }
}

/// Drops the first `written` bytes (what one vectored write took).
fn advance(chunks: &mut VecDeque<Bytes>, mut written: usize) {
    while written > 0 {
        let front = chunks.front_mut().expect("written bytes were queued");
        if written >= front.len() {
            written -= front.len();
            chunks.pop_front();
        } else {
            let _ = front.split_to(written);
            written = 0;
        }
    }
}

/// Server shutdown: an open connection closes with 1001.
pub(crate) fn close_for_shutdown(engine: &mut WsConnection) {
    if engine.state() == WsState::Open {
        tracing::debug!("server shutting down: closing websocket with 1001");
        let _ = engine.close(CloseCode::GOING_AWAY, "server shutting down", Instant::now().into_std());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::ws::WsConfig;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn partial_writes_keep_order_and_count() {
        let mut engine = WsConnection::server(&WsConfig::default(), None, std::time::Instant::now());
        for i in 0..20u8 {
            engine.send_binary(vec![i; 3000]).unwrap();
        }
        // A pipe that takes 1 KiB at a time: every write is partial.
        let (mut io, mut peer) = tokio::io::duplex(1024);
        let mut out = Outgoing::new(Instant::now());
        let mut wire = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..10_000 {
            let flushed =
                std::future::poll_fn(|cx| Poll::Ready(out.poll_flush(&mut engine, &mut io, cx, Instant::now))).await;
            assert_ne!(flushed, Flushed::Failed);
            if out.is_empty() && engine.queued_bytes() == 0 {
                break;
            }
            assert!(
                out.stall_deadline(Duration::from_secs(1)).is_some(),
                "queued output has a deadline"
            );
            let n = peer.read(&mut buf).await.unwrap();
            wire.extend_from_slice(&buf[..n]);
        }
        assert!(out.is_empty() && out.stall_deadline(Duration::from_secs(1)).is_none());
        drop(io);
        peer.read_to_end(&mut wire).await.unwrap();
        // 20 frames: 4-byte header (126, 16-bit length) then the payload, in order.
        assert_eq!(wire.len(), 20 * 3004);
        for (i, frame) in wire.chunks(3004).enumerate() {
            assert_eq!(&frame[..4], &[0x82, 126, 0x0B, 0xB8]);
            assert!(frame[4..].iter().all(|&b| b == i as u8), "frame {i} in order");
        }
    }

    #[tokio::test]
    async fn a_closed_transport_fails_the_flush_and_ends_the_engine() {
        let mut engine = WsConnection::server(&WsConfig::default(), None, std::time::Instant::now());
        engine.send_text("lost").unwrap();
        let (mut io, peer) = tokio::io::duplex(64);
        drop(peer);
        let mut out = Outgoing::new(Instant::now());
        let flushed =
            std::future::poll_fn(|cx| Poll::Ready(out.poll_flush(&mut engine, &mut io, cx, Instant::now))).await;
        assert_eq!(flushed, Flushed::Failed);
        assert!(out.is_empty());
        assert_eq!(out.len(), 0);
        assert_eq!(engine.state(), WsState::Closed);
        assert!(engine.should_close_transport());
    }
}
