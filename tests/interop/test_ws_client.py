"""tether's WebSocket *client* (`tether::client::ws::connect`, through the
example crates/tether/examples/ws_client.rs) against servers nobody here
wrote: a Python `websockets` echo server and a Node `ws` echo server, each
with and without permessage-deflate.

The example round-trips text, binary, a 1 MiB message and a ping, closes
with 1000 and prints one JSON line; the servers report what they negotiated
and which close code they received.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from websockets.asyncio.server import serve

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
EXAMPLE = Path(os.environ.get("INTEROP_WS_CLIENT_BIN", REPO / "target" / "release" / "examples" / "ws_client"))
NODE_SERVER = HERE / "node" / "echo_server.js"
TIMEOUT = 60


def run_example(url: str, *args: str) -> dict:
    if not EXAMPLE.is_file():
        pytest.fail(
            f"{EXAMPLE} not found: run `cargo build --release -p tether --example ws_client` (scripts/test does)"
        )
    proc = subprocess.run(
        [str(EXAMPLE), url, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("TETHER_")},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"ws_client printed no JSON (exit {proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    result = json.loads(lines[-1])
    assert proc.returncode == 0 and result.get("ok") is True, (
        f"ws_client failed (exit {proc.returncode}): {result}\nstderr:\n{proc.stderr[-3000:]}"
    )
    return result


def check_result(result: dict) -> None:
    assert result["connected"] is True, result
    assert result["text"] is True, result
    assert result["binary"] is True, result
    assert result["large_len"] == 1 << 20, result
    assert result["large"] is True, result
    assert result["pong"] is True, result
    # The server echoed our 1000.
    assert result["close_code"] == 1000, result


CLIENT_MODES = {
    "off": [],
    "shared": ["--deflate"],
    "context": ["--deflate-context"],
}


# ---------------------------------------------------------------------------
# Python websockets server
# ---------------------------------------------------------------------------


class PyEchoServer:
    """A `websockets` echo server on its own event loop in a thread."""

    def __init__(self, compression: str | None):
        self.compression = compression
        self.connections: list[dict] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error:
            raise RuntimeError(f"websockets server did not start: {self._error!r}")

    async def _handler(self, ws):
        info = {
            "offer": ws.request.headers.get("Sec-WebSocket-Extensions"),
            "extensions": ws.response.headers.get("Sec-WebSocket-Extensions"),
            "messages": 0,
        }
        self.connections.append(info)
        try:
            async for message in ws:
                info["messages"] += 1
                await ws.send(message)
        finally:
            await ws.wait_closed()
            rcvd = ws.protocol.close_rcvd
            info["close_code"] = rcvd.code if rcvd else None
            info["close_reason"] = rcvd.reason if rcvd else None

    async def _main(self):
        self._stop = self._loop.create_future()
        async with serve(
            self._handler,
            "127.0.0.1",
            0,
            compression=self.compression,
            max_size=None,
            ping_interval=None,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    def _run(self):
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as e:  # noqa: BLE001 - reported by __init__
            self._error = e
            self._ready.set()

    def wait_done(self, timeout: float = 10) -> dict:
        """The only connection's record once its handler has finished (the
        client may exit before the server's side of the close is done)."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.connections and "close_code" in self.connections[0]:
                break
            time.sleep(0.02)
        assert len(self.connections) == 1, self.connections
        assert "close_code" in self.connections[0], f"server handler did not finish: {self.connections}"
        return self.connections[0]

    def close(self):
        if self._stop is not None:
            self._loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
        self._thread.join(10)


@pytest.fixture
def py_server(request):
    srv = PyEchoServer(request.param)
    yield srv
    srv.close()


@pytest.mark.parametrize("client_mode", list(CLIENT_MODES))
@pytest.mark.parametrize("py_server", ["deflate", None], ids=["server-deflate", "server-plain"], indirect=True)
def test_against_python_websockets(py_server, client_mode):
    result = run_example(f"ws://127.0.0.1:{py_server.port}/echo", *CLIENT_MODES[client_mode])
    check_result(result)
    conn = py_server.wait_done()
    negotiated = conn["extensions"] or ""
    if client_mode == "off":
        assert conn["offer"] is None, conn
    if client_mode != "off" and py_server.compression == "deflate":
        assert "permessage-deflate" in negotiated, conn
        if client_mode == "shared":
            assert "server_no_context_takeover" in negotiated, conn
        else:
            assert "no_context_takeover" not in negotiated, conn
    else:
        assert negotiated == "", conn
    # 4 text + 8 binary + 1 MiB.
    assert conn["messages"] == 13, conn
    assert conn["close_code"] == 1000, conn


# ---------------------------------------------------------------------------
# Node ws server
# ---------------------------------------------------------------------------


class NodeEchoServer:
    def __init__(self, deflate: bool):
        node = shutil.which("node")
        if node is None:
            pytest.fail("node not found on PATH (scripts/test installs nodejs)")
        args = [node, str(NODE_SERVER)] + (["--deflate"] if deflate else [])
        self.proc = subprocess.Popen(
            args, cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.events: list[dict] = []
        self._port = threading.Event()
        self.port = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._port.wait(15) or not self.port:
            self.close()
            pytest.fail(f"node echo server did not start: {self.proc.stderr.read()[-2000:]}")

    def _read(self):
        for line in self.proc.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if "port" in obj and not self.port:
                self.port = obj["port"]
                self._port.set()
            else:
                self.events.append(obj)
        self._port.set()

    def wait_for(self, event: str, timeout: float = 10) -> dict:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if e.get("event") == event:
                    return e
            time.sleep(0.02)
        raise AssertionError(f"node server reported no {event!r} event: {self.events}")

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def node_server(request):
    if not (HERE / "node_modules" / "ws").is_dir():
        pytest.fail("tests/interop/node_modules/ws missing: run scripts/test (npm install)")
    srv = NodeEchoServer(request.param)
    srv.deflate = request.param
    yield srv
    srv.close()


@pytest.mark.parametrize("client_mode", list(CLIENT_MODES))
@pytest.mark.parametrize("node_server", [True, False], ids=["server-deflate", "server-plain"], indirect=True)
def test_against_node_ws(node_server, client_mode):
    result = run_example(f"ws://127.0.0.1:{node_server.port}/echo", *CLIENT_MODES[client_mode])
    check_result(result)
    opened = node_server.wait_for("open")
    headers = node_server.wait_for("headers")
    closed = node_server.wait_for("close")
    if client_mode != "off" and node_server.deflate:
        assert opened["extensions"] == "permessage-deflate", (opened, headers)
        assert "permessage-deflate" in headers["extensions_header"], headers
        if client_mode == "context":
            assert "no_context_takeover" not in headers["extensions_header"], headers
        else:
            assert "server_no_context_takeover" in headers["extensions_header"], headers
    else:
        assert opened["extensions"] == "", opened
    if client_mode == "off":
        assert opened["offer"] == "", opened
    assert closed["code"] == 1000, closed


# ---------------------------------------------------------------------------
# A smaller server window (server_max_window_bits in the offer)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [9, 12])
@pytest.mark.parametrize("client_mode", ["shared", "context"])
@pytest.mark.parametrize("py_server", ["deflate"], ids=["server-deflate"], indirect=True)
def test_server_window_against_python_websockets(py_server, client_mode, bits):
    args = [*CLIENT_MODES[client_mode], "--server-window", str(bits)]
    result = run_example(f"ws://127.0.0.1:{py_server.port}/echo", *args)
    check_result(result)
    conn = py_server.wait_done()
    assert f"server_max_window_bits={bits}" in (conn["offer"] or ""), conn
    assert f"server_max_window_bits={bits}" in (conn["extensions"] or ""), conn


@pytest.mark.parametrize("bits", [9, 12])
@pytest.mark.parametrize("client_mode", ["shared", "context"])
@pytest.mark.parametrize("node_server", [True], ids=["server-deflate"], indirect=True)
def test_server_window_against_node_ws(node_server, client_mode, bits):
    args = [*CLIENT_MODES[client_mode], "--server-window", str(bits)]
    result = run_example(f"ws://127.0.0.1:{node_server.port}/echo", *args)
    check_result(result)
    headers = node_server.wait_for("headers")
    assert f"server_max_window_bits={bits}" in headers["extensions_header"], headers
    assert node_server.wait_for("close")["code"] == 1000
