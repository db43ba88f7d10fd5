//! `tracing` spans over real sockets: a subscriber sees each connection as
//! one `conn` span with a `request` child per request, the end recorded
//! (`requests`, `cause`) and the close line logged inside it; a connection
//! that parks and resumes keeps its one span; an upgraded WebSocket is a
//! `websocket` child with its `end`.
//!
//! One recording layer is the process's global subscriber (tests of this
//! file run in parallel): each test picks its own connection by `peer`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use tether::proto::h1;
use tether::server::{Request, Router, Server};
use tether::ws::{self, Message, Replies, WsOptions};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// A span as the subscriber saw it.
#[derive(Debug, Clone, Default)]
struct SpanRecord {
    name: &'static str,
    /// The id the registry gave it (ids are reused once a span closes).
    id: u64,
    /// The parent's index in `Records::spans`.
    parent: Option<usize>,
    fields: BTreeMap<String, String>,
    /// Messages of the events logged inside it.
    events: Vec<String>,
    closed: bool,
}

#[derive(Default)]
struct Records {
    spans: Vec<SpanRecord>,
    /// Open spans: registry id → index in `spans`.
    live: HashMap<u64, usize>,
}

fn records() -> &'static Mutex<Records> {
    static RECORDS: OnceLock<Mutex<Records>> = OnceLock::new();
    RECORDS.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(Recorder);
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        Mutex::new(Records::default())
    })
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// Records every span (name, fields, parent), its later fields, its close,
/// and the messages of events logged inside it.
struct Recorder;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let parent = match attrs.parent() {
            Some(p) => Some(p.into_u64()),
            None if attrs.is_contextual() => ctx.current_span().id().map(Id::into_u64),
            None => None,
        };
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut r = records().lock().unwrap();
        let parent = parent.and_then(|p| r.live.get(&p).copied());
        let index = r.spans.len();
        r.spans.push(SpanRecord {
            name: attrs.metadata().name(),
            id: id.into_u64(),
            parent,
            fields,
            ..SpanRecord::default()
        });
        r.live.insert(id.into_u64(), index);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut r = records().lock().unwrap();
        if let Some(&i) = r.live.get(&id.into_u64()) {
            values.record(&mut Fields(&mut r.spans[i].fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.event_span(event) else { return };
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let mut r = records().lock().unwrap();
        if let Some(&i) = r.live.get(&span.id().into_u64()) {
            r.spans[i].events.push(fields.remove("message").unwrap_or_default());
        }
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        let mut r = records().lock().unwrap();
        if let Some(i) = r.live.remove(&id.into_u64()) {
            r.spans[i].closed = true;
        }
    }
}

/// The `conn` spans of connections from `peer`, with their children.
fn connection_spans(peer: SocketAddr) -> Vec<(SpanRecord, Vec<SpanRecord>)> {
    let r = records().lock().unwrap();
    let peer = peer.to_string();
    r.spans
        .iter()
        .enumerate()
        .filter(|(_, s)| s.name == "conn" && s.fields.get("peer") == Some(&peer))
        .map(|(i, s)| {
            let children = r.spans.iter().filter(|c| c.parent == Some(i)).cloned().collect();
            (s.clone(), children)
        })
        .collect()
}

/// Waits (bounded) until the one `conn` span of `peer` has closed.
async fn closed_connection(peer: SocketAddr) -> (SpanRecord, Vec<SpanRecord>) {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let spans = connection_spans(peer);
        assert!(spans.len() <= 1, "one span per connection: {spans:#?}");
        if let Some((conn, children)) = spans.into_iter().next() {
            if conn.closed {
                return (conn, children);
            }
        }
        assert!(Instant::now() < until, "the connection's span never closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn field<'a>(span: &'a SpanRecord, name: &str) -> &'a str {
    span.fields
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {span:#?}"))
}

fn get_closing(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn a_keep_alive_connection_is_one_span_with_a_child_per_request() {
    records();
    let server = TestServer::start(config()).await;
    let mut client = server.connect().await;
    let peer = client.local_addr();
    assert_eq!(client.send_and_read(&get("/healthz")).await.status, 200);
    assert_eq!(client.send_and_read(&get("/nowhere")).await.status, 404);
    assert_eq!(client.send_and_read(&get_closing("/healthz")).await.status, 200);
    client.expect_eof(IO_TIMEOUT).await;

    let (conn, children) = closed_connection(peer).await;
    assert_eq!(field(&conn, "requests"), "3");
    assert_eq!(field(&conn, "cause"), "client_close");
    assert!(field(&conn, "conn").parse::<u64>().is_ok(), "{conn:#?}");
    assert!(
        conn.events.iter().any(|m| m == "connection closed"),
        "the close line is logged in the span: {conn:#?}"
    );
    let requests: Vec<_> = children.iter().filter(|c| c.name == "request").collect();
    assert_eq!(requests.len(), 3, "{children:#?}");
    let seen: Vec<_> = requests
        .iter()
        .map(|r| (field(r, "method"), field(r, "path"), field(r, "status")))
        .collect();
    assert_eq!(
        seen,
        [
            ("GET", "/healthz", "200"),
            ("GET", "/nowhere", "404"),
            ("GET", "/healthz", "200")
        ]
    );
    assert!(requests.iter().all(|r| r.closed));
}

#[tokio::test]
async fn a_parked_connection_keeps_its_span_and_ends_in_it() {
    records();
    let park = Duration::from_millis(100);
    let config = h1::Config {
        idle_timeout: Duration::from_millis(800),
        ..config()
    };
    let server = TestServer::start_parking(config, Duration::from_secs(10), Some(park)).await;
    let mut client = server.connect().await;
    let peer = client.local_addr();
    let mut ids = Vec::new();
    for round in 0..3 {
        assert_eq!(
            client.send_and_read(&get("/healthz")).await.status,
            200,
            "round {round}"
        );
        wait_stats(&server.stats, 1, 1).await;
        let spans = connection_spans(peer);
        assert_eq!(spans.len(), 1, "round {round}: {spans:#?}");
        let (conn, children) = &spans[0];
        assert!(!conn.closed, "parked, the connection's span stays open");
        assert_eq!(children.len(), round + 1, "each request under the same span");
        ids.push(conn.id);
    }
    assert!(ids.iter().all(|&id| id == ids[0]), "one span id: {ids:?}");
    // Its idle timeout closes it in the lot, with no task.
    client.expect_eof(Duration::from_secs(5)).await;
    let (conn, children) = closed_connection(peer).await;
    assert_eq!(conn.id, ids[0]);
    assert_eq!(field(&conn, "requests"), "3");
    assert_eq!(field(&conn, "cause"), "idle_timeout");
    assert!(conn.events.iter().any(|m| m == "connection closed"), "{conn:#?}");
    assert_eq!(children.iter().filter(|c| c.name == "request").count(), 3);
}

fn echo(message: Message, replies: &mut Replies<'_>) {
    let _ = replies.send(message);
}

#[tokio::test]
async fn an_upgraded_websocket_is_a_child_span_with_its_end() {
    records();
    let options = std::sync::Arc::new(WsOptions::default());
    let app = Router::new().route("/ws", move |req: Request| {
        let options = options.clone();
        async move { ws::upgrade_service(&req, &options, echo) }
    });
    let server = Serving::start(Server::new(config(), app).park_idle_after(Some(Duration::from_millis(100)))).await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let peer = tcp.local_addr().unwrap();
    let url = format!("ws://127.0.0.1:{}/ws", server.port);
    let mut socket = tether::client::ws::connect_on(tcp, &url, Default::default())
        .await
        .expect("upgrade");
    socket.send(Message::Text("one".into())).await.unwrap();
    assert_eq!(socket.recv().await.unwrap().unwrap(), Message::Text("one".into()));
    // Parked and resumed: still the same span.
    wait_stats(&server.stats, 1, 1).await;
    socket.send(Message::Text("two".into())).await.unwrap();
    assert_eq!(socket.recv().await.unwrap().unwrap(), Message::Text("two".into()));
    socket.close(ws::CloseCode::NORMAL, "bye").await.unwrap();
    while let Some(Ok(_)) = socket.recv().await {}

    let (conn, children) = closed_connection(peer).await;
    assert_eq!(field(&conn, "cause"), "upgraded");
    assert_eq!(field(&conn, "requests"), "1");
    let kinds: Vec<_> = children.iter().map(|c| c.name).collect();
    assert_eq!(kinds, ["request", "websocket"], "{children:#?}");
    let websocket = &children[1];
    assert!(websocket.closed);
    assert!(!field(websocket, "end").is_empty());
    assert!(
        websocket.events.iter().any(|m| m == "websocket closed"),
        "{websocket:#?}"
    );
}

#[tokio::test]
async fn a_held_request_parks_with_its_spans_and_answers_inside_them() {
    use tether::server::{router, Held, HeldSignal};
    records();
    let app = Router::new().route("/hold", |_req: Request| async {
        let deadline = Instant::now() + Duration::from_millis(300);
        let answer: tether::server::held::HeldAnswer = Box::new(|fired| {
            Box::pin(async move {
                tracing::info!(fired, "answering the held request");
                router::text(http::StatusCode::OK, "late")
            })
        });
        Held::new(HeldSignal::new(), deadline, answer).into_response()
    });
    let server = Serving::start(Server::new(config(), app).park_idle_after(Some(Duration::from_millis(100)))).await;
    let mut client = Client::connect(server.port).await;
    let peer = client.local_addr();
    client.send(&get_closing("/hold")).await;
    // Held in the lot, without a task, its spans open.
    wait_stats(&server.stats, 1, 1).await;
    let spans = connection_spans(peer);
    assert_eq!(spans.len(), 1);
    assert!(!spans[0].0.closed && spans[0].1.iter().all(|r| !r.closed), "{spans:#?}");
    let r = client.response().await;
    assert_eq!((r.status, r.body_str().as_str()), (200, "late"));
    client.expect_eof(IO_TIMEOUT).await;

    let (conn, children) = closed_connection(peer).await;
    assert_eq!(field(&conn, "requests"), "1");
    assert_eq!(children.len(), 1, "{children:#?}");
    let request = &children[0];
    assert_eq!(field(request, "status"), "200");
    assert!(
        request.events.iter().any(|m| m == "answering the held request"),
        "the answer runs in its request's span after the resume: {request:#?}"
    );
}
