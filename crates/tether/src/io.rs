//! The two I/O steps both connection drivers take: one vectored write of
//! queued buffers, and one read into a per-thread scratch buffer (so an
//! idle connection owns no read buffer; the engine copies what it keeps).

use std::cell::RefCell;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read per read call.
const SCRATCH_SIZE: usize = 64 * 1024;
/// Most buffers in one vectored write.
const MAX_IOV: usize = 64;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_SIZE].into_boxed_slice());
}

/// Writes as many of `bufs` as the transport takes in one call.
pub(crate) fn poll_write_bufs<'a, W: AsyncWrite + Unpin + ?Sized>(
    io: &mut W,
    cx: &mut Context<'_>,
    bufs: impl Iterator<Item = &'a [u8]>,
) -> Poll<std::io::Result<usize>> {
    let mut bufs = bufs;
    let Some(first) = bufs.next() else {
        return Poll::Ready(Ok(0));
    };
    let Some(second) = bufs.next() else {
        // The usual case (coalesced output): no slice array to fill.
        return Pin::new(io).poll_write(cx, first);
    };
    let mut slices = [IoSlice::new(&[]); MAX_IOV];
    slices[0] = IoSlice::new(first);
    slices[1] = IoSlice::new(second);
    let mut n = 2;
    for (slot, b) in slices[2..].iter_mut().zip(bufs) {
        *slot = IoSlice::new(b);
        n += 1;
    }
    Pin::new(io).poll_write_vectored(cx, &slices[..n])
}

/// Pushes out what a buffering transport (TLS) holds; returns whether the
/// transport failed. Pending registers the waker: the task is woken when
/// it can go on. A no-op for TCP.
#[inline]
pub(crate) fn flush_failed<W: AsyncWrite + Unpin + ?Sized>(io: &mut W, cx: &mut Context<'_>) -> bool {
    matches!(Pin::new(io).poll_flush(cx), Poll::Ready(Err(_)))
}

/// Reads once into the thread's scratch buffer and hands the bytes to
/// `take` (an empty slice means end of file).
pub(crate) fn poll_read_with<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    cx: &mut Context<'_>,
    take: impl FnOnce(&[u8]),
) -> Poll<std::io::Result<()>> {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let mut rb = ReadBuf::new(&mut s[..]);
        match Pin::new(io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                take(rb.filled());
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
}

/// Writes as many of `bufs` as a non-blocking socket off the runtime takes
/// in one call: `Ok(None)` when it takes nothing now.
pub(crate) fn write_now<'a>(
    io: &mut impl std::io::Write,
    bufs: impl Iterator<Item = &'a [u8]>,
) -> std::io::Result<Option<usize>> {
    let mut slices = [IoSlice::new(&[]); MAX_IOV];
    let mut n = 0;
    for (slot, b) in slices.iter_mut().zip(bufs) {
        *slot = IoSlice::new(b);
        n += 1;
    }
    loop {
        match io.write_vectored(&slices[..n]) {
            Ok(written) => return Ok(Some(written)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Reads once from a blocking-API reader (a non-blocking socket off the
/// runtime) into the thread's scratch buffer and hands the bytes to `take`
/// (an empty slice means end of file); nothing to read yet is `Ok` too.
#[cfg_attr(not(all(unix, target_pointer_width = "64")), allow(dead_code))]
pub(crate) fn read_now_with(io: &mut impl std::io::Read, take: impl FnOnce(&[u8])) -> std::io::Result<()> {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        loop {
            match io.read(&mut s[..]) {
                Ok(n) => {
                    take(&s[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    })
}
