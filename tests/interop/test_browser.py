"""tether's WebSocket server against a real browser: headless Chromium.

tether serves a temporary directory (`--root`) holding an index.html whose
script opens `ws://127.0.0.1:PORT/echo` (Chromium offers permessage-deflate
by itself), round-trips a text message, a binary ArrayBuffer, a 1 MiB
binary and a 1 MiB text message and a burst of small messages, closes with
1000, and writes the results as JSON into `<pre id=result>` and "PASS" or
"FAIL" into `document.title`.

Driving Chromium: `--dump-dom` (with or without `--virtual-time-budget`)
dumps the DOM as soon as the page has loaded and virtual time has run out;
WebSocket traffic does not hold either back, so it always showed the page
before the script had finished. Instead the test starts Chromium with
`--remote-debugging-port=0`, reads the port from `DevToolsActivePort` in
the profile directory, and polls `document.title` through the DevTools
protocol (CDP) over a WebSocket (the Python `websockets` sync client). Every
wait is bounded; Chromium is killed at teardown if it does not exit.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect

CHROMIUM = os.environ.get("INTEROP_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
PAGE_TIMEOUT = 40.0

INDEX_HTML = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>pending</title></head>
<body><pre id="result">pending</pre>
<script>
"use strict";
const out = {steps: []};
function finish(ok, err) {
  out.ok = ok;
  if (err) out.error = String(err);
  document.getElementById('result').textContent = JSON.stringify(out);
  document.title = ok ? 'PASS' : 'FAIL';
}
window.onerror = (msg) => finish(false, 'script error: ' + msg);
setTimeout(() => finish(false, 'page deadline passed; got so far: ' + out.steps.join(',')), 30000);

function pattern(n, seed) {
  const a = new Uint8Array(n);
  let x = seed | 1;
  for (let i = 0; i < n; i++) {
    if ((i >> 12) & 1) { a[i] = i % 251; continue; }
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    a[i] = x & 255;
  }
  return a;
}
function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

// Subprotocols to offer, from the URL's fragment (`#chat.v1,chat.v2`).
const offer = location.hash.slice(1);
const ws = offer ? new WebSocket('ws://' + location.host + '/echo', offer.split(','))
                 : new WebSocket('ws://' + location.host + '/echo');
ws.binaryType = 'arraybuffer';
const queue = [], waiters = [];
ws.onmessage = (e) => { if (waiters.length) waiters.shift()(e.data); else queue.push(e.data); };
ws.onerror = () => finish(false, 'websocket error event; got so far: ' + out.steps.join(','));
const closed = new Promise((resolve) => {
  ws.onclose = (e) => {
    out.close_code = e.code; out.close_reason = e.reason; out.was_clean = e.wasClean;
    resolve();
  };
});
const next = () => new Promise((resolve) => {
  if (queue.length) resolve(queue.shift()); else waiters.push(resolve);
});

ws.onopen = async () => {
  try {
    out.extensions = ws.extensions;
    out.protocol = ws.protocol;

    const text = 'hello from chromium ✓ 🚀';
    ws.send(text);
    out.text = (await next()) === text;
    out.steps.push('text');

    const bin = new Uint8Array([0, 1, 2, 255, 128, 127]);
    ws.send(bin.buffer);
    const b = await next();
    out.binary = b instanceof ArrayBuffer && sameBytes(new Uint8Array(b), bin);
    out.steps.push('binary');

    const big = pattern(1 << 20, 12345);
    ws.send(big.buffer);
    const g = await next();
    out.large_len = g.byteLength;
    out.large = g instanceof ArrayBuffer && sameBytes(new Uint8Array(g), big);
    out.steps.push('large');

    const bigText = 'chromium and tether '.repeat(52429).slice(0, 1 << 20);
    ws.send(bigText);
    const t = await next();
    out.large_text_len = t.length;
    out.large_text = t === bigText;
    out.steps.push('large_text');

    // A burst: sent before any echo is read, must come back in order.
    const burst = [];
    for (let i = 0; i < 50; i++) burst.push('msg ' + i + ' ' + 'x'.repeat(i * 37));
    burst.forEach((m) => ws.send(m));
    let inOrder = true;
    for (const m of burst) if ((await next()) !== m) inOrder = false;
    out.burst = inOrder;
    out.steps.push('burst');

    ws.close(1000, 'bye');
    await closed;
    out.steps.push('close');
    finish(out.text && out.binary && out.large && out.large_text && out.burst &&
           out.close_code === 1000 && out.was_clean);
  } catch (e) {
    finish(false, e);
  }
};
</script></body></html>
"""


class Cdp:
    """A minimal DevTools-protocol client on one browser WebSocket."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 10.0):
        msg_id = next(self.ids)
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"CDP {method}: no answer within {timeout}s")
            reply = json.loads(self.ws.recv(timeout=remaining))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"CDP {method}: {reply['error']}")
                return reply.get("result", {})
            # Events and other replies are ignored.


class Chromium:
    def __init__(self, profile: Path):
        if not (CHROMIUM and Path(CHROMIUM).exists()):
            pytest.fail("chromium not found (scripts/test installs the Debian package 'chromium')")
        self.profile = profile
        self.log = profile.parent / "chromium.log"
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                f"--user-data-dir={profile}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def devtools_url(self, timeout: float = 20.0) -> str:
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"chromium exited with {self.proc.returncode}\n{self.output()}")
            try:
                lines = active.read_text().split()
            except FileNotFoundError:
                lines = []
            if len(lines) >= 2:
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            time.sleep(0.05)
        pytest.fail(f"chromium wrote no DevToolsActivePort within {timeout}s\n{self.output()}")

    def output(self) -> str:
        try:
            return "chromium output (tail):\n" + self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture
def chromium(tmp_path):
    c = Chromium(tmp_path / "profile")
    yield c
    c.stop()


def run_page(chromium: Chromium, page_url: str) -> dict:
    """Opens `page_url` in a new tab and waits for the script's verdict."""
    with ws_connect(chromium.devtools_url(), max_size=None, open_timeout=10, compression=None) as ws:
        cdp = Cdp(ws)
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        cdp.call("Page.navigate", {"url": page_url}, session=session, timeout=20)
        deadline = time.monotonic() + PAGE_TIMEOUT
        title = ""
        while time.monotonic() < deadline:
            r = cdp.call(
                "Runtime.evaluate",
                {"expression": "document.title", "returnByValue": True},
                session=session,
            )
            title = r.get("result", {}).get("value", "")
            if title in ("PASS", "FAIL"):
                break
            time.sleep(0.1)
        r = cdp.call(
            "Runtime.evaluate",
            {"expression": "document.getElementById('result') && document.getElementById('result').textContent",
             "returnByValue": True},
            session=session,
        )
        text = r.get("result", {}).get("value") or ""
        assert title in ("PASS", "FAIL"), f"page did not finish within {PAGE_TIMEOUT}s: title {title!r}, result {text!r}"
        try:
            result = json.loads(text)
        except ValueError:
            pytest.fail(f"result is not JSON: {text!r}")
        result["title"] = title
        try:
            cdp.call("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - the browser may go before answering
            pass
        return result


@pytest.fixture
def root(tmp_path):
    d = tmp_path / "www"
    d.mkdir()
    (d / "index.html").write_text(INDEX_HTML, encoding="utf-8")
    return d


@pytest.mark.parametrize("mode", ["shared", "context", "off"])
def test_chromium_echo(start_server, chromium, root, mode):
    srv = start_server("--root", str(root), "--ws-compression", mode)
    result = run_page(chromium, f"http://127.0.0.1:{srv.port}/index.html")
    assert result["title"] == "PASS", result
    assert result["steps"] == ["text", "binary", "large", "large_text", "burst", "close"], result
    assert result["text"] is True and result["binary"] is True, result
    assert result["large_len"] == 1 << 20 and result["large"] is True, result
    assert result["large_text_len"] == 1 << 20 and result["large_text"] is True, result
    assert result["burst"] is True, result
    assert result["close_code"] == 1000 and result["was_clean"] is True, result
    if mode == "off":
        assert result["extensions"] == "", result
    else:
        assert "permessage-deflate" in result["extensions"], result
        if mode == "shared":
            assert "server_no_context_takeover" in result["extensions"], result
        else:
            assert "no_context_takeover" not in result["extensions"], result


def test_chromium_subprotocol(start_server, chromium, root):
    """A page offering subprotocols gets the first one `--ws-subprotocol`
    lists (a browser fails a connection whose offer goes unanswered)."""
    srv = start_server("--root", str(root), "--ws-subprotocol", "chat.v2,chat.v1")
    result = run_page(chromium, f"http://127.0.0.1:{srv.port}/index.html#chat.v3,chat.v1,chat.v2")
    assert result["title"] == "PASS", result
    assert result["protocol"] == "chat.v1", result


def test_chromium_fails_an_unanswered_subprotocol_offer(start_server, chromium, root):
    """The same offer to a server that lists none: the browser refuses the
    101 (what a user of `new WebSocket(url, protocols)` must know)."""
    plain = start_server("--root", str(root))
    result = run_page(chromium, f"http://127.0.0.1:{plain.port}/index.html#chat.v1")
    assert result["title"] == "FAIL" and "websocket error" in result.get("error", ""), result
