//! The live demo behind the page at `/`: two publishers that feed it by
//! push, and the page itself (`demo.html`).
//!
//! * `demo.ticker`: a price that moves five times a second (a random walk);
//! * `demo.stats`: the server's own counters, once a second (the page's
//!   dashboard);
//! * `demo.chat`: the page's chat room (its clients publish; presence on).
//!
//! A publisher publishes only while its channel has subscribers on this
//! node, so an idle server does no work for the demo. `--demo=false`
//! turns the publishers off.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tether::hub::{ChannelName, Hub};
use tether::server::ServerStats;
use tether::ws::WS_TOTALS;

/// The page (HTML, CSS and script in one file).
pub const PAGE: &str = include_str!("demo.html");

/// Starts the demo's publishers on the current runtime.
pub fn spawn(hub: &Hub, stats: &Arc<ServerStats>) {
    tokio::spawn(ticker(hub.clone()));
    tokio::spawn(dashboard(hub.clone(), stats.clone()));
}

async fn ticker(hub: Hub) {
    let channel = ChannelName::new("demo.ticker").expect("a valid name");
    let mut price: f64 = 100.0;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if !hub.has_subscribers(&channel) {
            continue;
        }
        // A random walk of at most ±0.5 %, kept positive.
        let step = (rand::random::<f64>() - 0.5) * 0.01;
        price = (price * (1.0 + step)).max(1.0);
        let data = format!("{{\"symbol\":\"TTHR\",\"price\":{price:.2},\"t\":{}}}", unix_millis());
        if let Err(e) = hub.publish_json(&channel, &data).await {
            tracing::debug!(error = %e, "demo ticker publish failed");
        }
    }
}

async fn dashboard(hub: Hub, stats: Arc<ServerStats>) {
    let channel = ChannelName::new("demo.stats").expect("a valid name");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if !hub.has_subscribers(&channel) {
            continue;
        }
        let h = hub.stats();
        let read = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let data = format!(
            "{{\"t\":{},\"open\":{},\"parked\":{},\"requests\":{},\"websockets\":{},\
             \"ws_messages_in\":{},\"ws_messages_out\":{},\"subscribers\":{},\"channels\":{},\
             \"publishes\":{},\"deliveries\":{},\"parked_writes\":{}}}",
            unix_millis(),
            stats.open.get(),
            read(&stats.parked),
            read(&stats.requests),
            read(&WS_TOTALS.open),
            read(&WS_TOTALS.messages_in),
            read(&WS_TOTALS.messages_out),
            read(&h.subscribers),
            read(&h.channels),
            read(&h.publishes),
            read(&h.deliveries),
            read(&stats.parked_writes),
        );
        if let Err(e) = hub.publish_json(&channel, &data).await {
            tracing::debug!(error = %e, "demo stats publish failed");
        }
    }
}

fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}
