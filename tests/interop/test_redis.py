"""The hub over Redis, across real processes: real `redis-server`s started
here on free ports, several `tether serve --broker redis://...` nodes, and
clients nobody here wrote (Python's `websockets`, `http.client`).

What is checked (issues 13 and 16): a publication on any node reaches subscribers
on every node with offsets shared; a client resumes on another node; the
history bound and epochs hold across nodes; two shards both carry channels;
Redis killed mid-stream (publishes fail at once with 503 or an `error`
reply, nothing acknowledged is lost, subscribers stay connected, `/healthz`
and `/metrics` say so, the outage is logged once, recovery after); the
pub/sub connections killed while publishing (history fills the gap: every
acknowledged offset arrives once, in order); Redis restarted with its data
(offsets continue) and without (a new epoch, `recovered: false`); a node
killed mid-stream (its client resumes on another node, nothing lost);
client tokens (signed here by PyJWT, as an application's backend would)
checked on every node alike.

Every network wait is bounded.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import jwt
import pytest
from tether_server import Server, check_stopped
from util import SseStream
from websockets.asyncio.client import connect

TIMEOUT = 10.0
REDIS = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


@pytest.fixture(autouse=True)
def _redis_installed():
    if REDIS is None or REDIS_CLI is None:
        pytest.fail("redis-server/redis-cli not installed (scripts/test installs them)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A real redis-server on a free port; `persist` keeps its data in
    `dir` across a `restart` (an RDB written at shutdown)."""

    def __init__(self, dir: Path, persist: bool = False, port: int | None = None):
        self.port = port or free_port()
        self.dir = dir
        self.persist = persist
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        save = ["--save", "3600 1", "--dbfilename", "dump.rdb"] if self.persist else ["--save", ""]
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "no", *save],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                if self.cli("PING") == "PONG":
                    return
            except subprocess.SubprocessError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def cli(self, *args: str) -> str:
        out = subprocess.run([REDIS_CLI, "-p", str(self.port), *args], capture_output=True,
                             timeout=TIMEOUT, check=True)
        return out.stdout.decode().strip()

    def kill(self) -> None:
        """SIGKILL: nothing saved."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)

    def shutdown_saving(self) -> None:
        self.cli("SHUTDOWN", "SAVE")
        assert self.proc is not None
        self.proc.wait(TIMEOUT)

    def restart(self) -> None:
        self.kill()
        self.start()


@pytest.fixture
def redis_factory(tmp_path):
    started: list[Redis] = []

    def make(persist: bool = False) -> Redis:
        d = tmp_path / f"redis{len(started)}"
        d.mkdir()
        r = Redis(d, persist)
        started.append(r)
        return r

    yield make
    for r in started:
        r.kill()


@pytest.fixture
def nodes():
    """Factory of tether nodes; each must stop cleanly at teardown unless
    the test killed it (`node.killed = True`)."""
    started: list[Server] = []

    def start(broker: str, *args: str) -> Server:
        s = Server(["--broker", broker, *[str(a) for a in args]])
        s.killed = False
        started.append(s)
        return s

    yield start
    errors = []
    for s in started:
        if s.killed:
            continue
        try:
            check_stopped(s)
        except BaseException as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n\n".join(errors))


def run(coro, limit: float = 90):
    return asyncio.run(asyncio.wait_for(coro, limit))


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = TIMEOUT):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def publish(port: int, channel: str, data) -> tuple[int, dict]:
    status, headers, body = request(port, "POST", f"/publish/{channel}", json.dumps(data).encode())
    return status, (json.loads(body) if body else {}) | {"headers": headers}


def published(port: int, channel: str, data) -> int:
    status, answer = publish(port, channel, data)
    assert status == 200, answer
    return answer["offset"]


async def recv_json(ws, kind: str | None = None, timeout: float = TIMEOUT) -> dict:
    while True:
        m = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if kind is None or m["type"] == kind:
            return m
        assert m["type"] in ("published", "join", "leave"), m


async def subscribe(ws, channel: str, **extra) -> dict:
    await ws.send(json.dumps({"type": "subscribe", "channel": channel, **extra}))
    return await recv_json(ws, "subscribed")


def ws_url(node: Server) -> str:
    return f"ws://127.0.0.1:{node.port}/ws"


def wait_healthz(node: Server, status: int, limit: float = 20.0) -> str:
    deadline = time.monotonic() + limit
    while True:
        got, _, body = request(node.port, "GET", "/healthz")
        if got == status:
            return body.decode()
        assert time.monotonic() < deadline, f"/healthz stayed {got} {body!r}, want {status}"
        time.sleep(0.1)


def metric(node: Server, line_prefix: str) -> str:
    _, _, body = request(node.port, "GET", "/metrics")
    found = [line for line in body.decode().splitlines() if line.startswith(line_prefix)]
    assert found, f"{line_prefix} not in /metrics"
    return found[0]


def up_nodes(nodes, broker: str, count: int = 2, *args: str) -> list[Server]:
    """`count` nodes on `broker`, each answering `/healthz` with 200."""
    started = [nodes(broker, *args) for _ in range(count)]
    for node in started:
        wait_healthz(node, 200)
    return started


def publish_once_back(port: int, channel: str, data) -> dict:
    """Publishes, retrying (at most TIMEOUT) while the broker is still
    coming back (503); the accepted answer."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        status, answer = publish(port, channel, data)
        if status == 200:
            return answer
        assert status == 503 and time.monotonic() < deadline, answer
        time.sleep(0.1)


def test_two_nodes_share_channels_offsets_and_every_transport(redis_factory, nodes):
    r = redis_factory()
    a, b = up_nodes(nodes, r.url)

    async def main():
        async with connect(ws_url(b), open_timeout=TIMEOUT) as on_b, connect(ws_url(a), open_timeout=TIMEOUT) as on_a:
            sub_b = await subscribe(on_b, "room")
            sub_a = await subscribe(on_a, "room")
            assert sub_a["epoch"] == sub_b["epoch"] and sub_a["offset"] == sub_b["offset"] == 0
            # HTTP publish on A, WebSocket publish on B: one sequence of offsets.
            assert published(a.port, "room", {"from": "a"}) == 1
            await on_b.send(json.dumps({"type": "publish", "channel": "room", "data": {"from": "b"}, "id": 7}))
            for ws in (on_a, on_b):
                frames = [json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) for _ in range(2 + (ws is on_b))]
                got = [m for m in frames if m["type"] == "message"]
                assert [(m["offset"], m["data"]["from"]) for m in got] == [(1, "a"), (2, "b")], frames
            ack = next(m for m in frames if m["type"] == "published")
            assert ack["offset"] == 2 and ack["id"] == 7
            return sub_a["epoch"]

    epoch = run(main())
    # Polling on either node reads the same shared history.
    for node in (a, b):
        status, _, body = request(node.port, "GET", "/poll/room?since=0")
        page = json.loads(body)
        assert status == 200 and page["epoch"] == epoch and [m["offset"] for m in page["messages"]] == [1, 2]
    status, _, body = request(b.port, "GET", "/poll/room?since=0&limit=1")
    page = json.loads(body)
    assert [m["offset"] for m in page["messages"]] == [1] and page["next"] == 1, page
    # A long poll on B is woken by a publication on A.
    c = http.client.HTTPConnection("127.0.0.1", b.port, timeout=TIMEOUT)
    c.request("GET", "/poll/room?since=2&wait=10")
    time.sleep(0.3)
    started = time.monotonic()
    assert published(a.port, "room", "three") == 3
    page = json.loads(c.getresponse().read())
    c.close()
    assert [(m["offset"], m["data"]) for m in page["messages"]] == [(3, "three")]
    assert time.monotonic() - started < 5
    # SSE on A resumed after Last-Event-ID, fed by a publication on B.
    sse = SseStream(a.port, "room", last_event_id=1, timeout=TIMEOUT)
    sse.read_until(b"id: 3\n")
    assert published(b.port, "room", "four") == 4
    sse.read_until(b"id: 4\n")
    sse.close()
    assert sse.ids() == ["id: 2", "id: 3", "id: 4"], sse.received
    assert metric(a, 'tether_hub_broker_up{broker="redis"}').endswith(" 1")


def test_resume_on_another_node_with_the_history_bound_and_epoch(redis_factory, nodes):
    r = redis_factory()
    a, b = up_nodes(nodes, r.url, 2, "--history-size", "5")

    async def main():
        async with connect(ws_url(a), open_timeout=TIMEOUT) as ws:
            sub = await subscribe(ws, "h")
            for i in range(3):
                published(a.port, "h", i)
            got = [(await recv_json(ws, "message"))["offset"] for _ in range(3)]
            assert got == [1, 2, 3]
        epoch = sub["epoch"]
        # Away; five more published on A; back on B from offset 3.
        for i in range(3, 8):
            published(a.port, "h", i)
        async with connect(ws_url(b), open_timeout=TIMEOUT) as ws:
            again = await subscribe(ws, "h", since=3, epoch=epoch)
            assert again["recovered"] is True and again["offset"] == 8 and again["epoch"] == epoch
            assert [(await recv_json(ws, "message"))["offset"] for _ in range(5)] == [4, 5, 6, 7, 8]
            # From further back than the five kept: not recovered, told so.
            async with connect(ws_url(b), open_timeout=TIMEOUT) as late:
                lost = await subscribe(late, "h", since=1, epoch=epoch)
                assert lost["recovered"] is False and lost["offset"] == 8
            # An epoch from elsewhere: not recovered.
            async with connect(ws_url(a), open_timeout=TIMEOUT) as other:
                wrong = await subscribe(other, "h", since=7, epoch="not-this-one")
                assert wrong["recovered"] is False and wrong["epoch"] == epoch

    run(main())
    assert r.cli("LLEN", "tether:h:history") == "5"


def test_two_shards_both_carry_channels(redis_factory, nodes):
    r1, r2 = redis_factory(), redis_factory()
    broker = f"{r1.url},{r2.url}"
    a, b = up_nodes(nodes, broker)
    channels = [f"shard-{i}" for i in range(12)]

    async def main():
        async with connect(ws_url(b), open_timeout=TIMEOUT) as ws:
            for c in channels:
                await subscribe(ws, c)
            for c in channels:
                assert published(a.port, c, c) == 1
                assert published(a.port, c, c + "!") == 2
            got = {}
            for _ in range(2 * len(channels)):
                m = await recv_json(ws, "message")
                got.setdefault(m["channel"], []).append((m["offset"], m["data"]))
            assert got == {c: [(1, c), (2, c + "!")] for c in channels}

    run(main())
    on = [set(r.cli("--scan", "--pattern", "tether:*:offset").split()) for r in (r1, r2)]
    assert on[0] and on[1], f"a shard is empty: {on}"
    assert not (on[0] & on[1])
    assert {k.split(":")[1] for k in on[0] | on[1]} == set(channels)


def test_redis_killed_mid_stream_then_back_without_its_data(redis_factory, nodes):
    r = redis_factory()
    a, b = up_nodes(nodes, r.url)

    async def main():
        async with connect(ws_url(b), open_timeout=TIMEOUT) as sub_ws, connect(ws_url(a), open_timeout=TIMEOUT) as pub_ws:
            first = await subscribe(sub_ws, "k")
            acked = [published(a.port, "k", i) for i in range(20)]
            assert acked == list(range(1, 21))
            got = [(await recv_json(sub_ws, "message"))["offset"] for _ in range(20)]
            assert got == acked

            r.kill()
            # Publishes fail at once and clearly, on HTTP and on the WebSocket.
            failures = 0
            for i in range(10):
                started = time.monotonic()
                status, answer = publish(a.port, "k", {"down": i})
                assert status == 503 and answer["error"]["code"] == "unavailable", answer
                assert answer["headers"].get("retry-after") == "1"
                assert time.monotonic() - started < 3
                failures += 1
            await pub_ws.send(json.dumps({"type": "publish", "channel": "k", "data": "x", "id": "w1"}))
            err = await recv_json(pub_ws, "error")
            assert err["code"] == "unavailable" and err["id"] == "w1", err
            assert "reconnecting" in wait_healthz(a, 503)
            assert metric(a, 'tether_hub_broker_state{state="reconnecting"}').endswith(" 1")
            assert metric(b, 'tether_hub_broker_up{broker="redis"}').endswith(" 0")

            # Back, empty: a new epoch. The connected subscriber is told
            # `recovered: false` and then gets the new publications.
            r.start()
            wait_healthz(a, 200)
            wait_healthz(b, 200)
            answer = publish_once_back(a.port, "k", {"back": 1})
            notice = await recv_json(sub_ws, "subscribed")
            assert notice["recovered"] is False and notice["epoch"] != first["epoch"], notice
            m = await recv_json(sub_ws, "message")
            assert m["data"] == {"back": 1} and m["offset"] == answer["offset"], (m, answer)
            return failures

    failures = run(main())
    assert failures == 10
    for node in (a, b):
        lost = [line for line in node.lines if "lost the Redis connection" in line]
        assert 1 <= len(lost) <= 2, "\n".join(node.lines)  # once per connection (commands, pub/sub), not per request
        assert any("Redis reachable" in line for line in node.lines), node.output()


def test_redis_restarted_with_its_data_continues_the_offsets(redis_factory, nodes):
    r = redis_factory(persist=True)
    (a,) = up_nodes(nodes, r.url, 1)

    async def main():
        async with connect(ws_url(a), open_timeout=TIMEOUT) as ws:
            first = await subscribe(ws, "p")
            for i in range(5):
                published(a.port, "p", i)
            assert [(await recv_json(ws, "message"))["offset"] for _ in range(5)] == [1, 2, 3, 4, 5]
            r.shutdown_saving()
            wait_healthz(a, 503)
            r.start()
            wait_healthz(a, 200)
            answer = publish_once_back(a.port, "p", "after")
            assert answer["offset"] == 6
            m = await recv_json(ws)
            assert m["type"] == "message" and m["offset"] == 6 and m["data"] == "after", m
            again = await subscribe(ws, "p2")  # still serving commands
            assert again["offset"] == 0
            return first["epoch"]

    epoch = run(main())
    status, _, body = request(a.port, "GET", "/poll/p?since=0")
    page = json.loads(body)
    assert page["epoch"] == epoch and [m["offset"] for m in page["messages"]] == [1, 2, 3, 4, 5, 6]


def test_pubsub_connections_killed_while_publishing_lose_nothing(redis_factory, nodes):
    """`CLIENT KILL TYPE pubsub` cuts every node's live feed while
    publications go on through the command connections: what pub/sub
    missed must come from history, once each, in order."""
    r = redis_factory()
    a, b = up_nodes(nodes, r.url)
    total = 300

    async def main():
        async with connect(ws_url(b), open_timeout=TIMEOUT) as ws:
            await subscribe(ws, "cut")
            acked = []
            received = []

            async def reader():
                while len(received) < total:
                    # Nothing but the publications: a recovered gap is
                    # filled silently.
                    m = await recv_json(ws, timeout=20)
                    assert m["type"] == "message", m
                    received.append(m["offset"])

            task = asyncio.create_task(reader())
            for i in range(total):
                if i % 60 == 30:
                    r.cli("CLIENT", "KILL", "TYPE", "pubsub")
                while True:
                    status, answer = await asyncio.to_thread(publish, a.port, "cut", i)
                    if status == 200:
                        acked.append(answer["offset"])
                        break
                    assert status == 503, answer  # only while a node reconnects
                    await asyncio.sleep(0.05)
            await asyncio.wait_for(task, 30)
            return acked, received

    acked, received = run(main(), 120)
    assert acked == list(range(1, total + 1))
    assert received == acked


def test_a_node_killed_mid_stream_its_client_resumes_on_another(redis_factory, nodes):
    r = redis_factory()
    a, b = up_nodes(nodes, r.url)

    async def main():
        seen = []
        async with connect(ws_url(a), open_timeout=TIMEOUT) as ws:
            sub = await subscribe(ws, "n")
            for i in range(10):
                published(b.port, "n", i)
            for _ in range(10):
                seen.append((await recv_json(ws, "message"))["offset"])
            a.killed = True
            a.proc.send_signal(signal.SIGKILL)
            a.wait(TIMEOUT)
            # Publishing goes on through B while the client is cut off.
            acked = [published(b.port, "n", i) for i in range(10, 25)]
            try:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
                raise AssertionError("the killed node still sent")
            except Exception as e:  # the connection is gone
                assert "closed" in type(e).__name__.lower() or "Connection" in type(e).__name__, e
        async with connect(ws_url(b), open_timeout=TIMEOUT) as ws:
            again = await subscribe(ws, "n", since=seen[-1], epoch=sub["epoch"])
            assert again["recovered"] is True, again
            for _ in range(len(acked)):
                seen.append((await recv_json(ws, "message"))["offset"])
        return seen, acked

    seen, acked = run(main())
    assert seen == list(range(1, 11)) + acked


def test_a_node_started_before_its_redis_is_down_then_serves(redis_factory, nodes, tmp_path):
    port = free_port()
    a = nodes(f"redis://127.0.0.1:{port}")
    assert "down" in wait_healthz(a, 503)
    assert metric(a, 'tether_hub_broker_state{state="down"}').endswith(" 1")
    status, answer = publish(a.port, "early", 1)
    assert status == 503 and answer["error"]["code"] == "unavailable", answer

    async def refused():
        async with connect(ws_url(a), open_timeout=TIMEOUT) as ws:
            await ws.send(json.dumps({"type": "subscribe", "channel": "early", "id": "s"}))
            err = await recv_json(ws, "error")
            assert err["code"] == "unavailable" and err["id"] == "s", err
            # Still open: the same connection subscribes once Redis is there.
            r = Redis(tmp_path, port=port)
            try:
                wait_healthz(a, 200, limit=15)
                sub = await subscribe(ws, "early")
                assert sub["offset"] == 0
                assert published(a.port, "early", "now") == 1
                assert (await recv_json(ws, "message"))["data"] == "now"
            finally:
                r.kill()

    run(refused())


def test_a_token_signed_once_is_checked_alike_on_every_node(redis_factory, nodes):
    """Verification is stateless: two nodes with the same secret accept the
    same token, refuse the same bad ones, and a token holder's publication
    on one node reaches a token holder's subscription on the other."""
    secret = "a-secret-of-at-least-32-bytes-0123"
    r = redis_factory()
    a, b = up_nodes(nodes, r.url, 2, "--token-secret", secret, "--publish-key", "backend-key")

    def token(sub: str, ttl: int = 60, secret: str = secret, **grants) -> str:
        claims = {"sub": sub, "exp": int(time.time()) + ttl, **grants}
        return jwt.encode(claims, secret, algorithm="HS256")

    ada = token("ada", subscribe=["room*"], publish=["room1"])
    for node in (a, b):
        assert request(node.port, "GET", f"/poll/room1?since=0&token={ada}")[0] == 200
        assert request(node.port, "GET", "/poll/room1?since=0")[0] == 401
        assert request(node.port, "GET", f"/poll/other?since=0&token={ada}")[0] == 403
        forged = token("ada", secret="not-the-servers-secret-0123456789", subscribe=["*"])
        assert request(node.port, "GET", f"/poll/room1?since=0&token={forged}")[0] == 401
        expired = token("ada", ttl=-5, subscribe=["*"])
        assert request(node.port, "GET", f"/poll/room1?since=0&token={expired}")[0] == 401

    async def main():
        async with connect(f"{ws_url(b)}?token={ada}", open_timeout=TIMEOUT) as on_b, \
                connect(ws_url(a), open_timeout=TIMEOUT) as on_a:
            await subscribe(on_b, "room1")
            await on_a.send(json.dumps({"type": "auth", "token": ada}))
            assert (await recv_json(on_a, "authorized"))["sub"] == "ada"
            await on_a.send(json.dumps({"type": "publish", "channel": "room1", "data": "hi", "id": 1}))
            assert (await recv_json(on_a, "published"))["offset"] == 1
            m = await recv_json(on_b, "message")
            assert (m["channel"], m["offset"], m["data"]) == ("room1", 1, "hi")
            # Outside the grant on either node: forbidden, still open.
            await on_a.send(json.dumps({"type": "publish", "channel": "room2", "data": 1}))
            assert (await recv_json(on_a, "error"))["code"] == "forbidden"
            # The backend's key publishes on either node, to both.
            c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=TIMEOUT)
            c.request("POST", "/publish/room1", body=b'"from-the-backend"',
                      headers={"Authorization": "Bearer backend-key"})
            resp = c.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["offset"] == 2
            c.close()
            m = await recv_json(on_b, "message")
            assert (m["offset"], m["data"]) == (2, "from-the-backend")

    run(main())
