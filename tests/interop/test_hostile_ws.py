"""The hostile client, over WebSockets, against the real `tether serve`
`/echo`: frames that arrive together, peers that do not read, compression
bombs, floods of control frames, lying length headers. Costs are read
from /proc. Every wait has a deadline; every loop a bound.
"""

from __future__ import annotations

import socket
import threading
import time
import zlib

from util import Conn, close_code, client_frame, cpu_seconds, open_fds, read_frame, request, rss_bytes, ws_handshake

MIB = 1024 * 1024


def upgraded(port: int, extensions: str | None = None) -> Conn:
    c = Conn(port)
    ws_handshake(c, port, extensions)
    return c


def test_a_message_and_a_close_in_one_segment_get_the_echo_then_the_close(server):
    """Issue 10, defect 3: 20 of 20 runs lost the echo before the fix."""
    for _ in range(20):
        with upgraded(server.port) as c:
            c.send(b"\x81\x82\0\0\0\0hi\x88\x82\0\0\0\0\x03\xe8")
            assert read_frame(c)[2:] == (0x1, b"hi")
            _, _, op, payload = read_frame(c)
            assert (op, close_code(payload)) == (0x8, 1000)
            c.wait_closed(5)


def test_messages_pings_and_a_close_in_one_segment_are_answered_in_order(server):
    with upgraded(server.port) as c:
        c.send(
            client_frame(0x1, b"one")
            + client_frame(0x9, b"p1")
            + client_frame(0x2, b"two")
            + client_frame(0x9, b"p2")
            + client_frame(0x8, b"\x03\xe8")
        )
        got = [read_frame(c)[2:] for _ in range(5)]
        assert got == [(0x1, b"one"), (0xA, b"p1"), (0x2, b"two"), (0xA, b"p2"), (0x8, b"\x03\xe8")]


def test_a_peer_that_does_not_read_is_closed_as_a_slow_consumer(start_server):
    """Issue 10, defect 2: `/echo` closes a peer that sends without reading
    with 1008 once its replies pass --ws-max-queued, instead of holding it
    (16-25 MiB each) until a 30 s reset."""
    srv = start_server("--ws-max-queued", "1MiB")
    baseline, fds = rss_bytes(srv.pid), open_fds(srv.pid)
    conns = [upgraded(srv.port) for _ in range(5)]
    for c in conns:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    frame = client_frame(0x2, b"m" * MIB)

    def flood(c: Conn) -> None:
        # Short: the close frame must be read within the close timeout (5 s).
        c.sock.settimeout(1)
        try:
            for _ in range(64):
                c.sock.sendall(frame)
        except OSError:
            pass  # held back by TCP once the server stops reading

    started = time.monotonic()
    threads = [threading.Thread(target=flood, args=(c,), daemon=True) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    grew = rss_bytes(srv.pid) - baseline
    assert grew < 5 * 12 * MIB, f"grew {grew / MIB:.0f} MiB for 5 peers that do not read"
    for c in conns:
        codes = []
        for _ in range(70):
            _, _, op, payload = read_frame(c, timeout=10)
            if op == 0x8:
                codes.append(close_code(payload))
                assert payload[2:] == b"slow consumer"
                break
            assert (op, len(payload)) == (0x2, MIB)
        assert codes == [1008]
        c.close()
    assert time.monotonic() - started < 20
    deadline = time.monotonic() + 10
    while open_fds(srv.pid) > fds and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_fds(srv.pid) <= fds, "the slow consumers' connections are still open"


def test_a_compression_bomb_is_closed_with_1009_at_the_limit(start_server):
    srv = start_server("--ws-max-message", "1MiB")
    baseline = rss_bytes(srv.pid)
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = bomb.compress(b"\0" * (256 * MIB)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    payload = payload[:-4]  # RFC 7692: the trailing 00 00 ff ff is implied
    assert len(payload) < 512 * 1024
    for _ in range(4):
        with upgraded(srv.port, "permessage-deflate") as c:
            c.send(client_frame(0x2, payload, rsv1=True))
            _, _, op, data = read_frame(c)
            assert (op, close_code(data)) == (0x8, 1009)
    grew = rss_bytes(srv.pid) - baseline
    assert grew < 16 * MIB, f"grew {grew / MIB:.0f} MiB inflating bombs"


def test_a_flood_of_pings_from_a_peer_that_does_not_read_is_bounded(start_server):
    srv = start_server()
    baseline = rss_bytes(srv.pid)
    with upgraded(srv.port) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        pings = b"".join(client_frame(0x9, b"%06d" % i) for i in range(10_000)) * 10
        sent = 0
        c.sock.settimeout(3)
        try:
            for i in range(0, len(pings), 65536):
                c.sock.sendall(pings[i : i + 65536])
                sent += 65536
        except OSError:
            pass  # held back: the server stopped reading behind its pongs
        grew = rss_bytes(srv.pid) - baseline
        cpu = cpu_seconds(srv.pid)
        time.sleep(1.0)
        spent = cpu_seconds(srv.pid) - cpu
    assert grew < 16 * MIB, f"grew {grew / MIB:.0f} MiB after {sent} bytes of pings"
    assert spent < 0.2, f"{spent:.2f} s of CPU in 1 s while the peer does not read"
    with upgraded(srv.port) as c:
        c.send(client_frame(0x1, b"still here"))
        assert read_frame(c)[2:] == (0x1, b"still here")


def test_frames_that_declare_16_mib_and_send_nothing_cost_little(start_server):
    srv = start_server()
    baseline = rss_bytes(srv.pid)
    conns = []
    for _ in range(200):
        c = upgraded(srv.port)
        c.send(client_frame(0x2, b"x" * 10, length=16 * MIB)[:-10] + b"x" * 10)
        conns.append(c)
    time.sleep(0.5)
    grew = rss_bytes(srv.pid) - baseline
    # At most 64 KiB reserved for each until more of the frame arrives.
    assert grew < 200 * 80 * 1024, f"grew {grew / MIB:.1f} MiB for 200 lying headers"
    for c in conns:
        c.close()


def test_an_endless_fragmented_message_is_closed_with_1009(start_server):
    srv = start_server("--ws-max-message", "1MiB")
    with upgraded(srv.port) as c:
        c.send(client_frame(0x2, b"a" * 65536, fin=False))
        piece = client_frame(0x0, b"a" * 65536, fin=False)
        c.sock.settimeout(5)
        try:
            for _ in range(64):
                c.sock.sendall(piece)
        except OSError:
            pass  # the server closed
        _, _, op, payload = read_frame(c)
        assert (op, close_code(payload)) == (0x8, 1009)


def test_garbage_after_the_upgrade_request_fails_the_websocket_not_the_server(server):
    key_request = request(
        "GET",
        "/echo",
        [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
    )
    with Conn(server.port) as c:
        # An unmasked frame right behind the handshake, in the same write.
        c.send(key_request + b"\x81\x02hi")
        assert c.read_response().status == 101
        _, _, op, payload = read_frame(c)
        assert (op, close_code(payload)) == (0x8, 1002)
    with upgraded(server.port) as c:
        c.send(client_frame(0x1, b"ok"))
        assert read_frame(c)[2:] == (0x1, b"ok")
