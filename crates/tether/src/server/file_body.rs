//! File bodies: a slice of a file as a response body ([`Body::File`]), sent
//! without copying it through user space where the transport allows.
//!
//! Theory of operation. A [`FileRange`] is an open file, an offset and a
//! length; the response's `Content-Length` is the length. How it reaches
//! the client depends on the connection, which the driver knows:
//! * **plain TCP**: `sendfile(2)` (through `rustix`), from the page cache to
//!   the socket with no copy into this process: once the engine's queued
//!   output (the head) is written, the driver sends at most
//!   [`SENDFILE_STEP`] bytes per call whenever the socket is writable
//!   ([`poll_send`]); the engine counts them and keeps the write timer
//!   (`ServerConnection::begin_direct_body`, `handle_direct_written`), so
//!   keep-alive, the write timeout and byte accounting hold as for any body;
//! * **anything else** (TLS, whose records rustls encrypts in this process;
//!   a Unix socket; an `http_body` consumer): a stream of [`CHUNK_SIZE`]
//!   chunks, each a positioned read on the blocking pool, through a
//!   two-slot channel ([`stream_pieces`], also the multipart ranges' path).
//!
//! A file that shrinks while it is sent (`sendfile` sends nothing before
//! the end, a read hits the end) ends the response with an error: the
//! connection closes rather than send a body shorter than its length.
//!
//! What `sendfile` costs: it reads the page cache on the connection's
//! thread, so a file not in the cache blocks that thread for the disk read
//! (as nginx's `sendfile on` does without `aio threads`); the chunked path
//! reads on the blocking pool instead.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};

use super::body::Body;

/// The size of each chunk read from a file for a chunked body.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// The most bytes one `sendfile` call sends (a large file goes out in
/// steps, each when the socket is writable, so one response does not keep
/// the thread from its other connections).
pub const SENDFILE_STEP: usize = 512 * 1024;

/// A slice of a file: the body of [`Body::File`].
#[derive(Debug)]
pub struct FileRange {
    file: Arc<File>,
    offset: u64,
    len: u64,
}

impl FileRange {
    /// `len` bytes of `file` from `offset`.
    pub fn new(file: File, offset: u64, len: u64) -> Self {
        Self {
            file: Arc::new(file),
            offset,
            len,
        }
    }

    /// The bytes it holds (the response's `Content-Length`).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The same bytes as a chunked stream read on the blocking pool (for
    /// a transport `sendfile` cannot write to).
    pub fn into_stream(self) -> Body {
        let piece = Piece::File {
            offset: self.offset,
            len: self.len,
        };
        stream_pieces(self.file, vec![piece])
    }
}

/// A piece of a streamed file body: literal bytes (a multipart boundary
/// and part header) or a slice of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    Text(Bytes),
    File { offset: u64, len: u64 },
}

impl Piece {
    pub(crate) fn len(&self) -> u64 {
        match self {
            Piece::Text(b) => b.len() as u64,
            Piece::File { len, .. } => *len,
        }
    }
}

/// Streams `pieces` (literal bytes, or slices of `file` read in
/// [`CHUNK_SIZE`] chunks, each a positioned read on the blocking pool)
/// from a spawned task.
pub(crate) fn stream_pieces(file: Arc<File>, pieces: Vec<Piece>) -> Body {
    let (tx, body) = Body::channel(2);
    tokio::spawn(async move {
        for piece in pieces {
            let (mut offset, len) = match piece {
                Piece::Text(bytes) => {
                    if tx.send(Ok(bytes)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Piece::File { offset, len } => (offset, len),
            };
            let end = offset + len;
            while offset < end {
                let want = (end - offset).min(CHUNK_SIZE as u64) as usize;
                let file = Arc::clone(&file);
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = BytesMut::zeroed(want);
                    file.read_exact_at(&mut buf, offset).map(|()| buf.freeze())
                })
                .await;
                let chunk = match read {
                    Ok(Ok(chunk)) => chunk,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        let _ = tx.send(Err(shrank())).await;
                        return;
                    }
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(io::Error::other(e))).await;
                        return;
                    }
                };
                offset += want as u64;
                if tx.send(Ok(chunk)).await.is_err() {
                    return; // The response was dropped: the client is gone.
                }
            }
        }
    });
    body
}

fn shrank() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being sent")
}

/// One `sendfile` step of `range` to `socket` (at most `max` bytes, and
/// [`SENDFILE_STEP`]), when the socket is writable: the bytes sent (the
/// range moves past them), or the error. A file that ends early is an
/// `UnexpectedEof` error.
pub(crate) fn poll_send(
    socket: &tokio::net::TcpStream,
    range: &mut FileRange,
    max: u64,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let count = range.len.min(max).min(SENDFILE_STEP as u64) as usize;
    if count == 0 {
        return Poll::Ready(Ok(0));
    }
    loop {
        std::task::ready!(socket.poll_write_ready(cx))?;
        let mut offset = range.offset;
        let sent = socket.try_io(tokio::io::Interest::WRITABLE, || {
            rustix::fs::sendfile(socket, &*range.file, Some(&mut offset), count).map_err(io::Error::from)
        });
        match sent {
            Ok(0) => return Poll::Ready(Err(shrank())),
            Ok(n) => {
                range.offset += n as u64;
                range.len -= n as u64;
                return Poll::Ready(Ok(n));
            }
            // Readiness was stale: cleared by `try_io`, wait again.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}
