//! Keep-alive policy and limits for one HTTP/1.1 server connection.

use std::num::NonZeroU32;
use std::time::Duration;

/// What the `Keep-Alive` response header advertises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAliveHeader {
    /// No `Keep-Alive` header at all.
    Off,
    /// `Keep-Alive: timeout=T, max=M` with the configured M (Node's form).
    Fixed,
    /// `Keep-Alive: timeout=T, max=R` where R is how many more requests
    /// this connection will still serve after the current one.
    Remaining,
}

/// Limits and keep-alive policy. One `Config` is shared by all connections.
#[derive(Debug, Clone)]
pub struct Config {
    /// T: an idle connection (nothing pending either way) is closed after
    /// this long without sending anything.
    pub idle_timeout: Duration,
    /// M: the M-th response carries `Connection: close`. 0 means unlimited.
    pub max_requests: u32,
    /// How the `Keep-Alive` header is written.
    pub keep_alive_header: KeepAliveHeader,
    /// After this long, the next response carries `Connection: close`
    /// (nginx `keepalive_time`). `None`: no limit.
    pub max_lifetime: Option<Duration>,
    /// Once the first byte of a request head arrives, the whole head must
    /// arrive within this, else `408` and close.
    pub header_timeout: Duration,
    /// A request body that makes no progress for this long closes the
    /// connection.
    pub body_timeout: Duration,
    /// Minimum average rate of a request body, in bytes per second: a body
    /// must arrive by `body_timeout` plus one second per this many bytes
    /// received (as Apache's `mod_reqtimeout` `MinRate`), else `408` and
    /// close. Ends bodies trickled slowly enough to dodge `body_timeout`.
    /// `None`: no minimum.
    pub body_min_rate: Option<NonZeroU32>,
    /// Output that makes no progress for this long closes the connection.
    pub write_timeout: Duration,
    /// Unsent output above which the connection stops reading and parsing
    /// further requests, and a streamed response body pauses: a client
    /// that pipelines requests and never reads the responses holds at most
    /// one response plus this much, and its socket is left unread (TCP
    /// backpressure) until the write timeout closes it.
    pub max_unsent_output: usize,
    /// Largest accepted request body in bytes (`413` beyond).
    pub max_body: u64,
    /// Largest request head (request line and header fields), `431` beyond.
    pub max_head: usize,
    /// Most header fields in a request head (or trailer section), `431` beyond.
    pub max_headers: usize,
    /// Longest request target, `414` beyond.
    pub max_target: usize,
    /// Unread request body bytes the server discards after responding
    /// to keep the connection; a longer remainder closes it instead.
    pub max_drain: u64,
    /// Longest total lingering close (reading and discarding after the
    /// write side was shut down).
    pub linger_time: Duration,
    /// A lingering close ends when the peer is silent this long.
    pub linger_idle: Duration,
    /// On graceful shutdown, how long an idle connection stays open for a
    /// request its client may already be sending (answered with
    /// `Connection: close`); zero closes idle connections at once.
    pub shutdown_drain: Duration,
}

/// Most header fields the parser can hold at once; `max_headers` is capped by it.
pub const HEADER_CAPACITY: usize = 128;

impl Default for Config {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(5),
            max_requests: 100,
            keep_alive_header: KeepAliveHeader::Fixed,
            max_lifetime: None,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            body_min_rate: NonZeroU32::new(500),
            write_timeout: Duration::from_secs(30),
            max_unsent_output: 256 * 1024,
            max_body: 16 * 1024 * 1024,
            max_head: 64 * 1024,
            max_headers: 100,
            max_target: 8 * 1024,
            max_drain: 256 * 1024,
            linger_time: Duration::from_secs(10),
            linger_idle: Duration::from_secs(2),
            shutdown_drain: Duration::from_secs(1),
        }
    }
}
