//! Micro-benchmarks of the engines' hot paths, each next to a plain memory
//! copy of the same size (the machine's memory bandwidth for that size), so
//! the numbers read as "how close to memcpy".
//!
//! `cargo bench -p tether-proto --bench engine`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::{HeaderMap, StatusCode};
use tether_proto::h1::{Config, Event, ResponseBody, ServerConnection};
use tether_proto::ws::frame::FrameHeader;
use tether_proto::ws::mask::apply_mask;
use tether_proto::ws::utf8::Utf8Validator;
use tether_proto::ws::{WsConfig, WsConnection};

const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n";

fn h1(c: &mut Criterion) {
    let mut g = c.benchmark_group("h1");
    g.throughput(Throughput::Bytes(REQUEST.len() as u64));
    g.bench_function("memcpy_request", |b| {
        let mut dst = vec![0u8; REQUEST.len()];
        b.iter(|| dst.copy_from_slice(black_box(REQUEST)))
    });
    g.bench_function("parse_request", |b| {
        let config = Config::default();
        b.iter_batched(
            || BytesMut::from(REQUEST),
            |mut buf| tether_proto::h1::parse::parse_request(&mut buf, &config).unwrap(),
            BatchSize::SmallInput,
        )
    });
    // One keep-alive request through the whole state machine: feed, event,
    // response head + 2-byte body, output taken.
    g.bench_function("keep_alive_cycle", |b| {
        let config = Arc::new(Config {
            max_requests: 0,
            ..Config::default()
        });
        let now = Instant::now();
        let mut conn = ServerConnection::new(config, now);
        let headers = HeaderMap::new();
        let body = Bytes::from_static(b"ok");
        b.iter(|| {
            conn.handle_input(REQUEST, now);
            let Some(Event::Request(_)) = conn.poll_event() else {
                panic!("no request")
            };
            conn.send_response(StatusCode::OK, &headers, ResponseBody::Length(2))
                .unwrap();
            conn.send_body(body.clone()).unwrap();
            conn.finish_response().unwrap();
            black_box(conn.take_output(now));
        })
    });
    g.finish();
}

fn ws(c: &mut Criterion) {
    for size in [32usize, 4096, 1 << 20] {
        let mut g = c.benchmark_group(format!("ws_{size}"));
        g.throughput(Throughput::Bytes(size as u64));
        let payload = vec![b'a'; size];
        g.bench_function("memcpy", |b| {
            let mut dst = vec![0u8; size];
            b.iter(|| dst.copy_from_slice(black_box(&payload)))
        });
        g.bench_function("unmask", |b| {
            let mut buf = payload.clone();
            b.iter(|| apply_mask(black_box(&mut buf), [1, 2, 3, 4], 0))
        });
        g.bench_function("utf8_validate", |b| {
            let mut v = Utf8Validator::default();
            b.iter(|| {
                v.feed(black_box(&payload)).unwrap();
                v.finish().unwrap();
                v.reset();
            })
        });
        // A masked client frame decoded, unmasked, validated and delivered.
        let key = [9, 8, 7, 6];
        let mut frame = BytesMut::new();
        let header = FrameHeader::new(tether_proto::ws::OpCode::Text, size as u64, Some(key));
        let (head, n) = header.encode();
        frame.extend_from_slice(&head[..n]);
        let mut masked = payload.clone();
        apply_mask(&mut masked, key, 0);
        frame.extend_from_slice(&masked);
        g.bench_function("decode_text_frame", |b| {
            let config = WsConfig::default();
            let now = Instant::now();
            let mut conn = WsConnection::server(config.clone(), None, std::time::Instant::now());
            b.iter(|| {
                conn.handle_input(black_box(&frame), now);
                black_box(conn.poll_event().expect("a message"));
            })
        });
        g.finish();
    }
}

criterion_group!(benches, h1, ws);
criterion_main!(benches);
