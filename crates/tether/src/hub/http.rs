//! The hub's HTTP face, on the same keep-alive server as everything else:
//! `/ws` (the WebSocket protocol, `session`), `POST /publish/{channel}`,
//! `GET /poll/{channel}` (polling, and long-polling with `wait=`) and
//! `GET /sse/{channel}` (Server-Sent Events). [`routes`] adds them to a
//! router.
//!
//! Every answer is JSON (`application/json`), errors included:
//! `{"error":{"code":"…","message":"…"}}` with 400 (bad channel, bad JSON,
//! bad parameter), 401 (a publisher key or a client token is required and
//! was missing, wrong or expired, with `WWW-Authenticate`; see
//! [`super::auth`]), 403 (the token or the namespace does not allow the
//! channel), 405, 413 (data too large), 429 (the token's subject holds all
//! the connections it may) or 503 (broker unavailable, with
//! `Retry-After: 1`). With client tokens configured, `/sse/` and `/poll/`
//! need one (`?token=` or `Authorization: Bearer`) allowing the channel,
//! unless its namespace is anonymous (`super::namespace`), and an SSE
//! stream ends when its token expires; an SSE stream and a held long poll
//! with a token hold one of its subject's connections (`super::limits`).
//! `/ws` checks a `?token=` before the upgrade, or takes one in its first
//! message (`session`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};

use super::auth::{Grants, TokenError};
use super::broker::History;
use super::channel::{SseSink, Target};
use super::limits::SubjectSlot;
use super::namespace::{Client, Refusal};
use super::protocol::{self, ProtocolError};
use super::session::{Admitted, Session};
use super::{run_soon, ChannelName, Hub, HubStats, PublishError, SubscribeRequest};
use crate::server::held::HeldAnswer;
use crate::server::router::{self, Router};
use crate::server::{Body, BodyError, Held, Request, Response};
use crate::ws::push::Inlet;
use crate::ws::{self, WsOptions};

/// Adds `/ws`, `/publish/`, `/poll/` and `/sse/` to `router`.
pub fn routes(router: Router, hub: &Hub, ws_options: &Arc<WsOptions>) -> Router {
    let (h, options) = (hub.clone(), ws_options.clone());
    let ws = move |req: Request| {
        let (hub, options) = (h.clone(), options.clone());
        async move { websocket(&req, &hub, &options) }
    };
    let h = hub.clone();
    let publish = move |req: Request| {
        let hub = h.clone();
        async move { publish(req, &hub).await }
    };
    let h = hub.clone();
    let poll = move |req: Request| {
        let hub = h.clone();
        async move { poll(&req, &hub).await }
    };
    let h = hub.clone();
    let sse = move |req: Request| {
        let hub = h.clone();
        async move { sse(&req, &hub) }
    };
    router
        .route("/ws", router::get(ws))
        .prefix("/publish/", router::methods(&[Method::POST], publish))
        .prefix("/poll/", router::get(poll))
        .prefix("/sse/", router::get(sse))
}

/// `/ws`: the upgrade to the hub's WebSocket protocol.
fn websocket(req: &Request, hub: &Hub, options: &Arc<WsOptions>) -> Response {
    if !ws::is_websocket_request(req.headers()) {
        let mut resp = json_error(
            StatusCode::UPGRADE_REQUIRED,
            &ProtocolError::new("bad_request", "/ws is a WebSocket endpoint"),
        );
        resp.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return resp;
    }
    // A token in the URL is checked before the upgrade; without one, the
    // session waits for an `auth` command (browsers cannot set headers).
    let admitted = match (&hub.config().tokens, presented_token(req)) {
        (Some(verifier), Some(token)) => match verifier.verify(token) {
            Ok(grants) => match subject_slot(hub, Some(&grants)) {
                Ok(slot) => slot.map(|slot| Admitted { grants, slot }),
                Err(refused) => return *refused,
            },
            Err(e) => return unauthorized(&e),
        },
        _ => None,
    };
    let limit = hub.config().subscriber_queue;
    let inlet = Arc::new(Inlet::new(limit));
    ws::upgrade_pushed(req, options, Session::new(hub.clone(), inlet.clone(), admitted), inlet)
}

/// The token a request presents: `?token=` or `Authorization: Bearer`.
fn presented_token(req: &Request) -> Option<&str> {
    query(req)
        .find(|(name, _)| *name == "token")
        .map(|(_, value)| value)
        .filter(|t| !t.is_empty())
        .or_else(|| {
            req.headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| super::auth::bearer(v.as_bytes()))
                .and_then(|t| std::str::from_utf8(t).ok())
        })
}

/// What the client may read of `channel` over HTTP (`Ok(None)`: no token,
/// and none needed: no tokens configured, or an anonymous namespace), or
/// the answer refusing it: 401 without a valid token where one is needed,
/// 403 for a channel the token does not allow.
fn reader(req: &Request, hub: &Hub, channel: &ChannelName) -> Result<Option<Grants>, Box<Response>> {
    let Some(verifier) = hub.config().tokens.as_ref() else {
        return Ok(None);
    };
    let grants = match presented_token(req).map(|token| verifier.verify(token)) {
        Some(Ok(grants)) => Some(grants),
        Some(Err(e)) => return Err(Box::new(unauthorized(&e))),
        None => None,
    };
    let who = grants.as_ref().map_or(Client::Anonymous, Client::Token);
    match hub.config().namespaces.may_subscribe(who, channel) {
        Ok(()) => Ok(grants),
        Err(Refusal::Unauthorized(_)) => Err(Box::new(unauthorized(&TokenError::Missing))),
        Err(Refusal::Forbidden(why)) => Err(Box::new(json_error(
            StatusCode::FORBIDDEN,
            &ProtocolError::new("forbidden", format!("{why}: {channel}")),
        ))),
    }
}

/// A connection slot for the subject of `grants` (none needed without a
/// token), or `429` when the subject holds all it may.
fn subject_slot(hub: &Hub, grants: Option<&Grants>) -> Result<Option<SubjectSlot>, Box<Response>> {
    let Some(grants) = grants else {
        return Ok(None);
    };
    match hub.enter_subject(&grants.subject) {
        Some(slot) => Ok(Some(slot)),
        None => Err(Box::new(json_error(
            StatusCode::TOO_MANY_REQUESTS,
            &ProtocolError::new(
                "too_many_connections",
                "this token's subject holds all the connections it may",
            ),
        ))),
    }
}

/// `401` for a missing or bad token, with its challenge (RFC 6750 §3).
fn unauthorized(e: &TokenError) -> Response {
    let mut resp = json_error(
        StatusCode::UNAUTHORIZED,
        &ProtocolError::new("unauthorized", e.to_string()),
    );
    let challenge = match e {
        TokenError::Missing => "Bearer realm=\"tether\"",
        _ => "Bearer realm=\"tether\", error=\"invalid_token\"",
    };
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    resp
}

/// The channel named by the path after `prefix`.
fn channel_in_path(req: &Request, prefix: &str) -> Result<ChannelName, ProtocolError> {
    let name = req.uri().path().strip_prefix(prefix).unwrap_or("");
    Ok(ChannelName::new(name)?)
}

/// `POST /publish/{channel}`: the body is the data (see the README).
async fn publish(req: Request, hub: &Hub) -> Response {
    if let Err(refused) = hub.config().publish_keys.check(req.headers()) {
        let mut resp = json_error(
            StatusCode::UNAUTHORIZED,
            &ProtocolError::new("unauthorized", refused.to_string()),
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(refused.challenge()));
        return resp;
    }
    let channel = match channel_in_path(&req, "/publish/") {
        Ok(c) => c,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e),
    };
    let declared_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            let t = t.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            t == "application/json" || t.ends_with("+json")
        });
    let max = hub.config().max_data;
    let body = match req.into_body().to_bytes(max as u64).await {
        Ok(body) => body,
        Err(BodyError::TooLarge { .. }) => {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &ProtocolError::new("too_large", format!("data is larger than {max} bytes")),
            )
        }
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &ProtocolError::new("bad_request", e.to_string()),
            )
        }
    };
    let data = match body_data(&body, declared_json, max) {
        Ok(data) => data,
        Err(e) => {
            let status = if e.code == "too_large" {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            return json_error(status, &e);
        }
    };
    match hub.publish(&channel, data).await {
        Ok(p) => json(
            StatusCode::OK,
            format!("{{\"channel\":\"{channel}\",\"offset\":{}}}", p.offset),
        ),
        Err(PublishError::Invalid(e)) => json_error(StatusCode::BAD_REQUEST, &e),
        Err(PublishError::Broker(e)) => unavailable(&e.to_string()),
    }
}

/// A request body as publication data: JSON when it is JSON (and it must
/// be, with a JSON content type), else the text as a JSON string.
fn body_data(body: &[u8], declared_json: bool, max: usize) -> Result<Bytes, ProtocolError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ProtocolError::new("bad_request", "the body must be UTF-8 text or JSON"))?;
    match serde_json::from_str::<&serde_json::value::RawValue>(text) {
        Ok(raw) => protocol::checked_data(raw.get(), max),
        Err(e) if declared_json => Err(ProtocolError::new("bad_json", format!("the body is not JSON: {e}"))),
        Err(_) => protocol::checked_data(&protocol::json_string(text), max),
    }
}

/// The query's `name=value` pairs (no percent-decoding: every value the
/// hub reads is a number or an epoch).
fn query(req: &Request) -> impl Iterator<Item = (&str, &str)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .filter(|(name, _)| !name.is_empty())
}

/// What a poll asks.
#[derive(Clone)]
struct PollParams {
    since: Option<u64>,
    epoch: Option<String>,
    limit: usize,
    wait: Duration,
}

fn poll_params(req: &Request, hub: &Hub) -> Result<PollParams, ProtocolError> {
    let max_limit = hub.config().max_poll_limit;
    let mut p = PollParams {
        since: None,
        epoch: None,
        limit: 100.min(max_limit),
        wait: Duration::ZERO,
    };
    let number = |name: &str, value: &str| {
        value
            .parse::<u64>()
            .map_err(|_| ProtocolError::new("bad_request", format!("{name} must be a whole number, not {value:?}")))
    };
    for (name, value) in query(req) {
        match name {
            "since" => p.since = Some(number(name, value)?),
            "epoch" => p.epoch = Some(value.to_string()),
            "limit" => p.limit = (number(name, value)? as usize).clamp(1, max_limit),
            "wait" => {
                let secs: f64 = value
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| ProtocolError::new("bad_request", format!("wait must be seconds, not {value:?}")))?;
                p.wait = Duration::from_secs_f64(secs.min(hub.config().max_poll_wait.as_secs_f64()));
            }
            _ => {}
        }
    }
    Ok(p)
}

/// `GET /poll/{channel}?since=N&limit=K&wait=SECS` (see the README).
async fn poll(req: &Request, hub: &Hub) -> Response {
    let channel = match channel_in_path(req, "/poll/") {
        Ok(c) => c,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e),
    };
    let grants = match reader(req, hub, &channel) {
        Ok(g) => g,
        Err(refused) => return *refused,
    };
    let params = match poll_params(req, hub) {
        Ok(p) => p,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e),
    };
    match read_poll(hub, &channel, &params).await {
        Ok(h) if h.publications.is_empty() && !params.wait.is_zero() && params.since.is_some() => {
            match subject_slot(hub, grants.as_ref()) {
                Ok(slot) => hold(hub, channel, params, slot).await,
                Err(refused) => *refused,
            }
        }
        Ok(h) => json(StatusCode::OK, poll_answer(&channel, &params, &h)),
        Err(e) => unavailable(&e.to_string()),
    }
}

/// A poll's read of history: what is after `since` (all that is kept when
/// the poll's offset or epoch belongs to another epoch).
async fn read_poll(hub: &Hub, channel: &ChannelName, p: &PollParams) -> Result<History, super::BrokerError> {
    let h = hub.history(channel, p.since, p.limit).await?;
    let other_epoch = p.epoch.as_deref().is_some_and(|e| e != h.epoch.as_str());
    match p.since {
        Some(since) if other_epoch || since > h.latest => {
            let mut all = hub.history(channel, Some(0), p.limit).await?;
            all.complete = false;
            Ok(all)
        }
        _ => Ok(h),
    }
}

/// Holds a poll that found nothing: a signal for the channel's next
/// publication is registered before history is read again (so a
/// publication between the two reads is not missed), then the request is
/// held (`crate::server::held`): the connection waits, parked without a
/// task, until the signal fires or the wait ends, and is then answered
/// with what history has. A token's subject holds `slot` meanwhile.
async fn hold(hub: &Hub, channel: ChannelName, params: PollParams, slot: Option<SubjectSlot>) -> Response {
    let signal = match hub.next_publication(&channel).await {
        Ok(signal) => signal,
        Err(e) => {
            hub.forget_waiters(&channel);
            return unavailable(&e.to_string());
        }
    };
    let again = read_poll(hub, &channel, &params).await;
    match again {
        Ok(h) if h.publications.is_empty() => {}
        other => {
            drop(signal);
            hub.forget_waiters(&channel);
            return match other {
                Ok(h) => json(StatusCode::OK, poll_answer(&channel, &params, &h)),
                Err(e) => unavailable(&e.to_string()),
            };
        }
    }
    let counted = HeldPoll::new(hub.stats().clone());
    let deadline = std::time::Instant::now() + params.wait;
    let hub = hub.clone();
    let answer: HeldAnswer = Box::new(move |_fired| {
        Box::pin(async move {
            let _held = (counted, slot);
            let result = read_poll(&hub, &channel, &params).await;
            hub.forget_waiters(&channel);
            match result {
                Ok(h) => json(StatusCode::OK, poll_answer(&channel, &params, &h)),
                Err(e) => unavailable(&e.to_string()),
            }
        })
    });
    Held::new(signal, deadline, answer).into_response()
}

/// A held long poll, counted in the hub's `long_polls` while it lives.
struct HeldPoll(Arc<HubStats>);

impl HeldPoll {
    fn new(stats: Arc<HubStats>) -> Self {
        stats.long_polls.fetch_add(1, Ordering::Relaxed);
        Self(stats)
    }
}

impl Drop for HeldPoll {
    fn drop(&mut self) {
        self.0.long_polls.fetch_sub(1, Ordering::Relaxed);
    }
}

fn poll_answer(channel: &ChannelName, p: &PollParams, h: &History) -> String {
    let mut messages = String::from("[");
    for (i, publication) in h.publications.iter().enumerate() {
        if i > 0 {
            messages.push(',');
        }
        messages.push_str(&format!(
            "{{\"offset\":{},\"data\":{}}}",
            publication.offset,
            std::str::from_utf8(&publication.data).unwrap_or("null")
        ));
    }
    messages.push(']');
    let next = h
        .publications
        .last()
        .map(|last| last.offset)
        .or(p.since.filter(|s| *s <= h.latest && h.complete))
        .unwrap_or(h.latest);
    let recovered = p.since.is_some() && h.complete;
    format!(
        "{{\"channel\":\"{channel}\",\"epoch\":{},\"messages\":{messages},\"next\":{next},\"recovered\":{recovered}}}",
        protocol::json_string(h.epoch.as_str())
    )
}

/// `GET /sse/{channel}`: a `text/event-stream` of the channel's
/// publications (`id:` is the offset; `Last-Event-ID` or `since=` resumes).
fn sse(req: &Request, hub: &Hub) -> Response {
    let channel = match channel_in_path(req, "/sse/") {
        Ok(c) => c,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e),
    };
    let grants = match reader(req, hub, &channel) {
        Ok(g) => g,
        Err(refused) => return *refused,
    };
    let slot = match subject_slot(hub, grants.as_ref()) {
        Ok(slot) => slot,
        Err(refused) => return *refused,
    };
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut since = last_event_id;
    let mut epoch = None;
    for (name, value) in query(req) {
        match name {
            "since" if since.is_none() => since = value.parse().ok(),
            "epoch" => epoch = Some(value.to_string()),
            _ => {}
        }
    }
    let (tx, body) = Body::channel(hub.config().sse_queue);
    // Reconnect after a second; then the stream (and its answer) begins.
    let _ = tx.try_send(Ok(Bytes::from_static(b"retry: 1000\n\n")));
    watch_stream(tx.clone(), grants.map(|g| g.remaining()), slot);
    let (_, work) = hub.subscribe(SubscribeRequest {
        channel,
        since,
        epoch,
        presence: false,
        client: hub.new_client(),
        target: Target::Sse(SseSink::new(tx, hub.stats().clone())),
        id: None,
    });
    run_soon(work);
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// Watches an SSE stream with a token: ends it when the token expires in
/// `expiry` (the connection closes; the browser reconnects, with a fresh
/// token if its page has one), and holds its subject's `slot` until the
/// stream ends, whichever way.
fn watch_stream(
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    expiry: Option<Duration>,
    slot: Option<SubjectSlot>,
) {
    let Some(after) = expiry else {
        return;
    };
    tokio::spawn(async move {
        let _slot = slot;
        tokio::select! {
            _ = tokio::time::sleep(after) => {
                let _ = tx.send(Err(std::io::Error::other("the token expired"))).await;
            }
            _ = tx.closed() => {}
        }
    });
}

fn json(status: StatusCode, body: String) -> Response {
    let mut resp = Response::new(Body::Full(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn json_error(status: StatusCode, e: &ProtocolError) -> Response {
    json(
        status,
        format!(
            "{{\"error\":{{\"code\":\"{}\",\"message\":{}}}}}",
            e.code,
            protocol::json_string(&e.message)
        ),
    )
}

fn unavailable(message: &str) -> Response {
    let mut resp = json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        &ProtocolError::new("unavailable", message),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}
