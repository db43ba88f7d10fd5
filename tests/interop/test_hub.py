"""The push hub of the real `tether serve` binary, with clients nobody here
wrote: Python's `websockets` on `/ws`, `http.client` for publish and
(long-)poll, a line-by-line SSE reader, and a real restart of the server
(the in-process hub loses its history: a new epoch, `recovered: false`).
`/metrics` is read after the traffic and checked against it. Publisher
keys, and the namespaces and command rate of a `--config` file with
client tokens (signed here by PyJWT).

Every network wait is bounded.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time

from util import SseStream
from websockets.asyncio.client import connect

TIMEOUT = 10.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def recv_json(ws, kind: str | None = None) -> dict:
    while True:
        m = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if kind is None or m["type"] == kind:
            return m
        assert m["type"] in ("published", "join", "leave"), m


def http_request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def publish(port: int, channel: str, data) -> int:
    status, _, body = http_request(port, "POST", f"/publish/{channel}", json.dumps(data).encode(),
                                   {"Content-Type": "application/json"})
    assert status == 200, body
    return json.loads(body)["offset"]


def test_websocket_clients_subscribe_publish_and_resume(start_server):
    srv = start_server()
    url = f"ws://127.0.0.1:{srv.port}/ws"

    async def main():
        async with connect(url, open_timeout=TIMEOUT) as a, connect(url, open_timeout=TIMEOUT) as b:
            await a.send(json.dumps({"type": "subscribe", "channel": "py", "id": "s1"}))
            sub = await recv_json(a, "subscribed")
            assert sub["id"] == "s1" and sub["offset"] == 0
            for i in range(5):
                await b.send(json.dumps({"type": "publish", "channel": "py", "data": {"i": i}}))
            got = [await recv_json(a, "message") for _ in range(5)]
            assert [m["offset"] for m in got] == [1, 2, 3, 4, 5]
            assert [m["data"]["i"] for m in got] == [0, 1, 2, 3, 4]
            epoch = sub["epoch"]
        # Away: three more over HTTP; then back with since=5.
        for i in range(5, 8):
            publish(srv.port, "py", {"i": i})
        async with connect(url, open_timeout=TIMEOUT) as a:
            await a.send(json.dumps({"type": "subscribe", "channel": "py", "since": 5, "epoch": epoch}))
            sub = await recv_json(a, "subscribed")
            assert sub["recovered"] is True and sub["offset"] == 8
            assert [(await recv_json(a, "message"))["offset"] for _ in range(3)] == [6, 7, 8]
        return epoch

    epoch = run(main())
    # A real restart (a new process): the in-process hub's history is gone.
    assert srv.stop() == 0
    again = start_server()

    async def after_restart():
        async with connect(f"ws://127.0.0.1:{again.port}/ws", open_timeout=TIMEOUT) as a:
            await a.send(json.dumps({"type": "subscribe", "channel": "py", "since": 8, "epoch": epoch}))
            sub = await recv_json(a, "subscribed")
            assert sub["epoch"] != epoch and sub["recovered"] is False and sub["offset"] == 0, sub

    run(after_restart())


def test_polling_long_polling_and_sse_from_plain_http_clients(start_server):
    srv = start_server()
    for i in range(3):
        publish(srv.port, "feed", {"n": i})
    status, headers, body = http_request(srv.port, "GET", "/poll/feed?since=1")
    page = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert [m["offset"] for m in page["messages"]] == [2, 3] and page["next"] == 3 and page["recovered"] is True

    # A long poll held until a publication arrives.
    started = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=TIMEOUT)
    c.request("GET", "/poll/feed?since=3&wait=10")
    time.sleep(0.3)
    publish(srv.port, "feed", {"n": 3})
    r = c.getresponse()
    page = json.loads(r.read())
    c.close()
    assert [m["data"] for m in page["messages"]] == [{"n": 3}]
    assert time.monotonic() - started < 8

    # SSE, resumed after Last-Event-ID: 2 (as EventSource does).
    sse = SseStream(srv.port, "feed", last_event_id=2, timeout=TIMEOUT)
    sse.read_until(b"id: 4\n")
    publish(srv.port, "feed", {"n": 4})
    text = sse.read_until(b"id: 5\ndata: {\"n\":4}\n\n").decode()
    sse.close()
    assert "content-type: text/event-stream" in text.lower()
    assert sse.ids() == ["id: 3", "id: 4", "id: 5"], text


def test_metrics_tell_what_happened(start_server):
    srv = start_server()

    async def main():
        url = f"ws://127.0.0.1:{srv.port}/ws"
        async with connect(url, open_timeout=TIMEOUT) as a:
            await a.send(json.dumps({"type": "subscribe", "channel": "m"}))
            await recv_json(a, "subscribed")
            for i in range(4):
                publish(srv.port, "m", i)
            for _ in range(4):
                await recv_json(a, "message")
            _, headers, body = http_request(srv.port, "GET", "/metrics")
            return headers, body.decode()

    headers, text = run(main())
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = set(text.splitlines())
    for line in [
        "tether_hub_publishes_total 4",
        "tether_hub_deliveries_total 4",
        "tether_hub_subscribers 1",
        'tether_connections{kind="websocket",state="active"} 1',
        'tether_hub_broker_up{broker="memory"} 1',
        "tether_http_connections_upgraded_total 1",
    ]:
        assert line in lines, f"{line!r} not in\n{text}"
    # Prometheus text format: every sample belongs to a declared metric.
    declared = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{")[0].split()[0]
            assert name in declared or name.removesuffix("_total") in declared, line


def test_a_large_publication_is_deflated_once_for_subscribers_that_agreed(start_server):
    import zlib

    from util import Conn, client_frame, read_frame, ws_handshake

    srv = start_server()  # --ws-compression shared: no context takeover
    big = {"rows": [{"symbol": f"S{i}", "price": 100 + i} for i in range(100)]}
    subscribe = json.dumps({"type": "subscribe", "channel": "z"}).encode()
    with Conn(srv.port, timeout=TIMEOUT) as deflating, Conn(srv.port, timeout=TIMEOUT) as plain:
        assert "permessage-deflate" in (ws_handshake(deflating, srv.port, "permessage-deflate", path="/ws")["extensions"] or "")
        assert ws_handshake(plain, srv.port, None, path="/ws")["extensions"] is None
        for c in (deflating, plain):
            c.send(client_frame(0x1, subscribe))
            _, rsv1, opcode, payload = read_frame(c)
            assert opcode == 0x1 and json.loads(payload)["type"] == "subscribed"
        publish(srv.port, "z", big)
        _, rsv1, opcode, compressed = read_frame(deflating)
        assert rsv1 and opcode == 0x1
        text = zlib.decompressobj(-15).decompress(compressed + b"\x00\x00\xff\xff")
        _, plain_rsv1, _, plain_text = read_frame(plain)
        assert not plain_rsv1
        assert text == plain_text
        assert json.loads(text)["data"] == big
        assert len(compressed) < len(text) / 3, (len(compressed), len(text))


def test_an_abandoned_sse_stream_ends_when_its_client_closes(start_server):
    """A browser tab that closes its EventSource sends a FIN: its connection
    must end then, not at the stream's next write (a keep-alive comment, up
    to --sse-keep-alive later); the hub forgets the subscription at its next
    upkeep (every --sse-keep-alive)."""
    srv = start_server("--log", "warn", "--sse-keep-alive", "1s")

    def gauge(prefix: str) -> int:
        _, _, body = http_request(srv.port, "GET", "/metrics")
        for line in body.decode().splitlines():
            if line.startswith(prefix):
                return int(float(line.split()[-1]))
        return 0

    def active_http() -> int:
        # SSE streams are active HTTP connections (the scrape's own
        # request is not counted while the metrics are rendered).
        return gauge('tether_connections{kind="http",state="active"}')

    def hub_streams() -> int:
        return gauge('tether_connections{kind="sse",state="streaming"}')

    streams = [SseStream(srv.port, f"gone{i}") for i in range(3)]
    for s in streams:
        s.read_until(b"event: subscribed")
    assert (active_http(), hub_streams()) == (3, 3)
    closed_at = time.monotonic()
    for s in streams:
        s.close()
    while active_http() and time.monotonic() < closed_at + 0.5:
        time.sleep(0.02)
    assert active_http() == 0, "the connections of abandoned SSE streams are still open"
    while hub_streams() and time.monotonic() < closed_at + 3:
        time.sleep(0.05)
    assert hub_streams() == 0, "the hub still holds the abandoned subscriptions"


def test_publishing_requires_a_configured_key_and_keys_rotate(start_server, tmp_path):
    """`--publish-key` (repeatable) and `--publish-key-file`: POST /publish
    needs `Authorization: Bearer KEY` with any configured key, else 401 with
    a JSON error and `WWW-Authenticate`; no key ever appears in the logs."""
    key_file = tmp_path / "keys"
    key_file.write_text("# rotated in on Monday\nfile-key-3\n\n")
    srv = start_server("--publish-key", "old-key-1", "--publish-key", "new-key-2",
                       "--publish-key-file", str(key_file), "--log", "debug", "--access-log")
    body = json.dumps({"text": "hi"}).encode()
    json_type = {"Content-Type": "application/json"}

    status, headers, answer = http_request(srv.port, "POST", "/publish/news", body, json_type)
    assert status == 401, answer
    assert json.loads(answer)["error"]["code"] == "unauthorized"
    assert {k.lower(): v for k, v in headers.items()}["www-authenticate"] == 'Bearer realm="tether"'

    status, headers, answer = http_request(srv.port, "POST", "/publish/news", body,
                                           {**json_type, "Authorization": "Bearer old-key-"})
    assert status == 401, answer
    assert 'error="invalid_token"' in {k.lower(): v for k, v in headers.items()}["www-authenticate"]

    offsets = []
    for key in ("old-key-1", "new-key-2", "file-key-3"):
        status, _, answer = http_request(srv.port, "POST", "/publish/news", body,
                                         {**json_type, "Authorization": f"Bearer {key}"})
        assert status == 200, answer
        offsets.append(json.loads(answer)["offset"])
    assert offsets == [1, 2, 3], "refused publishes published nothing"
    # Reading stays open to everyone (client tokens are another setting).
    status, _, answer = http_request(srv.port, "GET", "/poll/news?since=0")
    assert status == 200 and len(json.loads(answer)["messages"]) == 3
    output = srv.output()
    for key in ("old-key", "new-key-2", "file-key-3"):
        assert key not in output, f"{key} in the logs"


def test_namespaces_from_the_config_file_and_the_command_rate(start_server, tmp_path):
    """The binary wires the `[[namespace]]` tables of `--config` and the
    limit flags into the hub: `pub:` readable without a token over SSE and
    polls (two publications of history), `ticker:` published by the
    backend only, everything else needing a token; a client over
    `--client-rate` gets `rate_limited`, then 1008."""
    import jwt

    secret = "a-secret-of-at-least-32-bytes-0123"
    config = tmp_path / "tether.toml"
    config.write_text(
        '[[namespace]]\nprefix = "pub:"\nanonymous = true\nhistory-size = 2\n\n'
        '[[namespace]]\nprefix = "ticker:"\nanonymous = true\npublish = false\npresence = false\n'
    )
    srv = start_server("--config", str(config), "--token-secret", secret, "--publish-key", "backend",
                       "--client-rate", "5", "--client-burst", "5", "--client-strikes", "2")
    backend = {"Content-Type": "application/json", "Authorization": "Bearer backend"}
    for n in range(1, 6):
        status, _, _ = http_request(srv.port, "POST", "/publish/pub:news", json.dumps(n).encode(), backend)
        assert status == 200
    status, _, body = http_request(srv.port, "GET", "/poll/pub:news?since=0")
    page = json.loads(body)
    assert status == 200 and [m["offset"] for m in page["messages"]] == [4, 5], page
    assert page["recovered"] is False
    assert http_request(srv.port, "GET", "/poll/news?since=0")[0] == 401
    sse = SseStream(srv.port, "ticker:X")
    try:
        assert sse.read_until(b"event: subscribed").startswith(b"HTTP/1.1 200"), sse.received
    finally:
        sse.close()

    token = jwt.encode({"sub": "ada", "exp": int(time.time()) + 60, "subscribe": ["*"], "publish": ["*"]},
                       secret, algorithm="HS256")

    async def main():
        async with connect(f"ws://127.0.0.1:{srv.port}/ws?token={token}", open_timeout=TIMEOUT) as ws:
            await ws.send(json.dumps({"type": "publish", "channel": "ticker:X", "data": 1, "id": 1}))
            e = await recv_json(ws, "error")
            assert (e["code"], e["id"]) == ("forbidden", 1), e
            await ws.send(json.dumps({"type": "subscribe", "channel": "ticker:X", "presence": True}))
            sub = await recv_json(ws, "subscribed")
            assert "members" not in sub, sub
            # Two commands already spent: three more fit the burst (four if
            # the bucket refilled one meanwhile), then two strikes, then a
            # last refusal and Close 1008.
            for i in range(10):
                await ws.send(json.dumps({"type": "subscribe", "channel": f"c{i}", "id": i}))
            answers = []
            try:
                while True:
                    answers.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))
            except Exception:  # the Close
                pass
            kinds = [(a["type"], a.get("code")) for a in answers if a.get("type") != "published"]
            served = kinds.count(("subscribed", None))
            assert served in (3, 4), kinds
            assert kinds == [("subscribed", None)] * served + [("error", "rate_limited")] * 3, kinds
            assert ws.close_code == 1008, ws.close_code

    run(main())
