//! One channel's subscribers on this node, and the two things that happen
//! to them: fan-out of a publication, and the merge that turns a new (or
//! resynchronising) subscription live.
//!
//! Theory of operation. A subscription starts `Recovering`: it is in the
//! channel's list at once, and live publications that arrive meanwhile
//! are buffered in it while its history is read from the broker (outside
//! any lock). The merge then, under the channel's lock, sends the answer
//! (`subscribed`), the history after the client's offset, and the buffered
//! publications newer than that history, and makes the subscription
//! `Live` at the last offset sent. From then on a publication is sent if it
//! is the next offset of the same epoch, dropped if already sent (a
//! broker's repeat), and a gap or an epoch change sends the subscription
//! back to `Recovering` (the hub reads history again; that merge answers
//! `subscribed` only when history no longer reaches back, with
//! `recovered: false`, and is otherwise silent). So every subscriber
//! sees a channel's publications in offset order, each once.
//!
//! Fan-out encodes a publication once per transport (one WebSocket frame,
//! one SSE event) and shares the bytes with every subscriber. A subscriber
//! that cannot take them (its queue is full, or it is gone) is dropped
//! here; its connection closes itself (1008 `slow consumer` for a
//! WebSocket, the end of the stream for SSE).
//!
//! Fan-out batches: a frame for a WebSocket subscriber is pushed deferred
//! (`Inlet::push_deferred`), so for a parked subscriber it waits in the
//! inlet, and the subscribers that got their first waiting frame are
//! flushed by a task spawned for them, once the publishing task yields
//! (`flush_soon`). Every publication fanned out before that (a burst of
//! `publish` commands read in one go, or publications the broker delivers
//! together) goes to each subscriber in one write, and no socket is
//! written under the channel's lock. A subscriber on its task batches the
//! same way (its task takes every waiting frame when it runs).
//!
//! What it never does: call the broker, or wait.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tether_proto::ws::EncodedFrame;
use tokio::sync::{mpsc, oneshot};

use super::broker::{BrokerError, Epoch, History, Publication};
use super::name::ChannelName;
use super::protocol;
use super::HubStats;
use crate::server::HeldSignal;
use crate::ws::push::{Deferred, Inlet, Pushed};

/// Where a subscriber's messages go.
pub(crate) enum Target {
    /// A `/ws` connection's inlet.
    Ws(Arc<Inlet>),
    /// An SSE response body.
    Sse(SseSink),
}

/// An SSE response body's sender (bounded, in events), counted in the
/// hub's `sse_streams` while it lives.
pub(crate) struct SseSink {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    stats: Arc<HubStats>,
}

impl SseSink {
    pub(crate) fn new(tx: mpsc::Sender<Result<Bytes, std::io::Error>>, stats: Arc<HubStats>) -> Self {
        stats.sse_streams.fetch_add(1, Ordering::Relaxed);
        Self { tx, stats }
    }
}

impl Drop for SseSink {
    fn drop(&mut self) {
        self.stats.sse_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Target {
    /// A text message for this subscriber alone (an answer, a presence
    /// event; SSE gets it as a named event).
    pub(crate) fn push_text(&self, kind: &str, text: &str) -> Pushed {
        match self {
            Target::Ws(inlet) => inlet.push(&EncodedFrame::text(text)),
            Target::Sse(sse) => push_sse(&sse.tx, Bytes::from(format!("event: {kind}\ndata: {text}\n\n"))),
        }
    }

    fn push_publication(&self, encoded: &mut Encoded<'_>) -> Pushed {
        match self {
            Target::Ws(inlet) => inlet.push(encoded.frame(inlet.shared_deflate())),
            Target::Sse(sse) => push_sse(&sse.tx, encoded.event()),
        }
    }

    /// A live publication, deferred (see the module documentation): a
    /// WebSocket inlet that needs a flush is added to `flush`.
    fn push_publication_deferred(&self, encoded: &mut Encoded<'_>, flush: &mut Vec<Arc<Inlet>>) -> Pushed {
        match self {
            Target::Ws(inlet) => match inlet.push_deferred(encoded.frame(inlet.shared_deflate())) {
                Deferred::Queued => Pushed::Queued,
                Deferred::NeedsFlush => {
                    flush.push(inlet.clone());
                    Pushed::Queued
                }
                Deferred::Closed => Pushed::Closed,
            },
            Target::Sse(sse) => push_sse(&sse.tx, encoded.event()),
        }
    }

    /// Closes the subscriber's connection as a slow consumer (a WebSocket:
    /// 1008; an SSE stream ends when its subscription is dropped).
    pub(crate) fn abandon(&self) {
        if let Target::Ws(inlet) = self {
            inlet.abandon();
        }
    }

    /// An SSE comment line (a keep-alive); `Closed` when the stream ended.
    pub(crate) fn keep_alive(&self) -> Pushed {
        match self {
            Target::Sse(sse) => push_sse(&sse.tx, Bytes::from_static(b": keep-alive\n\n")),
            Target::Ws(inlet) if inlet.is_ended() => Pushed::Closed,
            Target::Ws(_) => Pushed::Queued,
        }
    }
}

/// Queues an SSE event; a full queue (a reader that does not keep up) or
/// a gone reader drops the subscriber, which ends the stream.
fn push_sse(tx: &mpsc::Sender<Result<Bytes, std::io::Error>>, event: Bytes) -> Pushed {
    match tx.try_send(Ok(event)) {
        Ok(()) => Pushed::Queued,
        Err(_) => Pushed::Closed,
    }
}

/// Writes the frames waiting in `inlets` from a task of their own, which
/// runs once the running task yields (so what else it publishes meanwhile
/// goes in the same writes); at once when there is no runtime.
fn flush_soon(inlets: Vec<Arc<Inlet>>) {
    let flush = move || {
        for inlet in &inlets {
            inlet.flush();
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn(async move { flush() })),
        Err(_) => flush(),
    }
}

/// Messages shorter than this go plain even to connections that agreed to
/// permessage-deflate (compressing them saves too little).
const DEFLATE_FROM: usize = 256;

/// A publication, encoded once per transport (and once deflated per
/// window and level) on first need.
struct Encoded<'a> {
    publication: &'a Publication,
    text: Option<String>,
    frame: Option<EncodedFrame>,
    /// Deflated frames by (window, level); `None` where deflating did not
    /// make it smaller.
    deflated: Vec<((u8, u32), Option<EncodedFrame>)>,
    event: Option<Bytes>,
}

impl<'a> Encoded<'a> {
    fn new(publication: &'a Publication) -> Self {
        Self {
            publication,
            text: None,
            frame: None,
            deflated: Vec::new(),
            event: None,
        }
    }

    /// The frame for a connection that takes deflated shared frames with
    /// `deflate` (window, level), or plain ones.
    fn frame(&mut self, deflate: Option<(u8, u32)>) -> &EncodedFrame {
        let p = self.publication;
        let text = self.text.get_or_insert_with(|| protocol::message(p));
        if let Some(key) = deflate.filter(|_| text.len() >= DEFLATE_FROM) {
            let at = match self.deflated.iter().position(|(k, _)| *k == key) {
                Some(at) => at,
                None => {
                    let frame = EncodedFrame::deflated_text(text, key.0, key.1);
                    let smaller = frame.len() < text.len();
                    self.deflated.push((key, smaller.then_some(frame)));
                    self.deflated.len() - 1
                }
            };
            if let Some(frame) = &self.deflated[at].1 {
                return frame;
            }
        }
        let text = &*text;
        self.frame.get_or_insert_with(|| EncodedFrame::text(text))
    }

    fn event(&mut self) -> Bytes {
        let p = self.publication;
        self.event.get_or_insert_with(|| protocol::sse_event(p)).clone()
    }
}

/// Where a subscription stands.
enum Position {
    /// Its history is being read; live publications wait here.
    Recovering(Vec<Publication>),
    /// Every publication up to `offset` of `epoch` was sent.
    Live { epoch: Epoch, offset: u64 },
}

/// One subscription of one connection.
pub(crate) struct Sub {
    pub id: u64,
    /// The client's id (for presence).
    pub client: Arc<str>,
    pub target: Target,
    /// It receives `join` and `leave` events.
    pub presence: bool,
    position: Position,
}

impl Sub {
    pub(crate) fn new(id: u64, client: Arc<str>, target: Target, presence: bool) -> Self {
        Self {
            id,
            client,
            target,
            presence,
            position: Position::Recovering(Vec::new()),
        }
    }
}

/// Whether the broker delivers this channel's publications to this node.
pub(crate) enum Watch {
    /// Not asked yet.
    Idle,
    /// Asked; these are waiting for the answer.
    Starting(Vec<oneshot::Sender<Result<(), BrokerError>>>),
    Ready,
}

/// One channel on this node.
pub(crate) struct Channel {
    pub name: ChannelName,
    pub subs: Vec<Sub>,
    /// Long polls waiting for the next publication.
    pub waiters: Vec<HeldSignal>,
    pub watch: Watch,
}

/// What a fan-out or a merge left for the hub to do outside the lock.
#[derive(Default)]
pub(crate) struct Aftermath {
    /// The clients of subscriptions dropped (gone, or too slow): each
    /// owes the channel a `leave` event.
    pub dropped: Vec<Arc<str>>,
    /// Subscriptions that found a gap (or another epoch) and need their
    /// history read again, from where they were (they are recovering now).
    pub resync: Vec<(u64, (Epoch, u64))>,
    /// Publications sent.
    pub delivered: u64,
}

/// A subscription's answer and what it asked for, for the merge.
pub(crate) struct Answer {
    /// The client's offset and epoch, when it asked to recover.
    pub since: Option<u64>,
    pub epoch: Option<Epoch>,
    /// The command's id, echoed in `subscribed`.
    pub id: Option<Box<str>>,
    /// A resync after a gap in live delivery, not a client's command: it
    /// answers `subscribed` (without an id) only when something is lost
    /// (`recovered: false`); otherwise the missed publications just follow.
    pub resync: bool,
}

impl Answer {
    /// A resync's: from where the subscription was.
    pub(crate) fn resync((epoch, offset): (Epoch, u64)) -> Self {
        Self {
            since: Some(offset),
            epoch: Some(epoch),
            id: None,
            resync: true,
        }
    }
}

impl Channel {
    pub(crate) fn new(name: ChannelName) -> Self {
        Self {
            name,
            subs: Vec::new(),
            waiters: Vec::new(),
            watch: Watch::Idle,
        }
    }

    /// Whether nothing on this node needs the channel.
    pub(crate) fn is_unused(&self) -> bool {
        self.subs.is_empty() && self.waiters.iter().all(HeldSignal::is_abandoned)
    }

    /// Members, for presence: every subscription.
    pub(crate) fn members(&self) -> usize {
        self.subs.len()
    }

    /// Sends a presence event (`join` or `leave` of `client`) to every
    /// subscriber that asked for presence, but `client` itself.
    pub(crate) fn announce(&mut self, kind: &str, client: &str) {
        let text = protocol::presence(kind, &self.name, client, self.members());
        for sub in self.subs.iter().filter(|s| s.presence && &*s.client != client) {
            let _ = sub.target.push_text(kind, &text);
        }
    }

    /// Fans `p` out to every subscriber (see the module documentation).
    pub(crate) fn fan_out(&mut self, p: &Publication, recovery_buffer: usize) -> Aftermath {
        for waiter in self.waiters.drain(..) {
            waiter.fire();
        }
        let mut after = Aftermath::default();
        let mut encoded = Encoded::new(p);
        let mut flush = Vec::new();
        self.subs.retain_mut(|sub| match &mut sub.position {
            Position::Recovering(buffer) => {
                if buffer.len() >= recovery_buffer {
                    sub.target.abandon();
                    after.dropped.push(sub.client.clone());
                    return false;
                }
                buffer.push(p.clone());
                true
            }
            Position::Live { epoch, offset } => {
                if p.epoch == *epoch && p.offset <= *offset {
                    return true; // a repeat
                }
                if p.epoch != *epoch || p.offset != *offset + 1 {
                    after.resync.push((sub.id, (epoch.clone(), *offset)));
                    sub.position = Position::Recovering(vec![p.clone()]);
                    return true;
                }
                match sub.target.push_publication_deferred(&mut encoded, &mut flush) {
                    Pushed::Queued => {
                        *offset = p.offset;
                        after.delivered += 1;
                        true
                    }
                    Pushed::Closed => {
                        after.dropped.push(sub.client.clone());
                        false
                    }
                }
            }
        });
        if !flush.is_empty() {
            flush_soon(flush);
        }
        after
    }

    /// Makes subscription `id` live from `history` (see the module
    /// documentation). Returns what was sent, or `None` when the
    /// subscription is gone.
    pub(crate) fn merge(&mut self, id: u64, history: History, answer: &Answer) -> Option<Aftermath> {
        let at = self.subs.iter().position(|s| s.id == id)?;
        let members = self.members();
        let sub = &mut self.subs[at];
        let Position::Recovering(buffer) = &mut sub.position else {
            return Some(Aftermath::default()); // merged already
        };
        let buffer = std::mem::take(buffer);
        let recovered =
            answer.since.is_some() && history.complete && answer.epoch.as_ref().is_none_or(|e| *e == history.epoch);
        let subscribed = protocol::subscribed(&protocol::Subscribed {
            channel: &self.name,
            offset: history.latest,
            epoch: &history.epoch,
            recovered,
            presence: sub.presence.then_some((&*sub.client, members)),
            id: answer.id.as_deref(),
        });
        let mut after = Aftermath::default();
        let quiet = answer.resync && recovered;
        let mut ok = quiet || sub.target.push_text("subscribed", &subscribed) == Pushed::Queued;
        for p in &history.publications {
            if !ok {
                break;
            }
            ok = sub.target.push_publication(&mut Encoded::new(p)) == Pushed::Queued;
            after.delivered += 1;
        }
        // Then what arrived while history was read, past its end.
        let (epoch, latest) = (history.epoch, history.latest);
        let mut last = latest;
        let mut newer = buffer.into_iter().filter(|p| p.epoch != epoch || p.offset > latest);
        let mut gap = None;
        for p in newer.by_ref() {
            if !ok {
                break;
            }
            if p.epoch != epoch || p.offset != last + 1 {
                gap = Some(p);
                break;
            }
            ok = sub.target.push_publication(&mut Encoded::new(&p)) == Pushed::Queued;
            last = p.offset;
            after.delivered += 1;
        }
        if !ok {
            after.dropped.push(sub.client.clone());
            self.subs.remove(at);
            return Some(after);
        }
        sub.position = match gap {
            None => Position::Live {
                epoch: epoch.clone(),
                offset: last,
            },
            Some(first) => {
                after.resync.push((id, (epoch.clone(), last)));
                Position::Recovering(std::iter::once(first).chain(newer).collect())
            }
        };
        Some(after)
    }

    /// Sends live subscription `id` back to `Recovering` (a resync
    /// starts) and returns where it was; `None` when it is gone or already
    /// recovering (its recovery is under way).
    pub(crate) fn start_resync(&mut self, id: u64) -> Option<(Epoch, u64)> {
        let sub = self.subs.iter_mut().find(|s| s.id == id)?;
        match std::mem::replace(&mut sub.position, Position::Recovering(Vec::new())) {
            Position::Live { epoch, offset } => Some((epoch, offset)),
            recovering => {
                sub.position = recovering;
                None
            }
        }
    }
}
