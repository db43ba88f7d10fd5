"""What `tether serve` logs: one line per connection naming how it ended
(HTTP: the cause, and for a refused request the status and why;
WebSocket: the end, the close codes, who closed, what went through it),
and, with --access-log, one line per request.
"""

from __future__ import annotations

import re
import time

from util import Conn, client_frame, read_frame, request, ws_handshake


def wait_for_line(server, pattern: str, timeout: float = 5.0) -> str:
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(server.lines):
            if regex.search(line):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no line matching {pattern!r}\n" + server.output())


def test_every_connection_ends_with_one_line_naming_its_cause(start_server):
    srv = start_server("--log", "debug", "--access-log")
    with Conn(srv.port) as c:
        assert c.exchange(request("GET", "/healthz")).status == 200
        c.send(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
        assert c.read_response().status == 400
    line = wait_for_line(srv, r"connection closed.*cause=\"protocol_error\"")
    assert "requests=2" in line and "fault=400 missing, repeated or invalid Host header" in line, line
    # client "request line" status body-bytes seconds (at debug, after the
    # connection's and the request's spans: conn{..}:request{..}: )
    wait_for_line(srv, r' INFO (conn\{.*\}: )?127\.0\.0\.1 "GET /healthz HTTP/1\.1" 200 2 \d+\.\d{6}$')
    wait_for_line(srv, r'conn\{peer=127\.0\.0\.1:\d+ conn=\d+.*\}:request\{method=GET path=/healthz status=200\}: ')
    wait_for_line(srv, r'127\.0\.0\.1 "-" 400 ')

    with Conn(srv.port) as c:
        ws_handshake(c, srv.port)
        c.send(client_frame(0x1, b"hello") + client_frame(0x8, b"\x0f\xa0bye"))
        assert read_frame(c)[2:] == (0x1, b"hello")
        assert read_frame(c)[2] == 0x8
        c.wait_closed(5)
    line = wait_for_line(srv, r"websocket closed")
    for field in ("end=\"closed\"", "closed_by=\"peer\"", "close_sent=4000", "close_received=4000",
                  "messages_in=1", "messages_out=1", "peer=127.0.0.1:"):
        assert field in line, f"{field} not in {line}"
    wait_for_line(srv, r"connection upgraded: the new protocol takes over")
