//! The connection driver: moves bytes between a transport and a
//! [`ServerConnection`], runs the handler, sleeps until the next deadline.
//!
//! It holds no protocol decisions: what the bytes mean, whether the
//! connection persists and when it closes are the engine's. The driver
//! only (1) reads into a per-thread scratch buffer and feeds the engine,
//! lending it request buffers from a per-thread pool when bytes arrive and
//! taking them back as soon as it is idle (`pool`), so an idle connection
//! holds no buffer and back-to-back requests allocate none; (2) writes the
//! engine's output with one vectored write; (3) passes request bodies to
//! the handler through a small bounded channel (backpressure: the engine
//! stops yielding body events while the channel is full, and stops asking
//! for bytes once its buffer is full); (4) streams response bodies while
//! output is below a high-water mark; (5) waits for whichever comes first:
//! I/O, the handler, a body chunk, the engine's deadline, or shutdown;
//! (6) with `park_after`, hands an idle connection back to its caller
//! (`Driven::Idle`) to be parked without a task (`super::park`).
//! Per response it reads no clock of its own when the read that brought
//! the request just read one (`Date` comes from the per-second cache,
//! checked against that reading), and hands the sent response's header
//! map back to the engine for a later request head.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request as HttpRequest, StatusCode};
use tether_proto::h1::{self, body_error_status, CloseCause, Event, ResponseBody, ServerConnection};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::body::{Body, BodyError, RequestBody};
use super::handler::{HandlerFuture, Response, SharedHandler};
use super::park::ParkingLot;
use super::upgrade::{OnUpgrade, Upgraded};
use crate::lifecycle::{OpenGuard, StopSignal, Transport};

/// Request body chunks buffered between the driver and the handler.
const BODY_CHANNEL: usize = 4;

/// What one connection ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// Closed, for this cause, after this many responses.
    Closed(CloseCause, u32),
    /// Switched protocols after this many responses.
    Upgraded(u32),
}

pub use crate::lifecycle::Stop;

/// What woke the driver. Small on purpose: it is moved out of `select!`
/// on every wake-up (a `Response` here cost a `memcpy` per move); the
/// handler's response waits in a local instead.
enum Wake {
    Io,
    /// The handler answered: the response is in `answered`.
    Answered,
    BodySlot(bool),
    StreamChunk(Option<Result<Bytes, std::io::Error>>),
    Timer,
    Shutdown,
}

/// Serves one connection until it closes or upgrades.
pub async fn serve_connection<IO: Transport>(
    io: IO,
    config: Arc<h1::Config>,
    handler: SharedHandler,
    shutdown: watch::Receiver<Stop>,
) -> ConnectionEnd {
    serve_tracked(io, config, handler, shutdown, None).await
}

/// [`serve_connection`], keeping `guard` alive until the connection ends,
/// including after an upgrade.
pub(crate) async fn serve_tracked<IO: Transport>(
    io: IO,
    config: Arc<h1::Config>,
    handler: SharedHandler,
    shutdown: watch::Receiver<Stop>,
    guard: Option<OpenGuard>,
) -> ConnectionEnd {
    let conn = ServerConnection::new(config, Instant::now().into_std());
    match drive(io, conn, handler, shutdown, guard, None).await {
        Driven::Ended(end) => end,
        Driven::Idle(_) => unreachable!("never parks without park_after"),
    }
}

/// How [`drive`] gave a connection back.
// Returned once per connection or per parking: the size is not worth a box.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Driven<IO> {
    /// The connection closed or upgraded.
    Ended(ConnectionEnd),
    /// It has been idle for `park_after`, with nothing in flight: the caller
    /// may keep it without a task and [`drive`] it again on input, at its
    /// deadline or on shutdown.
    Idle(Paused<IO>),
}

/// An idle connection between two [`drive`] calls.
pub(crate) struct Paused<IO> {
    pub io: IO,
    pub conn: ServerConnection,
    pub shutdown: watch::Receiver<Stop>,
    pub guard: Option<OpenGuard>,
}

/// Serves `conn` over `io` until it closes, upgrades or (with a parking
/// `lot`) has been idle for the lot's `park_after`. An upgraded protocol
/// gets the lot too.
pub(crate) async fn drive<IO: Transport>(
    mut io: IO,
    mut conn: ServerConnection,
    handler: SharedHandler,
    shutdown: watch::Receiver<Stop>,
    guard: Option<OpenGuard>,
    lot: Option<&ParkingLot>,
) -> Driven<IO> {
    let park_after = lot.map(ParkingLot::park_after);
    let upgrade_stop = shutdown.clone();
    // Idle, the connection's buffers go to the thread's pool (see `pool`).
    conn.set_retain_buffers(true);
    // Its largest buffers, reported when this returns (see `memory`).
    let mut peak = crate::memory::PeakBuffers::default();
    let mut handler_fut: Option<HandlerFuture> = None;
    let mut body_tx: Option<mpsc::Sender<Result<Bytes, BodyError>>> = None;
    let mut blocked_chunk: Option<Bytes> = None;
    let mut stream: Option<mpsc::Receiver<Result<Bytes, std::io::Error>>> = None;
    let mut on_upgrade: Option<OnUpgrade> = None;
    // Registered once for the connection's life, not once per wait (see
    // `StopSignal`). Its branch stays in every `select!`, so its wake-up is
    // never missed.
    let (mut stop, mut stop_signal) = StopSignal::new(shutdown);
    match stop {
        Stop::Run => {}
        Stop::Graceful => conn.shutdown(Instant::now().into_std()),
        Stop::Force => return Driven::Ended(ConnectionEnd::Closed(CloseCause::Shutdown, conn.requests_served())),
    }
    // One timer for the connection's life, moved to each new deadline.
    let sleep = tokio::time::sleep_until(Instant::now() + std::time::Duration::from_secs(86_400));
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    // The clock as read by the I/O step that ended the last wait: a
    // response started right after it needs no clock read of its own
    // for its `Date`.
    let mut clock: Option<std::time::Instant> = None;

    loop {
        // 1. Events, while the handler can take body chunks.
        while blocked_chunk.is_none() {
            let Some(event) = conn.poll_event() else { break };
            match event {
                Event::Request(head) => {
                    let body = match head.body {
                        h1::BodyFraming::Empty => RequestBody::empty(),
                        h1::BodyFraming::Length(n) => {
                            let (tx, body) = RequestBody::channel(BODY_CHANNEL, Some(n));
                            body_tx = Some(tx);
                            body
                        }
                        h1::BodyFraming::Chunked => {
                            let (tx, body) = RequestBody::channel(BODY_CHANNEL, None);
                            body_tx = Some(tx);
                            body
                        }
                    };
                    let mut req = HttpRequest::new(body);
                    *req.method_mut() = head.method;
                    *req.uri_mut() = head.uri;
                    *req.version_mut() = head.version;
                    *req.headers_mut() = head.headers;
                    // Routed by reference: the request moves once, into
                    // the handler that answers it.
                    handler_fut = Some(super::handler::resolve(&*handler, &req).call(req));
                }
                Event::Body(chunk) => {
                    if let Some(tx) = &body_tx {
                        match tx.try_send(Ok(chunk)) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(Ok(chunk))) => blocked_chunk = Some(chunk),
                            Err(_) => body_tx = None, // the handler dropped its body: discard
                        }
                    }
                }
                Event::EndOfBody(_) => body_tx = None,
                Event::BodyFailed(e) => {
                    if let Some(tx) = body_tx.take() {
                        let _ = tx.try_send(Err(match e {
                            h1::BodyError::TooLarge => BodyError::TooLarge {
                                limit: conn.config().max_body,
                            },
                            h1::BodyError::Incomplete => BodyError::Incomplete,
                            other => BodyError::Invalid(other.to_string()),
                        }));
                    }
                    if conn.awaiting_response() {
                        // The handler cannot finish a request whose body broke:
                        // the engine's error status answers instead.
                        handler_fut = None;
                        send_error(&mut conn, body_error_status(e));
                    }
                }
                Event::Reject(status) => {
                    handler_fut = None;
                    body_tx = None;
                    send_error(&mut conn, status);
                }
            }
        }

        // 2. Terminal states.
        if conn.take_shutdown_write() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), io.shutdown()).await;
        }
        if let Some(cause) = conn.close_cause() {
            return Driven::Ended(ConnectionEnd::Closed(cause, conn.requests_served()));
        }
        if conn.is_upgraded() && !conn.has_output() {
            let served = conn.requests_served();
            let read_buf = conn.take_upgraded_bytes();
            if let Some(f) = on_upgrade.take().and_then(|u| u.take()) {
                // A task of its own: this connection's HTTP state is freed.
                let upgraded = Upgraded {
                    io: Box::new(io),
                    read_buf,
                    stop: Some(upgrade_stop),
                    guard,
                    lot: lot.cloned(),
                };
                tokio::spawn(f(upgraded));
            }
            return Driven::Ended(ConnectionEnd::Upgraded(served));
        }

        // 3. A handler that answers at once is answered before anything is
        // written (pipelined responses leave together in one write), and
        // before any deadline is computed.
        let mut answered: Option<Response> = None;
        if let Some(f) = handler_fut.as_mut() {
            poll_fn(|cx| {
                if let Poll::Ready(resp) = f.as_mut().poll(cx) {
                    answered = Some(resp);
                }
                Poll::Ready(())
            })
            .await;
        }
        let mut park_at: Option<Instant> = None;
        let wake = if answered.is_some() {
            Wake::Answered
        } else {
            // 4. Wait for whatever comes first.
            peak.note(conn.output_len() + conn.buffer_capacity());
            if conn.idle_since().is_some() {
                pool::put(&mut conn);
            }
            let mut deadline = conn.poll_timeout().map(Instant::from_std);
            let quiet = handler_fut.is_none()
                && stream.is_none()
                && body_tx.is_none()
                && blocked_chunk.is_none()
                && on_upgrade.is_none()
                && stop == Stop::Run;
            // Parking is decided only when this timer fires, so a resumed
            // connection reads what woke it before it can be parked again.
            park_at = match (park_after, conn.idle_since(), quiet) {
                (Some(after), Some(since), true) => Some(Instant::from_std(since) + after),
                _ => None,
            };
            if let Some(p) = park_at {
                deadline = Some(deadline.map_or(p, |d| d.min(p)));
            }
            // The timer is moved only to an earlier deadline. A later or absent
            // one leaves it armed: it may fire early, and the handling below
            // re-arms it, so a busy connection (whose idle deadline moves with
            // every request) does not touch the timer wheel per request.
            if let Some(d) = deadline {
                if armed.is_none_or(|a| d < a) {
                    sleep.as_mut().reset(d);
                    armed = Some(d);
                }
            }
            let wants_read = conn.wants_read();
            let stream_ready = stream.is_some() && conn.has_output_capacity();
            // Set only by a read or write of this wait, which then ends it.
            clock = None;
            let io_fut = poll_fn(|cx| poll_io(&mut io, &mut conn, wants_read, &mut clock, cx));
            tokio::select! {
                biased;
                next = poll_fn(|cx| stop_signal.poll_next(cx)), if stop != Stop::Force => {
                    stop = next;
                    Wake::Shutdown
                }
                w = io_fut => w,
                _ = poll_fn(|cx| match handler_fut.as_mut().expect("guarded").as_mut().poll(cx) {
                    Poll::Ready(resp) => {
                        answered = Some(resp);
                        Poll::Ready(())
                    }
                    Poll::Pending => Poll::Pending,
                }), if handler_fut.is_some() => Wake::Answered,
                ok = async { body_tx.as_ref().expect("guarded").reserve().await.is_ok() }, if blocked_chunk.is_some() && body_tx.is_some() => Wake::BodySlot(ok),
                chunk = async { stream.as_mut().expect("guarded").recv().await }, if stream_ready => Wake::StreamChunk(chunk),
                _ = &mut sleep, if armed.is_some() => Wake::Timer,
            }
        };

        match wake {
            Wake::Io => {}
            Wake::Shutdown => match stop {
                Stop::Run => {}
                Stop::Graceful => conn.shutdown(Instant::now().into_std()),
                Stop::Force => {
                    return Driven::Ended(ConnectionEnd::Closed(CloseCause::Shutdown, conn.requests_served()))
                }
            },
            Wake::Timer => {
                let now = Instant::now();
                conn.handle_timeout(now.into_std());
                // Fired (maybe before the current deadline): re-arm.
                armed = None;
                // Its buffers already went back to the pool (step 3).
                if park_at.is_some_and(|p| now >= p) && conn.idle_since().is_some() {
                    return Driven::Idle(Paused {
                        io,
                        conn,
                        shutdown: upgrade_stop,
                        guard,
                    });
                }
            }
            Wake::BodySlot(ok) => {
                let chunk = blocked_chunk.take();
                match (ok, chunk, &body_tx) {
                    (true, Some(chunk), Some(tx)) => {
                        if tx.try_send(Ok(chunk)).is_err() {
                            body_tx = None;
                        }
                    }
                    _ => body_tx = None,
                }
            }
            Wake::Answered => {
                let resp = answered.take().expect("set with Wake::Answered");
                handler_fut = None;
                if blocked_chunk.is_some() && body_tx.as_ref().is_none_or(|tx| tx.is_closed()) {
                    blocked_chunk = None;
                    body_tx = None;
                }
                let now = clock.unwrap_or_else(std::time::Instant::now);
                match start_response(&mut conn, resp, now) {
                    Started::Done => {}
                    Started::Streaming(rx) => stream = Some(rx),
                    Started::Upgrade(u) => on_upgrade = u,
                }
            }
            Wake::StreamChunk(chunk) => match chunk {
                Some(Ok(bytes)) => {
                    if conn.send_body(bytes).is_err() {
                        stream = None;
                        conn.abort_response();
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "response body stream failed; closing");
                    stream = None;
                    conn.abort_response();
                }
                None => {
                    stream = None;
                    if let Err(e) = conn.finish_response() {
                        tracing::debug!(error = %e, "response body ended early; closing");
                    }
                }
            },
        }
        // A handler that dropped its body receiver: stop feeding it.
        if blocked_chunk.is_some() && body_tx.as_ref().is_none_or(|tx| tx.is_closed()) {
            blocked_chunk = None;
            body_tx = None;
        }
    }
}

/// One step of I/O: write queued output (one vectored write), read what is there.
/// `clock` gets the monotonic reading taken, if one was.
fn poll_io<IO: Transport>(
    io: &mut IO,
    conn: &mut ServerConnection,
    wants_read: bool,
    clock: &mut Option<std::time::Instant>,
    cx: &mut std::task::Context<'_>,
) -> Poll<Wake> {
    let mut progressed = false;
    let mut now = || *clock.insert(std::time::Instant::now());
    if conn.has_output() {
        match crate::io::poll_write_bufs(io, cx, conn.output_bufs()) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                conn.io_error(now());
                return Poll::Ready(Wake::Io);
            }
            Poll::Ready(Ok(written)) => {
                conn.consume_output(written, now());
                progressed = true;
            }
            Poll::Pending => {}
        }
    }
    if wants_read && !progressed {
        let read = crate::io::poll_read_with(io, cx, |bytes| {
            let now = now();
            if bytes.is_empty() {
                conn.feed_eof(now);
            } else {
                pool::lend(conn);
                conn.feed(bytes, now);
            }
        });
        match read {
            Poll::Ready(Ok(())) => progressed = true,
            Poll::Ready(Err(_)) => {
                conn.io_error(now());
                progressed = true;
            }
            Poll::Pending => {}
        }
    }
    if progressed {
        Poll::Ready(Wake::Io)
    } else {
        Poll::Pending
    }
}

enum Started {
    Done,
    Streaming(mpsc::Receiver<Result<Bytes, std::io::Error>>),
    Upgrade(Option<OnUpgrade>),
}

/// Starts sending `resp`; `now` is a fresh monotonic reading (for `Date`).
fn start_response(conn: &mut ServerConnection, resp: Response, now: std::time::Instant) -> Started {
    let (mut parts, body) = resp.into_parts();
    // The engine adds `Date` unless the handler set one.
    let send = |conn: &mut ServerConnection, status, headers: &HeaderMap, body| {
        super::date::with_current_bytes_at(now, |date| {
            conn.send_response_with_date(status, headers, Some(date), body)
        })
    };
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        let upgrade = parts.extensions.remove::<OnUpgrade>();
        if let Err(e) = send(conn, parts.status, &parts.headers, ResponseBody::Empty) {
            tracing::warn!(error = %e, "handler answered 101 but the connection cannot upgrade");
            send_error(conn, StatusCode::INTERNAL_SERVER_ERROR);
            return Started::Done;
        }
        return Started::Upgrade(upgrade);
    }
    let (framing, full, rx) = match body {
        Body::Empty => (
            ResponseBody::declared_or(&parts.headers, ResponseBody::Empty),
            None,
            None,
        ),
        Body::Full(b) => (ResponseBody::Length(b.len() as u64), Some(b), None),
        Body::Stream(rx) => (
            ResponseBody::declared_or(&parts.headers, ResponseBody::Streaming),
            None,
            Some(rx),
        ),
    };
    if let Err(e) = send(conn, parts.status, &parts.headers, framing) {
        tracing::warn!(error = %e, "invalid response from handler");
        conn.abort_response();
        return Started::Done;
    }
    // Its (emptied) map serves a later request head.
    h1::recycle_header_map(parts.headers);
    match (full, rx) {
        (Some(b), _) => {
            if !b.is_empty() {
                let _ = conn.send_body(b);
            }
            let _ = conn.finish_response();
            Started::Done
        }
        (None, Some(rx)) => Started::Streaming(rx),
        (None, None) => {
            if framing != ResponseBody::Empty {
                let _ = conn.finish_response();
            }
            Started::Done
        }
    }
}

/// Answers with an error status and a one-line body; the engine closes after.
fn send_error(conn: &mut ServerConnection, status: StatusCode) {
    let mut headers = HeaderMap::with_capacity(2);
    headers.insert(header::DATE, super::date::now());
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let reason = status.canonical_reason().unwrap_or("error");
    let body = Bytes::from(format!("{} {}\n", status.as_u16(), reason));
    if conn
        .send_response(status, &headers, ResponseBody::Length(body.len() as u64))
        .is_ok()
    {
        let _ = conn.send_body(body);
        let _ = conn.finish_response();
    }
}

/// A per-thread pool of request buffers: a connection takes a read and an
/// output buffer when bytes arrive and gives them back as soon as it is
/// idle, so back-to-back requests allocate none and an idle connection
/// holds none. At most `POOLED` pairs are kept per thread; buffers that
/// grew past 16 KiB are freed by the engine instead.
mod pool {
    use std::cell::RefCell;

    use bytes::BytesMut;
    use tether_proto::h1::ServerConnection;

    const POOLED: usize = 64;

    thread_local! {
        static POOL: RefCell<Vec<(BytesMut, BytesMut)>> = const { RefCell::new(Vec::new()) };
    }

    /// Gives `conn` pooled buffers if it has none.
    pub(super) fn lend(conn: &mut ServerConnection) {
        if !conn.has_buffers() {
            if let Some(buffers) = POOL.with(|p| p.borrow_mut().pop()) {
                conn.give_buffers(buffers);
            }
        }
    }

    /// Takes an idle connection's buffers into the pool (or frees them when it is full).
    pub(super) fn put(conn: &mut ServerConnection) {
        if let Some(buffers) = conn.take_buffers() {
            POOL.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOLED {
                    p.push(buffers);
                }
            });
        }
    }
}

/// Serves a transport with no shutdown signal (tests, embedding).
pub async fn serve_transport<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: IO,
    config: Arc<h1::Config>,
    handler: SharedHandler,
) -> ConnectionEnd {
    let (_tx, rx) = watch::channel(Stop::Run);
    serve_connection(io, config, handler, rx).await
}
