//! Request and response bodies as the handler API sees them.
//!
//! A [`RequestBody`] is fed by the connection driver from the engine's
//! `Body` events through a small bounded channel, so a handler that reads
//! slowly slows down the socket reads (backpressure) instead of buffering.
//! A [`Body`] is what a handler answers with: nothing, one buffer, or a
//! stream of chunks (sent chunked to HTTP/1.1 clients unless a
//! `Content-Length` header is set). Both implement [`http_body::Body`], so
//! tower services and their middleware (`tower::Service`, axum, tower-http)
//! read and write them as any other body (see [`super::tower`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;

use super::file_body::FileRange;

/// Errors a request body can report to the handler.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// The peer closed or the connection failed before the body was complete.
    #[error("the connection closed before the request body was complete")]
    Incomplete,
    /// The body broke the protocol (bad chunk framing) or a limit.
    #[error("invalid request body: {0}")]
    Invalid(String),
    /// The body is larger than the configured limit.
    #[error("request body larger than {limit} bytes")]
    TooLarge {
        /// The configured limit in bytes.
        limit: u64,
    },
}

/// The body of a request, read chunk by chunk.
#[derive(Debug, Default)]
pub struct RequestBody {
    rx: Option<mpsc::Receiver<Result<Bytes, BodyError>>>,
    len_hint: Option<u64>,
}

impl RequestBody {
    /// A body with no bytes.
    pub fn empty() -> Self {
        Self {
            rx: None,
            len_hint: Some(0),
        }
    }

    /// A body delivered through `rx`; `len_hint` is the declared Content-Length.
    pub fn channel(capacity: usize, len_hint: Option<u64>) -> (mpsc::Sender<Result<Bytes, BodyError>>, Self) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, Self { rx: Some(rx), len_hint })
    }

    /// The body's length when the request declared it (`Content-Length`).
    pub fn len_hint(&self) -> Option<u64> {
        self.len_hint
    }

    /// The next chunk, `None` at the end of the body.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, BodyError>> {
        match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => None,
        }
    }

    /// Reads the whole body into one buffer, failing beyond `limit` bytes.
    pub async fn to_bytes(mut self, limit: u64) -> Result<Bytes, BodyError> {
        let mut first: Option<Bytes> = None;
        let mut acc = BytesMut::new();
        let mut total: u64 = 0;
        while let Some(chunk) = self.chunk().await {
            let chunk = chunk?;
            total += chunk.len() as u64;
            if total > limit {
                return Err(BodyError::TooLarge { limit });
            }
            match first.take() {
                None if acc.is_empty() => first = Some(chunk),
                None => acc.extend_from_slice(&chunk),
                Some(f) => {
                    acc.extend_from_slice(&f);
                    acc.extend_from_slice(&chunk);
                }
            }
        }
        Ok(match first {
            Some(f) => f,
            None => acc.freeze(),
        })
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.rx.as_mut() {
            None => Poll::Ready(None),
            Some(rx) => rx.poll_recv(cx).map(|chunk| chunk.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none()
    }

    /// The declared `Content-Length` (the engine holds the body to it).
    fn size_hint(&self) -> SizeHint {
        match self.len_hint {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// The body of a response.
#[derive(Debug, Default)]
pub enum Body {
    /// No body at all.
    #[default]
    Empty,
    /// One buffer, sent with a `Content-Length`.
    Full(Bytes),
    /// Chunks produced while the response is being sent. Sent with
    /// `Transfer-Encoding: chunked` unless the response carries a
    /// `Content-Length` header; an `Err` aborts the response and closes
    /// the connection.
    Stream(mpsc::Receiver<Result<Bytes, std::io::Error>>),
    /// A slice of a file, sent with a `Content-Length`: with `sendfile(2)`
    /// on a plain TCP connection (never copied into this process), read in
    /// chunks on the blocking pool otherwise (see `super::file_body`).
    File(FileRange),
}

impl Body {
    /// A streaming body and the sender that feeds it.
    pub fn channel(capacity: usize) -> (mpsc::Sender<Result<Bytes, std::io::Error>>, Self) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, Body::Stream(rx))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match &mut *self {
            Body::Empty => Poll::Ready(None),
            Body::Full(_) => match std::mem::take(&mut *self) {
                Body::Full(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                _ => Poll::Ready(None),
            },
            Body::Stream(rx) => rx.poll_recv(cx).map(|chunk| chunk.map(|r| r.map(Frame::data))),
            // Read in chunks from here on (an `http_body` consumer is not a socket).
            Body::File(_) => match std::mem::take(&mut *self) {
                Body::File(range) => {
                    *self = range.into_stream();
                    self.poll_frame(cx)
                }
                _ => Poll::Ready(None),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Empty)
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.len() as u64),
            Body::Stream(_) => SizeHint::default(),
            Body::File(range) => SizeHint::with_exact(range.len()),
        }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::Full(b)
    }
}
impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Body::Full(Bytes::from_static(s.as_bytes()))
    }
}
impl From<String> for Body {
    fn from(s: String) -> Self {
        Body::Full(Bytes::from(s))
    }
}
impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Body::Full(Bytes::from(v))
    }
}
