"""Raw HTTP/1.1 exchanges over plain sockets, with a deadline on every wait.

The interop tests use these when they need to see exactly what went over the
wire: pipelined requests, malformed input, when the server closes. Every read
is bounded in time (a deadline) and in size (MAX_RESPONSE), so a misbehaving
server fails a test instead of hanging it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"
# Largest response head or body this client accepts.
MAX_RESPONSE = 64 * 1024 * 1024
DEFAULT_TIMEOUT = 5.0


class ProtocolError(AssertionError):
    """The server sent something this client cannot frame."""


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        """The first field named `name` (case-insensitive), or None."""
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def connection_tokens(self) -> set[str]:
        """The lower-cased tokens of every `Connection` field."""
        return {
            t.strip().lower()
            for v in self.header_all("connection")
            for t in v.split(",")
            if t.strip()
        }

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 200 else self.body[:200] + b"..."
        return f"<Response {self.status} {self.reason!r} {self.headers!r} body={body!r}>"


def request(
    method: str = "GET",
    target: str = "/healthz",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    version: str = "HTTP/1.1",
    host: str | None = "localhost",
) -> bytes:
    """Encodes a request. Adds Host (unless host is None) and, for a
    non-empty body without framing headers, Content-Length."""
    headers = list(headers or [])
    names = {k.lower() for k, _ in headers}
    if host is not None and "host" not in names:
        headers.insert(0, ("Host", host))
    if body and "content-length" not in names and "transfer-encoding" not in names:
        headers.append(("Content-Length", str(len(body))))
    head = f"{method} {target} {version}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("latin-1") + b"\r\n" + body


def chunked(*chunks: bytes) -> bytes:
    """A chunked body (with the last chunk) carrying `chunks`."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c)
    return out + b"0\r\n\r\n"


class Conn:
    """One client connection with a read buffer.

    Use as a context manager; every method takes a timeout in seconds.
    """

    def __init__(self, port: int, host: str = HOST, timeout: float = DEFAULT_TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False

    def __enter__(self) -> "Conn":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def send(self, data: bytes) -> None:
        self.sock.settimeout(DEFAULT_TIMEOUT)
        self.sock.sendall(data)

    # -- reading -----------------------------------------------------------

    def _fill(self, deadline: float, what: str) -> bool:
        """Reads more bytes into the buffer; False at end of stream.
        A connection reset counts as end of stream."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out waiting for {what}; buffered: {bytes(self.buf[:500])!r}")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError(
                f"timed out waiting for {what}; buffered: {bytes(self.buf[:500])!r}"
            ) from None
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        if len(self.buf) > MAX_RESPONSE:
            raise ProtocolError(f"more than {MAX_RESPONSE} bytes buffered while reading {what}")
        return True

    def _read_line(self, deadline: float, what: str, limit: int = 64 * 1024) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            if len(self.buf) > limit:
                raise ProtocolError(f"{what} longer than {limit} bytes")
            if not self._fill(deadline, what):
                raise ProtocolError(f"connection closed while reading {what}; buffered: {bytes(self.buf)!r}")

    def _read_exact(self, n: int, deadline: float, what: str) -> bytes:
        while len(self.buf) < n:
            if not self._fill(deadline, what):
                raise ProtocolError(
                    f"connection closed after {len(self.buf)} of {n} bytes of {what}"
                )
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_response(self, timeout: float = DEFAULT_TIMEOUT, head_request: bool = False) -> Response:
        """Reads one response (skipping 1xx interim responses), framed by
        Transfer-Encoding: chunked, Content-Length or end of stream."""
        deadline = time.monotonic() + timeout
        for _ in range(10):  # bounded number of 1xx responses
            resp = self._read_head(deadline)
            if 100 <= resp.status < 200 and resp.status != 101:
                continue
            break
        else:
            raise ProtocolError("more than 10 interim responses")
        if head_request or resp.status in (101, 204, 304) or 100 <= resp.status < 200:
            return resp
        te = resp.header("transfer-encoding")
        cl = resp.header_all("content-length")
        if te is not None:
            if te.strip().lower() != "chunked":
                raise ProtocolError(f"unexpected Transfer-Encoding {te!r}")
            resp.body, resp.trailers = self._read_chunked(deadline)
        elif cl:
            if len(set(cl)) != 1 or not cl[0].strip().isdigit():
                raise ProtocolError(f"bad Content-Length {cl!r}")
            resp.body = self._read_exact(int(cl[0]), deadline, "response body")
        else:
            resp.body = self.read_until_close(max(0.0, deadline - time.monotonic()))
        return resp

    def _read_head(self, deadline: float) -> Response:
        status_line = self._read_line(deadline, "status line").decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {status_line!r}")
        headers = self._read_fields(deadline, "response head")
        reason = parts[2] if len(parts) > 2 else ""
        return Response(parts[0], int(parts[1]), reason, headers, b"")

    def _read_fields(self, deadline: float, what: str) -> list[tuple[str, str]]:
        fields = []
        for _ in range(1000):
            line = self._read_line(deadline, what).decode("latin-1")
            if not line:
                return fields
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ProtocolError(f"bad header line {line!r}")
            fields.append((name, value.strip(" \t")))
        raise ProtocolError(f"more than 1000 fields in {what}")

    def _read_chunked(self, deadline: float) -> tuple[bytes, list[tuple[str, str]]]:
        body = bytearray()
        while True:
            line = self._read_line(deadline, "chunk size").decode("latin-1")
            size_text = line.split(";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size line {line!r}") from None
            if size == 0:
                return bytes(body), self._read_fields(deadline, "trailers")
            if len(body) + size > MAX_RESPONSE:
                raise ProtocolError("chunked body too large")
            body += self._read_exact(size, deadline, "chunk")
            if self._read_exact(2, deadline, "chunk end") != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")

    def read_until_close(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Everything until the server closes (buffered bytes included)."""
        deadline = time.monotonic() + timeout
        while self._fill(deadline, "end of stream"):
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[float, bytes]:
        """Waits for end of stream: returns (seconds waited, bytes received
        meanwhile). Raises TimeoutError if the server keeps it open."""
        start = time.monotonic()
        data = self.read_until_close(timeout)
        return time.monotonic() - start, data

    def exchange(self, data: bytes, timeout: float = DEFAULT_TIMEOUT, head_request: bool = False) -> Response:
        self.send(data)
        return self.read_response(timeout, head_request=head_request)


def fetch(port: int, data: bytes | None = None, timeout: float = DEFAULT_TIMEOUT) -> Response:
    """One request on a fresh connection (GET /healthz by default)."""
    with Conn(port) as c:
        return c.exchange(data if data is not None else request(), timeout)


def keep_alive_params(value: str | None) -> dict[str, str]:
    """Parses `timeout=5, max=100` into {"timeout": "5", "max": "100"}."""
    out = {}
    for part in (value or "").split(","):
        k, sep, v = part.strip().partition("=")
        if sep:
            out[k.strip().lower()] = v.strip()
    return out


# ---------------------------------------------------------------------------
# Raw WebSocket frames (RFC 6455), for tests that decide every byte
# ---------------------------------------------------------------------------

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_handshake(conn: Conn, port: int, extensions_offer: str | None = None, path: str = "/echo") -> dict:
    """Upgrades `conn` (raw sockets) and checks the 101's accept key."""
    key = base64.b64encode(os.urandom(16)).decode()
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
    ]
    if extensions_offer:
        headers.append(("Sec-WebSocket-Extensions", extensions_offer))
    resp = conn.exchange(request("GET", path, headers, host=f"127.0.0.1:{port}"))
    assert resp.status == 101, resp
    want = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    assert resp.header("sec-websocket-accept") == want
    return {"extensions": resp.header("sec-websocket-extensions")}


def mask_payload(payload: bytes, mask: bytes) -> bytes:
    """XORs `payload` with the 4-byte `mask` (whole-buffer arithmetic: fast
    enough for megabytes)."""
    n = len(payload)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def client_frame(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False, length: int | None = None) -> bytes:
    """A masked client frame; `length` declares another payload length
    than `payload`'s (for lying headers)."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    mask = os.urandom(4)
    n = len(payload) if length is None else length
    if n < 126:
        head = struct.pack("!BB", b0, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    return head + mask + mask_payload(payload, mask)


def read_frame(conn: Conn, timeout: float = 10.0) -> tuple[bool, bool, int, bytes]:
    """(fin, rsv1, opcode, payload) of one server frame (must be unmasked)."""
    deadline = time.monotonic() + timeout
    head = conn._read_exact(2, deadline, "frame header")
    fin, rsv1, opcode = bool(head[0] & 0x80), bool(head[0] & 0x40), head[0] & 0x0F
    if head[0] & 0x30:
        raise ProtocolError(f"RSV2/RSV3 set: {head!r}")
    if head[1] & 0x80:
        raise ProtocolError("server frame is masked")
    n = head[1] & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", conn._read_exact(2, deadline, "length"))
    elif n == 127:
        (n,) = struct.unpack("!Q", conn._read_exact(8, deadline, "length"))
    return fin, rsv1, opcode, conn._read_exact(n, deadline, "payload")


def close_code(payload: bytes) -> int:
    """The code of a Close frame's payload (1005 when it has none)."""
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


# ---------------------------------------------------------------------------
# A process's resources, from /proc
# ---------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident memory of process `pid`."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process `pid` has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 (1-based), here 11 and 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    """Descriptors process `pid` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class SseStream:
    """A raw `GET /sse/{channel}` (with `Last-Event-ID` when given) whose
    bytes accumulate in `received`; every wait bounded by `timeout`."""

    def __init__(self, port: int, channel: str, last_event_id: int | None = None, timeout: float = 10.0):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.deadline = time.monotonic() + timeout
        self.received = b""
        resume = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id is not None else ""
        self.sock.sendall(f"GET /sse/{channel} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{resume}\r\n".encode())

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.received:
            assert time.monotonic() < self.deadline, f"no {marker!r} in time: {self.received!r}"
            chunk = self.sock.recv(65536)
            assert chunk, f"the stream ended before {marker!r}: {self.received!r}"
            assert len(self.received) < MAX_RESPONSE, "the stream sent too much"
            self.received += chunk
        return self.received

    def ids(self) -> list[str]:
        """The `id:` lines so far."""
        return [line for line in self.received.decode().split("\n") if line.startswith("id: ")]

    def close(self) -> None:
        self.sock.close()
