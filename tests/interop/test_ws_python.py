"""tether's WebSocket server (`/echo`) against the Python `websockets`
package (its asyncio client), plus a few raw-socket exchanges where the
exact bytes matter (RSV1 on compressed frames, handshake refusals).

Every network wait is bounded: `websockets` calls run under
`asyncio.wait_for`, raw sockets use util.Conn's deadlines.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
import zlib

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK, InvalidStatus

from tether_server import server_fixture
from util import Conn, ProtocolError, client_frame, read_frame, request, ws_handshake

# One default server (permessage-deflate in its default `shared` mode) for
# the tests that need nothing special.
server = server_fixture()

TIMEOUT = 30.0


def run(coro, timeout: float = TIMEOUT):
    """Runs one coroutine to completion within `timeout` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def ws_url(srv, path: str = "/echo") -> str:
    return f"ws://127.0.0.1:{srv.port}{path}"


def echo_connect(srv, **kwargs):
    kwargs.setdefault("open_timeout", 10)
    kwargs.setdefault("close_timeout", 10)
    return connect(ws_url(srv), **kwargs)


def extensions(ws) -> str:
    return ws.response.headers.get("Sec-WebSocket-Extensions", "") or ""


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["deflate", None], ids=["deflate", "no-deflate"])
def test_text_and_binary_round_trip(server, compression):
    async def main():
        async with echo_connect(server, compression=compression) as ws:
            for text in ["hello", "", "héllo wörld ✓ 🚀", "x" * 10_000]:
                await ws.send(text)
                got = await ws.recv()
                assert isinstance(got, str)
                assert got == text
            for data in [b"\x00\x01\x02\xff", b"", os.urandom(70_000), b"ab" * 50_000]:
                await ws.send(data)
                got = await ws.recv()
                assert isinstance(got, bytes)
                assert got == data

    run(main())


@pytest.mark.parametrize("compression", ["deflate", None], ids=["deflate", "no-deflate"])
def test_fragmented_messages(server, compression):
    """An iterable is sent as one message in several frames; the echo is
    the reassembled message."""

    async def main():
        async with echo_connect(server, compression=compression) as ws:
            # Text with multi-byte characters in uneven fragments.
            text = "añb€c😀d" * 100
            # websockets needs str fragments for text: split at characters,
            # unevenly.
            pieces = [text[i : i + 7] for i in range(0, len(text), 7)]
            await ws.send(pieces)
            assert await ws.recv() == text
            chunks = [os.urandom(n) for n in (1, 0, 1000, 65_536, 3)]
            await ws.send(chunks)
            assert await ws.recv() == b"".join(chunks)
            # Interleaved with a ping: control frames between fragments.
            await ws.send(iter([b"a" * 100, b"b" * 100]))
            pong = await ws.ping(b"mid")
            await asyncio.wait_for(pong, 10)
            assert await ws.recv() == b"a" * 100 + b"b" * 100

    run(main())


@pytest.mark.parametrize("compression", ["deflate", None], ids=["deflate", "no-deflate"])
def test_16_mib_binary(server, compression):
    """The default --ws-max-message is 16 MiB: a message of exactly that
    size goes through both ways."""
    size = 16 << 20
    # Half random (incompressible), half repetitive.
    data = os.urandom(size // 2) + bytes(range(256)) * (size // 2 // 256)
    assert len(data) == size

    async def main():
        async with echo_connect(server, compression=compression, max_size=None) as ws:
            await ws.send(data)
            got = await ws.recv()
            assert len(got) == size
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()

    run(main(), timeout=60)


@pytest.mark.parametrize("compression", ["deflate", None], ids=["deflate", "no-deflate"])
def test_over_limit_message_closes_1009(start_server, compression):
    """A message over --ws-max-message closes the connection with 1009
    (compressed: the limit applies to the inflated size)."""
    srv = start_server("--ws-max-message", "64KiB")

    async def main():
        async with echo_connect(srv, max_size=None, compression=compression) as ws:
            await ws.send(b"x" * (64 << 10))
            assert len(await ws.recv()) == 64 << 10
            await ws.send(b"x" * ((64 << 10) + 1))
            with pytest.raises(Exception):
                await ws.recv()
            await ws.wait_closed()
            assert ws.close_code == 1009

    run(main())


def test_ping_pong(server):
    """Each ping is answered by one pong with the same payload (raw bytes:
    a FIN Pong frame, unmasked, payload byte for byte, RSV1 clear even on a
    deflate connection), ahead of the echo of a message sent after it."""
    with Conn(server.port, timeout=10) as c:
        ws_handshake(c, server.port, "permessage-deflate")
        for payload in [b"", b"ping-payload", os.urandom(125)]:
            c.send(client_frame(0x9, payload) + client_frame(0x1, b"after"))
            assert read_frame(c) == (True, False, 0xA, payload)
            fin, _, opcode, _ = read_frame(c)
            assert (fin, opcode) == (True, 0x1)

    # The python client's own ping: its waiter resolves only on a pong
    # carrying the same payload.
    async def main():
        async with echo_connect(server) as ws:
            await asyncio.wait_for(await ws.ping(b"ping-payload"), 10)
            await ws.send("after pings")
            assert await ws.recv() == "after pings"

    run(main())


@pytest.mark.parametrize("compression", ["deflate", None], ids=["deflate", "no-deflate"])
def test_echo_and_heartbeat_across_parking(start_server, compression):
    """Idle echo WebSockets park (no task) after --park-idle-after; the
    server's heartbeat pings reach them and the client's pongs keep them
    open; messages and client pings are answered after every parking."""
    srv = start_server("--park-idle-after", "100ms", "--ws-ping-interval", "300ms")

    async def main():
        async with echo_connect(srv, compression=compression, ping_interval=None) as ws:
            for round_ in range(3):
                # Parked after 100 ms; woken by heartbeats every 300 ms,
                # each answered by the client's automatic pong.
                await asyncio.sleep(1.0)
                await ws.send(f"round {round_}")
                assert await ws.recv() == f"round {round_}"
                await asyncio.sleep(0.3)
                # Resolves only on a pong carrying b"parked?" (or a later
                # ping's): the parked connection answered.
                await asyncio.wait_for(await ws.ping(b"parked?"), 10)
            await ws.close(1000)
            await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == 1000

    run(main())


# ---------------------------------------------------------------------------
# Close
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, reason",
    [(1000, ""), (1000, "normal bye"), (4000, "custom reason"), (4999, "é" * 10)],
)
def test_client_close_code_echoed(server, code, reason):
    async def main():
        async with echo_connect(server) as ws:
            await ws.send("before close")
            assert await ws.recv() == "before close"
            await ws.close(code=code, reason=reason)
            await asyncio.wait_for(ws.wait_closed(), 10)
            # The code the server sent back in its Close frame.
            assert ws.close_code == code
            return ws.protocol.close_rcvd, ws.protocol.close_rcvd_then_sent

    rcvd, rcvd_then_sent = run(main())
    assert rcvd is not None and rcvd.code == code
    # We sent first, the server replied.
    assert rcvd_then_sent is False


def test_recv_after_close_raises_closed_ok(server):
    async def main():
        async with echo_connect(server) as ws:
            await ws.close(1000)
            with pytest.raises(ConnectionClosedOK):
                await ws.recv()

    run(main())


# ---------------------------------------------------------------------------
# permessage-deflate negotiation
# ---------------------------------------------------------------------------


def test_deflate_negotiated_by_default(server):
    async def main():
        async with echo_connect(server) as ws:
            ext = extensions(ws)
            assert "permessage-deflate" in ext, ext
            # Default mode is `shared`: no context takeover either way.
            assert "server_no_context_takeover" in ext, ext
            assert "client_no_context_takeover" in ext, ext
            for i in range(5):
                msg = f"compressible message {i} " * 200
                await ws.send(msg)
                assert await ws.recv() == msg
            return ext

    run(main())


def test_no_deflate_when_not_offered(server):
    async def main():
        async with echo_connect(server, compression=None) as ws:
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            await ws.send("plain " * 100)
            assert await ws.recv() == "plain " * 100

    run(main())


def test_no_deflate_when_server_off(start_server):
    srv = start_server("--ws-compression", "off")

    async def main():
        async with echo_connect(srv) as ws:  # offers permessage-deflate
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            await ws.send("x" * 5000)
            assert await ws.recv() == "x" * 5000

    run(main())


def test_context_takeover_mode(start_server):
    """--ws-compression context: the server keeps its zlib context between
    messages, so several similar messages must all decode on the client
    (whose inflater also keeps context)."""
    srv = start_server("--ws-compression", "context")

    async def main():
        async with echo_connect(srv, max_size=None) as ws:
            ext = extensions(ws)
            assert "permessage-deflate" in ext, ext
            assert "server_no_context_takeover" not in ext, ext
            assert "client_no_context_takeover" not in ext, ext
            msgs = []
            for i in range(20):
                msgs.append(f'{{"seq": {i}, "payload": "{"the same words again " * 50}"}}')
                msgs.append(os.urandom(100) + b"repeat" * 300)
            # Pipelined: all sent before any is read.
            for m in msgs:
                await ws.send(m)
            for m in msgs:
                assert await ws.recv() == m
            # A fragmented compressed message in the middle of the context.
            await ws.send(["frag-" * 100, "ment-" * 100, "ed" * 10])
            assert await ws.recv() == "frag-" * 100 + "ment-" * 100 + "ed" * 10
            await ws.send("last " * 1000)
            assert await ws.recv() == "last " * 1000

    run(main())


# ---------------------------------------------------------------------------
# Raw frames: check that the server really compresses
# ---------------------------------------------------------------------------


def deflate_message(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def inflate_message(data: bytes) -> bytes:
    d = zlib.decompressobj(-15)
    return d.decompress(data + b"\x00\x00\xff\xff")


def test_raw_compressed_round_trip(server):
    """A compressed message from a client (RSV1, raw deflate) comes back
    compressed (RSV1 set, smaller than the text) and inflates to the same
    text; a short message may come back uncompressed."""
    text = ("compress me please " * 500).encode()
    with Conn(server.port, timeout=10) as c:
        hs = ws_handshake(c, server.port, "permessage-deflate; client_max_window_bits")
        assert hs["extensions"] and "permessage-deflate" in hs["extensions"]
        c.send(client_frame(0x1, deflate_message(text), rsv1=True))
        fin, rsv1, opcode, payload = read_frame(c)
        assert (fin, opcode) == (True, 0x1)
        assert rsv1, "server did not compress a highly compressible 9.5 kB text"
        assert len(payload) < len(text) // 10
        assert inflate_message(payload) == text
        # Fragmented compressed binary: RSV1 on the first frame only.
        comp = deflate_message(bytes(5000))
        c.send(client_frame(0x2, comp[:5], fin=False, rsv1=True))
        c.send(client_frame(0x0, comp[5:], fin=True))
        fin, rsv1, opcode, payload = read_frame(c)
        assert (fin, opcode) == (True, 0x2)
        assert (inflate_message(payload) if rsv1 else payload) == bytes(5000)
        # Uncompressed message on a deflate connection (RSV1 clear) is fine.
        c.send(client_frame(0x1, b"tiny"))
        fin, rsv1, opcode, payload = read_frame(c)
        assert opcode == 0x1
        assert (inflate_message(payload) if rsv1 else payload) == b"tiny"
        # Close 1000: the server echoes it, then closes TCP.
        c.send(client_frame(0x8, struct.pack("!H", 1000)))
        fin, rsv1, opcode, payload = read_frame(c)
        assert opcode == 0x8
        assert struct.unpack("!H", payload[:2])[0] == 1000
        c.wait_closed(10)


# ---------------------------------------------------------------------------
# Handshake refusals
# ---------------------------------------------------------------------------


def upgrade_headers(**over) -> list[tuple[str, str]]:
    h = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    for k, v in over.items():
        k = k.replace("_", "-")
        if v is None:
            h.pop(k, None)
        else:
            h[k] = v
    return list(h.items())


@pytest.mark.parametrize(
    "over, status",
    [
        ({"Sec_WebSocket_Version": "8"}, 426),
        ({"Sec_WebSocket_Version": None}, 426),
        ({"Sec_WebSocket_Key": "too-short"}, 400),
        ({"Sec_WebSocket_Key": None}, 400),
        ({"Connection": "keep-alive"}, 400),
    ],
    ids=["version-8", "no-version", "bad-key", "no-key", "no-connection-upgrade"],
)
def test_handshake_refused_raw(server, over, status):
    with Conn(server.port) as c:
        resp = c.exchange(request("GET", "/echo", upgrade_headers(**over)))
        assert resp.status == status, resp
        if status == 426:
            assert resp.header("sec-websocket-version") == "13", resp
        assert resp.header("sec-websocket-accept") is None


def test_handshake_refused_post(server):
    with Conn(server.port) as c:
        resp = c.exchange(request("POST", "/echo", upgrade_headers()))
        assert resp.status == 400, resp


def test_handshake_refused_http10(server):
    with Conn(server.port) as c:
        resp = c.exchange(request("GET", "/echo", upgrade_headers(), version="HTTP/1.0"))
        assert resp.status == 400, resp


def test_refusal_keeps_connection_usable(server):
    """After a refused upgrade (426) the HTTP connection keeps going."""
    with Conn(server.port) as c:
        resp = c.exchange(request("GET", "/echo", upgrade_headers(Sec_WebSocket_Version="8")))
        assert resp.status == 426
        if "close" in resp.connection_tokens():
            return
        resp = c.exchange(request("GET", "/healthz"))
        assert resp.status == 200 and resp.body == b"ok"


def test_origin_refused_via_websockets(start_server):
    """With an Origin allow-list, websockets sees 403 (InvalidStatus) for an
    Origin not on it, and connects with one that is."""
    srv = start_server("--allowed-origin", "http://good.example")

    async def main():
        with pytest.raises(InvalidStatus) as exc:
            async with echo_connect(srv, origin="http://evil.example"):
                pass
        assert exc.value.response.status_code == 403
        async with echo_connect(srv, origin="http://good.example") as ws:
            await ws.send("ok")
            assert await ws.recv() == "ok"

    run(main())


def test_version_refused_via_websockets(server):
    """websockets with a forced `Sec-WebSocket-Version: 8` header gets
    InvalidStatus 426."""

    async def main():
        # websockets sets its own version header; sending a second one makes
        # the version field "13, 8" (two fields), which must be refused.
        with pytest.raises(InvalidStatus) as exc:
            async with echo_connect(server, additional_headers={"Sec-WebSocket-Version": "8"}):
                pass
        assert exc.value.response.status_code == 426
        assert exc.value.response.headers.get("Sec-WebSocket-Version") == "13"

    run(main())


def test_non_upgrade_get_echo_still_http(server):
    """/echo without upgrade headers is still the HTTP echo."""
    with Conn(server.port) as c:
        resp = c.exchange(request("POST", "/echo", body=b"body"))
        assert resp.status == 200 and resp.body == b"body"


# ---------------------------------------------------------------------------
# permessage-deflate parameters offered by websockets
# ---------------------------------------------------------------------------


def window_sensitive_messages() -> list[bytes | str]:
    """Messages with repeats at distances from 200 B to 20 KiB, so a server
    deflating with a larger window than agreed produces back-references the
    client's smaller inflate window cannot resolve."""
    out: list[bytes | str] = []
    for distance in (200, 600, 1500, 3000, 6000, 12000, 20000):
        block = os.urandom(distance)
        out.append(block + block + block)
        out.append(base64.b64encode(block).decode() * 2)
    return out


@pytest.mark.parametrize("mode", ["shared", "context"])
@pytest.mark.parametrize(
    "params",
    [
        {"server_max_window_bits": 9},
        {"server_max_window_bits": 10},
        {"server_max_window_bits": 12, "client_max_window_bits": 9},
        {"client_max_window_bits": 9},
        {"server_no_context_takeover": True},
        {"client_no_context_takeover": True},
        {"server_no_context_takeover": True, "client_no_context_takeover": True},
        {"client_max_window_bits": None},
        {},
    ],
    ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "bare",
)
def test_deflate_parameters(start_server, mode, params):
    """websockets offers permessage-deflate with explicit parameters; tether
    must answer within them (a server window no larger than asked) and the
    messages must round-trip, several per connection."""
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    srv = start_server("--ws-compression", mode)
    factory = ClientPerMessageDeflateFactory(**params)

    async def main():
        async with echo_connect(srv, compression=None, extensions=[factory], max_size=None) as ws:
            ext = extensions(ws)
            assert ext.startswith("permessage-deflate"), ext
            if "server_max_window_bits" in params:
                assert f"server_max_window_bits={params['server_max_window_bits']}" in ext, ext
            if params.get("server_no_context_takeover"):
                assert "server_no_context_takeover" in ext, ext
            msgs = window_sensitive_messages()
            for m in msgs:
                await ws.send(m)
            for m in msgs:
                assert await ws.recv() == m
            return ext

    run(main())


def test_deflate_server_window_8_declined(server):
    """server_max_window_bits=8 cannot be honoured by zlib: tether declines
    the offer (documented) and the connection works uncompressed."""
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    async def main():
        factory = ClientPerMessageDeflateFactory(server_max_window_bits=8)
        async with echo_connect(server, compression=None, extensions=[factory]) as ws:
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            await ws.send("y" * 3000)
            assert await ws.recv() == "y" * 3000

    run(main())


# ---------------------------------------------------------------------------
# Protocol violations from a raw client: the close code tether answers with
# ---------------------------------------------------------------------------


def unmasked_frame(opcode: int, payload: bytes) -> bytes:
    return struct.pack("!BB", 0x80 | opcode, len(payload)) + payload


@pytest.mark.parametrize(
    "frames, code",
    [
        ([client_frame(0x1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xed\xa0\x80")], 1007),  # surrogate
        ([client_frame(0x1, b"ok", fin=False), client_frame(0x0, b"\xff", fin=True)], 1007),
        ([unmasked_frame(0x1, b"hi")], 1002),
        ([client_frame(0x1, b"hi", rsv1=True)], 1002),  # no extension negotiated
        ([client_frame(0x0, b"orphan")], 1002),
        ([client_frame(0x1, b"a", fin=False), client_frame(0x1, b"b")], 1002),
        ([client_frame(0x9, b"p", fin=False)], 1002),  # fragmented control frame
        ([client_frame(0x9, b"p" * 126)], 1002),  # control payload > 125
        ([client_frame(0x3, b"reserved opcode")], 1002),
        ([client_frame(0x8, b"\x03")], 1002),  # 1-byte close payload
        ([client_frame(0x8, struct.pack("!H", 1005))], 1002),  # reserved code
        ([client_frame(0x8, struct.pack("!H", 999))], 1002),
        ([client_frame(0x8, struct.pack("!H", 1000) + b"\xff")], 1007),  # bad reason
    ],
    ids=[
        "invalid-utf8",
        "invalid-utf8-fragment",
        "unmasked",
        "rsv1-without-deflate",
        "orphan-continuation",
        "new-message-mid-fragment",
        "fragmented-ping",
        "long-ping",
        "reserved-opcode",
        "close-1-byte",
        "close-1005",
        "close-999",
        "close-bad-reason",
    ],
)
def test_protocol_violation_close_code(server, frames, code):
    with Conn(server.port, timeout=10) as c:
        ws_handshake(c, server.port, None)
        for f in frames:
            c.send(f)
        fin, rsv1, opcode, payload = read_frame(c)
        assert opcode == 0x8, (opcode, payload)
        assert len(payload) >= 2 and struct.unpack("!H", payload[:2])[0] == code, payload
        # Then the server closes the TCP connection.
        c.wait_closed(10)
