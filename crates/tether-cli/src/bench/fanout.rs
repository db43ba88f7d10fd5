//! `tether bench fanout`: many WebSocket subscribers of one channel, and
//! a publisher, against a push server (tether's `/ws`, or any server that
//! speaks the same commands).
//!
//! The protocol, tether's `/ws` reduced to what this needs: each
//! subscriber sends `{"type":"subscribe","channel":C}` and waits for a
//! text message whose `type` is `subscribed`; the publisher (a connection
//! of its own) sends `{"type":"publish","channel":C,"data":D}` and reads
//! whatever comes back (`published` answers); every subscriber must then
//! receive a text message carrying `D`. `D` is
//! `{"seq":S,"ph":P,"t":T,"pad":"…"}`: `S` counts publications from 1, `P`
//! is the phase, `T` the publish time in µs since the run began (one
//! clock: publisher and subscribers are in this process). The subscriber
//! finds `"seq":`, `"ph":` and `"t":` in the message and checks that `S` is
//! one more than its last (in order, none missing, none twice).
//!
//! Phases, after all `--subscribers` have their `subscribed` answer:
//! - `idle`: nothing is sent for `--idle-hold`; then the server's `VmRSS`
//!   is read again: (RSS now − RSS before the first connection) / N.
//! - `throughput`: publish as fast as the server delivers: at most
//!   `--window` publications ahead of the slowest subscriber (a
//!   publication is delivered once all N received it), for `--duration`
//!   (or `--messages`); then wait until every publication reached every
//!   subscriber. Deliveries/s, and the server's CPU time
//!   (`/proc/PID/stat`) over the phase per delivery.
//! - `rate`: publish `--rate` per second for `--rate-duration`, whatever
//!   the subscribers' progress; latency from `T` to each receipt, at each
//!   subscriber (p50, p99, max).
//!
//! `wss://` URLs go through TLS (see `super::connect`); a subscriber's
//! reads still borrow its thread's scratch buffer only within a poll, and
//! the publisher's halves are `tokio::io::split`'s.
//!
//! Every phase reports the CPU the server and this process used over it,
//! as a share of the phase's wall time: near 100 % says who was the limit.
//! Every wait is bounded: a phase without any delivery for `--timeout`,
//! a drain longer than `--drain-timeout`, a subscriber that fails (closed,
//! a Close frame, a message out of order) ends the run with a failure,
//! reported with what was measured until then.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use tether::client::ClientStream;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{watch, Notify, Semaphore};

use super::procfs::{clock_tick, Proc};
use super::report::{emit, Latency};
use super::ws::{encode_frame, open, random_u64, OP_CLOSE, OP_CONT, OP_PING, OP_TEXT};
use super::{on_threads, parse_bytes, poll_read_some, read_some, send, source_addr, thread_count, CommonArgs, Target};
use crate::config::parse_duration;

/// Publications tracked at once: the most the publisher may be ahead of
/// the slowest subscriber.
const RING: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    /// Subscribers idle: server RSS per subscriber.
    Idle,
    /// Publish as fast as delivered: deliveries/s, server CPU per delivery.
    Throughput,
    /// Publish at --rate: publish-to-receipt latency.
    Rate,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Throughput => "throughput",
            Phase::Rate => "rate",
        }
    }
}

#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// The push endpoint, e.g. ws://127.0.0.1:8080/ws or wss://localhost:8443/ws.
    #[arg(long)]
    url: String,
    /// The channel every subscriber subscribes to.
    #[arg(long, default_value = "fanout")]
    channel: String,
    /// Subscriber connections.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    subscribers: usize,
    /// The phases to run, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "idle,throughput,rate")]
    phases: Vec<Phase>,
    /// idle: how long the subscribers sit idle before the server's RSS is read.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    idle_hold: Duration,
    /// throughput: how long to publish.
    #[arg(long, short = 'd', default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// throughput: the most publications (0: as many as --duration allows).
    #[arg(long, default_value_t = 0)]
    messages: u64,
    /// throughput: publications the publisher may be ahead of the slowest subscriber.
    #[arg(long, default_value_t = 16)]
    window: u64,
    /// rate: publications per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// rate: how long to publish.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    rate_duration: Duration,
    /// Bytes of padding in each publication's data (K, M units allowed).
    #[arg(long, default_value = "0", value_parser = parse_bytes)]
    pad: u64,
    /// After publishing stops, the longest wait for every publication to
    /// reach every subscriber.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Most subscribers being connected at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Where subscribers connect, when not all at --url (repeatable; the
    /// subscribers are spread over these in turn): e.g. the other nodes of
    /// a cluster, for a cross-node fan-out, the publisher staying at --url.
    #[arg(long, value_name = "URL")]
    subscribe_url: Vec<String>,
    /// The server's process id: its RSS (idle) and CPU time (every phase);
    /// repeatable, for several nodes: the figures are their sums.
    #[arg(long)]
    server_pid: Vec<u32>,
    #[command(flatten)]
    common: CommonArgs,
}

/// What the subscribers and the publisher share (across load threads).
struct Shared {
    /// The publisher's server.
    target: Target,
    /// The subscribers' servers (subscriber i at `i % len`).
    subscribe_targets: Vec<Target>,
    n: u64,
    timeout: Duration,
    spread: bool,
    subscribe: Vec<u8>,
    /// The clock of every `t`.
    epoch: Instant,
    connected: AtomicU64,
    subscribed: AtomicU64,
    /// Subscribers that failed (connect, handshake, closed, out of order).
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Receipts of publication `seq` at `seq % RING`.
    ring: Vec<AtomicU32>,
    /// Every publication up to this one reached every subscriber.
    completed: AtomicU64,
    /// Receipts of publications, all phases.
    deliveries: AtomicU64,
    /// Woken when a publication completes or a subscriber fails.
    progress: Notify,
    /// The run is over: subscribers close.
    stop: watch::Sender<bool>,
    quiet: bool,
}

impl Shared {
    fn fail(&self, e: impl std::fmt::Display) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| e.to_string());
        self.progress.notify_one();
    }

    fn first_error(&self) -> Option<String> {
        self.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn say(&self, line: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("fanout: {line}");
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Publication `seq` was received by one more subscriber.
    fn received(&self, seq: u64) {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        let before = self.ring[seq as usize % RING].fetch_add(1, Ordering::AcqRel);
        if u64::from(before) + 1 == self.n {
            // Subscribers receive in order, so publications complete in order.
            self.completed.fetch_max(seq, Ordering::AcqRel);
            self.progress.notify_one();
        }
    }
}

/// Per load thread: latency by phase (throughput, rate).
#[derive(Default)]
struct ThreadStats {
    latency: [Latency; 2],
}

/// The controller's findings (thread 0).
#[derive(Default)]
struct Findings {
    connect_s: f64,
    phases: Vec<(Phase, Value)>,
    error: Option<String>,
}

pub fn run(a: FanoutArgs) -> anyhow::Result<()> {
    let target = a.common.target(&a.url)?;
    if !target.websocket {
        bail!("tether bench fanout needs a ws:// or wss:// URL");
    }
    if a.subscribers == 0 || a.window == 0 {
        bail!("--subscribers and --window must be at least 1");
    }
    if a.window as usize >= RING / 2 {
        bail!("--window must be below {}", RING / 2);
    }
    if a.rate.is_nan() || a.rate <= 0.0 || (a.rate * a.rate_duration.as_secs_f64()) as usize >= RING / 2 {
        bail!(
            "--rate must be positive and --rate × --rate-duration below {}",
            RING / 2
        );
    }
    let mut subscribe_targets = Vec::new();
    for url in &a.subscribe_url {
        let t = a.common.target(url)?;
        if !t.websocket {
            bail!("--subscribe-url needs a ws:// or wss:// URL");
        }
        subscribe_targets.push(t);
    }
    if subscribe_targets.is_empty() {
        subscribe_targets.push(target.clone());
    }
    let threads = thread_count(a.common.threads, a.subscribers);
    let server: Vec<Proc> = a.server_pid.iter().copied().map(Proc::Pid).collect();
    let rss_before = total_rss_kib(&server)?;
    let mask = random_u64().to_le_bytes();
    let subscribe = json!({"type": "subscribe", "channel": a.channel}).to_string();
    let shared = Arc::new(Shared {
        target,
        subscribe_targets,
        n: a.subscribers as u64,
        timeout: a.common.timeout,
        spread: !a.common.no_spread,
        subscribe: encode_frame(OP_TEXT, subscribe.as_bytes(), [mask[0], mask[1], mask[2], mask[3]]),
        epoch: Instant::now(),
        connected: AtomicU64::new(0),
        subscribed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        first_error: Mutex::new(None),
        ring: (0..RING).map(|_| AtomicU32::new(0)).collect(),
        completed: AtomicU64::new(0),
        deliveries: AtomicU64::new(0),
        progress: Notify::new(),
        stop: watch::channel(false).0,
        quiet: a.common.quiet,
    });
    let plan = Arc::new(Plan {
        channel: a.channel.clone(),
        phases: a.phases.clone(),
        idle_hold: a.idle_hold,
        duration: a.duration,
        messages: a.messages,
        window: a.window,
        rate: a.rate,
        rate_duration: a.rate_duration,
        pad: "x".repeat(usize::try_from(a.pad).context("--pad too large")?),
        drain_timeout: a.drain_timeout,
        server,
        rss_before,
    });
    let per_thread_concurrency = (a.connect_concurrency / threads).max(1);
    let sh = shared.clone();
    let results = on_threads(threads, a.subscribers, move |t, conns| {
        let (shared, plan) = (sh.clone(), plan.clone());
        async move {
            let stats = Rc::new(RefCell::new(ThreadStats::default()));
            let sem = Rc::new(Semaphore::new(per_thread_concurrency));
            let scratch = Rc::new(RefCell::new(vec![0u8; 64 * 1024]));
            let mut tasks = Vec::with_capacity(conns.len());
            for i in conns {
                let (sh, st, sem, buf) = (shared.clone(), stats.clone(), sem.clone(), scratch.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    if let Err(e) = subscriber(&sh, i, &sem, &buf, &st).await {
                        sh.fail(format!("subscriber {i}: {e:#}"));
                    }
                }));
            }
            let findings = if t == 0 {
                let f = control(&shared, &plan).await;
                shared.stop.send_replace(true);
                Some(f)
            } else {
                None
            };
            for task in tasks {
                let _ = task.await;
            }
            let stats = Rc::try_unwrap(stats).ok().expect("all tasks done").into_inner();
            (stats, findings)
        }
    })?;
    let mut latency = [Latency::default(), Latency::default()];
    let mut findings = Findings::default();
    for (stats, f) in results {
        latency[0].merge(&stats.latency[0]);
        latency[1].merge(&stats.latency[1]);
        if let Some(f) = f {
            findings = f;
        }
    }
    let error = findings.error.clone().or_else(|| shared.first_error());
    let ok = error.is_none();
    let mut value = json!({
        "mode": "fanout",
        "url": a.url,
        "channel": a.channel,
        "subscribers": a.subscribers,
        "connected": shared.connected.load(Ordering::Relaxed),
        "subscribed": shared.subscribed.load(Ordering::Relaxed),
        "failed": shared.failed.load(Ordering::Relaxed),
        "connect_s": findings.connect_s,
        "threads": threads,
        "pad": a.pad,
        "server_rss_before_kib": rss_before,
        "ok": ok,
        "error": error,
    });
    let mut text = format!(
        "{} subscribers of {:?} at {}: {} subscribed in {:.2}s, {} threads\n",
        a.subscribers,
        a.channel,
        a.url,
        shared.subscribed.load(Ordering::Relaxed),
        findings.connect_s,
        threads
    );
    for (phase, mut v) in findings.phases {
        match phase {
            Phase::Idle => {
                if let (Some(b), Some(i), Some(per)) = (
                    v["server_rss_before_kib"].as_u64(),
                    v["server_rss_idle_kib"].as_u64(),
                    v["server_rss_per_subscriber_bytes"].as_f64(),
                ) {
                    text += &format!(
                        "  idle {:.1}s: server RSS {b} KiB -> {i} KiB: {per:.0} bytes per subscriber\n",
                        v["hold_s"].as_f64().unwrap_or(0.0)
                    );
                }
            }
            Phase::Throughput | Phase::Rate => {
                let l = &latency[usize::from(phase == Phase::Rate)];
                v["latency"] = l.json();
                text += &format!(
                    "  {}: {} publications, {} deliveries in {:.2}s: {:.0} deliveries/s{}\n    latency {}\n    CPU busy: server {}, load generator {}\n",
                    phase.name(),
                    v["messages"],
                    v["deliveries"],
                    v["duration_s"].as_f64().unwrap_or(0.0),
                    v["deliveries_per_s"].as_f64().unwrap_or(0.0),
                    v["server_cpu_us_per_delivery"]
                        .as_f64()
                        .map(|c| format!(", server CPU {c:.2} µs per delivery"))
                        .unwrap_or_default(),
                    l.line(),
                    v["server_busy"].as_f64().map(|b| format!("{:.0} %", b * 100.0)).unwrap_or("–".into()),
                    v["client_busy"].as_f64().map(|b| format!("{:.0} %", b * 100.0)).unwrap_or("–".into()),
                );
            }
        }
        value[phase.name()] = v;
    }
    if let Some(e) = &error {
        text += &format!("  failed: {e}\n");
    }
    emit(a.common.json, &value, &text);
    match error {
        Some(e) => bail!("fanout failed: {e}"),
        None => Ok(()),
    }
}

/// What the controller runs.
struct Plan {
    channel: String,
    phases: Vec<Phase>,
    idle_hold: Duration,
    duration: Duration,
    messages: u64,
    window: u64,
    rate: f64,
    rate_duration: Duration,
    pad: String,
    drain_timeout: Duration,
    /// The servers measured (none: no server figures).
    server: Vec<Proc>,
    rss_before: Option<u64>,
}

/// The servers' RSS summed, in KiB; `None` for no server.
fn total_rss_kib(servers: &[Proc]) -> anyhow::Result<Option<u64>> {
    if servers.is_empty() {
        return Ok(None);
    }
    servers
        .iter()
        .map(|p| p.rss_kib())
        .sum::<anyhow::Result<u64>>()
        .map(Some)
}

/// The servers' CPU time summed; `None` for no server or one unreadable.
fn total_cpu_time(servers: &[Proc]) -> Option<Duration> {
    if servers.is_empty() {
        return None;
    }
    servers.iter().map(|p| p.cpu_time().ok()).sum()
}

/// CPU time of the server and of this process, and the wall clock.
struct Sample {
    at: Instant,
    server: Option<Duration>,
    me: Option<Duration>,
    deliveries: u64,
}

impl Sample {
    fn take(sh: &Shared, plan: &Plan) -> Sample {
        Sample {
            at: Instant::now(),
            server: total_cpu_time(&plan.server),
            me: Proc::Me.cpu_time().ok(),
            deliveries: sh.deliveries.load(Ordering::Relaxed),
        }
    }

    /// The phase's figures from `self` to `end`.
    fn between(&self, end: &Sample, messages: u64) -> Value {
        let secs = end.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let deliveries = end.deliveries - self.deliveries;
        let cpu = match (self.server, end.server) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
            _ => None,
        };
        let me = match (self.me, end.me) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
            _ => None,
        };
        json!({
            "messages": messages,
            "deliveries": deliveries,
            "duration_s": secs,
            "deliveries_per_s": (deliveries as f64 / secs).round(),
            "messages_per_s": (messages as f64 / secs * 10.0).round() / 10.0,
            "server_cpu_s": cpu,
            "server_cpu_us_per_delivery": cpu.filter(|_| deliveries > 0).map(|c| c * 1e6 / deliveries as f64),
            "server_busy": cpu.map(|c| c / secs),
            "client_busy": me.map(|c| c / secs),
            "cpu_clock_tick_ms": clock_tick().as_secs_f64() * 1e3,
        })
    }
}

/// Thread 0's extra task: waits for the subscribers, runs the phases.
async fn control(sh: &Arc<Shared>, plan: &Plan) -> Findings {
    let mut f = Findings::default();
    let start = Instant::now();
    if let Err(e) = all_subscribed(sh).await {
        f.connect_s = start.elapsed().as_secs_f64();
        f.error = Some(format!("{e:#}"));
        return f;
    }
    f.connect_s = start.elapsed().as_secs_f64();
    sh.say(format_args!("{} subscribed in {:.2}s", sh.n, f.connect_s));
    let mut publisher = match Publisher::open(sh, plan).await {
        Ok(p) => p,
        Err(e) => {
            f.error = Some(format!("publisher: {e:#}"));
            return f;
        }
    };
    for &phase in &plan.phases {
        sh.say(format_args!("phase {}", phase.name()));
        let r = match phase {
            Phase::Idle => idle(sh, plan).await,
            Phase::Throughput => throughput(sh, plan, &mut publisher).await,
            Phase::Rate => rate(sh, plan, &mut publisher).await,
        };
        match r {
            Ok(v) => f.phases.push((phase, v)),
            Err((v, e)) => {
                if let Some(v) = v {
                    f.phases.push((phase, v));
                }
                f.error = Some(format!("{}: {e:#}", phase.name()));
                break;
            }
        }
    }
    publisher.close();
    f
}

/// Waits until every subscriber has its `subscribed` answer; fails when
/// one failed, or nothing moved for `--timeout`.
async fn all_subscribed(sh: &Shared) -> anyhow::Result<()> {
    let mut last = (0, Instant::now());
    loop {
        let done = sh.subscribed.load(Ordering::Relaxed);
        if done == sh.n {
            return Ok(());
        }
        if sh.failed.load(Ordering::Relaxed) > 0 {
            bail!(
                "{done}/{} subscribed: {}",
                sh.n,
                sh.first_error().unwrap_or_else(|| "a subscriber failed".into())
            );
        }
        if done != last.0 {
            last = (done, Instant::now());
        } else if last.1.elapsed() > sh.timeout {
            bail!("{done}/{} subscribed: none more within {:?}", sh.n, sh.timeout);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type PhaseResult = Result<Value, (Option<Value>, anyhow::Error)>;

async fn idle(sh: &Shared, plan: &Plan) -> PhaseResult {
    tokio::time::sleep(plan.idle_hold).await;
    if sh.failed.load(Ordering::Relaxed) > 0 {
        return Err((None, anyhow::anyhow!(sh.first_error().unwrap_or_default())));
    }
    let rss = total_rss_kib(&plan.server).map_err(|e| (None, e))?;
    let per = match (plan.rss_before, rss) {
        (Some(b), Some(i)) => Some(((i as f64 - b as f64) * 1024.0 / sh.n as f64).round()),
        _ => None,
    };
    Ok(json!({
        "hold_s": plan.idle_hold.as_secs_f64(),
        "server_rss_before_kib": plan.rss_before,
        "server_rss_idle_kib": rss,
        "server_rss_per_subscriber_bytes": per,
    }))
}

async fn throughput(sh: &Shared, plan: &Plan, publisher: &mut Publisher) -> PhaseResult {
    let s0 = Sample::take(sh, plan);
    let end = s0.at + plan.duration;
    let first = publisher.next_seq;
    let limit = if plan.messages == 0 { u64::MAX } else { plan.messages };
    let mut stall = (sh.completed.load(Ordering::Acquire), Instant::now());
    let mut failure = None;
    while Instant::now() < end && publisher.next_seq - first < limit {
        if sh.failed.load(Ordering::Relaxed) > 0 {
            failure = Some(anyhow::anyhow!(sh.first_error().unwrap_or_default()));
            break;
        }
        let completed = sh.completed.load(Ordering::Acquire);
        if completed != stall.0 {
            stall = (completed, Instant::now());
        }
        let ahead = publisher.next_seq - 1 - completed;
        let room = plan
            .window
            .saturating_sub(ahead)
            .min(limit - (publisher.next_seq - first));
        if room > 0 {
            if let Err(e) = publisher.publish(sh, plan, 1, room).await {
                failure = Some(e);
                break;
            }
            continue;
        }
        if stall.1.elapsed() > sh.timeout {
            failure = Some(anyhow::anyhow!(
                "no publication delivered to every subscriber within {:?}",
                sh.timeout
            ));
            break;
        }
        let wait = end.min(stall.1 + sh.timeout);
        let _ = tokio::time::timeout_at(wait.into(), sh.progress.notified()).await;
    }
    let published = publisher.next_seq - first;
    if failure.is_none() {
        failure = drain(sh, plan, publisher).await.err();
    }
    let s1 = Sample::take(sh, plan);
    let v = s0.between(&s1, published);
    match failure {
        None => Ok(v),
        Some(e) => Err((Some(v), e)),
    }
}

async fn rate(sh: &Shared, plan: &Plan, publisher: &mut Publisher) -> PhaseResult {
    let s0 = Sample::take(sh, plan);
    let count = (plan.rate * plan.rate_duration.as_secs_f64()).round().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / plan.rate);
    let first = publisher.next_seq;
    let mut failure = None;
    let mut late = Duration::ZERO;
    for k in 0..count {
        if sh.failed.load(Ordering::Relaxed) > 0 {
            failure = Some(anyhow::anyhow!(sh.first_error().unwrap_or_default()));
            break;
        }
        let due = s0.at + interval * k as u32;
        tokio::time::sleep_until(due.into()).await;
        late = late.max(Instant::now().saturating_duration_since(due));
        if let Err(e) = publisher.publish(sh, plan, 2, 1).await {
            failure = Some(e);
            break;
        }
    }
    // The phase spans its whole schedule: `count` intervals.
    if failure.is_none() {
        tokio::time::sleep_until((s0.at + interval * count as u32).into()).await;
    }
    let published_at = Instant::now();
    let published = publisher.next_seq - first;
    if failure.is_none() {
        failure = drain(sh, plan, publisher).await.err();
    }
    let s1 = Sample::take(sh, plan);
    let mut v = s0.between(&s1, published);
    v["rate"] = json!(plan.rate);
    v["schedule_s"] = json!(published_at.duration_since(s0.at).as_secs_f64());
    v["drain_s"] = json!(s1.at.duration_since(published_at).as_secs_f64());
    v["publisher_late_max_us"] = json!(late.as_micros() as u64);
    v["offered_deliveries_per_s"] = json!(plan.rate * sh.n as f64);
    match failure {
        None => Ok(v),
        Some(e) => Err((Some(v), e)),
    }
}

/// Waits until every publication so far reached every subscriber (at most
/// `--drain-timeout`, and `--timeout` without progress).
async fn drain(sh: &Shared, plan: &Plan, publisher: &Publisher) -> anyhow::Result<()> {
    let last = publisher.next_seq - 1;
    let deadline = Instant::now() + plan.drain_timeout;
    let mut stall = (sh.deliveries.load(Ordering::Relaxed), Instant::now());
    loop {
        if sh.completed.load(Ordering::Acquire) >= last {
            return Ok(());
        }
        if sh.failed.load(Ordering::Relaxed) > 0 {
            bail!(sh.first_error().unwrap_or_default());
        }
        let now = Instant::now();
        let d = sh.deliveries.load(Ordering::Relaxed);
        if d != stall.0 {
            stall = (d, now);
        }
        if now >= deadline {
            bail!(
                "publications up to {last} did not reach every subscriber within {:?} (complete up to {})",
                plan.drain_timeout,
                sh.completed.load(Ordering::Acquire)
            );
        }
        if now.duration_since(stall.1) > sh.timeout {
            bail!(
                "no delivery for {:?} with publications up to {last} outstanding (complete up to {})",
                sh.timeout,
                sh.completed.load(Ordering::Acquire)
            );
        }
        let wait = deadline.min(stall.1 + sh.timeout).min(now + Duration::from_millis(100));
        let _ = tokio::time::timeout_at(wait.into(), sh.progress.notified()).await;
    }
}

/// The publishing connection: writes `publish` commands; a task of its own
/// reads (and counts) what the server answers.
struct Publisher {
    write: WriteHalf<ClientStream>,
    next_seq: u64,
    buf: Vec<u8>,
    reader: tokio::task::JoinHandle<()>,
}

impl Publisher {
    async fn open(sh: &Arc<Shared>, plan: &Plan) -> anyhow::Result<Publisher> {
        let (stream, leftover) = open(
            &sh.target,
            source_addr(sh.target.addr, sh.n as usize, sh.spread),
            sh.timeout,
        )
        .await?;
        let _ = plan;
        let (mut read, write): (ReadHalf<ClientStream>, _) = tokio::io::split(stream);
        let sh = sh.clone();
        let reader = tokio::task::spawn_local(async move {
            // Answers (`published`) are read and dropped; an `error` or a
            // Close ends the publisher.
            let check = |opcode: u8, payload: &[u8]| -> anyhow::Result<()> {
                if opcode == OP_CLOSE {
                    bail!("the server closed the publisher's connection");
                }
                if opcode == OP_TEXT && find(payload, b"\"error\"").is_some() {
                    bail!(
                        "the server answered a publish with {}",
                        String::from_utf8_lossy(payload)
                    );
                }
                Ok(())
            };
            let mut reader = MessageReader::default();
            let mut buf = vec![0u8; 16 * 1024];
            let mut result = reader.feed(&leftover, check);
            while result.is_ok() {
                result = match read_some(&mut read, &mut buf).await {
                    Ok(0) => Err(anyhow::anyhow!("the server closed the publisher's connection")),
                    Ok(n) => reader.feed(&buf[..n], check),
                    Err(e) => Err(e.into()),
                };
            }
            if let Err(e) = result {
                sh.fail(format!("publisher: {e:#}"));
            }
        });
        Ok(Publisher {
            write,
            next_seq: 1,
            buf: Vec::with_capacity(4096),
            reader,
        })
    }

    /// Writes `count` publications (phase `ph`) in one write.
    async fn publish(&mut self, sh: &Shared, plan: &Plan, ph: u8, count: u64) -> anyhow::Result<()> {
        self.buf.clear();
        for _ in 0..count {
            let cmd = format!(
                r#"{{"type":"publish","channel":{},"data":{{"seq":{},"ph":{ph},"t":{},"pad":"{}"}}}}"#,
                serde_json::to_string(&plan.channel).expect("a string serializes"),
                self.next_seq,
                sh.now_us(),
                plan.pad
            );
            let m = random_u64().to_le_bytes();
            // The slot is free: the publication RING before it is complete.
            sh.ring[self.next_seq as usize % RING].store(0, Ordering::Release);
            self.buf
                .extend_from_slice(&encode_frame(OP_TEXT, cmd.as_bytes(), [m[0], m[1], m[2], m[3]]));
            self.next_seq += 1;
        }
        send(&mut self.write, &self.buf, sh.timeout).await.context("publish")
    }

    fn close(self) {
        self.reader.abort();
    }
}

/// Reads whole WebSocket messages (unfragmented, as the servers send
/// them) out of a byte stream: payloads whole, whatever the reads' sizes.
#[derive(Default)]
struct MessageReader {
    /// The start of a frame not yet whole.
    carry: Vec<u8>,
}

impl MessageReader {
    /// Consumes `data`, calling `f(opcode, payload)` for every whole frame.
    fn feed(&mut self, data: &[u8], mut f: impl FnMut(u8, &[u8]) -> anyhow::Result<()>) -> anyhow::Result<()> {
        if self.carry.is_empty() {
            let used = frames(data, &mut f)?;
            self.carry.extend_from_slice(&data[used..]);
        } else {
            self.carry.extend_from_slice(data);
            let carry = std::mem::take(&mut self.carry);
            let used = frames(&carry, &mut f)?;
            self.carry = carry;
            self.carry.drain(..used);
            if self.carry.is_empty() && self.carry.capacity() > 64 * 1024 {
                self.carry = Vec::new();
            }
        }
        Ok(())
    }
}

/// Calls `f` for each whole frame at the start of `data`; returns the bytes used.
fn frames(data: &[u8], f: &mut impl FnMut(u8, &[u8]) -> anyhow::Result<()>) -> anyhow::Result<usize> {
    let mut at = 0;
    loop {
        let h = &data[at..];
        if h.len() < 2 {
            return Ok(at);
        }
        let (b0, b1) = (h[0], h[1]);
        if b0 & 0x70 != 0 {
            bail!("a frame with RSV bits set (no extension was negotiated)");
        }
        if b1 & 0x80 != 0 {
            bail!("a masked frame from the server");
        }
        let (hdr, len) = match b1 & 0x7F {
            126 if h.len() >= 4 => (4, u64::from(u16::from_be_bytes([h[2], h[3]]))),
            127 if h.len() >= 10 => (10, u64::from_be_bytes(h[2..10].try_into().expect("8 bytes"))),
            126 | 127 => return Ok(at),
            n => (2, u64::from(n)),
        };
        let len = usize::try_from(len).context("frame too large")?;
        if len > 64 << 20 {
            bail!("a frame of {len} bytes");
        }
        if h.len() < hdr + len {
            return Ok(at);
        }
        let opcode = b0 & 0x0F;
        if b0 & 0x80 == 0 || opcode == OP_CONT {
            bail!("a fragmented message (the servers measured send small messages whole)");
        }
        f(opcode, &h[hdr..hdr + len])?;
        at += hdr + len;
    }
}

/// `"key":N` in `s`: N.
fn number_after(s: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(s, key)? + key.len();
    let digits = s[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    std::str::from_utf8(&s[at..at + digits]).ok()?.parse().ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One subscriber: connect, subscribe, then count what arrives until the
/// run stops.
async fn subscriber(
    sh: &Shared,
    index: usize,
    sem: &Semaphore,
    scratch: &RefCell<Vec<u8>>,
    stats: &RefCell<ThreadStats>,
) -> anyhow::Result<()> {
    let mut stop = sh.stop.subscribe();
    let permit = sem.acquire().await.context("semaphore closed")?;
    let target = &sh.subscribe_targets[index % sh.subscribe_targets.len()];
    let (mut stream, leftover): (ClientStream, Vec<u8>) = tokio::select! {
        r = open(target, source_addr(target.addr, index, sh.spread), sh.timeout) => r?,
        _ = stop.wait_for(|s| *s) => return Ok(()),
    };
    sh.connected.fetch_add(1, Ordering::Relaxed);
    send(&mut stream, &sh.subscribe, sh.timeout)
        .await
        .context("subscribe")?;
    drop(permit);
    let subscribed = Cell::new(false);
    let mut next_seq = 1u64;
    let mut on_message = |opcode: u8, payload: &[u8]| -> anyhow::Result<()> {
        match opcode {
            OP_TEXT => {}
            OP_CLOSE => {
                let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                bail!("the server sent Close {code:?} {reason:?}");
            }
            OP_PING => return Ok(()), // no server here pings; ignored
            _ => return Ok(()),
        }
        if let Some(seq) = number_after(payload, b"\"seq\":") {
            if seq != next_seq {
                bail!("received publication {seq}, expected {next_seq} (out of order, lost or repeated)");
            }
            next_seq += 1;
            if let (Some(t), Some(ph)) = (number_after(payload, b"\"t\":"), number_after(payload, b"\"ph\":")) {
                let now = sh.now_us();
                if (1..=2).contains(&ph) {
                    stats.borrow_mut().latency[ph as usize - 1].record(Duration::from_micros(now.saturating_sub(t)));
                }
            }
            sh.received(seq);
        } else if find(payload, b"\"subscribed\"").is_some() {
            if !subscribed.replace(true) {
                sh.subscribed.fetch_add(1, Ordering::Relaxed);
            }
        } else if find(payload, b"\"error\"").is_some() {
            bail!("the server answered {}", String::from_utf8_lossy(payload));
        }
        Ok(())
    };
    let mut reader = MessageReader::default();
    reader.feed(&leftover, &mut on_message)?;
    // Reads until the stream would block, into the thread's scratch
    // buffer, borrowed only within a poll (never across an await: the
    // subscribers of a thread share it, and an idle one holds no buffer);
    // ready only when the connection fails or ends.
    let reading = std::future::poll_fn(|cx| loop {
        let mut buf = scratch.borrow_mut();
        match poll_read_some(&mut stream, cx, &mut buf) {
            std::task::Poll::Pending => return std::task::Poll::Pending,
            std::task::Poll::Ready(Ok(0)) => {
                return std::task::Poll::Ready(Err(anyhow::anyhow!("the server closed the connection")))
            }
            std::task::Poll::Ready(Ok(n)) => {
                if let Err(e) = reader.feed(&buf[..n], &mut on_message) {
                    return std::task::Poll::Ready(Err(e));
                }
            }
            std::task::Poll::Ready(Err(e)) => {
                return std::task::Poll::Ready(Err(anyhow::Error::new(e).context("read")))
            }
        }
    });
    tokio::select! {
        r = reading => r,
        _ = stop.wait_for(|s| *s) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let f = encode_frame(opcode, payload, [0, 0, 0, 0]);
        // Unmasked: clear the mask bit and drop the (zero) key.
        let hdr = f.len() - payload.len() - 4;
        let mut g = f[..hdr].to_vec();
        g[1] &= 0x7F;
        g.extend_from_slice(payload);
        g
    }

    #[test]
    fn messages_come_whole_whatever_the_reads() {
        let big = vec![b'a'; 70_000];
        let msgs: Vec<&[u8]> = vec![b"{\"type\":\"subscribed\"}", b"", &big, b"{\"seq\":7}"];
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend(server_frame(OP_TEXT, m));
        }
        for chunk in [1usize, 2, 3, 1000, stream.len()] {
            let mut r = MessageReader::default();
            let mut seen: Vec<Vec<u8>> = Vec::new();
            for c in stream.chunks(chunk) {
                r.feed(c, |op, p| {
                    assert_eq!(op, OP_TEXT);
                    seen.push(p.to_vec());
                    Ok(())
                })
                .unwrap();
            }
            assert_eq!(
                seen,
                msgs.iter().map(|m| m.to_vec()).collect::<Vec<_>>(),
                "chunk {chunk}"
            );
            assert!(r.carry.is_empty());
        }
    }

    #[test]
    fn finds_numbers_after_keys() {
        let m = br#"{"type":"message","channel":"c","offset":3,"data":{"seq":12,"ph":2,"t":98765,"pad":""}}"#;
        assert_eq!(number_after(m, b"\"seq\":"), Some(12));
        assert_eq!(number_after(m, b"\"ph\":"), Some(2));
        assert_eq!(number_after(m, b"\"t\":"), Some(98765));
        assert_eq!(number_after(m, b"\"nope\":"), None);
        assert_eq!(number_after(b"\"seq\":x", b"\"seq\":"), None);
    }

    #[test]
    fn fragments_and_masked_frames_are_refused() {
        let mut frag = server_frame(OP_TEXT, b"ab");
        frag[0] &= 0x7F;
        assert!(MessageReader::default().feed(&frag, |_, _| Ok(())).is_err());
        let masked = encode_frame(OP_TEXT, b"ab", [1, 2, 3, 4]);
        assert!(MessageReader::default().feed(&masked, |_, _| Ok(())).is_err());
    }
}
