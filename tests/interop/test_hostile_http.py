"""The hostile client, over HTTP/1.1, against the real `tether serve`.

What an attacker or a careless client does: smuggling and framing
variants (each followed by a pipelined request that must never be parsed
as one), pipelining without reading, trickling heads and bodies, and
their costs measured on the server process (resident memory, CPU time,
descriptors from /proc). Every wait has a deadline; every loop a bound.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from util import Conn, ProtocolError, cpu_seconds, open_fds, request, rss_bytes

MIB = 1024 * 1024
FOLLOW_UP = request("GET", "/healthz")


def responses_until_close(conn: Conn, timeout: float = 10.0) -> list:
    """Every response on `conn` until the server closes it (bounded: 20)."""
    out = []
    deadline = time.monotonic() + timeout
    for _ in range(20):
        try:
            out.append(conn.read_response(max(0.1, deadline - time.monotonic())))
        except ProtocolError:
            # End of stream (or its reset) where a response would start.
            if conn.buf:
                raise
            return out
    raise AssertionError(f"more than 20 responses: {out!r}")


# (name, raw request, expected status). Each is followed, in the same write,
# by `GET /healthz`: after the refusal the connection closes and the
# follow-up is never answered (a second response would mean the server read
# the bytes two ways: request smuggling).
SMUGGLING = [
    ("CL and TE", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE and CL", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400),
    ("two different CL", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("CL list that differs", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd", 400),
    ("CL with a sign", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", 400),
    ("CL in hex", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0x3\r\n\r\nabc", 400),
    ("TE chunked twice", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE not ending in chunked", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
    ("TE xchunked", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    ("TE with a parameter", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n", 400),
    ("TE in HTTP/1.0", b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("unknown coding before chunked", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("chunk size line ends in bare LF", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext\nhello\r\n0\r\n\r\n", 400),
    ("every chunk line in bare LF", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n", 400),
    ("chunk data ends in bare LF", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n", 400),
    ("last chunk in bare LF", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\n\r\n", 400),
    ("empty chunk size", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk size overflow", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1" + b"0" * 16 + b"\r\nx\r\n0\r\n\r\n", 400),
    ("negative chunk size", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk extension with a control byte", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a\x01b\r\nhello\r\n0\r\n\r\n", 400),
    ("obs-fold", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("bare CR in a field", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400),
    ("space before the colon", b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n", 400),
    ("NUL in a field value", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    ("no Host", b"GET /healthz HTTP/1.1\r\n\r\n", 400),
    ("two Hosts", b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("Host with a space", b"GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("Host with userinfo", b"GET /healthz HTTP/1.1\r\nHost: user@evil\r\n\r\n", 400),
    ("Host with a path", b"GET /healthz HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    ("target without a leading slash", b"GET healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("asterisk target for GET", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("two spaces in the request line", b"GET  /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("a method longer than any", b"M" * 10_000 + b" /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    ("HTTP/2.0", b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    ("HTTP/1.2", b"GET /healthz HTTP/1.2\r\nHost: x\r\n\r\n", 505),
    ("Expect other than 100-continue", b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx", 417),
    ("body over --max-body by CL", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413),
    ("target over 8 KiB", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ("101 header fields", b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
    ("a 70 KiB field", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    ("trailers over the limit", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + b"".join(b"T-%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
]


@pytest.mark.parametrize("name,raw,status", SMUGGLING, ids=[c[0] for c in SMUGGLING])
def test_smuggling_and_framing_variants_are_refused_and_nothing_after_is_parsed(server, name, raw, status):
    with Conn(server.port) as c:
        c.send(raw + FOLLOW_UP)
        got = responses_until_close(c)
    assert [r.status for r in got] == [status], f"{name}: {got!r}"
    assert "close" in got[0].connection_tokens(), got[0]


# Valid requests whose framing a careless parser gets wrong: each is
# answered, then the pipelined follow-up is answered too, exactly once.
VALID_FRAMING = [
    ("chunked with extensions and trailers", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n0\r\nT: v\r\n\r\n", b"abc"),
    ("CL list that agrees", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc", b"abc"),
    ("TE in another case", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n", b"abc"),
    ("empty lines before the request line", b"\r\n\r\nPOST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", b"abc"),
    ("absolute-form target", b"POST http://x/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", b"abc"),
]


@pytest.mark.parametrize("name,raw,body", VALID_FRAMING, ids=[c[0] for c in VALID_FRAMING])
def test_valid_framing_variants_are_answered_then_the_follow_up(server, name, raw, body):
    with Conn(server.port) as c:
        c.send(raw + FOLLOW_UP)
        first = c.read_response()
        second = c.read_response()
    assert (first.status, first.body) == (200, body), f"{name}: {first!r}"
    assert (second.status, second.body) == (200, b"ok"), f"{name}: {second!r}"


def test_ten_thousand_pipelined_requests_in_one_write_are_answered_in_order(start_server):
    srv = start_server("--keep-alive-max", "0")
    n = 10_000
    with Conn(srv.port) as c:
        payload = b"".join(request("POST", "/echo", body=b"%d" % i) for i in range(n))
        sender = threading.Thread(target=c.send, args=(payload,), daemon=True)
        sender.start()
        for i in range(n):
            r = c.read_response(timeout=30)
            assert (r.status, r.body) == (200, b"%d" % i)
        sender.join(10)


def test_a_client_that_pipelines_and_never_reads_costs_bounded_memory_and_no_cpu(start_server):
    """Issue 10, defect 1: 20 pipelined 16 MiB POST /echo, never read, from
    ten clients at once: the server stops reading each connection once its
    unsent output passes 256 KiB, holds about one response per connection,
    spends no CPU while they stall, closes them at the write timeout and
    gives the memory back."""
    srv = start_server("--write-timeout", "3s", "--max-body", "16MiB")
    body = b"b" * (16 * MIB)
    one = request("POST", "/echo", body=body)
    baseline = rss_bytes(srv.pid)
    socks = []
    for _ in range(10):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        socks.append(s)

    def pipeline(s: socket.socket) -> None:
        s.settimeout(6)
        try:
            for _ in range(20):
                s.sendall(one)
        except OSError:
            pass  # blocked by TCP (expected), then closed by the server

    senders = [threading.Thread(target=pipeline, args=(s,), daemon=True) for s in socks]
    for t in senders:
        t.start()
    # Let them fill whatever the server will take.
    time.sleep(2.0)
    peak = rss_bytes(srv.pid)
    cpu_before = cpu_seconds(srv.pid)
    time.sleep(1.0)
    stalled_cpu = cpu_seconds(srv.pid) - cpu_before
    # Each connection: one 16 MiB response waiting, and a 16 MiB request
    # body being read for the next (not yet parsed) request at most.
    assert peak - baseline < 10 * 36 * MIB, f"grew {(peak - baseline) / MIB:.0f} MiB for 10 clients"
    assert stalled_cpu < 0.3, f"{stalled_cpu:.2f} s of CPU in 1 s while every client stalls"
    # The write timeout closes them (3 s without progress), before anything
    # is read here (reading would let them go on).
    time.sleep(2.5)
    closed = 0
    for s in socks:
        s.settimeout(10)
        try:
            while s.recv(1 << 20):
                pass
            closed += 1
        except (ConnectionResetError, socket.timeout):
            closed += 1
        finally:
            s.close()
    assert closed == 10
    for t in senders:
        t.join(10)
    # The memory goes back (trimmed after the connections end).
    deadline = time.monotonic() + 5
    while rss_bytes(srv.pid) - baseline > 48 * MIB and time.monotonic() < deadline:
        time.sleep(0.2)
    held = rss_bytes(srv.pid) - baseline
    assert held < 48 * MIB, f"{held / MIB:.0f} MiB still held after every connection closed"


def test_slowloris_heads_end_with_408_while_a_normal_client_is_served(start_server):
    srv = start_server("--header-timeout", "2s", "--keep-alive-max", "0")
    slow = []
    for _ in range(500):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        slow.append(s)
    latencies = []
    with Conn(srv.port) as c:
        start = time.monotonic()
        while time.monotonic() - start < 1.5:
            for s in slow[:50]:
                try:
                    s.send(b"X")  # one byte at a time, never the end of the head
                except OSError:
                    pass
            t = time.monotonic()
            assert c.exchange(request()).status == 200
            latencies.append(time.monotonic() - t)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    assert p99 < 0.1, f"normal client p99 {p99 * 1000:.1f} ms beside 500 slowloris connections"
    # Every slow head is answered 408 and closed at the header timeout.
    answered = 0
    for s in slow:
        s.settimeout(5)
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        s.close()
        answered += data.startswith(b"HTTP/1.1 408 ")
    assert answered == len(slow)


def test_a_trickled_body_below_the_minimum_rate_ends_with_408(start_server):
    srv = start_server("--body-timeout", "1s", "--body-min-rate", "100")
    with Conn(srv.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        start = time.monotonic()
        data = b""
        # One byte every 0.4 s never stalls for 1 s, but averages 2.5 B/s.
        for _ in range(25):
            try:
                c.sock.sendall(b"x")
            except OSError:
                break
            c.sock.settimeout(0.4)
            try:
                chunk = c.sock.recv(4096)
            except socket.timeout:
                continue
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                break
        took = time.monotonic() - start
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert took < 3.0, f"closed after {took:.1f} s"


def test_expect_100_continue_then_silence_is_closed_at_the_body_timeout(start_server):
    srv = start_server("--body-timeout", "1s")
    with Conn(srv.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n")
        took, data = c.wait_closed(5)
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 408 "), data
    assert took < 3.0


def test_a_large_static_file_to_a_client_that_never_reads_is_bounded(start_server, tmp_path):
    (tmp_path / "big.bin").write_bytes(b"z" * (64 * MIB))
    srv = start_server("--root", str(tmp_path), "--write-timeout", "2s")
    baseline, fds = rss_bytes(srv.pid), open_fds(srv.pid)
    socks = []
    for _ in range(10):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        s.sendall(request("GET", "/big.bin"))
        socks.append(s)
    time.sleep(1.0)
    grew = rss_bytes(srv.pid) - baseline
    assert grew < 32 * MIB, f"grew {grew / MIB:.0f} MiB streaming to 10 clients that do not read"
    assert open_fds(srv.pid) >= fds + 10, "the connections are open while they stall"
    # Past the write timeout the server has closed them (their descriptors
    # and files are gone), though none was read.
    deadline = time.monotonic() + 5
    while open_fds(srv.pid) > fds and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_fds(srv.pid) <= fds, "stalled connections still open after the write timeout"
    for s in socks:
        s.close()
