//! The in-process broker: offsets, epochs and history in this process's
//! memory. Nothing to install; history is lost when the process exits, so
//! every channel gets a fresh epoch when it is first used (clients that
//! come back with an epoch from before the restart learn that their
//! history is gone).
//!
//! Each channel is its own lock: a publish assigns the offset, appends to
//! the bounded history (the limits the hub gives with each call, its
//! namespace's: the last `size` publications, none older than `ttl`) and
//! hands the publication to the sink under that lock, so the hub sees a
//! channel's publications in offset order. A channel remembers the limits
//! it was last given, for [`MemoryBroker::sweep`] (the hub calls it
//! periodically), which frees a channel that nobody watches and whose
//! history has expired; used again, it starts a new epoch.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Instant;

use bytes::Bytes;

use super::broker::{BoxFuture, Broker, BrokerError, BrokerState, Epoch, History, Publication, PublicationSink};
use super::name::ChannelName;
use super::namespace::HistoryLimits;

struct Channel {
    epoch: Epoch,
    latest: u64,
    kept: VecDeque<(Instant, Publication)>,
    /// Watches by this node (the hub's subscribers' channels).
    watchers: usize,
    /// The history limits of the last call (for `sweep`).
    keep: HistoryLimits,
}

impl Channel {
    fn new() -> Self {
        Self {
            epoch: Epoch::fresh(),
            latest: 0,
            kept: VecDeque::new(),
            watchers: 0,
            keep: HistoryLimits::default(),
        }
    }

    fn expire(&mut self, now: Instant) {
        let ttl = self.keep.ttl;
        while self
            .kept
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > ttl)
        {
            self.kept.pop_front();
        }
    }

    fn history(&self, since: Option<u64>, limit: usize) -> History {
        let (publications, complete) = match since {
            None => (Vec::new(), true),
            Some(since) => {
                let oldest = self.kept.front().map_or(self.latest + 1, |(_, p)| p.offset);
                let complete = since <= self.latest && oldest <= since.saturating_add(1);
                // Offsets in `kept` are consecutive: the first wanted is at
                // index `since + 1 - oldest`.
                let skip = usize::try_from(since.saturating_add(1).saturating_sub(oldest)).unwrap_or(usize::MAX);
                let publications = self
                    .kept
                    .iter()
                    .skip(skip)
                    .take(limit)
                    .map(|(_, p)| p.clone())
                    .collect();
                (publications, complete)
            }
        };
        History {
            epoch: self.epoch.clone(),
            latest: self.latest,
            publications,
            complete,
        }
    }
}

/// The in-process broker (see the module documentation).
#[derive(Default)]
pub struct MemoryBroker {
    channels: Mutex<HashMap<ChannelName, Arc<Mutex<Channel>>>>,
    sink: RwLock<Option<Weak<dyn PublicationSink>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn channel(&self, name: &ChannelName) -> Arc<Mutex<Channel>> {
        lock(&self.channels)
            .entry(name.clone())
            .or_insert_with(|| Arc::new(Mutex::new(Channel::new())))
            .clone()
    }

    fn sink(&self) -> Option<Arc<dyn PublicationSink>> {
        self.sink
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(Weak::upgrade)
    }

    /// Drops expired history, and frees channels that nobody watches and
    /// that keep nothing. Returns how many channels are left.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut channels = lock(&self.channels);
        channels.retain(|_, channel| {
            let mut c = lock(channel);
            c.expire(now);
            c.watchers > 0 || !c.kept.is_empty()
        });
        channels.len()
    }

    /// Publishes synchronously (what [`Broker::publish`] does, without a future).
    pub fn publish_now(&self, channel: &ChannelName, data: Bytes, keep: HistoryLimits) -> Publication {
        let sink = self.sink();
        let entry = self.channel(channel);
        let mut c = lock(&entry);
        let now = Instant::now();
        c.keep = keep;
        c.latest += 1;
        let publication = Publication {
            channel: channel.clone(),
            offset: c.latest,
            epoch: c.epoch.clone(),
            data,
        };
        if keep.size > 0 {
            while c.kept.len() >= keep.size {
                c.kept.pop_front();
            }
            c.kept.push_back((now, publication.clone()));
        } else {
            c.kept.clear();
        }
        c.expire(now);
        // Under the channel's lock: the sink sees its publications in order.
        if let Some(sink) = sink {
            sink.deliver(publication.clone());
        }
        publication
    }

    /// Reads history synchronously (what [`Broker::history`] does).
    pub fn history_now(&self, channel: &ChannelName, since: Option<u64>, limit: usize, keep: HistoryLimits) -> History {
        let entry = self.channel(channel);
        let mut c = lock(&entry);
        c.keep = keep;
        c.expire(Instant::now());
        c.history(since, limit)
    }
}

impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn attach(&self, sink: Weak<dyn PublicationSink>) {
        *self.sink.write().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    fn publish<'a>(
        &'a self,
        channel: &'a ChannelName,
        data: Bytes,
        keep: HistoryLimits,
    ) -> BoxFuture<'a, Result<Publication, BrokerError>> {
        let publication = self.publish_now(channel, data, keep);
        Box::pin(std::future::ready(Ok(publication)))
    }

    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<u64>,
        limit: usize,
        keep: HistoryLimits,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        let history = self.history_now(channel, since, limit, keep);
        Box::pin(std::future::ready(Ok(history)))
    }

    fn watch<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, Result<(), BrokerError>> {
        lock(&self.channel(channel)).watchers += 1;
        Box::pin(std::future::ready(Ok(())))
    }

    fn unwatch(&self, channel: &ChannelName) {
        if let Some(entry) = lock(&self.channels).get(channel) {
            let mut c = lock(entry);
            c.watchers = c.watchers.saturating_sub(1);
        }
    }

    fn state(&self) -> BrokerState {
        BrokerState::Up
    }

    fn upkeep(&self) {
        self.sweep(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn name(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    fn data(i: u64) -> Bytes {
        Bytes::from(i.to_string())
    }

    #[test]
    fn offsets_have_no_gaps_and_history_is_bounded() {
        let b = MemoryBroker::new();
        let keep = HistoryLimits {
            size: 3,
            ttl: Duration::from_secs(60),
        };
        let c = name("c");
        let first = b.history_now(&c, None, usize::MAX, keep);
        assert_eq!(first.latest, 0);
        for i in 1..=5 {
            let p = b.publish_now(&c, data(i), keep);
            assert_eq!(p.offset, i);
            assert_eq!(p.epoch, first.epoch, "one epoch while the channel lives");
        }
        // Kept: 3, 4, 5.
        let h = b.history_now(&c, Some(2), usize::MAX, keep);
        assert!(h.complete);
        assert_eq!(h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), [3, 4, 5]);
        let h = b.history_now(&c, Some(1), usize::MAX, keep);
        assert!(!h.complete, "offset 2 is gone");
        assert_eq!(h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), [3, 4, 5]);
        let h = b.history_now(&c, Some(5), usize::MAX, keep);
        assert!(h.complete && h.publications.is_empty());
        let h = b.history_now(&c, Some(9), usize::MAX, keep);
        assert!(!h.complete, "an offset from the future is another epoch's");
        let h = b.history_now(&c, Some(3), 1, keep);
        assert_eq!(h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), [4]);
        assert_eq!(h.latest, 5);
    }

    #[test]
    fn expired_unwatched_channels_are_freed_and_come_back_with_a_new_epoch() {
        let b = MemoryBroker::new();
        let keep = HistoryLimits {
            size: 10,
            ttl: Duration::from_millis(1),
        };
        let (c, w) = (name("c"), name("watched"));
        let old = b.publish_now(&c, data(1), keep).epoch;
        drop(b.watch(&w));
        b.publish_now(&w, data(1), keep);
        assert_eq!(
            b.sweep(Instant::now() + Duration::from_secs(1)),
            1,
            "the watched one stays"
        );
        let again = b.publish_now(&c, data(2), keep);
        assert_eq!(again.offset, 1);
        assert_ne!(again.epoch, old);
        assert_eq!(b.history_now(&w, Some(0), 10, keep).latest, 1);
    }
}
