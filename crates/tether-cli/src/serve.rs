//! `tether serve`: the server with its built-in routes.
//!
//! Routes: `GET /healthz` → `ok`; `/echo` → the request body back (GET or
//! POST), or a WebSocket echo; the push hub (`/ws`, `/publish/`, `/poll/`,
//! `/sse/`, see `tether::hub`); `/metrics`; `GET /` → the live demo page
//! (`demo`), or the static root when `--root` is given (which also serves
//! every other path).
//!
//! Listeners: `--listen` (TCP; HTTPS and WSS with `--tls-cert` and
//! `--tls-key`, whose certificate is reloaded on SIGHUP and when the files
//! change), and, with `--listen-unix`, a Unix domain socket too (plain
//! HTTP, for a proxy on the same machine; its file is removed at a clean
//! exit). The first line on stderr names the TCP listener: `listening on
//! http://ADDR (…)`, or `https://` with TLS; a second one names the Unix
//! socket: `listening on unix:PATH`.

use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http::{header, Method, StatusCode};
use tether::hub::{BrokerState, ClientLimits, Hub, HubConfig, PublishKeys, RedisBroker, TokenSigner};
use tether::proto::h1;
use tether::server::router::{self, Router};
use tether::server::{Body, BodyError, Listener, Request, Response, Server, ServerStats, SharedHandler, StaticFiles};
use tether::tls::{self, ReloadableCert};
use tether::ws::{self, CompressionMode, Message, QueueOverflow, WsOptions};

use crate::config::{format_duration, KeepAliveHeaderMode, LogFormat, ServeConfig, WsCompression};

/// The engine configuration for these settings.
pub fn h1_config(c: &ServeConfig) -> h1::Config {
    h1::Config {
        idle_timeout: c.keep_alive_timeout,
        max_requests: c.keep_alive_max,
        keep_alive_header: match (c.no_keep_alive_header, c.keep_alive_header) {
            (true, _) => h1::KeepAliveHeader::Off,
            (false, KeepAliveHeaderMode::Fixed) => h1::KeepAliveHeader::Fixed,
            (false, KeepAliveHeaderMode::Remaining) => h1::KeepAliveHeader::Remaining,
        },
        max_lifetime: c.max_lifetime,
        header_timeout: c.header_timeout,
        body_timeout: c.body_timeout,
        write_timeout: c.write_timeout,
        body_min_rate: c
            .body_min_rate
            .and_then(|r| std::num::NonZeroU32::new(u32::try_from(r).unwrap_or(u32::MAX))),
        max_body: c.max_body,
        shutdown_drain: c.drain.unwrap_or_default().min(c.shutdown_timeout),
        ..h1::Config::default()
    }
}

/// The WebSocket settings for these settings.
pub fn ws_options(c: &ServeConfig) -> WsOptions {
    let mut o = WsOptions::default();
    let engine = std::sync::Arc::make_mut(&mut o.engine);
    let max_message = usize::try_from(c.ws_max_message).unwrap_or(usize::MAX);
    engine.max_message_size = max_message;
    engine.max_frame_size = max_message;
    o.handshake.allowed_origins = c.allowed_origin.clone();
    o.handshake.subprotocols = c.ws_subprotocol.clone();
    let mode = match c.ws_compression {
        WsCompression::Off => CompressionMode::Off,
        WsCompression::Shared => CompressionMode::Shared,
        WsCompression::Context => CompressionMode::Context,
    };
    engine.compression.mode = mode;
    engine.ping_interval = c.ws_ping_interval;
    engine.write_timeout = c.write_timeout;
    engine.idle_timeout = c.ws_idle_timeout;
    engine.max_queued_bytes = usize::try_from(c.ws_max_queued).unwrap_or(usize::MAX);
    engine.queue_overflow = QueueOverflow::Close;
    o
}

/// The push hub for these settings, over the in-process broker or Redis
/// (whose connections are then started on the current runtime).
pub fn hub(c: &ServeConfig) -> anyhow::Result<Hub> {
    let config = HubConfig {
        max_data: usize::try_from(c.max_publish_size).unwrap_or(usize::MAX),
        max_subscriptions: c.max_subscriptions as usize,
        subscriber_queue: usize::try_from(c.ws_max_queued).unwrap_or(usize::MAX),
        sse_keep_alive: c.sse_keep_alive,
        publish_keys: PublishKeys::new(c.publish_keys()?),
        tokens: c.token_verifier()?,
        history: c.history(),
        namespaces: c.namespaces()?,
        client_limits: ClientLimits {
            commands_per_second: c.client_rate,
            command_burst: c.client_burst,
            strikes: c.client_strikes,
            connections_per_subject: c.max_connections_per_subject,
        },
        ..HubConfig::default()
    };
    if c.broker == "memory" {
        return Ok(Hub::in_memory(config).0);
    }
    let urls: Vec<String> = c.broker.split(',').map(|u| u.trim().to_string()).collect();
    let (broker, tasks) = RedisBroker::new(&urls).context("the Redis broker")?;
    let hub = Hub::new(config, broker);
    tasks.start();
    Ok(hub)
}

/// Builds the router for `tether serve`.
pub fn app(c: &ServeConfig, hub: &Hub, stats: &Arc<ServerStats>) -> Router {
    let max_body = c.max_body;
    let ws = Arc::new(ws_options(c));
    let hub_ws = ws.clone();
    let broker = hub.broker().clone();
    let echo = move |req: Request| {
        let ws = ws.clone();
        async move {
            if ws::is_websocket_request(req.headers()) {
                ws::upgrade_service(&req, &ws, ws_echo)
            } else {
                echo(req, max_body).await
            }
        }
    };
    let mut r = Router::new()
        .route(
            "/healthz",
            router::get(move |_req: Request| {
                let state = broker.state();
                async move { healthz(state) }
            }),
        )
        .route(
            "/echo",
            router::methods(&[Method::GET, Method::HEAD, Method::POST], echo),
        );
    r = tether::hub::http::routes(r, hub, &hub_ws);
    if let Some(signer) = dev_token_signer(c) {
        r = r.route(
            "/dev/token",
            router::get(move |req: Request| {
                let answer = dev_token(&req, &signer);
                async move { answer }
            }),
        );
    }
    let (hub_for_metrics, stats) = (hub.clone(), stats.clone());
    r = r.route(
        "/metrics",
        router::get(move |_req: Request| {
            let text = tether::metrics::render(&stats, Some(&hub_for_metrics));
            async move {
                let mut resp = Response::new(Body::Full(Bytes::from(text)));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8".parse().expect("static"),
                );
                resp
            }
        }),
    );
    match &c.root {
        Some(root) => {
            let mut files = StaticFiles::new(root.clone());
            // Checked when the configuration was read.
            if let Some(value) = c
                .static_cache_control
                .as_deref()
                .and_then(|v| header::HeaderValue::from_str(v).ok())
            {
                files = files.cache_control(value);
            }
            r = r.fallback(files);
        }
        None => {
            r = r.route(
                "/",
                router::get(move |_req: Request| async move {
                    let mut resp = Response::new(Body::Full(Bytes::from_static(crate::demo::PAGE.as_bytes())));
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        "text/html; charset=utf-8".parse().expect("static"),
                    );
                    resp
                }),
            );
        }
    }
    r
}

/// The signer of `GET /dev/token`, when `--dev-tokens` asks for it (with
/// `--token-secret`: checked at start by `check_dev_tokens`).
fn dev_token_signer(c: &ServeConfig) -> Option<TokenSigner> {
    let secret = c.token_secret.0.first().filter(|_| c.dev_tokens)?;
    TokenSigner::hs256(secret.as_bytes()).ok()
}

/// `--dev-tokens` signs a token for anyone who asks: refused unless the
/// server listens on a loopback address only, with an HS256 secret.
pub fn check_dev_tokens(c: &ServeConfig, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    if !c.dev_tokens {
        return Ok(());
    }
    if c.token_secret.0.is_empty() {
        anyhow::bail!("--dev-tokens needs --token-secret (the endpoint signs HS256 tokens with it)");
    }
    if !addr.ip().is_loopback() {
        anyhow::bail!(
            "--dev-tokens signs a token for anyone who asks: it is refused on {addr}, which is not a loopback address"
        );
    }
    Ok(())
}

/// The longest token `GET /dev/token` signs.
const DEV_TOKEN_MAX_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// `GET /dev/token?sub=NAME&subscribe=P,P&publish=P,P&ttl=SECS`: a signed
/// client token (development only; see `--dev-tokens`). Defaults: a fresh
/// `dev-…` subject, every channel (`*`) both ways, an hour.
fn dev_token(req: &Request, signer: &TokenSigner) -> Response {
    let mut subject = format!("dev-{:08x}", rand::random::<u32>());
    let (mut subscribe, mut publish) = (vec!["*".to_string()], vec!["*".to_string()]);
    let mut ttl = std::time::Duration::from_secs(3600);
    let query = req.uri().query().unwrap_or("");
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let list = || value.split(',').filter(|p| !p.is_empty()).map(str::to_string).collect();
        match &*name {
            "sub" if !value.is_empty() => subject = value.into_owned(),
            "subscribe" => subscribe = list(),
            "publish" => publish = list(),
            "ttl" => match value.parse::<u64>() {
                Ok(secs) if secs > 0 => ttl = std::time::Duration::from_secs(secs).min(DEV_TOKEN_MAX_TTL),
                _ => return router::text(StatusCode::BAD_REQUEST, "ttl is a whole number of seconds\n"),
            },
            _ => {}
        }
    }
    match signer.sign(&subject, ttl, subscribe, publish) {
        Ok((token, exp)) => {
            let body = serde_json::json!({"token": token, "sub": subject, "exp": exp}).to_string();
            let mut resp = Response::new(Body::Full(Bytes::from(body)));
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, "application/json".parse().expect("static"));
            h.insert(header::CACHE_CONTROL, "no-store".parse().expect("static"));
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "signing a development token");
            router::text(StatusCode::INTERNAL_SERVER_ERROR, "the token could not be signed\n")
        }
    }
}

/// `200 ok` while the hub's broker is up; `503` naming its state
/// (`reconnecting`, `down`) otherwise: the node serves its connections
/// but cannot take publications or new subscriptions.
fn healthz(state: BrokerState) -> Response {
    match state {
        BrokerState::Up => router::text(StatusCode::OK, "ok"),
        BrokerState::Reconnecting => router::text(StatusCode::SERVICE_UNAVAILABLE, "broker reconnecting\n"),
        BrokerState::Down => router::text(StatusCode::SERVICE_UNAVAILABLE, "broker down\n"),
    }
}

async fn echo(req: Request, max_body: u64) -> Response {
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    match req.into_body().to_bytes(max_body).await {
        Ok(body) => {
            let mut resp = Response::new(Body::Full(body));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                content_type.unwrap_or_else(|| "application/octet-stream".parse().expect("static")),
            );
            resp
        }
        Err(BodyError::TooLarge { .. }) => router::text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
        Err(_) => router::text(StatusCode::BAD_REQUEST, "invalid request body\n"),
    }
}

/// Every text or binary message comes back unchanged; pings are answered
/// by the engine; the close handshake is completed by the engine. Served
/// by callback, so an idle echo connection parks without a task.
fn ws_echo(message: Message, replies: &mut ws::Replies<'_>) {
    // Fails only once the connection is closing: nothing to answer then.
    let _ = replies.send(message);
}

/// Runs the server until SIGINT or SIGTERM, then shuts down gracefully.
pub fn run(c: ServeConfig) -> anyhow::Result<()> {
    init_logging(&c.log, c.log_format)?;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit raised to the hard limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open file limit"),
    }
    let runtime = if c.workers <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(c.workers)
            .enable_all()
            .build()
    }
    .context("starting the async runtime")?;
    runtime.block_on(serve(c))
}

async fn serve(c: ServeConfig) -> anyhow::Result<()> {
    let backlog = c.backlog.unwrap_or_else(tether::server::default_backlog);
    let tcp = tether::server::bind(c.listen, backlog).with_context(|| format!("binding {}", c.listen))?;
    let addr = tcp.local_addr().context("reading the bound address")?;
    let certs = match (&c.tls_cert, &c.tls_key) {
        (Some(cert), Some(key)) => Some(ReloadableCert::from_files(cert, key).context("loading the TLS certificate")?),
        _ => None,
    };
    let mut listeners = vec![match &certs {
        Some(certs) => Listener::Tls(tcp, tls::server_config(certs.clone())?),
        None => Listener::Tcp(tcp),
    }];
    if let Some(path) = &c.listen_unix {
        let unix =
            tether::server::bind_unix(path).with_context(|| format!("binding the Unix socket {}", path.display()))?;
        listeners.push(Listener::Unix(unix));
    }
    check_dev_tokens(&c, addr)?;
    let hub = hub(&c)?;
    if c.dev_tokens {
        tracing::warn!(%addr, "GET /dev/token signs a client token for anyone who asks: for development only");
    }
    if !addr.ip().is_loopback() {
        if hub.config().tokens.is_none() {
            tracing::warn!(
                %addr,
                "the hub is open: anyone who reaches this address may subscribe to and publish on any channel; set --token-secret or --token-public-key before exposing it"
            );
        }
        if !hub.config().publish_keys.required() {
            tracing::warn!(%addr, "POST /publish is open: set --publish-key before exposing the hub");
        }
    }
    let _upkeep = hub.spawn_upkeep();
    let stats = Arc::new(ServerStats::default());
    if c.demo {
        crate::demo::spawn(&hub, &stats);
    }
    let handler: SharedHandler = Arc::new(app(&c, &hub, &stats));
    let server = Server::new(h1_config(&c), handler)
        .with_stats(stats)
        .shutdown_timeout(c.shutdown_timeout)
        .park_idle_after(c.park_idle_after)
        .tls_handshake_timeout(c.tls_handshake_timeout)
        .access_log(c.access_log)
        .max_connections(c.max_connections.map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
        .max_connections_per_client(
            c.max_connections_per_client
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        );
    let max = if c.keep_alive_max == 0 {
        "unlimited".to_string()
    } else {
        c.keep_alive_max.to_string()
    };
    let stop = shutdown_signal()?;
    // Installed before the listening line too: a SIGHUP right after it
    // reloads rather than ends the process.
    let _reload = match &certs {
        Some(certs) => Some(reload_certificates(certs)?),
        None => None,
    };
    let scheme = if certs.is_some() { "https" } else { "http" };
    let listening = format!(
        "listening on {scheme}://{addr} (keep-alive timeout={} max={max})",
        format_duration(c.keep_alive_timeout)
    );
    // Printed whatever the log filter (scripts wait for it), in the log's format.
    match c.log_format {
        LogFormat::Text => eprintln!("{listening}"),
        LogFormat::Json => eprintln!("{}", json_line(&listening, &addr.to_string())),
    }
    if let Some(path) = &c.listen_unix {
        let unix = format!("listening on unix:{}", path.display());
        match c.log_format {
            LogFormat::Text => eprintln!("{unix}"),
            LogFormat::Json => eprintln!("{}", json_line(&unix, &path.display().to_string())),
        }
    }
    server.serve_on(listeners, stop).await.context("serving")?;
    if let Some(path) = &c.listen_unix {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("shut down cleanly");
    Ok(())
}

/// Reloads the certificate on SIGHUP and when its files change (polled
/// every 2 s); a reload that fails keeps the current certificate and logs
/// an error. The tasks end when the returned guard is dropped.
fn reload_certificates(certs: &Arc<ReloadableCert>) -> anyhow::Result<AbortOnDrop> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    let on_hup = certs.clone();
    let sighup = tokio::spawn(async move {
        while hup.recv().await.is_some() {
            on_hup.reload_logged("SIGHUP");
        }
    });
    Ok(AbortOnDrop(vec![sighup, certs.watch(tls::WATCH_INTERVAL)]))
}

/// Aborts its tasks when dropped.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called (before the listening line is printed), so a signal sent right
/// after start-up is never lost to the default action.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// The listening line as the JSON formatter writes an event.
fn json_line(message: &str, addr: &str) -> String {
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
    let mut timestamp = String::new();
    let _ = SystemTime.format_time(&mut Writer::new(&mut timestamp));
    serde_json::json!({
        "timestamp": timestamp,
        "level": "INFO",
        "fields": { "message": message, "addr": addr },
        "target": "tether::serve",
    })
    .to_string()
}

/// Logs to standard error through `level` (an `EnvFilter`), as text or
/// as JSON lines. Connections and requests are `tracing` spans at `debug`
/// (see `tether`'s `spans`), so with `--log tether=debug` each line names
/// the connection (`conn{peer conn}`) and request (`request{method path}`)
/// it belongs to: in JSON, as `span` and `spans`.
fn init_logging(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).with_context(|| format!("invalid --log filter {level:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
    Ok(())
}
