//! The streams a server connection runs on (TCP, TLS over TCP, a Unix
//! domain socket): on the runtime ([`ServerStream`]) and off it while the
//! connection is parked ([`ParkedStream`]).
//!
//! Theory of operation. Parking (`super::park`) takes a socket off the
//! runtime's reactor (`into_std`, which deregisters it) and watches it with
//! the lot's own `epoll`; resuming registers it with the runtime again
//! (`from_std`). For TCP and Unix sockets that is all: the kernel holds
//! whatever arrives meanwhile, and its arrival is readiness.
//!
//! TLS puts rustls's session between the socket and the engine: its keys
//! and buffers of its own. tokio-rustls's `TlsStream` cannot be rebuilt
//! from its parts, so it is never taken apart: it runs over a
//! [`TlsSocket`], whose TCP socket parking swaps for the same socket off
//! the runtime (resuming swaps it back). A parked TLS connection keeps its
//! whole session, boxed (so a plain connection's slot in the lot does not
//! grow): rustls's `ServerConnection` with its record keys and the 4 KiB
//! read buffer rustls keeps while idle (empty, see below).
//!
//! What rustls buffers is invisible to `epoll`: bytes it has read but not
//! yet decrypted, or decrypted but not yet handed on, never make the
//! socket readable again, and a request in them would wait for the idle
//! timeout. So a TLS connection parks only once rustls has processed every
//! complete record it holds (`process_new_packets`) and holds neither
//! plaintext nor the peer's close ([`ParkedStream::holds_input`]); one that
//! does is resumed at once, and what rustls held is read first. A partial
//! record may stay in rustls: its rest arrives on the socket, which wakes
//! the connection. Records rustls has not yet written to the socket
//! ([`ParkedStream::has_unsent`]) are written before it parks; when the
//! socket does not take them all, the lot also waits for the socket to
//! take more, and the connection resumes to finish writing.
//!
//! While parked the lot reads and writes plaintext through
//! [`std::io::Read`] and [`std::io::Write`] on the [`ParkedStream`]
//! (rustls over the non-blocking socket, for TLS). A TLS connection the
//! lot closes sends its `close_notify` first, as far as the socket takes
//! it without waiting ([`ParkedStream::close`]), where a task would have
//! shut its write side down.

use std::io::{self, IoSlice, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::ServerConnection as TlsSession;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;

/// A TLS connection over its [`TlsSocket`].
pub(crate) type TlsStream = tokio_rustls::server::TlsStream<TlsSocket>;

/// The TCP socket under a TLS session: on the runtime while its connection
/// runs on a task, off it while parked (see the module documentation).
pub(crate) enum TlsSocket {
    Attached(TcpStream),
    Detached(std::net::TcpStream),
    /// During a swap, or after one failed (the socket is closed).
    Swapping,
}

fn not_attached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the TLS socket is off the runtime")
}

impl AsyncRead for TlsSocket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsSocket::Attached(s) => Pin::new(s).poll_read(cx, buf),
            _ => Poll::Ready(Err(not_attached())),
        }
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TlsSocket::Attached(s) => Pin::new(s).poll_write(cx, buf),
            _ => Poll::Ready(Err(not_attached())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TlsSocket::Attached(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            _ => Poll::Ready(Err(not_attached())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsSocket::Attached(s) => Pin::new(s).poll_flush(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsSocket::Attached(s) => Pin::new(s).poll_shutdown(cx),
            _ => Poll::Ready(Err(not_attached())),
        }
    }
}

/// Non-blocking reads and writes, on or off the runtime (rustls's
/// `read_tls` and `write_tls` take these).
impl Read for TlsSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            TlsSocket::Attached(s) => s.try_read(buf),
            TlsSocket::Detached(s) => s.read(buf),
            TlsSocket::Swapping => Err(not_attached()),
        }
    }
}

impl Write for TlsSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            TlsSocket::Attached(s) => s.try_write(buf),
            TlsSocket::Detached(s) => s.write(buf),
            TlsSocket::Swapping => Err(not_attached()),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            TlsSocket::Attached(s) => s.try_write_vectored(bufs),
            TlsSocket::Detached(s) => s.write_vectored(bufs),
            TlsSocket::Swapping => Err(not_attached()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(unix)]
impl std::os::fd::AsRawFd for TlsSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            TlsSocket::Attached(s) => s.as_raw_fd(),
            TlsSocket::Detached(s) => s.as_raw_fd(),
            // No descriptor: registering it fails.
            TlsSocket::Swapping => -1,
        }
    }
}

/// Replaces the socket under a TLS session by what `swap` makes of it.
fn swap_socket(tls: &mut TlsStream, swap: impl FnOnce(TlsSocket) -> io::Result<TlsSocket>) -> io::Result<()> {
    let socket = tls.get_mut().0;
    let taken = std::mem::replace(socket, TlsSocket::Swapping);
    *socket = swap(taken)?;
    Ok(())
}

/// A server connection's stream on the runtime.
pub(crate) enum ServerStream {
    Tcp(TcpStream),
    Tls(Box<TlsStream>),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl From<TcpStream> for ServerStream {
    fn from(s: TcpStream) -> Self {
        ServerStream::Tcp(s)
    }
}

impl From<Box<TlsStream>> for ServerStream {
    fn from(s: Box<TlsStream>) -> Self {
        ServerStream::Tls(s)
    }
}

#[cfg(unix)]
impl From<UnixStream> for ServerStream {
    fn from(s: UnixStream) -> Self {
        ServerStream::Unix(s)
    }
}

/// Hands a call to the kind of stream.
macro_rules! each_stream {
    ($stream:expr, $s:ident => $call:expr) => {
        match $stream {
            ServerStream::Tcp($s) => $call,
            ServerStream::Tls($s) => $call,
            #[cfg(unix)]
            ServerStream::Unix($s) => $call,
        }
    };
}

impl AsyncRead for ServerStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        each_stream!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        each_stream!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each_stream!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        each_stream!(self, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_stream!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_stream!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

/// A parked connection's stream, off the runtime (see the module
/// documentation).
pub(crate) enum ParkedStream {
    Tcp(std::net::TcpStream),
    /// The session, over a [`TlsSocket::Detached`] socket.
    Tls(Box<TlsStream>),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream),
}

// Every parked connection's slot holds one, inline: a TLS session is
// boxed so a plain connection's slot grows by a pointer at most.
const _: () = assert!(std::mem::size_of::<ParkedStream>() <= 16);

impl ParkedStream {
    /// Takes `stream` off the runtime.
    pub(crate) fn detach(stream: ServerStream) -> io::Result<Self> {
        Ok(match stream {
            ServerStream::Tcp(s) => ParkedStream::Tcp(s.into_std()?),
            ServerStream::Tls(mut tls) => {
                swap_socket(&mut tls, |socket| match socket {
                    TlsSocket::Attached(s) => s.into_std().map(TlsSocket::Detached),
                    other => Ok(other),
                })?;
                ParkedStream::Tls(tls)
            }
            #[cfg(unix)]
            ServerStream::Unix(s) => ParkedStream::Unix(s.into_std()?),
        })
    }

    /// Puts it back on the runtime.
    pub(crate) fn attach(self) -> io::Result<ServerStream> {
        Ok(match self {
            ParkedStream::Tcp(s) => ServerStream::Tcp(TcpStream::from_std(s)?),
            ParkedStream::Tls(mut tls) => {
                swap_socket(&mut tls, |socket| match socket {
                    TlsSocket::Detached(s) => TcpStream::from_std(s).map(TlsSocket::Attached),
                    other => Ok(other),
                })?;
                ServerStream::Tls(tls)
            }
            #[cfg(unix)]
            ParkedStream::Unix(s) => ServerStream::Unix(UnixStream::from_std(s)?),
        })
    }

    /// Whether rustls holds input the socket will not announce again:
    /// complete records (processed here), plaintext not yet read, or the
    /// peer's `close_notify`. A failed session counts too (reading it
    /// reports the failure). Never for TCP and Unix sockets.
    pub(crate) fn holds_input(&mut self) -> bool {
        let ParkedStream::Tls(tls) = self else {
            return false;
        };
        match tls.get_mut().1.process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
            Err(_) => true,
        }
    }

    /// Whether rustls holds records the socket has not taken yet.
    pub(crate) fn has_unsent(&self) -> bool {
        match self {
            ParkedStream::Tls(tls) => tls.get_ref().1.wants_write(),
            _ => false,
        }
    }

    /// Closes it from the lot: a TLS session says `close_notify` first, as
    /// far as the socket takes it now (never waiting); then the socket closes.
    pub(crate) fn close(self) {
        if let ParkedStream::Tls(mut tls) = self {
            let (socket, session) = tls.get_mut();
            session.send_close_notify();
            let _ = write_records(session, socket);
        }
    }
}

/// Writes the records rustls holds until the socket takes no more now
/// (which is not an error: they stay in rustls).
fn write_records(session: &mut TlsSession, socket: &mut TlsSocket) -> io::Result<()> {
    while session.wants_write() {
        match session.write_tls(socket) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads plaintext: what rustls holds first, then records from the socket
/// until one yields some (`WouldBlock` when the socket has no more; `Ok(0)`
/// after the peer's `close_notify`; `UnexpectedEof` at the end of the
/// socket without one).
fn read_plaintext(session: &mut TlsSession, socket: &mut TlsSocket, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // Also reports a session that failed earlier.
        session
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        match session.reader().read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return done,
        }
        session.read_tls(socket)?;
    }
}

/// Plaintext in (for TLS: through rustls, see [`read_plaintext`]).
impl Read for ParkedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ParkedStream::Tcp(s) => s.read(buf),
            ParkedStream::Tls(tls) => {
                let (socket, session) = tls.get_mut();
                read_plaintext(session, socket, buf)
            }
            #[cfg(unix)]
            ParkedStream::Unix(s) => s.read(buf),
        }
    }
}

/// Plaintext out. For TLS: what rustls takes, then as many of its records
/// as the socket takes now (the rest stays in rustls: [`ParkedStream::has_unsent`]).
impl Write for ParkedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            ParkedStream::Tcp(s) => s.write_vectored(bufs),
            ParkedStream::Tls(tls) => {
                let (socket, session) = tls.get_mut();
                let taken = session.writer().write_vectored(bufs)?;
                write_records(session, socket)?;
                if taken == 0 && bufs.iter().any(|b| !b.is_empty()) {
                    // rustls's buffer is full: nothing was taken.
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(taken)
            }
            #[cfg(unix)]
            ParkedStream::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            ParkedStream::Tls(tls) => {
                let (socket, session) = tls.get_mut();
                write_records(session, socket)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(unix)]
impl std::os::fd::AsRawFd for ParkedStream {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            ParkedStream::Tcp(s) => s.as_raw_fd(),
            ParkedStream::Tls(tls) => tls.get_ref().0.as_raw_fd(),
            ParkedStream::Unix(s) => s.as_raw_fd(),
        }
    }
}
