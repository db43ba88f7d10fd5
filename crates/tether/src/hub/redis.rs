//! The Redis broker: channels' offsets, epochs and history in Redis, shared
//! by every tether node that points at it, and live publications between
//! nodes over Redis pub/sub. Several independent Redis instances (shards)
//! split the channels between them by a stable hash of the name.
//!
//! Theory of operation. Per channel `c` a shard keeps three keys:
//! `tether:{c}:epoch` (a random string, written when absent), `tether:{c}:offset`
//! (the counter) and `tether:{c}:history` (a list of `offset ms data`
//! entries, the last `size` of the channel's history limits, which the hub
//! gives with every call: its namespace's), the history expiring `ttl`
//! after the channel's last publication, its epoch and counter a day later
//! at the earliest (`META_TTL`), so a quiet channel keeps its offsets. One Lua script assigns the offset, appends,
//! trims and publishes on `tether:{c}:live` as one atomic step, so an
//! offset is never seen before it is in history, and a Redis that lost
//! everything (a restart without persistence) starts the channel again
//! under a new epoch. Another script reads the epoch, the latest offset and
//! the history (creating the epoch if absent); the age bound is applied on
//! read against Redis's own clock, so every node agrees.
//!
//! Each shard has two connections, each with its own task: commands (a
//! multiplexed connection, shared by every request of this node), and
//! pub/sub (one `SUBSCRIBE` per watched channel per node, not per client).
//! While a shard is unreachable every call on it fails at once with
//! `BrokerError::Unavailable` (nothing is acknowledged that Redis did not
//! accept); its tasks reconnect with backoff (0.1 s doubling to 5 s) and the
//! outage is logged once when it starts and once when it ends. When the
//! pub/sub connection is back, every watched channel is subscribed again
//! and the hub is told to re-read history for all its subscribers
//! (`PublicationSink::resync`): publications that pub/sub lost meanwhile are
//! delivered from history, in order, none twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};
use tokio::sync::{mpsc, oneshot, Notify};

use super::broker::{BoxFuture, Broker, BrokerError, BrokerState, Epoch, History, Publication, PublicationSink};
use super::name::ChannelName;
use super::namespace::HistoryLimits;

/// The longest a command or a connection attempt may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Backoff between reconnection attempts: from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// A shard unreachable this long is `down` (before: `reconnecting`).
const DOWN_AFTER: Duration = Duration::from_secs(10);
/// SUBSCRIBE and UNSUBSCRIBE requests waiting for a shard's pub/sub task
/// (it serves them between messages, and not at all while reconnecting):
/// past this a watch fails at once as unavailable, and an unwatch is left
/// to the next reconnection (which subscribes only what is still watched).
const WATCH_QUEUE: usize = 4096;
/// How long a channel's epoch and offset counter outlive its last
/// publication, at the least (the history's age bound when longer).
const META_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Assigns the next offset, appends, trims, publishes: one atomic step.
/// KEYS: epoch, offset, history. ARGV: fresh epoch, data, history size,
/// history ttl seconds, live channel, meta ttl seconds. Returns {offset, epoch}.
const PUBLISH: &str = r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[2], KEYS[3])
end
local offset = redis.call('INCR', KEYS[2])
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local entry = offset .. ' ' .. ms .. ' ' .. ARGV[2]
local size = tonumber(ARGV[3])
if size > 0 then
  redis.call('RPUSH', KEYS[3], entry)
  redis.call('LTRIM', KEYS[3], -size, -1)
end
local meta = tonumber(ARGV[6])
redis.call('EXPIRE', KEYS[1], meta)
redis.call('EXPIRE', KEYS[2], meta)
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4]))
redis.call('PUBLISH', ARGV[5], epoch .. ' ' .. entry)
return {offset, epoch}
";

/// Reads a channel's epoch (creating it when absent), latest offset, the
/// time, and the history entries after offset ARGV[3] (none when it is
/// negative), at most ARGV[4] of them. History's offsets are consecutive
/// (each publish appends the next one, trimming drops the oldest), so the
/// entries after `since` are the list's last `latest - since`: only those
/// are read, not the whole history. KEYS: epoch, offset, history. ARGV:
/// fresh epoch, meta ttl seconds, since, limit. Returns {epoch, latest,
/// now_ms, entries}.
const HISTORY: &str = r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch, 'EX', tonumber(ARGV[2]))
  redis.call('DEL', KEYS[2], KEYS[3])
end
local latest = tonumber(redis.call('GET', KEYS[2]) or '0')
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local entries = {}
local since = tonumber(ARGV[3])
if since >= 0 and since < latest then
  local len = redis.call('LLEN', KEYS[3])
  local start = len - (latest - since)
  if start < 0 then start = 0 end
  entries = redis.call('LRANGE', KEYS[3], start, start + tonumber(ARGV[4]) - 1)
end
return {epoch, latest, ms, entries}
";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The shard of a channel: FNV-1a (64-bit) of its name, modulo the shard
/// count; the same on every node and in every version.
pub fn shard_of(channel: &str, shards: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in channel.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % shards.max(1) as u64) as usize
}

const UP: u8 = 0;
const RECONNECTING: u8 = 1;
const DOWN: u8 = 2;

/// A pub/sub request to a shard's pub/sub task.
enum Watching {
    Subscribe(String, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(String),
}

/// One Redis instance.
struct Shard {
    /// Where it is (credentials left out), for logs and errors.
    name: String,
    client: Client,
    /// The command connection; `None` while it is being (re)made.
    conn: Mutex<Option<MultiplexedConnection>>,
    /// `UP`, `RECONNECTING` or `DOWN` (the command connection's).
    state: AtomicU8,
    /// Since when it has been unreachable (`None`: reachable, or never
    /// reached yet).
    lost_at: Mutex<Option<Instant>>,
    /// Wakes the command connection's task to reconnect.
    reconnect: Notify,
    watching: mpsc::Sender<Watching>,
    /// Channels watched on this shard, by their live channel name.
    watched: Mutex<HashMap<String, ChannelName>>,
}

/// The Redis broker (see the module documentation).
pub struct RedisBroker {
    shards: Vec<Arc<Shard>>,
    publish: Script,
    history: Script,
    sink: Arc<RwLock<Option<Weak<dyn PublicationSink>>>>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.shards.iter().map(|s| s.name.as_str()).collect();
        f.debug_struct("RedisBroker").field("shards", &names).finish()
    }
}

/// The keys of a channel.
struct Keys {
    epoch: String,
    offset: String,
    history: String,
    live: String,
}

fn keys(channel: &ChannelName) -> Keys {
    Keys {
        epoch: format!("tether:{channel}:epoch"),
        offset: format!("tether:{channel}:offset"),
        history: format!("tether:{channel}:history"),
        live: format!("tether:{channel}:live"),
    }
}

/// How long a channel's epoch and offset counter outlive its last
/// publication: a day, or the history's age if longer.
fn meta_ttl_secs(keep: HistoryLimits) -> u64 {
    keep.ttl.max(META_TTL).as_secs()
}

/// A `redis://` URL without its password, for logs.
fn display_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl RedisBroker {
    /// A broker over the Redis instances at `urls` (one shard each), keeping
    /// Connections are made in the
    /// background (start the tasks with [`RedisTasks::start`]): a Redis that
    /// is down at start is not an error, only unavailable.
    pub fn new(urls: &[String]) -> Result<(Arc<Self>, RedisTasks), BrokerError> {
        if urls.is_empty() {
            return Err(BrokerError::Config("no Redis URL given".into()));
        }
        let sink = Arc::new(RwLock::new(None));
        let mut shards = Vec::new();
        let mut tasks = Vec::new();
        for url in urls {
            let client = Client::open(url.as_str())
                .map_err(|e| BrokerError::Config(format!("invalid Redis URL {}: {e}", display_url(url))))?;
            let (tx, rx) = mpsc::channel(WATCH_QUEUE);
            let shard = Arc::new(Shard {
                name: display_url(url),
                client,
                conn: Mutex::new(None),
                state: AtomicU8::new(DOWN),
                lost_at: Mutex::new(None), // never reached: down
                reconnect: Notify::new(),
                watching: tx,
                watched: Mutex::new(HashMap::new()),
            });
            tasks.push((shard.clone(), rx));
            shards.push(shard);
        }
        let broker = Arc::new(Self {
            shards,
            publish: Script::new(PUBLISH),
            history: Script::new(HISTORY),
            sink: sink.clone(),
        });
        Ok((broker, RedisTasks { shards: tasks, sink }))
    }

    fn shard(&self, channel: &ChannelName) -> &Arc<Shard> {
        &self.shards[shard_of(channel.as_str(), self.shards.len())]
    }

    async fn publish_on(
        &self,
        channel: &ChannelName,
        data: Bytes,
        keep: HistoryLimits,
    ) -> Result<Publication, BrokerError> {
        let shard = self.shard(channel);
        let mut conn = shard.connection()?;
        let k = keys(channel);
        let fresh = Epoch::fresh();
        let mut invocation = self.publish.key(&k.epoch);
        invocation
            .key(&k.offset)
            .key(&k.history)
            .arg(fresh.as_str())
            .arg(&data[..])
            .arg(keep.size)
            .arg(keep.ttl.as_secs().max(1))
            .arg(&k.live)
            .arg(meta_ttl_secs(keep));
        let call = invocation.invoke_async::<(u64, String)>(&mut conn);
        let (offset, epoch) = shard.answer(tokio::time::timeout(COMMAND_TIMEOUT, call).await)?;
        Ok(Publication {
            channel: channel.clone(),
            offset,
            epoch: Epoch::new(epoch),
            data,
        })
    }

    async fn history_on(
        &self,
        channel: &ChannelName,
        since: Option<u64>,
        limit: usize,
        keep: HistoryLimits,
    ) -> Result<History, BrokerError> {
        let shard = self.shard(channel);
        let mut conn = shard.connection()?;
        let k = keys(channel);
        let fresh = Epoch::fresh();
        let mut invocation = self.history.key(&k.epoch);
        invocation
            .key(&k.offset)
            .key(&k.history)
            .arg(fresh.as_str())
            .arg(meta_ttl_secs(keep))
            .arg(since.map_or(-1, |s| i64::try_from(s).unwrap_or(i64::MAX)))
            .arg(limit.clamp(1, keep.size.max(1)));
        let call = invocation.invoke_async::<(String, u64, u64, Vec<Vec<u8>>)>(&mut conn);
        let (epoch, latest, now_ms, entries) = shard.answer(tokio::time::timeout(COMMAND_TIMEOUT, call).await)?;
        let epoch = Epoch::new(epoch);
        let oldest_ms = now_ms.saturating_sub(u64::try_from(keep.ttl.as_millis()).unwrap_or(u64::MAX));
        let kept: Vec<Publication> = entries
            .iter()
            .filter_map(|e| parse_entry(e))
            .filter(|(_, ms, _)| *ms >= oldest_ms)
            .map(|(offset, _, data)| Publication {
                channel: channel.clone(),
                offset,
                epoch: epoch.clone(),
                data: Bytes::copy_from_slice(data),
            })
            .collect();
        let (publications, complete) = match since {
            None => (Vec::new(), true),
            Some(since) => {
                let oldest = kept.first().map_or(latest + 1, |p| p.offset);
                let complete = since <= latest && oldest <= since.saturating_add(1);
                let after: Vec<Publication> = kept.into_iter().filter(|p| p.offset > since).take(limit).collect();
                (after, complete)
            }
        };
        Ok(History {
            epoch,
            latest,
            publications,
            complete,
        })
    }

    async fn watch_on(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        let shard = self.shard(channel);
        let live = keys(channel).live;
        lock(&shard.watched).insert(live.clone(), channel.clone());
        let (tx, rx) = oneshot::channel();
        let result = match shard.watching.try_send(Watching::Subscribe(live.clone(), tx)) {
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(BrokerError::Unavailable("the Redis broker is not running".into()))
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(shard.unavailable("has too many SUBSCRIBEs waiting")),
            Ok(()) => match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) | Err(_) => Err(shard.unavailable("no answer to SUBSCRIBE")),
            },
        };
        if result.is_err() {
            lock(&shard.watched).remove(&live);
        }
        result
    }
}

/// `offset ms data` → its parts.
fn parse_entry(entry: &[u8]) -> Option<(u64, u64, &[u8])> {
    let mut parts = entry.splitn(3, |b| *b == b' ');
    let offset = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let ms = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    Some((offset, ms, parts.next()?))
}

impl Shard {
    /// The command connection, or at once an error while it is down.
    fn connection(&self) -> Result<MultiplexedConnection, BrokerError> {
        match lock(&self.conn).as_ref() {
            Some(conn) => Ok(conn.clone()),
            None => Err(self.unavailable("unreachable")),
        }
    }

    fn unavailable(&self, why: &str) -> BrokerError {
        BrokerError::Unavailable(format!("Redis at {} {why}", self.name))
    }

    /// A command's result; a connection failure takes the shard down (its
    /// task reconnects) and is reported as `Unavailable`.
    fn answer<T>(&self, result: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>) -> Result<T, BrokerError> {
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if !(e.is_io_error() || e.is_connection_dropped() || e.is_timeout()) => Err(
                BrokerError::Unavailable(format!("Redis at {} refused the command: {e}", self.name)),
            ),
            Ok(Err(e)) => {
                self.lost(&e.to_string());
                Err(self.unavailable(&format!("failed: {e}")))
            }
            Err(_) => {
                self.lost("a command timed out");
                Err(self.unavailable("did not answer in time"))
            }
        }
    }

    /// The connection is gone: down until its task reconnects (logged once).
    fn lost(&self, why: &str) {
        let had = lock(&self.conn).take().is_some();
        if had {
            *lock(&self.lost_at) = Some(Instant::now());
            self.state.store(RECONNECTING, Ordering::Relaxed);
            tracing::warn!(redis = %self.name, reason = why, "lost the Redis connection; reconnecting");
        }
        self.reconnect.notify_one();
    }

    fn state(&self) -> BrokerState {
        match self.state.load(Ordering::Relaxed) {
            UP => BrokerState::Up,
            _ => match *lock(&self.lost_at) {
                Some(at) if at.elapsed() < DOWN_AFTER => BrokerState::Reconnecting,
                _ => BrokerState::Down,
            },
        }
    }
}

/// The broker's background work (connections and pub/sub), to be started
/// once on a runtime with [`RedisTasks::start`].
pub struct RedisTasks {
    shards: Vec<(Arc<Shard>, mpsc::Receiver<Watching>)>,
    sink: Arc<RwLock<Option<Weak<dyn PublicationSink>>>>,
}

impl RedisTasks {
    /// Spawns, per shard, the command connection's and the pub/sub
    /// connection's tasks; they run until the runtime ends.
    pub fn start(self) {
        for (shard, rx) in self.shards {
            tokio::spawn(keep_connected(shard.clone()));
            tokio::spawn(pubsub(shard, rx, self.sink.clone()));
        }
    }
}

fn config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(COMMAND_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT))
}

/// Keeps the shard's command connection made.
async fn keep_connected(shard: Arc<Shard>) {
    let mut backoff = BACKOFF.0;
    let mut logged_down = false;
    loop {
        if lock(&shard.conn).is_some() {
            shard.reconnect.notified().await;
            continue;
        }
        match shard
            .client
            .get_multiplexed_async_connection_with_config(&config())
            .await
        {
            Ok(conn) => {
                *lock(&shard.conn) = Some(conn);
                let was = lock(&shard.lost_at).take();
                shard.state.store(UP, Ordering::Relaxed);
                backoff = BACKOFF.0;
                if logged_down || was.is_some_and(|at| at.elapsed() > Duration::from_secs(1)) {
                    let after = was.map(|at| at.elapsed()).unwrap_or_default();
                    tracing::info!(redis = %shard.name, after = ?after, "Redis reachable");
                }
                logged_down = false;
            }
            Err(e) => {
                if !logged_down {
                    tracing::warn!(redis = %shard.name, error = %e, "Redis unreachable; retrying with backoff");
                    logged_down = true;
                }
                // Until the backoff ends, or the pub/sub connection is back
                // (Redis most likely is too).
                let _ = tokio::time::timeout(backoff, shard.reconnect.notified()).await;
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
    }
}

/// Keeps the shard's pub/sub connection, with every watched channel
/// subscribed, delivering publications to the sink.
async fn pubsub(
    shard: Arc<Shard>,
    mut requests: mpsc::Receiver<Watching>,
    sink: Arc<RwLock<Option<Weak<dyn PublicationSink>>>>,
) {
    let sink = || {
        sink.read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(Weak::upgrade)
    };
    let mut backoff = BACKOFF.0;
    let mut connected_before = false;
    loop {
        let connected = tokio::time::timeout(COMMAND_TIMEOUT, shard.client.get_async_pubsub()).await;
        let Ok(Ok(pubsub)) = connected else {
            // Refuse what is asked meanwhile.
            while let Ok(request) = requests.try_recv() {
                if let Watching::Subscribe(_, ack) = request {
                    let _ = ack.send(Err(shard.unavailable("unreachable")));
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF.1);
            continue;
        };
        backoff = BACKOFF.0;
        if lock(&shard.conn).is_none() {
            shard.reconnect.notify_one();
        }
        let (mut subscriptions, mut messages) = pubsub.split();
        let watched: Vec<(String, ChannelName)> = lock(&shard.watched)
            .iter()
            .map(|(live, c)| (live.clone(), c.clone()))
            .collect();
        let mut ok = true;
        for (live, _) in &watched {
            if subscriptions.subscribe(live).await.is_err() {
                ok = false;
                break;
            }
        }
        if !ok {
            continue;
        }
        // Live delivery was interrupted: history fills what pub/sub lost.
        if connected_before {
            if let Some(sink) = sink() {
                for (_, channel) in &watched {
                    sink.resync(channel);
                }
            }
        }
        connected_before = true;
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let live = message.get_channel_name().to_string();
                    let Some(channel) = lock(&shard.watched).get(&live).cloned() else { continue };
                    match parse_live(&channel, message.get_payload_bytes()) {
                        Some(p) => {
                            if let Some(sink) = sink() {
                                sink.deliver(p);
                            }
                        }
                        None => tracing::warn!(redis = %shard.name, channel = %channel, "an unreadable live publication"),
                    }
                }
                request = requests.recv() => match request {
                    None => return,
                    Some(Watching::Subscribe(live, ack)) => {
                        let result = subscriptions.subscribe(&live).await.map_err(|e| shard.unavailable(&format!("refused SUBSCRIBE: {e}")));
                        let failed = result.is_err();
                        let _ = ack.send(result);
                        if failed {
                            break;
                        }
                    }
                    Some(Watching::Unsubscribe(live)) => {
                        if subscriptions.unsubscribe(&live).await.is_err() {
                            break;
                        }
                    }
                },
            }
        }
        // The connection is gone: so, most likely, is the command one.
        shard.lost("the pub/sub connection closed");
    }
}

/// `epoch offset ms data` → the publication.
fn parse_live(channel: &ChannelName, payload: &[u8]) -> Option<Publication> {
    let space = payload.iter().position(|b| *b == b' ')?;
    let epoch = std::str::from_utf8(&payload[..space]).ok()?;
    let (offset, _, data) = parse_entry(&payload[space + 1..])?;
    Some(Publication {
        channel: channel.clone(),
        offset,
        epoch: Epoch::new(epoch),
        data: Bytes::copy_from_slice(data),
    })
}

impl Broker for RedisBroker {
    fn name(&self) -> &'static str {
        "redis"
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
        Box::pin(self.publish_on(channel, data, keep))
    }

    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<u64>,
        limit: usize,
        keep: HistoryLimits,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        Box::pin(self.history_on(channel, since, limit, keep))
    }

    fn watch<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.watch_on(channel))
    }

    fn unwatch(&self, channel: &ChannelName) {
        let shard = self.shard(channel);
        let live = keys(channel).live;
        if lock(&shard.watched).remove(&live).is_some() {
            let _ = shard.watching.try_send(Watching::Unsubscribe(live));
        }
    }

    fn state(&self) -> BrokerState {
        self.shards
            .iter()
            .map(|s| s.state())
            .max_by_key(|s| match s {
                BrokerState::Up => 0,
                BrokerState::Reconnecting => 1,
                BrokerState::Down => 2,
            })
            .unwrap_or(BrokerState::Down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        // Fixed values: a change would move every channel to another shard.
        assert_eq!(shard_of("chat", 4), shard_of("chat", 4));
        assert_eq!(shard_of("", 3), (0xcbf2_9ce4_8422_2325u64 % 3) as usize);
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[shard_of(&format!("channel-{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&n| (800..1200).contains(&n)), "{counts:?}");
        assert_eq!(shard_of("anything", 1), 0);
    }

    #[test]
    fn entries_and_live_messages_parse() {
        assert_eq!(
            parse_entry(b"12 1700000000000 {\"a\": 1}"),
            Some((12, 1_700_000_000_000, &b"{\"a\": 1}"[..]))
        );
        assert_eq!(parse_entry(b"x 1 {}"), None);
        let c = ChannelName::new("c").unwrap();
        let p = parse_live(&c, b"e1 3 99 \"hi there\"").unwrap();
        assert_eq!(
            (p.offset, p.epoch.as_str(), &p.data[..]),
            (3, "e1", &b"\"hi there\""[..])
        );
        assert!(parse_live(&c, b"nothing").is_none());
        assert_eq!(display_url("redis://:secret@host:6379/0"), "redis://…@host:6379/0");
        assert_eq!(display_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
