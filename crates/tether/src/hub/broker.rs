//! Brokers: where a channel's offsets, epoch and history live, and how a
//! publication reaches every node that has subscribers.
//!
//! The hub asks a [`Broker`] four things: publish (assign the next offset
//! and append to history, as one step), history since an offset, and to
//! start or stop delivering a channel's live publications to this node (a
//! [`PublicationSink`], given once with [`Broker::attach`]). The in-process
//! broker ([`super::MemoryBroker`]) answers at once; a remote one (Redis)
//! may be slow or down, so every call can fail with a [`BrokerError`] and
//! the hub never holds a lock across one.
//!
//! The contract a broker keeps:
//! * offsets of a channel are 1, 2, 3, … with no gap, assigned atomically
//!   with the append (a publication is in history before anyone can see
//!   its offset);
//! * the epoch changes whenever history (or the offset counter) was lost,
//!   and every [`Publication`] and [`History`] carries the epoch it
//!   belongs to;
//! * live delivery may lose or repeat publications (Redis pub/sub is
//!   at-most-once across a reconnect): the hub detects gaps by offset and
//!   reads history to fill them, and drops repeats. After an outage that
//!   may have lost live publications, the broker calls
//!   [`PublicationSink::resync`] so the hub re-reads history.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use bytes::Bytes;

use super::name::ChannelName;
use super::namespace::HistoryLimits;

/// A boxed future, as the broker trait returns them (a trait object).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A channel's epoch: changes whenever its history was lost, so a client
/// can tell "nothing new" from "history gone".
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

impl Epoch {
    /// An epoch with this text (a broker's own format).
    pub fn new(text: impl Into<Arc<str>>) -> Self {
        Self(text.into())
    }

    /// A fresh epoch, different from every earlier one (random, 16 hex digits).
    pub fn fresh() -> Self {
        Self(format!("{:016x}", rand::random::<u64>()).into())
    }

    /// The epoch's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One published message.
#[derive(Clone, Debug)]
pub struct Publication {
    /// Its channel.
    pub channel: ChannelName,
    /// Its offset in the channel (1, 2, 3, …).
    pub offset: u64,
    /// The channel's epoch when it was published.
    pub epoch: Epoch,
    /// The data: one JSON value, compact (no raw line breaks).
    pub data: Bytes,
}

/// A channel's history after an offset.
#[derive(Clone, Debug)]
pub struct History {
    /// The channel's current epoch.
    pub epoch: Epoch,
    /// The latest offset assigned (0: nothing published in this epoch).
    pub latest: u64,
    /// The publications after the asked offset that are still kept, oldest
    /// first (empty when none was asked).
    pub publications: Vec<Publication>,
    /// Whether `publications` starts right after the asked offset: history
    /// still reaches back that far.
    pub complete: bool,
}

/// Why a broker call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached (or is not answering): nothing was
    /// done; try again later.
    #[error("the broker is unavailable: {0}")]
    Unavailable(String),
    /// The broker cannot be made from what it was given (a bad URL).
    #[error("invalid broker configuration: {0}")]
    Config(String),
}

/// Whether a broker can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BrokerState {
    /// Reachable: calls go through.
    Up,
    /// Lost a moment ago and being reconnected: calls fail at once.
    Reconnecting,
    /// Unreachable for a while (or never reached): calls fail at once.
    Down,
}

impl BrokerState {
    /// `up`, `reconnecting` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerState::Up => "up",
            BrokerState::Reconnecting => "reconnecting",
            BrokerState::Down => "down",
        }
    }
}

/// Receives the live publications of the channels this node watches.
pub trait PublicationSink: Send + Sync + 'static {
    /// A publication of a watched channel (possibly one this node already
    /// has: the hub drops repeats by offset).
    fn deliver(&self, publication: Publication);
    /// Live delivery of `channel` may have lost publications (the broker
    /// reconnected): the hub re-reads its history for every subscriber.
    fn resync(&self, channel: &ChannelName);
}

/// Where channels' offsets, epochs and history live (see the module
/// documentation).
pub trait Broker: Send + Sync + 'static {
    /// A short name for logs and metrics (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Gives the broker the sink for live publications (called once, by
    /// the hub, before any other call).
    fn attach(&self, sink: Weak<dyn PublicationSink>);

    /// Assigns `data` the channel's next offset and appends it to history,
    /// which keeps at most `keep` (the channel's namespace's limits); once
    /// it succeeds every watching node gets it (this one included).
    fn publish<'a>(
        &'a self,
        channel: &'a ChannelName,
        data: Bytes,
        keep: HistoryLimits,
    ) -> BoxFuture<'a, Result<Publication, BrokerError>>;

    /// The channel's epoch, latest offset and, when `since` is given, the
    /// kept publications after it (at most `limit`, the oldest first; none
    /// older than `keep.ttl`).
    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<u64>,
        limit: usize,
        keep: HistoryLimits,
    ) -> BoxFuture<'a, Result<History, BrokerError>>;

    /// Starts delivering the channel's live publications to the sink;
    /// resolves once delivery is established (so a history read after it
    /// leaves no gap).
    fn watch<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Stops delivering the channel's publications to this node.
    fn unwatch(&self, channel: &ChannelName);

    /// Whether the broker is reachable now.
    fn state(&self) -> BrokerState;

    /// Whether it is [`BrokerState::Up`].
    fn is_up(&self) -> bool {
        self.state() == BrokerState::Up
    }

    /// Periodic upkeep (the hub calls it every few seconds): expiring
    /// history, freeing unused channels.
    fn upkeep(&self) {}
}
