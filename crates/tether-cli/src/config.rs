//! The `serve` configuration: one [`ServeConfig`] filled from, in rising
//! precedence, defaults, an optional TOML file (`--config FILE`), `TETHER_*`
//! environment variables and command-line flags.
//!
//! Every flag is also a key of the TOML file, spelled the same way without
//! the leading dashes (`--keep-alive-timeout 2s` is `keep-alive-timeout =
//! "2s"`), and an environment variable (`TETHER_KEEP_ALIVE_TIMEOUT=2s`).
//! The one exception is `--config` itself, which a file cannot name.
//!
//! How the layers merge: every field of [`ServeArgs`] is an `Option` and
//! clap applies no defaults to it, so `None` means "neither the flag nor its
//! environment variable was given" (clap's own precedence is flag > env).
//! [`load`] starts from the file (itself [`ServeConfig::default`] under
//! whatever the file sets) and overwrites each field that the arguments
//! carry. So: flag > env > file > default.
//!
//! Value syntax:
//! - DURATION: a non-negative decimal number with an optional unit, `ms`,
//!   `s`, `m` or `h`; a bare number is seconds: `5`, `2.5`, `500ms`, `5s`,
//!   `1m`. Options that can be switched off also accept `off` (or `0`).
//!   In a TOML file a duration may also be a bare number: `header-timeout = 10`.
//! - SIZE: a whole number of bytes with an optional binary unit: `1048576`,
//!   `64K`/`64KiB`, `16M`/`16MiB`, `1G`/`1GiB` (all powers of 1024). In a TOML
//!   file a size may also be an integer.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Longest accepted duration (keeps `Instant + duration` far from overflow).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// What the `Keep-Alive` response header advertises as `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum KeepAliveHeaderMode {
    /// `Keep-Alive: timeout=T, max=M` with the configured M.
    Fixed,
    /// `Keep-Alive: timeout=T, max=R` with R the requests this connection
    /// will still serve.
    Remaining,
}

/// permessage-deflate (RFC 7692) for WebSocket connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WsCompression {
    /// Never negotiate permessage-deflate.
    Off,
    /// Negotiate it with `no_context_takeover` (no per-connection window kept
    /// between messages; cheap for idle connections).
    Shared,
    /// Negotiate it with context takeover (better ratio, a deflate window
    /// held per connection).
    Context,
}

/// How log lines are written (to standard error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// One human-readable line per event, with its spans' fields.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields` with
    /// `message`, `target`, and the current `span` and `spans`), for log
    /// shippers.
    Json,
}

/// Makes the configuration's types from the one list of settings below.
macro_rules! serve_settings {
    ($(
        $(#[doc = $doc:literal])*
        #[arg($($arg:tt)*)]
        $(#[serde($($serde:tt)*)])?
        $field:ident: $ty:ty = $default:expr, flag $flag:ty => $conv:expr;
    )*
    file_only {$(
        $(#[doc = $fdoc:literal])*
        $ffield:ident: $fty:ty = $fdefault:expr;
    )*}) => {
        /// The effective configuration of `tether serve` (see the settings list).
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
        pub struct ServeConfig {
            $( $(#[doc = $doc])* $(#[serde($($serde)*)])? pub $field: $ty, )*
            $( $(#[doc = $fdoc])* pub $ffield: $fty, )*
        }

        impl Default for ServeConfig {
            fn default() -> Self {
                Self { $( $field: $default, )* $( $ffield: $fdefault, )* }
            }
        }

        /// Options of `tether serve`. Every option is also a key of the
        /// `--config` file and a `TETHER_*` environment variable; precedence
        /// is flag > environment > file > default.
        #[derive(Debug, Clone, Default, clap::Args)]
        #[command(after_help = VALUE_SYNTAX_HELP)]
        pub struct ServeArgs {
            /// TOML file with the same keys as these flags (e.g. `keep-alive-timeout = "5s"`)
            #[arg(long, value_name = "FILE", env = "TETHER_CONFIG")]
            pub config: Option<PathBuf>,
            $(
                #[arg(long, help = help_text(stringify!($field), concat!($($doc),*)), $($arg)*)]
                pub $field: Option<$flag>,
            )*
        }

        impl ServeArgs {
            /// Overwrites every field of `config` that these arguments carry.
            // Each setting's conversion is a closure written in the list.
            #[allow(clippy::redundant_closure_call)]
            pub fn apply_to(self, config: &mut ServeConfig) {
                $(
                    if let Some(value) = self.$field {
                        let convert: fn($flag) -> $ty = $conv;
                        config.$field = convert(value);
                    }
                )*
            }
        }
    };
}

// One definition of every setting: its type and default, its flag and
// environment variable (the `#[arg]` line), its TOML key (the field's name
// in kebab case), its help text (the doc comment, with the default appended
// from `ServeConfig::default()`). `serve_settings!` makes `ServeConfig`, its
// `Default`, the clap `ServeArgs` and `ServeArgs::apply_to` from it. The
// settings under `file_only` are tables no flag can carry: only the
// `--config` file sets them.
serve_settings! {
    /// Address to listen on; port 0 picks a free port
    #[arg(value_name = "ADDR", env = "TETHER_LISTEN")]
    listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080)), flag SocketAddr => |v| v;

    /// Also serve plain HTTP (and WebSockets) on this Unix domain socket, e.g. behind a proxy on the same machine; a stale socket file there is removed first; the file gets the process's umask [default: none]
    #[arg(value_name = "PATH", env = "TETHER_LISTEN_UNIX")]
    listen_unix: Option<PathBuf> = None, flag PathBuf => Some;

    /// Serve HTTPS and WSS on --listen with this certificate chain (PEM, leaf first, then intermediates); needs --tls-key; reloaded without dropping connections on SIGHUP and when the file changes [default: none: plain HTTP]
    #[arg(value_name = "FILE", env = "TETHER_TLS_CERT")]
    tls_cert: Option<PathBuf> = None, flag PathBuf => Some;

    /// The private key of --tls-cert (PEM: PKCS#8, RSA or EC) [default: none]
    #[arg(value_name = "FILE", env = "TETHER_TLS_KEY")]
    tls_key: Option<PathBuf> = None, flag PathBuf => Some;

    /// A TLS client must complete its handshake within this, else it is disconnected
    #[arg(allow_hyphen_values = true, value_name = "DURATION", env = "TETHER_TLS_HANDSHAKE_TIMEOUT", value_parser = parse_duration)]
    #[serde(with = "serde_duration")]
    tls_handshake_timeout: Duration = Duration::from_secs(10), flag Duration => |v| v;

    /// Listen backlog: connections the kernel queues before they are accepted, capped by net.core.somaxconn [default: the system's somaxconn]
    #[arg(value_name = "N", env = "TETHER_BACKLOG", value_parser = clap::value_parser!(u32).range(1..))]
    backlog: Option<u32> = None, flag u32 => Some;

    /// Most connections open at once; beyond it the longest-idle parked keep-alive connection is closed to make room, or, with none, the new one gets 503 [default: no limit]
    #[arg(value_name = "N", env = "TETHER_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64> = None, flag u64 => Some;

    /// Most connections open at once from one client address; beyond it 503 [default: no limit]
    #[arg(value_name = "N", env = "TETHER_MAX_CONNECTIONS_PER_CLIENT", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections_per_client: Option<u64> = None, flag u64 => Some;

    /// Close an idle keep-alive connection after this long; the Keep-Alive header advertises it in whole seconds, rounded down (under a second: timeout=0)
    #[arg(allow_hyphen_values = true, value_name = "DURATION", env = "TETHER_KEEP_ALIVE_TIMEOUT", value_parser = parse_duration)]
    #[serde(with = "serde_duration")]
    keep_alive_timeout: Duration = Duration::from_secs(5), flag Duration => |v| v;

    /// Requests per connection; the last response carries `Connection: close`; 0 = unlimited
    #[arg(allow_hyphen_values = true, value_name = "N", env = "TETHER_KEEP_ALIVE_MAX")]
    keep_alive_max: u32 = 100, flag u32 => |v| v;

    /// `max` advertised in `Keep-Alive: timeout=T, max=M`: the configured maximum or the requests remaining
    #[arg(value_name = "MODE", env = "TETHER_KEEP_ALIVE_HEADER", value_enum)]
    keep_alive_header: KeepAliveHeaderMode = KeepAliveHeaderMode::Fixed, flag KeepAliveHeaderMode => |v| v;

    /// Send no `Keep-Alive` response header
    #[arg(value_name = "BOOL", env = "TETHER_NO_KEEP_ALIVE_HEADER", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    no_keep_alive_header: bool = false, flag bool => |v| v;

    /// A connection's maximum lifetime: after it, the next response carries `Connection: close` and an idle connection is closed; the Keep-Alive header never advertises more than is left of it
    #[arg(allow_hyphen_values = true, value_name = "DURATION", env = "TETHER_MAX_LIFETIME", value_parser = parse_opt_duration)]
    #[serde(with = "serde_opt_duration")]
    max_lifetime: Option<Duration> = None, flag OptDuration => |v| v.0;

    /// Park a keep-alive connection or an /echo WebSocket idle this long: no task, timer or reactor registration while it waits (64-bit Unix)
    #[arg(allow_hyphen_values = true, value_name = "DURATION", env = "TETHER_PARK_IDLE_AFTER", value_parser = parse_opt_duration)]
    #[serde(with = "serde_opt_duration")]
    park_idle_after: Option<Duration> = Some(Duration::from_secs(1)), flag OptDuration => |v| v.0;

    /// A request head must arrive within this after its first byte, else 408
    #[arg(allow_hyphen_values = true, value_name = "DURATION", env = "TETHER_HEADER_TIMEOUT", value_parser = parse_duration)]
    #[serde(with = "serde_duration")]
    header_timeout: Duration = Duration::from_secs(10), flag Duration => |v| v;

    /// Close a connection whose request body makes no progress for this long
    #[arg(allow_hyphen_values = true, value_name = "DURATION", env = "TETHER_BODY_TIMEOUT", value_parser = parse_duration)]
    #[serde(with = "serde_duration")]
    body_timeout: Duration = Duration::from_secs(30), flag Duration => |v| v;

    /// Close a connection (HTTP or WebSocket) whose output makes no progress for this long: the peer stopped reading
    #[arg(allow_hyphen_values = true, value_name = "DURATION", env = "TETHER_WRITE_TIMEOUT", value_parser = parse_duration)]
    #[serde(with = "serde_duration")]
    write_timeout: Duration = Duration::from_secs(30), flag Duration => |v| v;

    /// A request body must average this many bytes per second after a grace of --body-timeout, else 408; off for no minimum
    #[arg(allow_hyphen_values = true, value_name = "SIZE", env = "TETHER_BODY_MIN_RATE", value_parser = parse_opt_size)]
    #[serde(with = "serde_opt_size")]
    body_min_rate: Option<u64> = Some(500), flag OptSize => |v| v.0;

    /// Largest request body, 413 beyond
    #[arg(allow_hyphen_values = true, value_name = "SIZE", env = "TETHER_MAX_BODY", value_parser = parse_size)]
    #[serde(with = "serde_size")]
    max_body: u64 = 16 * MIB, flag u64 => |v| v;

    /// On SIGTERM/SIGINT, how long in-flight requests may still run
    #[arg(allow_hyphen_values = true, value_name = "DURATION", env = "TETHER_SHUTDOWN_TIMEOUT", value_parser = parse_duration)]
    #[serde(with = "serde_duration")]
    shutdown_timeout: Duration = Duration::from_secs(10), flag Duration => |v| v;

    /// On SIGTERM/SIGINT, keep idle connections open this long (at most the shutdown timeout) for a request already on its way (answered with `Connection: close`); off closes them at once
    #[arg(allow_hyphen_values = true, value_name = "DURATION", env = "TETHER_DRAIN", value_parser = parse_opt_duration)]
    #[serde(with = "serde_opt_duration")]
    drain: Option<Duration> = Some(Duration::from_secs(1)), flag OptDuration => |v| v.0;

    /// Serve static files from this directory [default: none]
    #[arg(value_name = "DIR", env = "TETHER_ROOT")]
    root: Option<PathBuf> = None, flag PathBuf => Some;

    /// Cache-Control sent with the static files of --root (200, 206 and 304 answers), e.g. `no-cache` or `public, max-age=3600`; without it caches revalidate by heuristics (Last-Modified, ETag) [default: none]
    #[arg(value_name = "VALUE", env = "TETHER_STATIC_CACHE_CONTROL", value_parser = parse_header_value)]
    static_cache_control: Option<String> = None, flag String => Some;

    /// Worker threads; 1 = single-threaded runtime [default: number of CPUs]
    #[arg(allow_hyphen_values = true, value_name = "N", env = "TETHER_WORKERS", value_parser = parse_workers)]
    workers: usize = default_workers(), flag usize => |v| v;

    /// Log filter: a level (trace, debug, info, warn, error, off) or comma-separated target=level directives, e.g. `info,tether::access=info`
    #[arg(value_name = "LEVEL", env = "TETHER_LOG", value_parser = parse_log_filter)]
    #[serde(deserialize_with = "deserialize_log_filter")]
    log: String = "info".to_owned(), flag String => |v| v;

    /// Log line format: text, or json (one JSON object per line: timestamp, level, fields with the message, target, and the spans it is in)
    #[arg(value_name = "FORMAT", env = "TETHER_LOG_FORMAT", value_enum)]
    log_format: LogFormat = LogFormat::Text, flag LogFormat => |v| v;

    /// Log one line per request (client, request line, status, length, time) at info on target tether::access
    #[arg(value_name = "BOOL", env = "TETHER_ACCESS_LOG", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    access_log: bool = false, flag bool => |v| v;

    /// Largest WebSocket message, close 1009 beyond
    #[arg(allow_hyphen_values = true, value_name = "SIZE", env = "TETHER_WS_MAX_MESSAGE", value_parser = parse_size)]
    #[serde(with = "serde_size")]
    ws_max_message: u64 = 16 * MIB, flag u64 => |v| v;

    /// WebSocket permessage-deflate: off, shared (no context takeover) or context (context takeover)
    #[arg(value_name = "MODE", env = "TETHER_WS_COMPRESSION", value_enum)]
    ws_compression: WsCompression = WsCompression::Shared, flag WsCompression => |v| v;

    /// Ping a WebSocket after this long without traffic
    #[arg(allow_hyphen_values = true, value_name = "DURATION", env = "TETHER_WS_PING_INTERVAL", value_parser = parse_opt_duration)]
    #[serde(with = "serde_opt_duration")]
    ws_ping_interval: Option<Duration> = None, flag OptDuration => |v| v.0;

    /// Close a WebSocket silent for this long
    #[arg(allow_hyphen_values = true, value_name = "DURATION", env = "TETHER_WS_IDLE_TIMEOUT", value_parser = parse_opt_duration)]
    #[serde(with = "serde_opt_duration")]
    ws_idle_timeout: Option<Duration> = None, flag OptDuration => |v| v.0;

    /// Origin allowed to open WebSockets; repeat or comma-separate for several [default: any origin]
    #[arg(value_name = "ORIGIN", env = "TETHER_ALLOWED_ORIGIN", value_delimiter = ',')]
    allowed_origin: Vec<String> = Vec::new(), flag Vec<String> => |v| v;

    /// Subprotocol /echo agrees to when a client offers it (the client's first offer that is listed wins); repeat or comma-separate for several [default: none]
    #[arg(value_name = "NAME", env = "TETHER_WS_SUBPROTOCOL", value_delimiter = ',')]
    ws_subprotocol: Vec<String> = Vec::new(), flag Vec<String> => |v| v;

    /// Bytes queued for sending on one WebSocket: a reply that does not fit closes it with 1008 (slow consumer)
    #[arg(allow_hyphen_values = true, value_name = "SIZE", env = "TETHER_WS_MAX_QUEUED", value_parser = parse_size)]
    #[serde(with = "serde_size")]
    ws_max_queued: u64 = 4 * MIB, flag u64 => |v| v;

    /// Where channels' offsets, epochs and history live: `memory` (this process), or Redis: `redis://HOST:PORT/DB`, several comma-separated to shard channels over independent instances
    #[arg(value_name = "BROKER", env = "TETHER_BROKER", value_parser = parse_broker)]
    broker: String = "memory".to_string(), flag String => |v| v;

    /// Publications kept per channel for recovery and polling (the newest); 0 keeps none
    #[arg(value_name = "N", env = "TETHER_HISTORY_SIZE")]
    history_size: u32 = 1000, flag u32 => |v| v;

    /// The oldest a kept publication may be
    #[arg(allow_hyphen_values = true, value_name = "DURATION", env = "TETHER_HISTORY_TTL", value_parser = parse_duration)]
    #[serde(with = "serde_duration")]
    history_ttl: Duration = Duration::from_secs(600), flag Duration => |v| v;

    /// The largest publication data (as compact JSON): 413 or an error answer beyond
    #[arg(allow_hyphen_values = true, value_name = "SIZE", env = "TETHER_MAX_PUBLISH_SIZE", value_parser = parse_size)]
    #[serde(with = "serde_size")]
    max_publish_size: u64 = 64 * 1024, flag u64 => |v| v;

    /// The most channels one /ws connection may subscribe to
    #[arg(value_name = "N", env = "TETHER_MAX_SUBSCRIPTIONS")]
    max_subscriptions: u32 = 128, flag u32 => |v| v;

    /// A key POST /publish/{channel} requires as `Authorization: Bearer KEY`; repeat for several (to rotate keys) [default: none, publishing is open]
    #[arg(value_name = "KEY", env = "TETHER_PUBLISH_KEY", hide_env_values = true)]
    publish_key: Secrets = Secrets::default(), flag Vec<String> => Secrets;

    /// A file of publisher keys, one per line (blank lines and lines starting with # are skipped), read at start, added to --publish-key [default: none]
    #[arg(value_name = "FILE", env = "TETHER_PUBLISH_KEY_FILE")]
    publish_key_file: Option<PathBuf> = None, flag PathBuf => Some;

    /// Clients must present a JWT signed with this HS256 secret (at least 32 bytes) on /ws, /sse/ and /poll/ [default: none, clients are not authenticated]
    #[arg(value_name = "SECRET", env = "TETHER_TOKEN_SECRET", hide_env_values = true)]
    token_secret: Secrets = Secrets::default(), flag String => |v| Secrets(vec![v]);

    /// Clients must present a JWT signed by the private half of this PEM public key (RSA: RS256, P-256: ES256) [default: none]
    #[arg(value_name = "FILE", env = "TETHER_TOKEN_PUBLIC_KEY")]
    token_public_key: Option<PathBuf> = None, flag PathBuf => Some;

    /// Commands (subscribe, unsubscribe, publish, auth) one /ws connection may send per second on average; beyond it `rate_limited`; 0 = no limit
    #[arg(value_name = "N", env = "TETHER_CLIENT_RATE")]
    client_rate: u32 = 20, flag u32 => |v| v;

    /// Commands one /ws connection may send at once above --client-rate
    #[arg(value_name = "N", env = "TETHER_CLIENT_BURST", value_parser = clap::value_parser!(u32).range(1..))]
    client_burst: u32 = 100, flag u32 => |v| v;

    /// Commands refused for --client-rate a /ws connection may send beyond one a second before it is closed with 1008
    #[arg(value_name = "N", env = "TETHER_CLIENT_STRIKES")]
    client_strikes: u32 = 10, flag u32 => |v| v;

    /// Connections (/ws, SSE streams, held long polls) one token subject may hold on this node; beyond it `too_many_connections` (429, or 1008 on /ws); 0 = no limit
    #[arg(value_name = "N", env = "TETHER_MAX_CONNECTIONS_PER_SUBJECT")]
    max_connections_per_subject: u32 = 64, flag u32 => |v| v;

    /// Serve GET /dev/token, which signs a client token for anyone who asks (for the demo page and local development): needs --token-secret and a loopback --listen address
    #[arg(value_name = "BOOL", env = "TETHER_DEV_TOKENS", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    dev_tokens: bool = false, flag bool => |v| v;

    /// How often an idle SSE stream gets a keep-alive comment
    #[arg(allow_hyphen_values = true, value_name = "DURATION", env = "TETHER_SSE_KEEP_ALIVE", value_parser = parse_duration)]
    #[serde(with = "serde_duration")]
    sse_keep_alive: Duration = Duration::from_secs(15), flag Duration => |v| v;

    /// Run the demo's publishers (a ticker several times a second, the server's counters every second) for the page at /
    #[arg(value_name = "BOOL", env = "TETHER_DEMO", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    demo: bool = true, flag bool => |v| v;

    file_only {
        /// Channel namespaces (`[[namespace]]` tables: see `NamespaceConfig`).
        namespace: Vec<NamespaceConfig> = Vec::new();
    }
}

/// One `[[namespace]]` table of the `--config` file: the rules of the
/// channels whose names start with `prefix` (the longest matching prefix
/// wins; other channels follow the server-wide settings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NamespaceConfig {
    /// The channel-name prefix, e.g. `chat:`.
    pub prefix: String,
    /// Clients without a token may subscribe (when tokens are configured).
    #[serde(default)]
    pub anonymous: bool,
    /// Clients may publish (within their token's grants); `false` leaves
    /// publishing to `POST /publish`.
    #[serde(default = "yes")]
    pub publish: bool,
    /// Presence (join/leave events, member counts) for subscribers that
    /// ask for it.
    #[serde(default = "yes")]
    pub presence: bool,
    /// Publications kept per channel [default: history-size].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_size: Option<u32>,
    /// The oldest a kept publication may be [default: history-ttl].
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_some_duration")]
    pub history_ttl: Option<Duration>,
}

fn yes() -> bool {
    true
}

/// A flag's help: its doc text, then `[default: …]` from
/// `ServeConfig::default()` as the config file would write it (unless the
/// text states its default itself).
fn help_text(field: &str, doc: &str) -> String {
    let doc = doc.trim();
    if doc.contains("[default:") {
        return doc.to_owned();
    }
    let key = field.replace('_', "-");
    let defaults = toml::Table::try_from(ServeConfig::default()).unwrap_or_default();
    let text = match defaults.get(&key) {
        Some(toml::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "off".to_owned(),
    };
    format!("{doc} [default: {text}]")
}

const MIB: u64 = 1024 * 1024;

/// The number of CPUs (at least 1).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl ServeConfig {
    /// Parses a TOML document (unknown keys are an error), then validates it.
    pub fn from_toml_str(text: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Checks what the types alone do not.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (key, d) in [
            ("keep-alive-timeout", self.keep_alive_timeout),
            ("header-timeout", self.header_timeout),
            ("body-timeout", self.body_timeout),
            ("write-timeout", self.write_timeout),
            ("shutdown-timeout", self.shutdown_timeout),
            ("tls-handshake-timeout", self.tls_handshake_timeout),
            ("history-ttl", self.history_ttl),
            ("sse-keep-alive", self.sse_keep_alive),
        ] {
            check_duration(d, false).with_context(|| format!("invalid {key}"))?;
        }
        for (key, d) in [
            ("max-lifetime", self.max_lifetime),
            ("park-idle-after", self.park_idle_after),
            ("ws-ping-interval", self.ws_ping_interval),
            ("ws-idle-timeout", self.ws_idle_timeout),
            ("drain", self.drain),
        ] {
            if let Some(d) = d {
                check_duration(d, false).with_context(|| format!("invalid {key}"))?;
            }
        }
        if let Some(value) = &self.static_cache_control {
            parse_header_value(value).context("invalid static-cache-control")?;
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => bail!("tls-cert is given without tls-key: TLS needs both"),
            (None, Some(_)) => bail!("tls-key is given without tls-cert: TLS needs both"),
            _ => {}
        }
        if !(1..=4096).contains(&self.workers) {
            bail!("invalid workers: must be from 1 to 4096");
        }
        for (key, size) in [
            ("ws-max-message", self.ws_max_message),
            ("ws-max-queued", self.ws_max_queued),
            ("max-publish-size", self.max_publish_size),
        ] {
            if size == 0 {
                bail!("invalid {key}: must be at least 1 byte");
            }
        }
        parse_broker(&self.broker).map_err(|e| anyhow::anyhow!("invalid broker: {e}"))?;
        if self.max_subscriptions == 0 {
            bail!("invalid max-subscriptions: must be at least 1");
        }
        if !self.token_secret.0.is_empty() && self.token_public_key.is_some() {
            bail!("token-secret and token-public-key: give one of them, not both");
        }
        for ns in &self.namespace {
            if let Some(ttl) = ns.history_ttl {
                check_duration(ttl, false)
                    .with_context(|| format!("invalid history-ttl of namespace {:?}", ns.prefix))?;
            }
        }
        self.namespaces().context("invalid namespace")?;
        if let Some(bad) = self.ws_subprotocol.iter().find(|p| !is_token(p)) {
            bail!("invalid ws-subprotocol {bad:?}: a subprotocol is a token (letters, digits and !#$%&'*+-.^_`|~)");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/// Secret values (publisher keys): kept and written like a list of
/// strings, but `Debug` never shows them.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secrets(pub Vec<String>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

impl ServeConfig {
    /// The client-token verifier these settings ask for, if any.
    pub fn token_verifier(&self) -> anyhow::Result<Option<tether::hub::TokenVerifier>> {
        if let Some(secret) = self.token_secret.0.first() {
            let v = tether::hub::TokenVerifier::hs256(secret.as_bytes()).context("invalid token-secret")?;
            return Ok(Some(v));
        }
        let Some(path) = &self.token_public_key else {
            return Ok(None);
        };
        let pem = std::fs::read(path).with_context(|| format!("reading the token public key {}", path.display()))?;
        let v = tether::hub::TokenVerifier::public_key_pem(&pem)
            .with_context(|| format!("the token public key {}", path.display()))?;
        Ok(Some(v))
    }

    /// The history limits of channels outside every namespace.
    pub fn history(&self) -> tether::hub::HistoryLimits {
        tether::hub::HistoryLimits {
            size: self.history_size as usize,
            ttl: self.history_ttl,
        }
    }

    /// The `[[namespace]]` tables as the hub's rules (over the server-wide
    /// defaults: a token needed to subscribe, clients may publish, presence
    /// on, `history-size` and `history-ttl`).
    pub fn namespaces(&self) -> anyhow::Result<tether::hub::Namespaces> {
        let list = self
            .namespace
            .iter()
            .map(|ns| tether::hub::Namespace {
                prefix: ns.prefix.clone(),
                anonymous: ns.anonymous,
                client_publish: ns.publish,
                presence: ns.presence,
                history: (ns.history_size.is_some() || ns.history_ttl.is_some()).then(|| tether::hub::HistoryLimits {
                    size: ns.history_size.map_or(self.history_size as usize, |n| n as usize),
                    ttl: ns.history_ttl.unwrap_or(self.history_ttl),
                }),
            })
            .collect();
        Ok(tether::hub::Namespaces::new(tether::hub::Namespace::new(""), list)?)
    }

    /// Every publisher key: `--publish-key`s, then `--publish-key-file`'s lines.
    pub fn publish_keys(&self) -> anyhow::Result<Vec<String>> {
        let mut keys = self.publish_key.0.clone();
        if let Some(path) = &self.publish_key_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the publisher keys in {}", path.display()))?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
        Ok(keys)
    }
}

/// A size that can be switched off (`off` or `0`): `OptSize(None)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptSize(pub Option<u64>);

/// Parses a size that may be switched off: `off` or `0` give `None`.
pub fn parse_opt_size(input: &str) -> Result<OptSize, ValueError> {
    if input.trim().eq_ignore_ascii_case("off") {
        return Ok(OptSize(None));
    }
    parse_size(input).map(|n| OptSize((n > 0).then_some(n)))
}

/// A duration that can be switched off (`off` or `0`): `OptDuration(None)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptDuration(pub Option<Duration>);

const VALUE_SYNTAX_HELP: &str = "\
Every option is also a key of the --config file (same name, no dashes, e.g.
keep-alive-timeout = \"2s\") and an environment variable (TETHER_KEEP_ALIVE_TIMEOUT=2s).
Precedence: flag > environment > file > default.

DURATION: a number with an optional unit ms, s, m, h; a bare number is seconds
  (5, 2.5, 500ms, 5s, 1m). Options whose default is off also accept `off` or 0.
SIZE: bytes with an optional binary unit (1048576, 64K, 64KiB, 16M, 16MiB, 1G, 1GiB).";

/// The effective configuration: defaults, then the `--config` file if any,
/// then environment variables and flags (already merged by clap).
pub fn load(args: ServeArgs) -> anyhow::Result<ServeConfig> {
    let mut config = match &args.config {
        Some(path) => ServeConfig::from_file(path)?,
        None => ServeConfig::default(),
    };
    args.apply_to(&mut config);
    config.validate()?;
    Ok(config)
}

// ---------------------------------------------------------------------------
// Durations and sizes
// ---------------------------------------------------------------------------

/// Why a duration or size was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError(String);

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ValueError {}

fn value_error(input: &str, why: &str) -> ValueError {
    ValueError(format!("invalid value {input:?}: {why}"))
}

const DURATION_SYNTAX: &str = "expected a number with an optional unit ms, s, m or h (e.g. 5, 2.5, 500ms, 5s, 1m)";

/// Parses a duration that must be positive: `5`, `2.5`, `500ms`, `5s`, `1m`, `1h`.
pub fn parse_duration(input: &str) -> Result<Duration, ValueError> {
    let d = parse_duration_value(input)?;
    check_duration(d, false).map_err(|e| value_error(input, &e.to_string()))?;
    Ok(d)
}

/// Parses a duration that may be switched off: `off` or `0` give `None`.
pub fn parse_opt_duration(input: &str) -> Result<OptDuration, ValueError> {
    if input.trim().eq_ignore_ascii_case("off") {
        return Ok(OptDuration(None));
    }
    let d = parse_duration_value(input)?;
    check_duration(d, true).map_err(|e| value_error(input, &e.to_string()))?;
    Ok(OptDuration((!d.is_zero()).then_some(d)))
}

fn check_duration(d: Duration, zero_ok: bool) -> anyhow::Result<()> {
    if d.is_zero() && !zero_ok {
        bail!("must be greater than 0");
    }
    if d > MAX_DURATION {
        bail!("must be at most 365 days");
    }
    Ok(())
}

/// The grammar alone: digits, an optional fraction, an optional unit.
fn parse_duration_value(input: &str) -> Result<Duration, ValueError> {
    let s = input.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim_start());
    let unit_nanos: u128 = match unit {
        "" | "s" => 1_000_000_000,
        "ms" => 1_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ if number.is_empty() => {
            let why = if s.starts_with('-') {
                "must not be negative"
            } else {
                DURATION_SYNTAX
            };
            return Err(value_error(input, why));
        }
        _ => return Err(value_error(input, &format!("unknown unit {unit:?}; {DURATION_SYNTAX}"))),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(value_error(input, DURATION_SYNTAX));
    }
    // Integer part up to 1e18 of any unit; exact decimal arithmetic in nanoseconds.
    if int.len() > 18 || frac.len() > 18 {
        return Err(value_error(input, "too large or too precise"));
    }
    let int: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| value_error(input, DURATION_SYNTAX))?
    };
    let mut nanos = int * unit_nanos;
    if !frac.is_empty() {
        let digits: u128 = frac.parse().map_err(|_| value_error(input, DURATION_SYNTAX))?;
        nanos += digits * unit_nanos / 10u128.pow(frac.len() as u32);
    }
    if nanos > MAX_DURATION.as_nanos() {
        return Err(value_error(input, "must be at most 365 days"));
    }
    // Fits: at most 365 days in nanoseconds is far below u64::MAX.
    Ok(Duration::from_nanos(nanos as u64))
}

/// Checks a log filter: each comma-separated directive is a level
/// (`trace`, `debug`, `info`, `warn`, `error`, `off`), `target=level`, or a
/// target of this program (`tether`, `tether_proto`, `tether::…`). A bare
/// word like `verbose` would be taken by `tracing` as a target nobody logs
/// to, and silently turn logging off: it is refused instead.
pub fn parse_log_filter(input: &str) -> Result<String, ValueError> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for directive in input.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let ok = match directive.split_once('=') {
            Some((_, level)) => LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level.trim())),
            None => {
                LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive))
                    || ["tether", "tether_proto", "tether_cli"].contains(&directive)
                    || directive.starts_with("tether::")
                    || directive.starts_with("tether_proto::")
            }
        };
        if !ok {
            return Err(value_error(
                input,
                &format!("{directive:?} is not a level (trace, debug, info, warn, error, off) or target=level"),
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(input).map_err(|e| value_error(input, &e.to_string()))?;
    Ok(input.to_owned())
}

/// Checks a header field value: visible ASCII and spaces, not empty.
pub fn parse_header_value(input: &str) -> Result<String, ValueError> {
    let trimmed = input.trim();
    if trimmed.is_empty() || !trimmed.bytes().all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic()) {
        return Err(value_error(
            input,
            "expected a header value (visible ASCII), e.g. `no-cache`",
        ));
    }
    Ok(trimmed.to_owned())
}

fn deserialize_log_filter<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    parse_log_filter(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// Checks a broker: `memory`, or one or more comma-separated `redis://` URLs.
pub fn parse_broker(input: &str) -> Result<String, ValueError> {
    let s = input.trim();
    if s == "memory" {
        return Ok(s.to_string());
    }
    for url in s.split(',') {
        let url = url.trim();
        if !url.starts_with("redis://") || url.len() == "redis://".len() {
            return Err(value_error(
                input,
                "expected `memory` or redis://HOST:PORT[/DB] URLs, comma-separated",
            ));
        }
    }
    Ok(s.to_string())
}

/// An RFC 9110 token (what a subprotocol name must be, RFC 6455 §4.1).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a worker count: 1 to 4096.
pub fn parse_workers(input: &str) -> Result<usize, ValueError> {
    match input.trim().parse::<usize>() {
        Ok(n @ 1..=4096) => Ok(n),
        _ => Err(value_error(input, "expected a number of threads from 1 to 4096")),
    }
}

/// A duration as the config and help text write it: `5s`, `500ms`, `1m`, `2.5s`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    for (unit, suffix) in [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
    ] {
        if nanos / unit * unit == nanos {
            return format!("{}{suffix}", nanos / unit);
        }
    }
    // Exact: the nanoseconds as a decimal number of seconds.
    let s = format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000);
    format!("{}s", s.trim_end_matches('0'))
}

/// Parses a size in bytes: `1048576`, `64K`, `64KiB`, `16M`, `16MiB`, `1G`, `1GiB`.
pub fn parse_size(input: &str) -> Result<u64, ValueError> {
    const SYNTAX: &str =
        "expected a whole number of bytes with an optional unit K, KiB, M, MiB, G or GiB (e.g. 1048576, 64KiB, 16MiB)";
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim_start());
    if number.is_empty() {
        let why = if s.starts_with('-') {
            "must not be negative"
        } else {
            SYNTAX
        };
        return Err(value_error(input, why));
    }
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" | "mb" | "gb" => {
            return Err(value_error(
                input,
                "decimal units are ambiguous; use K/KiB, M/MiB, G/GiB (powers of 1024) or plain bytes",
            ))
        }
        _ => return Err(value_error(input, SYNTAX)),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| value_error(input, "too large"))
}

/// A size as the config writes it: the largest binary unit that divides it.
pub fn format_size(bytes: u64) -> String {
    match bytes {
        0 => "0".to_owned(),
        b if b.trailing_zeros() >= 30 => format!("{}GiB", b >> 30),
        b if b.trailing_zeros() >= 20 => format!("{}MiB", b >> 20),
        b if b.trailing_zeros() >= 10 => format!("{}KiB", b >> 10),
        b => b.to_string(),
    }
}

/// In TOML, a number of seconds (integer or float) or a duration string.
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationRepr {
    Int(i64),
    Float(f64),
    Str(String),
}

impl DurationRepr {
    fn into_text(self) -> String {
        match self {
            DurationRepr::Int(n) => n.to_string(),
            // `{}` of an f64 never uses exponent notation; NaN/inf/negatives
            // are rejected by the parser.
            DurationRepr::Float(x) => x.to_string(),
            DurationRepr::Str(s) => s,
        }
    }
}

mod serde_duration {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = DurationRepr::deserialize(d)?.into_text();
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

mod serde_opt_duration {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = DurationRepr::deserialize(d)?.into_text();
        parse_opt_duration(&text).map(|d| d.0).map_err(serde::de::Error::custom)
    }
}

/// A duration that is either given or absent (absent: the server-wide one).
mod serde_some_duration {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        serde_duration::serialize(&d.unwrap_or_default(), s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        serde_duration::deserialize(d).map(Some)
    }
}

mod serde_opt_size {
    use super::*;

    pub fn serialize<S: serde::Serializer>(bytes: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(n) => s.serialize_str(&format_size(*n)),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let n: u64 = match super::serde_size::deserialize_text(d)? {
            text if text.trim().eq_ignore_ascii_case("off") => return Ok(None),
            text => parse_size(&text).map_err(serde::de::Error::custom)?,
        };
        Ok((n > 0).then_some(n))
    }
}

mod serde_size {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum SizeRepr {
        Int(i64),
        Str(String),
    }

    pub fn serialize<S: serde::Serializer>(bytes: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size(*bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        parse_size(&deserialize_text(d)?).map_err(serde::de::Error::custom)
    }

    /// A size as written in the file: an integer or a string.
    pub fn deserialize_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(match SizeRepr::deserialize(d)? {
            SizeRepr::Int(n) => n.to_string(),
            SizeRepr::Str(s) => s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::sync::Mutex;

    /// clap reads `TETHER_*` from the process environment while parsing;
    /// every test that parses holds this lock so the one test that sets
    /// variables cannot leak them into another.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    #[derive(Debug, Parser)]
    #[command(name = "serve")]
    struct Cli {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(argv: &[&str]) -> Result<ServeArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("serve").chain(argv.iter().copied())).map(|c| c.args)
    }

    fn lock() -> std::sync::MutexGuard<'static, ()> {
        ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults() {
        let _g = lock();
        let c = load(parse(&[]).unwrap()).unwrap();
        assert_eq!(c, ServeConfig::default());
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.keep_alive_timeout, secs(5));
        assert_eq!(c.keep_alive_max, 100);
        assert_eq!(c.keep_alive_header, KeepAliveHeaderMode::Fixed);
        assert!(!c.no_keep_alive_header);
        assert_eq!(c.max_lifetime, None);
        assert_eq!(c.header_timeout, secs(10));
        assert_eq!(c.body_timeout, secs(30));
        assert_eq!(c.max_body, 16 << 20);
        assert_eq!(c.shutdown_timeout, secs(10));
        assert_eq!(c.root, None);
        assert_eq!(c.static_cache_control, None);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.workers, default_workers());
        assert!(c.workers >= 1);
        assert_eq!(c.log, "info");
        assert_eq!(c.ws_max_message, 16 << 20);
        assert_eq!(c.ws_compression, WsCompression::Shared);
        assert_eq!(c.ws_ping_interval, None);
        assert_eq!(c.ws_idle_timeout, None);
        assert!(c.allowed_origin.is_empty());
        assert_eq!(c.ws_max_queued, 4 << 20);
    }

    #[test]
    fn namespaces_come_from_the_file() {
        let c = ServeConfig::from_toml_str(
            r#"
            history-size = 50
            [[namespace]]
            prefix = "chat:"
            anonymous = true
            history-ttl = "1m"
            [[namespace]]
            prefix = "ticker:"
            publish = false
            presence = false
            history-size = 5
            "#,
        )
        .unwrap();
        let ns = c.namespaces().unwrap();
        let ch = |n: &str| tether::hub::ChannelName::new(n).unwrap();
        let chat = ns.of(&ch("chat:room1"));
        assert!(chat.anonymous && chat.client_publish && chat.presence);
        assert_eq!(
            ns.history(&ch("chat:room1"), c.history()),
            tether::hub::HistoryLimits {
                size: 50,
                ttl: secs(60)
            }
        );
        let ticker = ns.of(&ch("ticker:X"));
        assert!(!ticker.anonymous && !ticker.client_publish && !ticker.presence);
        assert_eq!(ns.history(&ch("ticker:X"), c.history()).size, 5);
        assert_eq!(ns.of(&ch("news")).prefix, "");
        // The file round-trips.
        let again = ServeConfig::from_toml_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
        for bad in [
            "[[namespace]]\nprefix = \"user:\"\nanonymous = true",
            "[[namespace]]\nprefix = \"a:\"\n[[namespace]]\nprefix = \"a:\"",
            "[[namespace]]\nprefix = \"a/\"",
            "[[namespace]]\nprefix = \"a:\"\nhistory-ttl = \"0s\"",
            "[[namespace]]\nprefix = \"a:\"\npublic = true",
            "[[namespace]]\nanonymous = true",
        ] {
            assert!(ServeConfig::from_toml_str(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_and_unix_socket_flags() {
        let _g = lock();
        let c = load(
            parse(&[
                "--tls-cert",
                "/etc/tether/cert.pem",
                "--tls-key",
                "/etc/tether/key.pem",
                "--tls-handshake-timeout",
                "3s",
                "--listen-unix",
                "/run/tether.sock",
            ])
            .unwrap(),
        )
        .unwrap();
        assert_eq!(c.tls_cert, Some(PathBuf::from("/etc/tether/cert.pem")));
        assert_eq!(c.tls_key, Some(PathBuf::from("/etc/tether/key.pem")));
        assert_eq!(c.tls_handshake_timeout, secs(3));
        assert_eq!(c.listen_unix, Some(PathBuf::from("/run/tether.sock")));
        let d = ServeConfig::default();
        assert_eq!((d.tls_cert, d.tls_key, d.listen_unix), (None, None, None));
        assert_eq!(d.tls_handshake_timeout, secs(10));
        // Both or neither.
        let e = load(parse(&["--tls-cert", "c.pem"]).unwrap()).unwrap_err().to_string();
        assert!(e.contains("tls-key"), "{e}");
        let e = load(parse(&["--tls-key", "k.pem"]).unwrap()).unwrap_err().to_string();
        assert!(e.contains("tls-cert"), "{e}");
        let e = parse(&["--tls-handshake-timeout", "0"]).unwrap_err().to_string();
        assert!(e.contains("--tls-handshake-timeout"), "{e}");
        // In a file too.
        let c = ServeConfig::from_toml_str("tls-cert = \"c.pem\"\ntls-key = \"k.pem\"\ntls-handshake-timeout = 2\n")
            .unwrap();
        assert_eq!(c.tls_handshake_timeout, secs(2));
        assert!(ServeConfig::from_toml_str("tls-cert = \"c.pem\"\n").is_err());
    }

    #[test]
    fn flags_set_every_field() {
        let _g = lock();
        let args = parse(&[
            "--listen",
            "0.0.0.0:0",
            "--keep-alive-timeout",
            "500ms",
            "--keep-alive-max",
            "0",
            "--keep-alive-header",
            "remaining",
            "--no-keep-alive-header",
            "--max-lifetime",
            "1m",
            "--header-timeout",
            "2.5",
            "--body-timeout",
            "7s",
            "--max-body",
            "1024",
            "--shutdown-timeout",
            "1",
            "--root",
            "/srv/www",
            "--static-cache-control",
            "public, max-age=60",
            "--workers",
            "1",
            "--log",
            "debug",
            "--log-format",
            "json",
            "--ws-max-message",
            "64KiB",
            "--ws-compression",
            "context",
            "--ws-ping-interval",
            "20s",
            "--ws-idle-timeout",
            "off",
            "--allowed-origin",
            "https://a.example",
            "--allowed-origin",
            "https://b.example,https://c.example",
            "--ws-max-queued",
            "1M",
        ])
        .unwrap();
        let c = load(args).unwrap();
        assert_eq!(c.listen, "0.0.0.0:0".parse().unwrap());
        assert_eq!(c.keep_alive_timeout, ms(500));
        assert_eq!(c.keep_alive_max, 0);
        assert_eq!(c.keep_alive_header, KeepAliveHeaderMode::Remaining);
        assert!(c.no_keep_alive_header);
        assert_eq!(c.max_lifetime, Some(secs(60)));
        assert_eq!(c.header_timeout, ms(2500));
        assert_eq!(c.body_timeout, secs(7));
        assert_eq!(c.max_body, 1024);
        assert_eq!(c.shutdown_timeout, secs(1));
        assert_eq!(c.root, Some(PathBuf::from("/srv/www")));
        assert_eq!(c.static_cache_control.as_deref(), Some("public, max-age=60"));
        assert_eq!(c.workers, 1);
        assert_eq!(c.log, "debug");
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(parse(&["--static-cache-control", "bad\u{1}value"]).is_err());
        assert!(parse(&["--log-format", "xml"]).is_err());
        assert!(ServeConfig::from_toml_str("static-cache-control = \"\"\n").is_err());
        assert_eq!(
            ServeConfig::from_toml_str("log-format = \"json\"\n")
                .unwrap()
                .log_format,
            LogFormat::Json
        );
        assert_eq!(c.ws_max_message, 64 << 10);
        assert_eq!(c.ws_compression, WsCompression::Context);
        assert_eq!(c.ws_ping_interval, Some(secs(20)));
        assert_eq!(c.ws_idle_timeout, None);
        assert_eq!(
            c.allowed_origin,
            ["https://a.example", "https://b.example", "https://c.example"]
        );
        assert_eq!(c.ws_max_queued, 1 << 20);
    }

    #[test]
    fn bad_flags_are_rejected() {
        let _g = lock();
        for argv in [
            &["--listen", "localhost"][..],
            &["--keep-alive-timeout", "-1s"],
            &["--keep-alive-timeout", "0"],
            &["--keep-alive-timeout", "off"],
            &["--keep-alive-max", "-1"],
            &["--keep-alive-header", "sometimes"],
            &["--no-keep-alive-header=maybe"],
            &["--max-lifetime", "forever"],
            &["--max-body", "1.5MiB"],
            &["--workers", "0"],
            &["--ws-compression", "zstd"],
            &["--unknown-flag"],
        ] {
            assert!(parse(argv).is_err(), "{argv:?} accepted");
        }
        let err = parse(&["--header-timeout", "nan"]).unwrap_err().to_string();
        assert!(err.contains("--header-timeout") && err.contains("nan"), "{err}");
    }

    #[test]
    fn log_filters_that_would_silence_logging_are_refused() {
        for good in [
            "info",
            "debug",
            "OFF",
            "info,tether::access=info",
            "tether=trace",
            "tether_proto::ws=debug",
            "warn,tether=debug",
        ] {
            assert_eq!(parse_log_filter(good).as_deref(), Ok(good), "{good}");
        }
        for bad in ["verbose", "info,loud", "tether=loud"] {
            let err = parse_log_filter(bad).unwrap_err().to_string();
            assert!(err.contains("not a level"), "{bad}: {err}");
        }
        assert!(parse_log_filter("=info").is_err(), "tracing's own syntax check");
        let _g = lock();
        assert!(parse(&["--log", "verbose"]).is_err());
        assert!(ServeConfig::from_toml_str("log = \"verbose\"\n").is_err());
    }

    #[test]
    fn no_keep_alive_header_forms() {
        let _g = lock();
        assert_eq!(parse(&[]).unwrap().no_keep_alive_header, None);
        assert_eq!(
            parse(&["--no-keep-alive-header"]).unwrap().no_keep_alive_header,
            Some(true)
        );
        assert_eq!(
            parse(&["--no-keep-alive-header=false"]).unwrap().no_keep_alive_header,
            Some(false)
        );
    }

    #[test]
    fn toml_file() {
        let c = ServeConfig::from_toml_str(
            r#"
            listen = "127.0.0.1:0"
            keep-alive-timeout = "2s"
            keep-alive-max = 3
            keep-alive-header = "remaining"
            no-keep-alive-header = true
            max-lifetime = 90
            header-timeout = 1.5
            body-timeout = "1m"
            max-body = 1024
            shutdown-timeout = "250ms"
            root = "/tmp"
            workers = 2
            log = "warn"
            ws-max-message = "1MiB"
            ws-compression = "off"
            ws-ping-interval = "off"
            ws-idle-timeout = "30s"
            allowed-origin = ["https://a.example"]
            ws-max-queued = "64K"
            "#,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.keep_alive_timeout, secs(2));
        assert_eq!(c.keep_alive_max, 3);
        assert_eq!(c.keep_alive_header, KeepAliveHeaderMode::Remaining);
        assert!(c.no_keep_alive_header);
        assert_eq!(c.max_lifetime, Some(secs(90)));
        assert_eq!(c.header_timeout, ms(1500));
        assert_eq!(c.body_timeout, secs(60));
        assert_eq!(c.max_body, 1024);
        assert_eq!(c.shutdown_timeout, ms(250));
        assert_eq!(c.root, Some(PathBuf::from("/tmp")));
        assert_eq!(c.workers, 2);
        assert_eq!(c.log, "warn");
        assert_eq!(c.ws_max_message, 1 << 20);
        assert_eq!(c.ws_compression, WsCompression::Off);
        assert_eq!(c.ws_ping_interval, None);
        assert_eq!(c.ws_idle_timeout, Some(secs(30)));
        assert_eq!(c.allowed_origin, ["https://a.example"]);
        assert_eq!(c.ws_max_queued, 64 << 10);
    }

    #[test]
    fn toml_partial_file_keeps_defaults() {
        let c = ServeConfig::from_toml_str("keep-alive-max = 7\n").unwrap();
        assert_eq!(
            c,
            ServeConfig {
                keep_alive_max: 7,
                ..ServeConfig::default()
            }
        );
        assert_eq!(ServeConfig::from_toml_str("").unwrap(), ServeConfig::default());
    }

    #[test]
    fn toml_rejects_unknown_and_bad_values() {
        for text in [
            "keep-alive-timout = \"5s\"\n",  // typo
            "keep_alive_timeout = \"5s\"\n", // snake case
            "config = \"other.toml\"\n",     // a file cannot name a file
            "[server]\nlisten = \"127.0.0.1:1\"\n",
            "keep-alive-timeout = -1\n",
            "keep-alive-timeout = 0\n",
            "keep-alive-timeout = nan\n",
            "keep-alive-timeout = inf\n",
            "keep-alive-timeout = \"soon\"\n",
            "keep-alive-max = \"3\"\n",
            "keep-alive-max = -1\n",
            "max-body = \"16MB\"\n",
            "max-body = -5\n",
            "workers = 0\n",
            "listen = \"nowhere\"\n",
            "ws-compression = \"yes\"\n",
            "allowed-origin = \"https://a.example\"\n",
            "ws-subprotocol = [\"chat v2\"]\n",
            "ws-subprotocol = [\"\"]\n",
        ] {
            assert!(ServeConfig::from_toml_str(text).is_err(), "accepted: {text}");
        }
        let c = ServeConfig::from_toml_str("ws-subprotocol = [\"chat.v2\", \"mqtt\"]\n").unwrap();
        assert_eq!(c.ws_subprotocol, ["chat.v2", "mqtt"]);
        let err = ServeConfig::from_toml_str("keep-alive-timout = 5\n").unwrap_err();
        assert!(format!("{err:#}").contains("keep-alive-timout"), "{err:#}");
    }

    #[test]
    fn toml_round_trip() {
        let c = ServeConfig {
            max_lifetime: Some(ms(1500)),
            ws_ping_interval: Some(secs(120)),
            allowed_origin: vec!["https://x.example".into()],
            max_body: 1000,
            ..ServeConfig::default()
        };
        let text = toml::to_string(&c).unwrap();
        assert_eq!(ServeConfig::from_toml_str(&text).unwrap(), c, "{text}");
    }

    /// flag > env > file > default, each layer checked on a different key
    /// and on one key set in all layers.
    #[test]
    fn precedence_file_env_flag() {
        let _g = lock();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tether.toml");
        std::fs::write(
            &path,
            "keep-alive-timeout = \"1s\"\nkeep-alive-max = 1\nheader-timeout = 3\nlog = \"warn\"\n",
        )
        .unwrap();

        // File alone over defaults.
        let c = load(parse(&["--config", path.to_str().unwrap()]).unwrap()).unwrap();
        assert_eq!(c.keep_alive_timeout, secs(1));
        assert_eq!(c.keep_alive_max, 1);
        assert_eq!(c.header_timeout, secs(3));
        assert_eq!(c.log, "warn");
        assert_eq!(c.body_timeout, secs(30)); // default

        let vars = [
            ("TETHER_CONFIG", path.to_str().unwrap()),
            ("TETHER_KEEP_ALIVE_TIMEOUT", "2s"),
            ("TETHER_KEEP_ALIVE_MAX", "2"),
            ("TETHER_LOG", "debug"),
            ("TETHER_ALLOWED_ORIGIN", "https://a.example,https://b.example"),
            ("TETHER_NO_KEEP_ALIVE_HEADER", "true"),
        ];
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        let result = std::panic::catch_unwind(|| {
            // Env over file (the file itself named by TETHER_CONFIG).
            let c = load(parse(&[]).unwrap()).unwrap();
            assert_eq!(c.keep_alive_timeout, secs(2));
            assert_eq!(c.keep_alive_max, 2);
            assert_eq!(c.header_timeout, secs(3)); // file
            assert_eq!(c.log, "debug");
            assert_eq!(c.allowed_origin, ["https://a.example", "https://b.example"]);
            assert!(c.no_keep_alive_header);

            // Flags over env.
            let c = load(
                parse(&[
                    "--keep-alive-timeout",
                    "3s",
                    "--log",
                    "trace",
                    "--allowed-origin",
                    "https://c.example",
                    "--no-keep-alive-header=false",
                ])
                .unwrap(),
            )
            .unwrap();
            assert_eq!(c.keep_alive_timeout, secs(3));
            assert_eq!(c.keep_alive_max, 2); // env
            assert_eq!(c.header_timeout, secs(3)); // file
            assert_eq!(c.body_timeout, secs(30)); // default
            assert_eq!(c.log, "trace");
            assert_eq!(c.allowed_origin, ["https://c.example"]);
            assert!(!c.no_keep_alive_header);

            // A bad env value is reported with the variable's flag.
            std::env::set_var("TETHER_KEEP_ALIVE_TIMEOUT", "-2s");
            let err = parse(&[]).unwrap_err().to_string();
            assert!(err.contains("keep-alive-timeout"), "{err}");
        });
        for (k, _) in vars {
            std::env::remove_var(k);
        }
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn load_reports_file_errors_with_path() {
        let _g = lock();
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let err = load(parse(&["--config", missing.to_str().unwrap()]).unwrap()).unwrap_err();
        assert!(format!("{err:#}").contains("missing.toml"), "{err:#}");

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "listen = 8080\n").unwrap();
        let err = load(parse(&["--config", bad.to_str().unwrap()]).unwrap()).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("bad.toml") && msg.contains("listen"), "{msg}");
    }

    #[test]
    fn durations() {
        for (text, want) in [
            ("5", secs(5)),
            ("2.5", ms(2500)),
            ("0.1", ms(100)),
            (".5", ms(500)),
            ("5.", secs(5)),
            ("500ms", ms(500)),
            ("1.5ms", Duration::from_micros(1500)),
            ("5s", secs(5)),
            ("1m", secs(60)),
            ("1.5m", secs(90)),
            ("2min", secs(120)),
            ("1h", secs(3600)),
            (" 5 s ", secs(5)),
            ("0.000000001", Duration::from_nanos(1)),
            ("8760h", MAX_DURATION),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
        for text in [
            "",
            " ",
            "-1",
            "-1s",
            "+1",
            "nan",
            "NaN",
            "inf",
            "1e3",
            "1.2.3",
            ".",
            "s",
            "5x",
            "5 ms s",
            "1m30s",
            "off",
            "0",
            "0s",
            "0.0",
            "8761h",
            "99999999999999999999",
            "0.0000000001", // below a nanosecond rounds to zero
        ] {
            let err = parse_duration(text).expect_err(text);
            assert!(err.to_string().contains("invalid value"), "{err}");
        }
        assert!(parse_duration("-1s").unwrap_err().to_string().contains("negative"));
        assert!(parse_duration("5x").unwrap_err().to_string().contains("unit"));
    }

    #[test]
    fn optional_durations() {
        for (text, want) in [
            ("off", None),
            ("OFF", None),
            ("0", None),
            ("0ms", None),
            ("250ms", Some(ms(250))),
            ("30", Some(secs(30))),
        ] {
            assert_eq!(parse_opt_duration(text), Ok(OptDuration(want)), "{text:?}");
        }
        for text in ["", "-1", "never", "nan", "of"] {
            assert!(parse_opt_duration(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn duration_format_round_trips() {
        for (d, text) in [
            (secs(5), "5s"),
            (ms(500), "500ms"),
            (ms(2500), "2500ms"),
            (secs(60), "1m"),
            (secs(90), "90s"),
            (secs(7200), "2h"),
            (Duration::from_micros(1500), "0.0015s"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(format_duration(d), text);
            if !d.is_zero() {
                assert_eq!(parse_duration(text), Ok(d));
            }
        }
    }

    #[test]
    fn sizes() {
        for (text, want) in [
            ("0", 0),
            ("1048576", 1 << 20),
            ("1024B", 1024),
            ("64K", 64 << 10),
            ("64KiB", 64 << 10),
            ("64kib", 64 << 10),
            ("16M", 16 << 20),
            ("16MiB", 16 << 20),
            ("16 MiB", 16 << 20),
            ("1G", 1 << 30),
            ("1GiB", 1 << 30),
            ("4294967296GiB", 1 << 62),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text:?}");
        }
        for text in [
            "",
            "-1",
            "1.5M",
            "1MB",
            "1kb",
            "1T",
            "M",
            "1 2",
            "nan",
            "18446744073709551616",
            "17179869184GiB",
        ] {
            assert!(parse_size(text).is_err(), "{text:?}");
        }
        assert!(parse_size("1MB").unwrap_err().to_string().contains("MiB"));
        for (n, text) in [(16 << 20, "16MiB"), (1024, "1KiB"), (1000, "1000"), (1 << 30, "1GiB")] {
            assert_eq!(format_size(n), text);
            assert_eq!(parse_size(text), Ok(n));
        }
    }

    #[test]
    fn help_lists_every_option_with_default() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for (flag, default) in [
            ("--config", ""),
            ("--listen", "[default: 127.0.0.1:8080]"),
            ("--keep-alive-timeout", "[default: 5s]"),
            ("--keep-alive-max", "[default: 100]"),
            ("--keep-alive-header", "[default: fixed]"),
            ("--no-keep-alive-header", "[default: false]"),
            ("--max-lifetime", "[default: off]"),
            ("--park-idle-after", "[default: 1s]"),
            ("--header-timeout", "[default: 10s]"),
            ("--body-timeout", "[default: 30s]"),
            ("--max-body", "[default: 16MiB]"),
            ("--shutdown-timeout", "[default: 10s]"),
            ("--root", "[default: none]"),
            ("--static-cache-control", "[default: none]"),
            ("--workers", "[default: number of CPUs]"),
            ("--log", "[default: info]"),
            ("--log-format", "[default: text]"),
            ("--ws-max-message", "[default: 16MiB]"),
            ("--ws-compression", "[default: shared]"),
            ("--ws-ping-interval", "[default: off]"),
            ("--ws-idle-timeout", "[default: off]"),
            ("--allowed-origin", "[default: any origin]"),
            ("--ws-max-queued", "[default: 4MiB]"),
            ("--tls-cert", "[default: none: plain HTTP]"),
            ("--tls-key", "[default: none]"),
            ("--tls-handshake-timeout", "[default: 10s]"),
            ("--listen-unix", "[default: none]"),
        ] {
            let at = help.find(flag).unwrap_or_else(|| panic!("{flag} missing:\n{help}"));
            let next = help[at + 2..].find("\n  -").map_or(help.len(), |n| at + 2 + n);
            assert!(help[at..next].contains(default), "{flag}: {}", &help[at..next]);
        }
        assert!(help.contains("TETHER_KEEP_ALIVE_TIMEOUT"), "{help}");
        assert!(help.contains("DURATION:"), "{help}");
    }
}
