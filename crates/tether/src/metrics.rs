//! `/metrics`: the server's counters in the Prometheus text format
//! (through `prometheus-client`).
//!
//! Nothing is counted here: the hot paths keep plain atomics
//! ([`ServerStats`], [`HubStats`], [`WS_TOTALS`]) and a scrape reads them
//! into a fresh registry, so serving metrics costs nothing between
//! scrapes. Connection states are exclusive per kind: an HTTP connection
//! is `active` (a request in progress, SSE streams and held long polls
//! included), `idle` on its task, or `parked`; a WebSocket is `active` (on
//! a task) or `parked`. A TLS connection still in its handshake counts as
//! HTTP `idle`; `tether_tls_handshakes_total{result}` counts handshakes as
//! they end (`ok`, `failed`, `timeout`).
//!
//! Bytes on the wire: `tether_wire_bytes_total{protocol, direction, part}`,
//! `protocol="http"` with `part="head"` (start lines, header fields, chunk
//! framing, trailers) or `"body"`, `protocol="websocket"` with
//! `part="header"` (frame headers, masking keys included) or `"payload"`
//! (as on the wire: compressed when deflated); `direction="in"` is what the
//! server read, `"out"` what it wrote. The four series of a direction add
//! up to every byte that crossed the sockets (see [`crate::traffic`] for
//! when a connection's bytes are added: exact for ended connections).
//! `tether_websocket_bytes_total{direction}` is the WebSocket part's sum.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tether_proto::h1::CloseCause;
use tether_proto::ws::WsEnd;

use crate::hub::{BrokerState, Hub};
use crate::server::ServerStats;
use crate::ws::WS_TOTALS;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    kind: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cause {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct End {
    end: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Wire {
    protocol: &'static str,
    direction: &'static str,
    part: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrokerLabel {
    broker: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrokerStateLabel {
    state: &'static str,
}

fn read(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn counter(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

fn gauge(value: u64) -> Gauge<i64, AtomicI64> {
    let g = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    g
}

/// The metrics of a server (and its hub, if it has one), as Prometheus text.
pub fn render(server: &ServerStats, hub: Option<&Hub>) -> String {
    let mut r = Registry::with_prefix("tether");
    connections(&mut r, server, hub);
    http(&mut r, server);
    websockets(&mut r);
    wire_bytes(&mut r, server);
    if let Some(hub) = hub {
        hub_metrics(&mut r, hub);
    }
    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String does not fail");
    out
}

fn connections(r: &mut Registry, s: &ServerStats, hub: Option<&Hub>) {
    let open = s.open.get();
    let ws_open = read(&WS_TOTALS.open);
    let ws_parked = read(&s.parked_websockets);
    let http_parked = read(&s.parked).saturating_sub(ws_parked);
    let http_active = read(&s.http_active);
    let http_idle = open
        .saturating_sub(ws_open)
        .saturating_sub(http_active)
        .saturating_sub(http_parked);
    let states = Family::<State, Gauge<i64, AtomicI64>>::default();
    let set = |kind, state, value: u64| {
        states
            .get_or_create(&State { kind, state })
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    };
    set("http", "active", http_active);
    set("http", "idle", http_idle);
    set("http", "parked", http_parked);
    set("websocket", "active", ws_open.saturating_sub(ws_parked));
    set("websocket", "parked", ws_parked);
    if let Some(hub) = hub {
        let h = hub.stats();
        set("sse", "streaming", read(&h.sse_streams));
        set("long_poll", "held", read(&h.long_polls));
    }
    r.register(
        "connections",
        "Open connections by kind and state (SSE streams and held long polls are also HTTP active)",
        states,
    );
    r.register("connections_open", "Open connections of every kind", gauge(open));
    r.register(
        "connections_accepted",
        "Connections accepted",
        counter(read(&s.accepted)),
    );
    r.register(
        "connections_refused",
        "Connections refused with 503 at a connection limit",
        counter(read(&s.refused)),
    );
    let tls = Family::<Outcome, Counter>::default();
    for (result, n) in [
        ("ok", &s.tls_handshakes),
        ("failed", &s.tls_handshake_failures),
        ("timeout", &s.tls_handshake_timeouts),
    ] {
        tls.get_or_create(&Outcome { result }).inc_by(read(n));
    }
    r.register(
        "tls_handshakes",
        "TLS handshakes on TLS listeners by result: ok, failed (broken off, refused by rustls, or interrupted by shutdown), timeout",
        tls,
    );
}

fn http(r: &mut Registry, s: &ServerStats) {
    r.register(
        "http_requests",
        "Responses sent (added when a connection parks, upgrades or ends, and about once a second while it is busy)",
        counter(read(&s.requests)),
    );
    let closed = Family::<Cause, Counter>::default();
    for cause in CloseCause::ALL {
        closed
            .get_or_create(&Cause { cause: cause.as_str() })
            .inc_by(read(&s.closed[cause as usize]));
    }
    r.register("http_connections_closed", "HTTP connections ended, by cause", closed);
    r.register(
        "http_connections_upgraded",
        "HTTP connections that switched protocols",
        counter(read(&s.upgraded)),
    );
    r.register(
        "parked_writes",
        "Writes of pushed frames (one, or a batch) to parked connections without waking a task",
        counter(read(&s.parked_writes)),
    );
    r.register(
        "parked_write_resumes",
        "Pushes to parked connections that needed their task to finish writing",
        counter(read(&s.parked_write_resumes)),
    );
}

fn websockets(r: &mut Registry) {
    let t = &WS_TOTALS;
    let messages = Family::<Direction, Counter>::default();
    let bytes = Family::<Direction, Counter>::default();
    let traffic = t.traffic.get();
    for (direction, m, b) in [
        ("in", &t.messages_in, traffic.received),
        ("out", &t.messages_out, traffic.sent),
    ] {
        messages.get_or_create(&Direction { direction }).inc_by(read(m));
        bytes.get_or_create(&Direction { direction }).inc_by(b.total());
    }
    r.register("websocket_messages", "WebSocket data messages", messages);
    r.register("websocket_bytes", "WebSocket bytes on the wire", bytes);
    let ended = Family::<End, Counter>::default();
    for end in WsEnd::ALL {
        ended
            .get_or_create(&End { end: end.as_str() })
            .inc_by(read(&t.ended[end as usize]));
    }
    ended
        .get_or_create(&End { end: "forced_stop" })
        .inc_by(read(&t.ended[WsEnd::ALL.len()]));
    r.register(
        "websocket_connections_closed",
        "WebSocket connections ended, by how",
        ended,
    );
}

fn wire_bytes(r: &mut Registry, s: &ServerStats) {
    let t = s.traffic();
    let wire = Family::<Wire, Counter>::default();
    for (protocol, traffic, [overhead, payload]) in [
        ("http", t.http, ["head", "body"]),
        ("websocket", t.websocket, ["header", "payload"]),
    ] {
        for (direction, bytes) in [("in", traffic.received), ("out", traffic.sent)] {
            for (part, n) in [(overhead, bytes.overhead), (payload, bytes.payload)] {
                wire.get_or_create(&Wire {
                    protocol,
                    direction,
                    part,
                })
                .inc_by(n);
            }
        }
    }
    r.register(
        "wire_bytes",
        "Bytes on the wire by protocol, direction and part (HTTP head or body, WebSocket frame header or payload)",
        wire,
    );
}

fn hub_metrics(r: &mut Registry, hub: &Hub) {
    let h = hub.stats();
    r.register(
        "hub_channels",
        "Channels with subscribers or held polls on this node",
        gauge(read(&h.channels)),
    );
    r.register(
        "hub_subscribers",
        "Subscriptions (WebSocket and SSE)",
        gauge(read(&h.subscribers)),
    );
    r.register(
        "hub_websocket_sessions",
        "Connections on /ws",
        gauge(read(&h.ws_connections)),
    );
    r.register("hub_publishes", "Publications accepted", counter(read(&h.publishes)));
    r.register(
        "hub_publish_failures",
        "Publishes the broker did not take",
        counter(read(&h.publish_failures)),
    );
    r.register(
        "hub_deliveries",
        "Publications handed to subscribers (live and replayed)",
        counter(read(&h.deliveries)),
    );
    r.register(
        "hub_slow_consumers",
        "Subscribers dropped for not keeping up",
        counter(read(&h.slow_consumers)),
    );
    let broker = Family::<BrokerLabel, Gauge<i64, AtomicI64>>::default();
    broker
        .get_or_create(&BrokerLabel {
            broker: hub.broker().name(),
        })
        .set(i64::from(hub.broker().is_up()));
    r.register(
        "hub_broker_up",
        "Whether the broker is reachable (1) or not (0)",
        broker,
    );
    let now = hub.broker().state();
    let states = Family::<BrokerStateLabel, Gauge<i64, AtomicI64>>::default();
    for state in [BrokerState::Up, BrokerState::Reconnecting, BrokerState::Down] {
        states
            .get_or_create(&BrokerStateLabel { state: state.as_str() })
            .set(i64::from(state == now));
    }
    r.register("hub_broker_state", "The broker's state: 1 for the current one", states);
}
