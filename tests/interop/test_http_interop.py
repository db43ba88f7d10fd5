"""The real `tether serve` binary against HTTP clients nobody here wrote:
Python's http.client, curl, and raw sockets for what must be seen byte by
byte (pipelining, malformed input, when the server closes).

Endpoints used: GET /healthz -> 200 "ok"; POST /echo -> 200 with the request
body. Timing assertions use generous bounds: the machine is small and busy.
"""

from __future__ import annotations

import http.client
import re
import shutil
import signal
import subprocess
import time

import pytest

from tether_server import server_fixture
from util import Conn, chunked, fetch, keep_alive_params, request

MIB = 1024 * 1024


def assert_healthy(port: int) -> None:
    """The server still answers on a new connection."""
    resp = fetch(port)
    assert resp.status == 200, resp
    assert resp.body.strip() == b"ok", resp


def echo(body: bytes, headers=None) -> bytes:
    return request("POST", "/echo", headers=headers, body=body)


# ---------------------------------------------------------------------------
# http.client
# ---------------------------------------------------------------------------


def test_healthz_and_keep_alive_header(server):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200
        assert body.strip() == b"ok"
        assert resp.getheader("Keep-Alive") == "timeout=5, max=100"
        assert "close" not in (resp.getheader("Connection") or "").lower()
    finally:
        conn.close()


def test_http_client_reuses_one_connection(server):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read().strip() == b"ok"
        sock = conn.sock
        assert sock is not None, "http.client dropped the connection after a keep-alive response"
        port = sock.getsockname()[1]

        def same_connection():
            assert conn.sock is sock, "http.client opened a new connection"
            assert conn.sock.getsockname()[1] == port

        for _ in range(3):
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read().strip() == b"ok"
            same_connection()

        # A small body, then 1 MiB, echoed on the same connection.
        conn.request("POST", "/echo", body=b"hello tether")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.read() == b"hello tether"
        same_connection()

        big = bytes(range(256)) * (MIB // 256)
        conn.request("POST", "/echo", body=big)
        resp = conn.getresponse()
        assert resp.status == 200
        got = resp.read()
        assert len(got) == len(big) and got == big
        same_connection()

        # Chunked upload.
        parts = [b"first chunk|", b"x" * 10000, b"|last"]
        conn.request(
            "POST",
            "/echo",
            body=iter(parts),
            headers={"Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.read() == b"".join(parts)
        same_connection()

        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read().strip() == b"ok"
        assert resp.getheader("Keep-Alive") == "timeout=5, max=100"
        same_connection()
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# keep-alive limits
# ---------------------------------------------------------------------------


CURL = shutil.which("curl")


def curl_verbose_blocks(stderr: str) -> list[list[str]]:
    """The response header blocks (lines after `< `) of `curl -v` output."""
    blocks: list[list[str]] = []
    for line in stderr.splitlines():
        if line.startswith("< HTTP/"):
            blocks.append([line[2:].strip()])
        elif line.startswith("< ") and blocks and line[2:].strip():
            blocks[-1].append(line[2:].strip())
    return blocks


@pytest.mark.skipif(CURL is None, reason="curl not installed (scripts/test installs it)")
def test_keep_alive_max_with_curl(start_server):
    s = start_server("--keep-alive-max", "3")
    url = s.url("/healthz")
    argv = [CURL, "-sv", "--noproxy", "*", "--max-time", "10", url]
    for _ in range(3):
        argv += ["--next", "-sv", "--noproxy", "*", "--max-time", "10", url]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("ok") == 4, proc.stdout

    blocks = curl_verbose_blocks(proc.stderr)
    assert len(blocks) == 4, proc.stderr
    assert all(b[0].split()[1] == "200" for b in blocks), blocks

    def has_close(block):
        return any(re.fullmatch(r"(?i)connection:\s*close", h) for h in block[1:])

    assert [has_close(b) for b in blocks] == [False, False, True, False], blocks
    # The first response advertises the limit.
    ka = [h.split(":", 1)[1].strip() for h in blocks[0][1:] if h.lower().startswith("keep-alive:")]
    assert ka == ["timeout=5, max=3"], blocks[0]
    # One connection for requests 1-3, a second one for request 4.
    connects = [l for l in proc.stderr.splitlines() if "Connected to" in l]
    assert len(connects) == 2, proc.stderr
    assert "#1" in connects[1], connects


def test_keep_alive_max_raw(start_server):
    s = start_server("--keep-alive-max", "3")
    with Conn(s.port) as c:
        for i in range(1, 4):
            resp = c.exchange(request())
            assert resp.status == 200, resp
            if i < 3:
                assert "close" not in resp.connection_tokens(), (i, resp)
            else:
                assert "close" in resp.connection_tokens(), resp
        _, extra = c.wait_closed(5)
        assert extra == b""
    assert_healthy(s.port)


def test_keep_alive_timeout_closes_idle_connection(start_server):
    s = start_server("--keep-alive-timeout", "500ms")
    with Conn(s.port) as c:
        resp = c.exchange(request())
        assert resp.status == 200
        assert "close" not in resp.connection_tokens(), resp
        waited, extra = c.wait_closed(5)
        assert extra == b""
        assert 0.4 <= waited < 3.0, f"closed after {waited:.2f}s, want ~0.5s"


def test_keep_alive_timeout_is_advertised(start_server):
    s = start_server("--keep-alive-timeout", "2")
    resp = fetch(s.port)
    assert resp.status == 200
    assert resp.header("Keep-Alive") == "timeout=2, max=100", resp
    assert keep_alive_params(resp.header("Keep-Alive")) == {"timeout": "2", "max": "100"}


# ---------------------------------------------------------------------------
# HTTP/1.0
# ---------------------------------------------------------------------------


def test_http10_closes_by_default(server):
    with Conn(server.port) as c:
        c.send(b"GET /healthz HTTP/1.0\r\n\r\n")
        resp = c.read_response()
        assert resp.status == 200 and resp.body.strip() == b"ok", resp
        assert "keep-alive" not in resp.connection_tokens(), resp
        _, extra = c.wait_closed(5)
        assert extra == b""


def test_http10_keep_alive(server):
    with Conn(server.port) as c:
        req = b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        resp = c.exchange(req)
        assert resp.status == 200 and resp.body.strip() == b"ok", resp
        assert "keep-alive" in resp.connection_tokens(), resp
        # Still open: a second request on the same socket.
        resp = c.exchange(req)
        assert resp.status == 200 and resp.body.strip() == b"ok", resp
        assert "keep-alive" in resp.connection_tokens(), resp


# ---------------------------------------------------------------------------
# Pipelining
# ---------------------------------------------------------------------------


def test_pipelined_requests_answered_in_order(server):
    bodies = [b"one", b"two-two", b"three-three-three"]
    with Conn(server.port) as c:
        c.send(b"".join(echo(b) for b in bodies))
        for b in bodies:
            resp = c.read_response()
            assert resp.status == 200, resp
            assert resp.body == b, resp
        # The connection is still usable afterwards.
        assert c.exchange(echo(b"four")).body == b"four"


def test_pipelined_close_in_the_middle(server):
    with Conn(server.port) as c:
        c.send(
            echo(b"first")
            + echo(b"second", headers=[("Connection", "close")])
            + echo(b"third")
        )
        first = c.read_response()
        assert first.status == 200 and first.body == b"first", first
        second = c.read_response()
        assert second.status == 200 and second.body == b"second", second
        assert "close" in second.connection_tokens(), second
        _, extra = c.wait_closed(5)
        assert extra == b"", f"answered a request after Connection: close: {extra!r}"


# ---------------------------------------------------------------------------
# Bad input: each on a fresh connection; 4xx then close; the server lives on
# ---------------------------------------------------------------------------


# A server with a small body limit, shared by the bad-input tests.
strict_server = server_fixture("--max-body", "1024")


def host_headers(n: int) -> list[tuple[str, str]]:
    return [(f"X-Field-{i}", "v") for i in range(n)]


BAD_REQUESTS = {
    "bad-method-char": (b"G(T /healthz HTTP/1.1\r\nHost: x\r\n\r\n", {400}),
    "bad-version": (b"GET /healthz HTTQ/1.1\r\nHost: x\r\n\r\n", {400}),
    "garbage-request-line": (b"\x00\x01\x02 nonsense\r\n\r\n", {400}),
    "two-content-lengths": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        {400},
    ),
    "obs-fold": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\r\n  b\r\n\r\n", {400}),
    "transfer-encoding-gzip": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        {400, 501},
    ),
    "bad-chunk-size": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        {400},
    ),
    "101-fields": (request(headers=host_headers(100)), {431}),
    "70KiB-header": (request(headers=[("X-Big", "a" * (70 * 1024))]), {431}),
    "9KiB-target": (request(target="/" + "a" * (9 * 1024)), {414}),
    "body-over-max": (echo(b"b" * 2000), {413}),
    "http11-without-host": (b"GET /healthz HTTP/1.1\r\n\r\n", {400}),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_rejected_and_closed(strict_server, name):
    data, statuses = BAD_REQUESTS[name]
    with Conn(strict_server.port) as c:
        c.send(data)
        resp = c.read_response()
        assert resp.status in statuses, resp
        _, extra = c.wait_closed(5)
        assert extra == b"", f"more after the {resp.status}: {extra!r}"
    assert_healthy(strict_server.port)


def test_smuggling_content_length_and_chunked(strict_server):
    smuggled = request("GET", "/healthz")
    data = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled
    )
    with Conn(strict_server.port) as c:
        c.send(data)
        resp = c.read_response()
        assert resp.status == 400, resp
        _, extra = c.wait_closed(5)
        assert extra == b"", f"the smuggled request was answered: {extra!r}"
    assert_healthy(strict_server.port)


def test_body_within_max_body_is_accepted(strict_server):
    body = b"c" * 1024
    assert fetch(strict_server.port, echo(body)).body == body
    chunked_req = request(
        "POST",
        "/echo",
        headers=[("Transfer-Encoding", "chunked")],
        body=chunked(body[:500], body[500:]),
    )
    assert fetch(strict_server.port, chunked_req).body == body


# ---------------------------------------------------------------------------
# Timeouts and shutdown
# ---------------------------------------------------------------------------


def test_header_timeout_sends_408(start_server):
    s = start_server("--header-timeout", "1")
    with Conn(s.port) as c:
        start = time.monotonic()
        c.send(b"GET / HTTP/1.1\r\n")
        resp = c.read_response(timeout=6)
        waited = time.monotonic() - start
        assert resp.status == 408, resp
        assert 0.8 <= waited <= 4.0, f"408 after {waited:.2f}s, want ~1s"
        _, extra = c.wait_closed(5)
        assert extra == b""
    assert_healthy(s.port)


def test_graceful_shutdown_closes_idle_connection(start_server):
    s = start_server()
    with Conn(s.port) as c:
        resp = c.exchange(request())
        assert resp.status == 200
        assert "close" not in resp.connection_tokens()
        start = time.monotonic()
        s.signal(signal.SIGTERM)
        waited, extra = c.wait_closed(5)
        assert extra == b"", extra
        assert waited < 3.0, f"idle connection closed {waited:.2f}s after SIGTERM"
    rc = s.wait(10 - (time.monotonic() - start))
    assert rc is not None, "server still running 10s after SIGTERM\n" + s.output()
    assert rc == 0, f"exit status {rc}\n" + s.output()
    assert time.monotonic() - start < 5.0, "shutdown took longer than 5s\n" + s.output()
