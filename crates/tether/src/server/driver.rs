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
//! It adds the engine's counts (responses, bytes on the wire) to the
//! server's when it lets the connection go and about once a second while
//! the connection stays busy (`Activity`), never per request.
//! Per response it reads no clock of its own when the read that brought
//! the request just read one (`Date` comes from the per-second cache,
//! checked against that reading), and hands the sent response's header
//! map back to the engine for a later request head.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request as HttpRequest, StatusCode};
use tether_proto::h1::{self, body_error_status, CloseCause, Event, ResponseBody, ServerConnection};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};
use tracing::{Instrument, Span};

use super::body::{Body, BodyError, RequestBody};
use super::file_body::FileRange;
use super::handler::{HandlerFuture, Response, SharedHandler};
use super::held::Held;
use super::serving::Lot;
use super::upgrade::{OnUpgrade, Upgraded};
use super::ServerStats;
use crate::lifecycle::{OpenGuard, StopSignal, Transport};
use crate::traffic::Traffic;

/// Request body chunks buffered between the driver and the handler.
const BODY_CHANNEL: usize = 4;

/// How often a busy connection adds its counts to the server's.
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What one connection ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// Closed, for this cause, after this many responses; with what was
    /// wrong with a refused request, if one was.
    Closed(CloseCause, u32, Option<h1::Fault>),
    /// Switched protocols after this many responses.
    Upgraded(u32),
}

impl ConnectionEnd {
    /// The responses the connection carried.
    pub fn requests(&self) -> u32 {
        match *self {
            ConnectionEnd::Closed(_, n, _) | ConnectionEnd::Upgraded(n) => n,
        }
    }

    /// Why it ended: the close cause's name, or `upgraded`.
    pub fn cause_str(&self) -> &'static str {
        match self {
            ConnectionEnd::Closed(cause, ..) => cause.as_str(),
            ConnectionEnd::Upgraded(_) => "upgraded",
        }
    }
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
    /// A file body was sent to its end (`Ok`) or failed.
    FileSent(std::io::Result<()>),
    Timer,
    Shutdown,
    /// A held response's signal fired.
    HeldFired,
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
    let span = crate::spans::connection(None);
    let context = Context {
        handler,
        lot: None,
        peer: None,
        access_log: false,
        stats: None,
        carry: Carry::new(span.clone()),
    };
    match drive(io, conn, context, shutdown, guard).instrument(span).await {
        Driven::Ended(end, _, span) => {
            crate::spans::record_end(&span, end.requests(), end.cause_str());
            end
        }
        Driven::Idle(_) => unreachable!("never parks without park_after"),
    }
}

/// How [`drive`] gave a connection back.
// Returned once per connection or per parking: the size is not worth a box.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Driven<IO> {
    /// The connection closed or upgraded, having carried this traffic
    /// (an upgraded one's: up to its `101`); its span, to record the end.
    Ended(ConnectionEnd, Traffic, Span),
    /// It has been idle for `park_after`, with nothing in flight: the caller
    /// may keep it without a task and [`drive`] it again on input, at its
    /// deadline or on shutdown.
    Idle(Paused<IO>),
}

/// An idle connection between two [`drive`] calls: nothing in flight, or a
/// held response waiting (see `super::held`).
pub(crate) struct Paused<IO> {
    pub io: IO,
    pub conn: ServerConnection,
    pub shutdown: watch::Receiver<Stop>,
    pub guard: Option<OpenGuard>,
    /// The connection's span, and the held request's with its response.
    pub carry: Carry,
}

/// Serves `conn` over `io` until it closes, upgrades or (with a parking
/// `lot`) has been idle for the lot's `park_after`. An upgraded protocol
/// gets the lot too.
///
/// Each pass: [`Driving::dispatch_events`] (engine events to the handler
/// and its body channel), the terminal states (write side shut, closed,
/// upgraded: [`Driving::hand_over`]), [`Driving::answer_now`] (a handler
/// that is already done is answered before anything is written, so
/// pipelined responses leave together), else [`Driving::wait`] (I/O, the
/// handler, a body slot, a stream chunk, the timer, the stop signal), then
/// [`Driving::on_wake`].
pub(crate) async fn drive<IO: Transport>(
    io: IO,
    conn: ServerConnection,
    context: Context<'_>,
    shutdown: watch::Receiver<Stop>,
    guard: Option<OpenGuard>,
) -> Driven<IO> {
    let Context { lot, peer, carry, .. } = context;
    let park_after = lot.map(Lot::park_after);
    let upgrade_stop = shutdown.clone();
    let access_log = context.access_log.then(|| AccessLog::new(peer));
    let started = Instant::now();
    let mut d = Driving::new(io, conn, context.handler, shutdown, access_log, started.into_std());
    d.activity.stats = context.stats;
    d.activity.served_at_start = d.conn.requests_served();
    d.activity.traffic_at_start = d.conn.traffic();
    // A held response resumed from the lot waits here from now on.
    d.held = carry.held;
    d.span = carry.span;
    d.request_span = carry.request_span;
    if d.stop == Stop::Force {
        return d.ended(CloseCause::Shutdown);
    }
    // One timer for the connection's life, moved to each new deadline.
    let sleep = tokio::time::sleep_until(started + std::time::Duration::from_secs(86_400));
    tokio::pin!(sleep);
    loop {
        d.dispatch_events();
        d.answer_held_when_due();
        if d.conn.poll_shutdown_write() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), d.io.shutdown()).await;
        }
        if let Some(cause) = d.conn.poll_close() {
            return d.ended(cause);
        }
        if d.conn.is_upgraded() && !d.conn.has_output() {
            return d.hand_over(upgrade_stop, guard, peer, lot);
        }
        let wake = match d.answer_now().await {
            true => Wake::Answered,
            false => {
                // Counted only when it waits with work in progress: a
                // handler that answers at once costs the gauge nothing.
                d.activity
                    .set(d.handler_fut.is_some() || d.stream.is_some() || d.held.is_some());
                d.wait(sleep.as_mut(), park_after).await
            }
        };
        // Parks idle, or holding a response that waits for its signal.
        let held = match d.on_wake(wake) {
            Next::Go if park_after.is_some() && d.may_park_held() => d.held.take(),
            Next::Go => continue,
            Next::Park => None,
            Next::Close(cause) => return d.ended(cause),
        };
        d.activity.report(&d.conn);
        let Driving {
            io,
            conn,
            span,
            request_span,
            ..
        } = d;
        return Driven::Idle(Paused {
            io,
            conn,
            shutdown: upgrade_stop,
            guard,
            carry: Carry {
                span,
                // Only a held request's span is still open.
                request_span: if held.is_some() { request_span } else { Span::none() },
                held,
            },
        });
    }
}

/// What a connection's driver gets from its server.
pub(crate) struct Context<'a> {
    pub handler: SharedHandler,
    /// The parking lot, when connections park.
    pub lot: Option<&'a Lot>,
    /// The client's address, for logs.
    pub peer: Option<SocketAddr>,
    /// Log one line per request (`Server::access_log`).
    pub access_log: bool,
    /// The server's counters.
    pub stats: Option<Arc<ServerStats>>,
    /// The connection's span, and a held response it resumes with (it
    /// waited in the lot) with its request's span.
    pub carry: Carry,
}

/// What a connection takes from one task to the next besides its engine:
/// its span and, for a held response, the response and its request's span.
pub(crate) struct Carry {
    pub span: Span,
    pub request_span: Span,
    pub held: Option<Held>,
}

impl Carry {
    /// A new connection's: its span.
    pub(crate) fn new(span: Span) -> Self {
        Self {
            span,
            request_span: Span::none(),
            held: None,
        }
    }
}

/// What the server's counters learn from this connection: whether it
/// waits with a request in progress (the `http_active` gauge, given back
/// when the driver is dropped), and the responses it sent and its bytes on
/// the wire (added to `requests` and `http_traffic` when the driver lets
/// the connection go: it parks, upgrades or ends; and about once a second
/// while it stays busy; not per request).
struct Activity {
    stats: Option<Arc<ServerStats>>,
    active: bool,
    /// The engine's response count as last added (when this driver took
    /// the connection, or at its last report).
    served_at_start: u32,
    /// The engine's traffic as last added.
    traffic_at_start: Traffic,
    /// When a busy connection reports next (checked when it waits after I/O).
    report_at: std::time::Instant,
}

impl Activity {
    /// Adds the responses sent and the bytes counted since the last report.
    fn report(&mut self, conn: &ServerConnection) {
        let served = conn.requests_served();
        let traffic = conn.traffic();
        if let Some(s) = &self.stats {
            let new = served.saturating_sub(self.served_at_start);
            if new > 0 {
                s.requests.fetch_add(u64::from(new), Ordering::Relaxed);
            }
            s.http_traffic.add(traffic.since(self.traffic_at_start));
        }
        self.served_at_start = served;
        self.traffic_at_start = traffic;
    }

    fn set(&mut self, active: bool) {
        if active != self.active {
            self.active = active;
            if let Some(s) = &self.stats {
                if active {
                    s.http_active.fetch_add(1, Ordering::Relaxed);
                } else {
                    s.http_active.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// The request being answered, for its access-log line.
struct AccessLog {
    peer: Option<SocketAddr>,
    /// `METHOD target VERSION` of the current request.
    request_line: String,
    started: Option<Instant>,
}

impl AccessLog {
    fn new(peer: Option<SocketAddr>) -> Self {
        Self {
            peer,
            request_line: String::new(),
            started: None,
        }
    }

    fn request(&mut self, head: &h1::RequestHead) {
        use std::fmt::Write;
        self.request_line.clear();
        let _ = write!(self.request_line, "{} {} {:?}", head.method, head.uri, head.version);
        self.started = Some(Instant::now());
    }

    /// A head refused before it was a request.
    fn refused(&mut self, status: StatusCode) {
        self.request_line.clear();
        self.request_line.push('-');
        self.response(status, &HeaderMap::new(), &Body::Empty);
    }

    /// One line per response, at `info` on target `tether::access`: the
    /// client, the request line, the status, the body's declared length
    /// (`-` when streamed) and the time from the request head to the
    /// response head (a common log format; the date is the log line's).
    fn response(&mut self, status: StatusCode, headers: &HeaderMap, body: &Body) {
        let length = match body {
            Body::Full(b) => b.len().to_string(),
            Body::Empty => headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("0")
                .to_owned(),
            Body::Stream(_) => "-".to_owned(),
            Body::File(range) => range.len().to_string(),
        };
        let peer = self.peer.map_or_else(|| "-".to_owned(), |p| p.ip().to_string());
        let took = self.started.take().map(|t| t.elapsed()).unwrap_or_default();
        tracing::info!(
            target: "tether::access",
            "{peer} \"{}\" {} {length} {:.6}",
            self.request_line,
            status.as_u16(),
            took.as_secs_f64()
        );
    }
}

/// What [`Driving::on_wake`] decided.
enum Next {
    Go,
    /// Idle for `park_after`: give the connection back to be parked.
    Park,
    /// End it now (a forced stop).
    Close(CloseCause),
}

/// One connection on its task: the engine, the transport, and what the
/// driver keeps between waits (the handler's future, the request body's
/// channel, a streamed response body, an upgrade waiting for its `101`).
struct Driving<IO> {
    io: IO,
    conn: ServerConnection,
    handler: SharedHandler,
    handler_fut: Option<HandlerFuture>,
    /// The handler's answer, taken by `on_wake` (it waits here, not in a
    /// return value: a `Response` moved per wake-up cost a `memcpy`).
    answered: Option<Response>,
    body_tx: Option<mpsc::Sender<Result<Bytes, BodyError>>>,
    /// A body chunk the full channel could not take yet.
    blocked_chunk: Option<Bytes>,
    stream: Option<mpsc::Receiver<Result<Bytes, std::io::Error>>>,
    /// A file body being sent with `sendfile` (plain TCP only).
    file: Option<FileRange>,
    on_upgrade: Option<OnUpgrade>,
    /// The server's last order, and its channel (see `StopSignal`).
    stop: Stop,
    stop_signal: StopSignal,
    /// The deadline the timer is armed for.
    armed: Option<Instant>,
    /// When this wait may end in parking.
    park_at: Option<Instant>,
    /// The clock as read by the I/O step that ended the last wait: a
    /// response started right after it needs no clock read of its own for
    /// its `Date`.
    clock: Option<std::time::Instant>,
    /// Its largest buffers, reported when it is dropped (see `memory`).
    peak: crate::memory::PeakBuffers,
    access_log: Option<AccessLog>,
    activity: Activity,
    /// A handler's held response, waiting for its signal or deadline.
    held: Option<Held>,
    /// The held response came from the handler on this task (not resumed
    /// from the lot): it may park. One resumed early (by input on the
    /// socket) waits on its task, so a peer that keeps sending never makes
    /// it bounce between task and lot.
    held_may_park: bool,
    /// The connection's span (the driver runs inside it: see `crate::spans`).
    span: Span,
    /// The current request's span, entered while its handler is polled;
    /// closed (`Span::none()`) once its response is queued.
    request_span: Span,
}

impl<IO: Transport> Driving<IO> {
    fn new(
        io: IO,
        mut conn: ServerConnection,
        handler: SharedHandler,
        shutdown: watch::Receiver<Stop>,
        access_log: Option<AccessLog>,
        started: std::time::Instant,
    ) -> Self {
        // Idle, the connection's buffers go to the thread's pool (see `pool`).
        conn.set_retain_buffers(true);
        // Registered once for the connection's life, not once per wait.
        let (stop, stop_signal) = StopSignal::new(shutdown);
        if stop == Stop::Graceful {
            conn.handle_shutdown(Instant::now().into_std());
        }
        Self {
            io,
            conn,
            handler,
            handler_fut: None,
            answered: None,
            body_tx: None,
            blocked_chunk: None,
            stream: None,
            file: None,
            on_upgrade: None,
            stop,
            stop_signal,
            armed: None,
            park_at: None,
            clock: None,
            peak: Default::default(),
            access_log,
            activity: Activity {
                stats: None,
                active: false,
                served_at_start: 0,
                traffic_at_start: Traffic::default(),
                report_at: started + REPORT_EVERY,
            },
            held: None,
            held_may_park: false,
            span: Span::none(),
            request_span: Span::none(),
        }
    }

    fn ended(&mut self, cause: CloseCause) -> Driven<IO> {
        self.activity.report(&self.conn);
        self.request_span = Span::none();
        Driven::Ended(
            ConnectionEnd::Closed(cause, self.conn.requests_served(), self.conn.fault()),
            self.conn.traffic(),
            std::mem::replace(&mut self.span, Span::none()),
        )
    }

    /// Step 1: the engine's events, while the handler can take body chunks.
    fn dispatch_events(&mut self) {
        while self.blocked_chunk.is_none() {
            let Some(event) = self.conn.poll_event() else { break };
            match event {
                Event::Request(head) => self.start_request(head),
                Event::Body(chunk) => {
                    if let Some(tx) = &self.body_tx {
                        match tx.try_send(Ok(chunk)) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(Ok(chunk))) => self.blocked_chunk = Some(chunk),
                            Err(_) => self.body_tx = None, // the handler dropped its body: discard
                        }
                    }
                }
                Event::EndOfBody(_) => self.body_tx = None,
                Event::BodyFailed(e) => self.body_failed(e),
                Event::Reject(status) => {
                    self.handler_fut = None;
                    self.body_tx = None;
                    if let Some(log) = self.access_log.as_mut() {
                        log.refused(status);
                    }
                    send_error(&mut self.conn, status);
                }
            }
        }
    }

    /// A request head: its body channel, and the handler that answers it.
    fn start_request(&mut self, head: h1::RequestHead) {
        self.request_span = crate::spans::request(&self.span, &head.method, &head.uri);
        if let Some(log) = self.access_log.as_mut() {
            log.request(&head);
        }
        let length = match head.body {
            h1::BodyFraming::Empty => None,
            h1::BodyFraming::Length(n) => Some(Some(n)),
            h1::BodyFraming::Chunked => Some(None),
        };
        let body = match length {
            None => RequestBody::empty(),
            Some(length) => {
                let (tx, body) = RequestBody::channel(BODY_CHANNEL, length);
                self.body_tx = Some(tx);
                body
            }
        };
        let mut req = HttpRequest::new(body);
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.version_mut() = head.version;
        *req.headers_mut() = head.headers;
        // Routed by reference: the request moves once, into the handler
        // that answers it.
        let _entered = self.request_span.enter();
        self.handler_fut = Some(super::handler::resolve(&*self.handler, &req).call(req));
    }

    /// The request's body broke: the handler hears of it, and, if it has
    /// not answered, the engine's error status answers instead.
    fn body_failed(&mut self, e: h1::BodyError) {
        if let Some(tx) = self.body_tx.take() {
            let _ = tx.try_send(Err(match e {
                h1::BodyError::TooLarge => BodyError::TooLarge {
                    limit: self.conn.config().max_body,
                },
                h1::BodyError::Incomplete => BodyError::Incomplete,
                other => BodyError::Invalid(other.to_string()),
            }));
        }
        if self.conn.awaiting_response() {
            self.handler_fut = None;
            send_error(&mut self.conn, body_error_status(e));
        }
    }

    /// The connection switched protocols and its `101` is written: the
    /// transport goes to the upgrade's callback, on a task of its own (this
    /// connection's HTTP state is freed).
    fn hand_over(
        mut self,
        stop: watch::Receiver<Stop>,
        guard: Option<OpenGuard>,
        peer: Option<SocketAddr>,
        lot: Option<&Lot>,
    ) -> Driven<IO> {
        // The bytes past the upgrade request are the new protocol's to count.
        let read_buf = self.conn.take_upgraded_bytes();
        self.activity.report(&self.conn);
        let Driving {
            io,
            conn,
            on_upgrade,
            span,
            ..
        } = self;
        let served = conn.requests_served();
        let traffic = conn.traffic();
        if let Some(f) = on_upgrade.and_then(|u| u.take()) {
            let upgraded = Upgraded {
                io: Box::new(io),
                read_buf,
                traffic,
                stop: Some(stop),
                guard,
                peer,
                lot: lot.cloned(),
                span: span.clone(),
            };
            tokio::spawn(f(upgraded));
        }
        Driven::Ended(ConnectionEnd::Upgraded(served), traffic, span)
    }

    /// Step 3: a handler that answers at once is answered before anything
    /// is written (pipelined responses leave together in one write), and
    /// before any deadline is computed. Returns whether it answered.
    async fn answer_now(&mut self) -> bool {
        let Some(f) = self.handler_fut.as_mut() else {
            return false;
        };
        let answered = &mut self.answered;
        let request_span = &self.request_span;
        poll_fn(|cx| {
            let _entered = request_span.enter();
            if let Poll::Ready(resp) = f.as_mut().poll(cx) {
                *answered = Some(resp);
            }
            Poll::Ready(())
        })
        .await;
        self.answered.is_some()
    }

    /// Step 4: waits for whatever comes first: the stop signal, I/O, the
    /// handler, room for a blocked body chunk, a stream chunk, the timer.
    async fn wait(&mut self, mut sleep: Pin<&mut Sleep>, park_after: Option<std::time::Duration>) -> Wake {
        self.peak.note(self.conn.output_len() + self.conn.buffer_capacity());
        // A busy connection's counts, about once a second (on the clock
        // its last I/O read: no reading of its own).
        if let Some(now) = self.clock {
            if now >= self.activity.report_at {
                self.activity.report(&self.conn);
                self.activity.report_at = now + REPORT_EVERY;
            }
        }
        if self.conn.idle_since().is_some() {
            pool::put(&mut self.conn);
        }
        self.arm_timer(sleep.as_mut(), park_after);
        let wants_read = self.conn.wants_read();
        let stream_ready = self.stream.is_some() && self.conn.has_output_capacity();
        // Set only by a read or write of this wait, which then ends it.
        self.clock = None;
        let Driving {
            io,
            conn,
            handler_fut,
            answered,
            body_tx,
            blocked_chunk,
            stream,
            file,
            stop,
            stop_signal,
            armed,
            clock,
            held,
            request_span,
            ..
        } = self;
        let held_signal = held.as_ref().map(|h| h.signal.clone());
        tokio::select! {
            biased;
            next = poll_fn(|cx| stop_signal.poll_next(cx)), if *stop != Stop::Force => {
                *stop = next;
                Wake::Shutdown
            }
            w = poll_fn(|cx| poll_io(io, conn, file, wants_read, clock, cx)) => w,
            _ = poll_fn(|cx| {
                let _entered = request_span.enter();
                match handler_fut.as_mut().expect("guarded").as_mut().poll(cx) {
                    Poll::Ready(resp) => {
                        *answered = Some(resp);
                        Poll::Ready(())
                    }
                    Poll::Pending => Poll::Pending,
                }
            }), if handler_fut.is_some() => Wake::Answered,
            ok = async { body_tx.as_ref().expect("guarded").reserve().await.is_ok() }, if blocked_chunk.is_some() && body_tx.is_some() => Wake::BodySlot(ok),
            chunk = async { stream.as_mut().expect("guarded").recv().await }, if stream_ready => Wake::StreamChunk(chunk),
            _ = poll_fn(|cx| held_signal.as_ref().expect("guarded").poll_fired(cx)), if held_signal.is_some() => Wake::HeldFired,
            _ = &mut sleep, if armed.is_some() => Wake::Timer,
        }
    }

    /// Moves the timer to the engine's next deadline, or to when the
    /// connection may park (decided only when the timer fires, so a resumed
    /// connection reads what woke it before it can be parked again).
    fn arm_timer(&mut self, sleep: Pin<&mut Sleep>, park_after: Option<std::time::Duration>) {
        let quiet = self.handler_fut.is_none()
            && self.held.is_none()
            && self.stream.is_none()
            && self.file.is_none()
            && self.body_tx.is_none()
            && self.blocked_chunk.is_none()
            && self.on_upgrade.is_none()
            && self.stop == Stop::Run;
        self.park_at = match (park_after, self.conn.idle_since(), quiet) {
            (Some(after), Some(since), true) => Some(Instant::from_std(since) + after),
            _ => None,
        };
        let held = self.held.as_ref().map(|h| Instant::from_std(h.deadline));
        let deadline = [self.conn.poll_timeout().map(Instant::from_std), self.park_at, held]
            .into_iter()
            .flatten()
            .min();
        // The timer is moved only to an earlier deadline. A later or absent
        // one leaves it armed: it may fire early, and `on_wake` re-arms it,
        // so a busy connection (whose idle deadline moves with every
        // request) does not touch the timer wheel per request.
        if let Some(d) = deadline {
            if self.armed.is_none_or(|a| d < a) {
                sleep.reset(d);
                self.armed = Some(d);
            }
        }
    }

    /// Step 5: acts on what ended the wait.
    fn on_wake(&mut self, wake: Wake) -> Next {
        match wake {
            Wake::Io => {}
            Wake::Shutdown => match self.stop {
                Stop::Run => {}
                Stop::Graceful => self.conn.handle_shutdown(Instant::now().into_std()),
                Stop::Force => return Next::Close(CloseCause::Shutdown),
            },
            Wake::Timer => {
                let now = Instant::now();
                self.conn.handle_timeout(now.into_std());
                // Fired (maybe before the current deadline): re-arm.
                self.armed = None;
                // Its buffers already went back to the pool (in `wait`).
                if self.park_at.is_some_and(|p| now >= p) && self.conn.idle_since().is_some() {
                    return Next::Park;
                }
            }
            Wake::BodySlot(ok) => {
                let chunk = self.blocked_chunk.take();
                match (ok, chunk, &self.body_tx) {
                    (true, Some(chunk), Some(tx)) => {
                        if tx.try_send(Ok(chunk)).is_err() {
                            self.body_tx = None;
                        }
                    }
                    _ => self.body_tx = None,
                }
            }
            Wake::Answered => self.respond(),
            Wake::StreamChunk(chunk) => self.stream_chunk(chunk),
            Wake::FileSent(result) => self.file_sent(result),
            // Answered at the top of the next pass.
            Wake::HeldFired => {}
        }
        // A handler that dropped its body receiver: stop feeding it.
        if self.blocked_chunk.is_some() && self.body_tx.as_ref().is_none_or(|tx| tx.is_closed()) {
            self.blocked_chunk = None;
            self.body_tx = None;
        }
        Next::Go
    }

    /// A held response whose signal fired or whose deadline passed (or the
    /// server is stopping) gets its answer's future, as a handler's.
    fn answer_held_when_due(&mut self) {
        // Also when the client went away: nobody is waiting any more.
        let due = match &self.held {
            None => return,
            Some(held) => self.stop != Stop::Run || self.conn.peer_closed() || held.is_due(Instant::now().into_std()),
        };
        if due {
            let held = self.held.take().expect("checked");
            self.handler_fut = Some(held.answer());
        }
    }

    /// Whether the connection may park with its held response: nothing
    /// else in progress, everything written.
    fn may_park_held(&self) -> bool {
        self.held_may_park
            && self.held.is_some()
            && self.handler_fut.is_none()
            && self.stream.is_none()
            && self.file.is_none()
            && self.body_tx.is_none()
            && self.blocked_chunk.is_none()
            && self.on_upgrade.is_none()
            && self.stop == Stop::Run
            && !self.conn.has_output()
    }

    /// The handler answered: the response starts.
    fn respond(&mut self) {
        let mut resp = self.answered.take().expect("set with Wake::Answered");
        self.handler_fut = None;
        if let Some(held) = Held::take_from(&mut resp) {
            self.held = Some(held);
            self.held_may_park = true;
            return;
        }
        if self.blocked_chunk.is_some() && self.body_tx.as_ref().is_none_or(|tx| tx.is_closed()) {
            self.blocked_chunk = None;
            self.body_tx = None;
        }
        let now = self.clock.unwrap_or_else(std::time::Instant::now);
        crate::spans::record(&self.request_span, "status", resp.status().as_u16());
        if let Some(log) = self.access_log.as_mut() {
            let _entered = self.request_span.enter();
            log.response(resp.status(), resp.headers(), resp.body());
        }
        let sendfile = (&self.io as &dyn std::any::Any).is::<tokio::net::TcpStream>();
        match start_response(&mut self.conn, resp, now, sendfile) {
            // The response is queued: its request's span ends.
            Started::Done => self.request_span = Span::none(),
            Started::Streaming(rx) => self.stream = Some(rx),
            Started::File(range) => self.file = Some(range),
            Started::Upgrade(u) => {
                self.request_span = Span::none();
                self.on_upgrade = u;
            }
        }
    }

    /// A file body's end: sent whole, or failed (a short file, the socket).
    fn file_sent(&mut self, result: std::io::Result<()>) {
        self.file = None;
        match result {
            Ok(()) => {
                let _ = self.conn.finish_response();
            }
            Err(e) => {
                let _entered = self.request_span.enter();
                tracing::debug!(error = %e, "file body failed; closing");
                if !self.conn.is_closed() {
                    self.conn.abort_response();
                }
            }
        }
        self.request_span = Span::none();
    }

    /// A piece of a streamed response body, its end, or its failure.
    fn stream_chunk(&mut self, chunk: Option<Result<Bytes, std::io::Error>>) {
        match chunk {
            Some(Ok(bytes)) => {
                if self.conn.send_body(bytes).is_err() {
                    self.stream = None;
                    self.conn.abort_response();
                }
            }
            Some(Err(e)) => {
                let _entered = self.request_span.enter();
                tracing::debug!(error = %e, "response body stream failed; closing");
                self.stream = None;
                self.conn.abort_response();
            }
            None => {
                self.stream = None;
                if let Err(e) = self.conn.finish_response() {
                    let _entered = self.request_span.enter();
                    tracing::debug!(error = %e, "response body ended early; closing");
                }
                self.request_span = Span::none();
            }
        }
    }
}

/// One step of I/O: write queued output (one vectored write), or else a
/// step of a file body; read what is there. `clock` gets the monotonic
/// reading taken, if one was.
fn poll_io<IO: Transport>(
    io: &mut IO,
    conn: &mut ServerConnection,
    file: &mut Option<FileRange>,
    wants_read: bool,
    clock: &mut Option<std::time::Instant>,
    cx: &mut std::task::Context<'_>,
) -> Poll<Wake> {
    let mut progressed = false;
    let mut now = || *clock.insert(std::time::Instant::now());
    if conn.has_output() {
        let at = now();
        match crate::io::poll_write_bufs(io, cx, conn.poll_transmit(at)) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                conn.handle_io_error(at);
                return Poll::Ready(Wake::Io);
            }
            Poll::Ready(Ok(written)) => {
                conn.handle_written(written, at);
                progressed = true;
            }
            Poll::Pending => {}
        }
    } else if let Some(range) = file.as_mut() {
        // Its head is written: the body goes straight from the file.
        match poll_send_file(io, conn, range, now(), cx) {
            Poll::Ready(Some(end)) => return Poll::Ready(Wake::FileSent(end)),
            Poll::Ready(None) => progressed = true,
            Poll::Pending => {}
        }
    } else if crate::io::flush_failed(io, cx) {
        // A transport that buffers (TLS: records rustls took but the socket
        // did not yet) is flushed once the engine's output is all written;
        // for TCP this is free.
        conn.handle_io_error(now());
        return Poll::Ready(Wake::Io);
    }
    if wants_read && !progressed {
        let read = crate::io::poll_read_with(io, cx, |bytes| {
            let now = now();
            if bytes.is_empty() {
                conn.handle_eof(now);
            } else {
                pool::lend(conn);
                conn.handle_input(bytes, now);
            }
        });
        match read {
            Poll::Ready(Ok(())) => progressed = true,
            Poll::Ready(Err(_)) => {
                conn.handle_io_error(now());
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

/// One `sendfile` step of a file body (its head is written): `Some` once
/// it ended (sent whole, or failed), `None` after progress.
fn poll_send_file<IO: Transport>(
    io: &mut IO,
    conn: &mut ServerConnection,
    range: &mut FileRange,
    now: std::time::Instant,
    cx: &mut std::task::Context<'_>,
) -> Poll<Option<std::io::Result<()>>> {
    let left = match conn.begin_direct_body(now) {
        Ok(0) => return Poll::Ready(Some(Ok(()))),
        Ok(left) => left,
        Err(e) => return Poll::Ready(Some(Err(std::io::Error::other(e)))),
    };
    let Some(socket) = (io as &mut dyn std::any::Any).downcast_mut::<tokio::net::TcpStream>() else {
        return Poll::Ready(Some(Err(std::io::Error::other("sendfile needs a TCP socket"))));
    };
    match std::task::ready!(super::file_body::poll_send(socket, range, left, cx)) {
        Ok(n) => {
            let sent = conn.handle_direct_written(n as u64, std::time::Instant::now());
            match sent {
                Ok(()) if range.is_empty() => Poll::Ready(Some(Ok(()))),
                Ok(()) => Poll::Ready(None),
                Err(e) => Poll::Ready(Some(Err(std::io::Error::other(e)))),
            }
        }
        // The file ended early: the response is aborted (`file_sent`), the
        // connection closes once what was written is flushed.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Poll::Ready(Some(Err(e))),
        Err(e) => {
            conn.handle_io_error(now);
            Poll::Ready(Some(Err(e)))
        }
    }
}

enum Started {
    Done,
    Streaming(mpsc::Receiver<Result<Bytes, std::io::Error>>),
    /// A file body, sent with `sendfile` once the head is written.
    File(FileRange),
    Upgrade(Option<OnUpgrade>),
}

/// Starts sending `resp`; `now` is a fresh monotonic reading (for `Date`);
/// `sendfile`: a file body may go to the socket directly (plain TCP), else
/// it is read in chunks.
fn start_response(conn: &mut ServerConnection, resp: Response, now: std::time::Instant, sendfile: bool) -> Started {
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
    let body = match body {
        Body::File(range) if range.is_empty() => Body::Full(Bytes::new()),
        Body::File(range) if !sendfile => range.into_stream(),
        other => other,
    };
    let (framing, full, rx, file) = match body {
        Body::Empty => (
            ResponseBody::declared_or(&parts.headers, ResponseBody::Empty),
            None,
            None,
            None,
        ),
        Body::Full(b) => (ResponseBody::Length(b.len() as u64), Some(b), None, None),
        Body::Stream(rx) => (
            ResponseBody::declared_or(&parts.headers, ResponseBody::Streaming),
            None,
            Some(rx),
            None,
        ),
        Body::File(range) => (ResponseBody::Length(range.len()), None, None, Some(range)),
    };
    if let Err(e) = send(conn, parts.status, &parts.headers, framing) {
        tracing::warn!(error = %e, "invalid response from handler");
        conn.abort_response();
        return Started::Done;
    }
    // Its (emptied) map serves a later request head.
    h1::recycle_header_map(parts.headers);
    if let Some(range) = file {
        return Started::File(range);
    }
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

/// Serves a transport with no shutdown signal (tests, embedding, a TLS
/// stream accepted by the caller), an upgraded protocol included.
pub async fn serve_transport<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: IO,
    config: Arc<h1::Config>,
    handler: SharedHandler,
) -> ConnectionEnd {
    // One channel that never changes, for every such connection: a sender
    // dropped when this returns would read as a forced stop to the
    // upgraded WebSocket that outlives it.
    static NEVER: std::sync::OnceLock<watch::Sender<Stop>> = std::sync::OnceLock::new();
    let rx = NEVER.get_or_init(|| watch::channel(Stop::Run).0).subscribe();
    serve_connection(io, config, handler, rx).await
}
