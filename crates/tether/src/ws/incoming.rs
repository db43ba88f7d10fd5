//! The read side both WebSocket drivers share: one read per call, into the
//! thread's scratch buffer (the engine copies what it keeps, so an idle
//! connection owns no read buffer) or, while the rest of a large frame is
//! on its way, straight into the engine's read buffer.
//!
//! Reading a 1 MiB frame through the 64 KiB scratch buffer took 17 reads
//! and a second copy of every byte; read directly it takes a few reads of
//! growing size and no copy. The engine bounds what it reserves for a
//! frame by what of it has already arrived ([`WsConnection::read_buffer`]),
//! so a peer that declares a large frame and sends nothing gets no large
//! allocation.

use std::task::{Context, Poll};

use tether_proto::ws::WsConnection;
use tokio::io::{AsyncRead, AsyncReadExt};

/// From this much payload still to come, read into the engine's buffer.
const DIRECT_READ_MIN: usize = 64 * 1024;

/// Reads once and feeds the engine (bytes, or the end of the transport on
/// end of file or a read error); `now` is called only when bytes came.
pub(crate) fn poll_read<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    cx: &mut Context<'_>,
    engine: &mut WsConnection,
    now: impl FnOnce() -> std::time::Instant,
) -> Poll<()> {
    if engine.payload_remaining() >= DIRECT_READ_MIN {
        let read = {
            let fut = io.read_buf(engine.read_buffer());
            tokio::pin!(fut);
            std::future::Future::poll(fut, cx)
        };
        return match read {
            Poll::Ready(Ok(n)) if n > 0 => {
                engine.handle_read(n, now());
                Poll::Ready(())
            }
            Poll::Ready(_) => {
                engine.handle_eof(now());
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        };
    }
    let mut now = Some(now);
    let mut clock = || (now.take().expect("read once"))();
    let read = crate::io::poll_read_with(io, cx, |bytes| {
        if bytes.is_empty() {
            engine.handle_eof(clock());
        } else {
            engine.handle_input(bytes, clock());
        }
    });
    match read {
        Poll::Ready(Ok(())) => Poll::Ready(()),
        Poll::Ready(Err(_)) => {
            engine.handle_eof(clock());
            Poll::Ready(())
        }
        Poll::Pending => Poll::Pending,
    }
}
