//! The push hub: named channels with offsets, history and recovery, served
//! over WebSockets (`/ws`), Server-Sent Events (`/sse/{channel}`), polling
//! and long-polling (`/poll/{channel}`), with publishing over WebSockets and
//! `POST /publish/{channel}`.
//!
//! Theory of operation. A [`Broker`] owns each channel's offsets, epoch and
//! history (the in-process [`MemoryBroker`] by default; [`RedisBroker`],
//! sharded over Redis instances, for several nodes)
//! and delivers every publication of a watched channel to the hub. The hub
//! owns fan-out on this node: a registry of channels (`channel::Channel`),
//! each with its subscriptions, and for each publication it encodes one
//! WebSocket frame and one SSE event and hands the shared bytes to every
//! subscriber (see `channel` for the ordering rules, `crate::ws::push`
//! for how a frame reaches a connection, parked or not).
//!
//! A subscription's life: registered at once (so a publication that races
//! the subscribe is never missed: it is buffered), then the channel is
//! watched (once per channel per node), its history read, and the two
//! merged without gap or repeat; it ends when the client unsubscribes or
//! its connection ends, and a channel with no subscription left is freed
//! and unwatched. When live delivery has a gap (a broker that lost or
//! could not deliver publications), the subscription is resynchronised
//! from history, retried while the broker is unreachable, for as long as
//! the subscription lasts. No lock is held across a broker call; locks are
//! taken in the order registry, channel, inlet.
//!
//! Who may subscribe and publish is decided in one place for every
//! transport: `namespace` (the rules per channel prefix, with the client's
//! token from `auth`); how fast a connection may send commands and how
//! many connections a token subject may hold, in `limits`. How much history
//! a channel keeps is its namespace's, given to the broker with each call.
//!
//! The delivery guarantee: a subscriber receives every publication of its
//! channel after the offset it asked for, in order and once, for as long as
//! the broker keeps them (history bounds: count and age); when it cannot
//! (history gone, epoch changed), it is told `recovered: false`.

pub mod auth;
mod broker;
mod channel;
pub mod http;
mod limits;
mod memory;
mod name;
pub mod namespace;
pub mod protocol;
mod redis;
mod session;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::server::HeldSignal;

pub use auth::{Grants, KeyRefused, PublishKeys, TokenError, TokenSigner, TokenVerifier};
pub use broker::{BoxFuture, Broker, BrokerError, BrokerState, Epoch, History, Publication, PublicationSink};
use channel::{Answer, Channel, Sub, Target, Watch};
pub use limits::ClientLimits;
pub use memory::MemoryBroker;
pub use name::{ChannelName, ChannelNameError, MAX_CHANNEL_NAME};
pub use namespace::{Client, HistoryLimits, Namespace, NamespaceError, Namespaces, Refusal};
pub use protocol::ProtocolError;
pub use redis::{shard_of, RedisBroker, RedisTasks};

/// Between attempts of a resync the broker failed: from the first to the last.
const RESYNC_RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// The hub's limits.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The largest publication data (compact JSON), in bytes.
    pub max_data: usize,
    /// The most channels one connection may subscribe to.
    pub max_subscriptions: usize,
    /// Bytes of frames waiting for one WebSocket subscriber's task (beyond
    /// it the subscriber is a slow consumer: 1008).
    pub subscriber_queue: usize,
    /// Events waiting for one SSE stream (beyond it the stream ends).
    pub sse_queue: usize,
    /// How often an idle SSE stream gets a comment line (keeps proxies
    /// and browsers from timing it out).
    pub sse_keep_alive: Duration,
    /// The longest a long poll waits (`wait=` is capped to it).
    pub max_poll_wait: Duration,
    /// The most messages one poll answers with.
    pub max_poll_limit: usize,
    /// Live publications buffered for one subscription while its history
    /// is read (a broker that slow makes the subscriber a slow consumer).
    pub recovery_buffer: usize,
    /// The keys `POST /publish/{channel}` requires (none: open).
    pub publish_keys: auth::PublishKeys,
    /// Verifies the clients' tokens; `None`: every client may subscribe
    /// and publish (the development mode).
    pub tokens: Option<auth::TokenVerifier>,
    /// How much history a channel keeps unless its namespace says otherwise.
    pub history: HistoryLimits,
    /// Rules per channel-name prefix (see `namespace`).
    pub namespaces: Namespaces,
    /// Command rates and connections per token subject (see `limits`).
    pub client_limits: ClientLimits,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            max_data: 64 * 1024,
            max_subscriptions: 128,
            subscriber_queue: 1 << 20,
            sse_queue: 256,
            sse_keep_alive: Duration::from_secs(15),
            max_poll_wait: Duration::from_secs(30),
            max_poll_limit: 1000,
            recovery_buffer: 10_000,
            publish_keys: auth::PublishKeys::default(),
            tokens: None,
            history: HistoryLimits::default(),
            namespaces: Namespaces::default(),
            client_limits: ClientLimits::default(),
        }
    }
}

/// The hub's counters (read by `/metrics`).
#[derive(Debug, Default)]
pub struct HubStats {
    /// Publications accepted by the broker through this node.
    pub publishes: AtomicU64,
    /// Publishes that failed (broker unavailable).
    pub publish_failures: AtomicU64,
    /// Publications handed to a subscriber (live and replayed).
    pub deliveries: AtomicU64,
    /// Subscribers dropped because they did not keep up.
    pub slow_consumers: AtomicU64,
    /// Subscriptions now.
    pub subscribers: AtomicU64,
    /// Channels with subscribers or waiting polls on this node now.
    pub channels: AtomicU64,
    /// Connections on `/ws`, SSE streams and held long polls now.
    pub ws_connections: AtomicU64,
    pub sse_streams: AtomicU64,
    pub long_polls: AtomicU64,
}

/// The push hub (see the module documentation). Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    /// Itself, for the work a publication leaves (see `Inner::me`).
    me: Weak<Inner>,
    config: HubConfig,
    broker: Arc<dyn Broker>,
    /// This process's id, the prefix of its clients' ids.
    node: String,
    channels: Mutex<HashMap<ChannelName, Arc<Mutex<Channel>>>>,
    next_id: AtomicU64,
    stats: Arc<HubStats>,
    /// Connections per token subject on this node.
    subjects: Arc<limits::Subjects>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a subscribe asks for.
pub(crate) struct SubscribeRequest {
    pub channel: ChannelName,
    pub since: Option<u64>,
    pub epoch: Option<String>,
    pub presence: bool,
    pub client: Arc<str>,
    pub target: Target,
    /// The command's id, echoed in `subscribed`.
    pub id: Option<Box<str>>,
}

impl Hub {
    /// A hub over `broker`.
    pub fn new(config: HubConfig, broker: Arc<dyn Broker>) -> Self {
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            config,
            broker,
            node: format!("{:04x}", rand::random::<u16>()),
            channels: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            stats: Arc::new(HubStats::default()),
            subjects: Arc::default(),
        });
        let sink: Weak<dyn PublicationSink> = Arc::downgrade(&(inner.clone() as Arc<dyn PublicationSink>));
        inner.broker.attach(sink);
        Self { inner }
    }

    /// A hub over the in-process broker.
    pub fn in_memory(config: HubConfig) -> (Self, Arc<MemoryBroker>) {
        let broker = Arc::new(MemoryBroker::new());
        (Self::new(config, broker.clone()), broker)
    }

    /// Its limits.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// Its counters.
    pub fn stats(&self) -> &Arc<HubStats> {
        &self.inner.stats
    }

    /// Its broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    /// Publishes `data` (a JSON value, made compact) to `channel`.
    pub async fn publish_json(&self, channel: &ChannelName, json: &str) -> Result<Publication, PublishError> {
        let data = protocol::checked_data(json, self.inner.config.max_data).map_err(PublishError::Invalid)?;
        self.publish(channel, data).await
    }

    /// Publishes compact JSON `data` (already checked) to `channel`.
    pub(crate) async fn publish(&self, channel: &ChannelName, data: Bytes) -> Result<Publication, PublishError> {
        match self.inner.broker.publish(channel, data, self.inner.keep(channel)).await {
            Ok(p) => {
                self.inner.stats.publishes.fetch_add(1, Ordering::Relaxed);
                Ok(p)
            }
            Err(e) => {
                self.inner.stats.publish_failures.fetch_add(1, Ordering::Relaxed);
                Err(PublishError::Broker(e))
            }
        }
    }

    /// The channel's history after `since` (at most `limit` publications).
    pub async fn history(
        &self,
        channel: &ChannelName,
        since: Option<u64>,
        limit: usize,
    ) -> Result<History, BrokerError> {
        self.inner
            .broker
            .history(channel, since, limit, self.inner.keep(channel))
            .await
    }

    /// Whether `channel` has subscribers on this node.
    pub fn has_subscribers(&self, channel: &ChannelName) -> bool {
        lock(&self.inner.channels)
            .get(channel)
            .is_some_and(|entry| !lock(entry).subs.is_empty())
    }

    /// A connection slot for `subject`, unless it holds all it may
    /// (`ClientLimits::connections_per_subject`) on this node already.
    pub(crate) fn enter_subject(&self, subject: &Arc<str>) -> Option<limits::SubjectSlot> {
        let max = self.inner.config.client_limits.connections_per_subject;
        self.inner.subjects.enter(subject, max)
    }

    /// A new connection's id (for presence: `node-n`).
    pub(crate) fn new_client(&self) -> Arc<str> {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.inner.node).into()
    }

    /// Registers a subscription (it buffers live publications at once) and
    /// returns its id and the work that makes it live: watching the
    /// channel, reading its history, sending the answer and the replay.
    pub(crate) fn subscribe(&self, req: SubscribeRequest) -> (u64, impl Future<Output = ()> + Send + 'static) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let channel = {
            let mut channels = lock(&self.inner.channels);
            let entry = channels.entry(req.channel.clone()).or_insert_with(|| {
                self.inner.stats.channels.fetch_add(1, Ordering::Relaxed);
                Arc::new(Mutex::new(Channel::new(req.channel.clone())))
            });
            let mut c = lock(entry);
            let presence = req.presence && self.inner.config.namespaces.presence(&req.channel);
            c.subs.push(Sub::new(id, req.client.clone(), req.target, presence));
            c.announce("join", &req.client);
            entry.clone()
        };
        self.inner.stats.subscribers.fetch_add(1, Ordering::Relaxed);
        let answer = Answer {
            since: req.since,
            epoch: req.epoch.map(Epoch::new),
            id: req.id,
            resync: false,
        };
        (id, self.inner.clone().recover(channel, id, answer))
    }

    /// Ends subscription `id` of `channel`; returns whether it existed.
    pub(crate) fn unsubscribe(&self, channel: &ChannelName, id: u64) -> bool {
        let removed = {
            let channels = lock(&self.inner.channels);
            let Some(entry) = channels.get(channel) else {
                return false;
            };
            let mut c = lock(entry);
            match c.subs.iter().position(|s| s.id == id) {
                Some(at) => {
                    let sub = c.subs.remove(at);
                    c.announce("leave", &sub.client);
                    true
                }
                None => false,
            }
        };
        if removed {
            self.inner.stats.subscribers.fetch_sub(1, Ordering::Relaxed);
            self.inner.free_if_unused(channel);
        }
        removed
    }

    /// Whether subscription `id` of `channel` still exists (a broker's
    /// failure or a slow consumer's drop ends one from the hub's side).
    pub(crate) fn has_subscription(&self, channel: &ChannelName, id: u64) -> bool {
        let channels = lock(&self.inner.channels);
        channels
            .get(channel)
            .is_some_and(|entry| lock(entry).subs.iter().any(|s| s.id == id))
    }

    /// A signal fired by the channel's next publication (for a long poll).
    /// The channel is watched first; drop the signal and call
    /// [`Hub::forget_waiters`] when done.
    pub(crate) async fn next_publication(&self, channel: &ChannelName) -> Result<HeldSignal, BrokerError> {
        let signal = HeldSignal::new();
        let entry = {
            let mut channels = lock(&self.inner.channels);
            let entry = channels.entry(channel.clone()).or_insert_with(|| {
                self.inner.stats.channels.fetch_add(1, Ordering::Relaxed);
                Arc::new(Mutex::new(Channel::new(channel.clone())))
            });
            lock(entry).waiters.push(signal.clone());
            entry.clone()
        };
        self.inner.watched(&entry).await?;
        Ok(signal)
    }

    /// Drops the waiters of long polls that ended, freeing the channel if
    /// nothing else uses it.
    pub(crate) fn forget_waiters(&self, channel: &ChannelName) {
        if let Some(entry) = lock(&self.inner.channels).get(channel) {
            lock(entry).waiters.retain(|w| !w.is_abandoned());
        }
        self.inner.free_if_unused(channel);
    }

    /// The hub's periodic work ([`Hub::spawn_upkeep`] runs it every
    /// `sse_keep_alive`): a comment line to every SSE stream (so that
    /// proxies and browsers keep idle streams open), dropping the streams
    /// that ended and the long polls that went away, freeing channels left
    /// unused, and the broker's upkeep.
    pub fn upkeep(&self) {
        let channels: Vec<_> = lock(&self.inner.channels).values().cloned().collect();
        let mut emptied = Vec::new();
        for entry in channels {
            let mut c = lock(&entry);
            let before = c.subs.len();
            c.subs
                .retain(|sub| sub.target.keep_alive() == crate::ws::push::Pushed::Queued);
            let gone = before - c.subs.len();
            if gone > 0 {
                self.inner.stats.subscribers.fetch_sub(gone as u64, Ordering::Relaxed);
            }
            // Long polls that ended without a publication (their connection
            // closed while held) are forgotten here too.
            c.waiters.retain(|w| !w.is_abandoned());
            if c.is_unused() {
                emptied.push(c.name.clone());
            }
        }
        for name in emptied {
            self.inner.free_if_unused(&name);
        }
        self.inner.broker.upkeep();
    }

    /// Runs the hub's periodic work (SSE keep-alive comments, the broker's
    /// upkeep) until the returned task is aborted or the runtime ends.
    pub fn spawn_upkeep(&self) -> tokio::task::JoinHandle<()> {
        let hub = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(hub.inner.config.sse_keep_alive.max(Duration::from_millis(100)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                hub.upkeep();
            }
        })
    }
}

/// Why a publish failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The data is not acceptable (too large).
    #[error("{}", .0.message)]
    Invalid(ProtocolError),
    /// The broker did not take it.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl Inner {
    /// How much history `channel` keeps (its namespace's limits).
    fn keep(&self, channel: &ChannelName) -> HistoryLimits {
        self.config.namespaces.history(channel, self.config.history)
    }

    /// Waits until the broker delivers `entry`'s channel to this node.
    async fn watched(&self, entry: &Arc<Mutex<Channel>>) -> Result<(), BrokerError> {
        let (name, wait) = {
            let mut c = lock(entry);
            match &mut c.watch {
                Watch::Ready => return Ok(()),
                Watch::Starting(waiting) => {
                    let (tx, rx) = oneshot::channel();
                    waiting.push(tx);
                    (c.name.clone(), Some(rx))
                }
                Watch::Idle => {
                    c.watch = Watch::Starting(Vec::new());
                    (c.name.clone(), None)
                }
            }
        };
        if let Some(rx) = wait {
            return rx
                .await
                .unwrap_or_else(|_| Err(BrokerError::Unavailable("the channel's watch was abandoned".into())));
        }
        let result = self.broker.watch(&name).await;
        let waiting = {
            let mut c = lock(entry);
            let waiting = match std::mem::replace(&mut c.watch, Watch::Idle) {
                Watch::Starting(waiting) => waiting,
                _ => Vec::new(),
            };
            if result.is_ok() {
                c.watch = Watch::Ready;
            }
            waiting
        };
        for tx in waiting {
            let _ = tx.send(result.clone());
        }
        // Freed while the watch started: undo it.
        let still_there = lock(&self.channels).get(&name).is_some_and(|e| Arc::ptr_eq(e, entry));
        if result.is_ok() && !still_there {
            self.broker.unwatch(&name);
        }
        result
    }

    /// Makes subscription `id` live (see `channel::Channel::merge`), and
    /// again after any gap it finds.
    /// A client's subscribe that the broker fails is answered with an
    /// `error`; a resync is retried (0.1 s doubling to 2 s) for as long as
    /// the subscription lasts, so a broker's outage does not end it.
    async fn recover(self: Arc<Self>, entry: Arc<Mutex<Channel>>, id: u64, mut answer: Answer) {
        let mut retry = RESYNC_RETRY.0;
        loop {
            let name = lock(&entry).name.clone();
            let history = match self.read_history(&entry, &answer).await {
                Ok(h) => h,
                Err(_) if answer.resync => {
                    if !lock(&entry).subs.iter().any(|s| s.id == id) {
                        return;
                    }
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RESYNC_RETRY.1);
                    continue;
                }
                Err(e) => {
                    self.fail_subscription(&entry, id, &e, answer.id.as_deref());
                    return;
                }
            };
            let after = {
                let mut c = lock(&entry);
                match c.merge(id, history, &answer) {
                    Some(after) => after,
                    None => return, // unsubscribed meanwhile
                }
            };
            self.stats.deliveries.fetch_add(after.delivered, Ordering::Relaxed);
            let again = after
                .resync
                .iter()
                .find(|(sub, _)| *sub == id)
                .map(|(_, from)| from.clone());
            let rest = channel::Aftermath {
                resync: after.resync.into_iter().filter(|(sub, _)| *sub != id).collect(),
                ..after
            };
            self.settle(&entry, &name, rest);
            match again {
                Some(from) => answer = Answer::resync(from),
                None => return,
            }
        }
    }

    /// Watches the channel, then reads what the subscription asked for
    /// (all that is kept, when its offset or epoch is from another epoch).
    async fn read_history(&self, entry: &Arc<Mutex<Channel>>, answer: &Answer) -> Result<History, BrokerError> {
        self.watched(entry).await?;
        let name = lock(entry).name.clone();
        let keep = self.keep(&name);
        let history = self.broker.history(&name, answer.since, usize::MAX, keep).await?;
        let other_epoch = answer.epoch.as_ref().is_some_and(|e| *e != history.epoch);
        match answer.since {
            Some(since) if other_epoch || since > history.latest => {
                let mut all = self.broker.history(&name, Some(0), usize::MAX, keep).await?;
                all.complete = false;
                Ok(all)
            }
            _ => Ok(history),
        }
    }

    /// The broker failed a subscription: its client gets an `error`, and
    /// the subscription ends.
    fn fail_subscription(&self, entry: &Arc<Mutex<Channel>>, id: u64, e: &BrokerError, command_id: Option<&str>) {
        let name = {
            let mut c = lock(entry);
            let name = c.name.clone();
            if let Some(at) = c.subs.iter().position(|s| s.id == id) {
                let sub = c.subs.remove(at);
                let text = protocol::error(
                    &ProtocolError::new("unavailable", e.to_string()),
                    Some(&name),
                    command_id,
                );
                let _ = sub.target.push_text("error", &text);
                c.announce("leave", &sub.client);
                self.stats.subscribers.fetch_sub(1, Ordering::Relaxed);
            }
            name
        };
        self.free_if_unused(&name);
    }

    /// What a fan-out or merge left to do: `leave` events and counts for
    /// dropped subscribers, resyncs, freeing the channel.
    fn settle(self: &Arc<Self>, entry: &Arc<Mutex<Channel>>, name: &ChannelName, after: channel::Aftermath) {
        if !after.dropped.is_empty() {
            let n = after.dropped.len() as u64;
            self.stats.slow_consumers.fetch_add(n, Ordering::Relaxed);
            self.stats.subscribers.fetch_sub(n, Ordering::Relaxed);
            let mut c = lock(entry);
            for client in &after.dropped {
                c.announce("leave", client);
            }
            drop(c);
            // Not here: a fan-out may run under the broker's lock of this
            // channel (the in-process broker's), which unwatching takes
            // again (a publish to a channel whose last subscriber had gone
            // deadlocked on it).
            let (me, name) = (self.clone(), name.clone());
            tokio::spawn(async move { me.free_if_unused(&name) });
        }
        // On tasks of their own: a fan-out runs under the broker's lock of
        // the channel (the in-process broker's), which a recovery's history
        // read takes.
        for (id, from) in after.resync {
            tokio::spawn(self.clone().recover(entry.clone(), id, Answer::resync(from)));
        }
    }

    /// Frees the channel when nothing on this node uses it.
    fn free_if_unused(&self, name: &ChannelName) {
        let mut channels = lock(&self.channels);
        let Some(entry) = channels.get(name) else {
            return;
        };
        let watched = {
            let c = lock(entry);
            if !c.is_unused() {
                return;
            }
            matches!(c.watch, Watch::Ready)
        };
        channels.remove(name);
        drop(channels);
        self.stats.channels.fetch_sub(1, Ordering::Relaxed);
        if watched {
            self.broker.unwatch(name);
        }
    }
}

impl PublicationSink for Inner {
    fn deliver(&self, p: Publication) {
        let Some(entry) = lock(&self.channels).get(&p.channel).cloned() else {
            return;
        };
        let after = lock(&entry).fan_out(&p, self.config.recovery_buffer);
        self.stats.deliveries.fetch_add(after.delivered, Ordering::Relaxed);
        if !after.dropped.is_empty() || !after.resync.is_empty() {
            // `settle` needs the hub as an `Arc` (resyncs run as tasks).
            if let Some(me) = self.me() {
                me.settle(&entry, &p.channel, after);
            }
        }
    }

    fn resync(&self, channel: &ChannelName) {
        let Some(entry) = lock(&self.channels).get(channel).cloned() else {
            return;
        };
        let Some(me) = self.me() else { return };
        let ids: Vec<u64> = lock(&entry).subs.iter().map(|s| s.id).collect();
        for id in ids {
            // From where it was; a subscription still recovering reads
            // history anyway. (The channel's lock is released first: the
            // recovery may run right here, and takes it again.)
            let from = lock(&entry).start_resync(id);
            if let Some(from) = from {
                run_soon(me.clone().recover(entry.clone(), id, Answer::resync(from)));
            }
        }
    }
}

impl Inner {
    /// This hub as an `Arc` (resyncs run as tasks that hold it).
    fn me(&self) -> Option<Arc<Inner>> {
        self.me.upgrade()
    }
}

/// Runs `future` now if it completes without waiting (the in-process
/// broker's case: no task, no allocation), else on a task.
pub(crate) fn run_soon(future: impl Future<Output = ()> + Send + 'static) {
    let mut future = Box::pin(future);
    let mut cx = Context::from_waker(Waker::noop());
    if Pin::as_mut(&mut future).poll(&mut cx).is_pending() {
        tokio::spawn(future);
    }
}
