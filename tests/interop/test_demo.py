"""The live demo at `/` in headless Chromium: two pages chat through the
hub, one drops its connection while the other keeps talking, comes back by
itself and resumes with nothing missed and nothing twice; the ticker and
the dashboard are fed by push.

Pages are driven through the DevTools protocol (see test_browser.py): the
page keeps what it received in `window.demo` (chat offsets and texts,
ticker and dashboard counts, resumptions), which the test reads with
`Runtime.evaluate`. Every wait is bounded.

With TETHER_DEMO_SCREENSHOT=PATH the first page is saved as a PNG there
(how docs/demo.png was made).
"""

from __future__ import annotations

import base64
import json
import os
import time

from websockets.sync.client import connect as ws_connect

from test_browser import Cdp, chromium  # noqa: F401  (the fixture)

WAIT = 20.0


class Page:
    """One tab of the browser, attached through `cdp`."""

    def __init__(self, cdp: Cdp, url: str):
        self.cdp = cdp
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        cdp.call("Page.navigate", {"url": url}, session=self.session, timeout=20)

    def eval(self, expression: str):
        r = self.cdp.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": False},
            session=self.session,
        )
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression}: {r['exceptionDetails']}")
        return r.get("result", {}).get("value")

    def wait_for(self, expression: str, what: str, timeout: float = WAIT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.05)
        state = self.eval("JSON.stringify({chat: window.demo && demo.chat, ticks: window.demo && demo.ticks, "
                          "status: document.getElementById('status')?.textContent})")
        raise AssertionError(f"{what}: not within {timeout}s; page state {state}")

    def chat(self) -> list[dict]:
        return json.loads(self.eval("JSON.stringify(demo.chat)"))

    def screenshot(self, path: str):
        self.cdp.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 640, "deviceScaleFactor": 1, "mobile": False},
            session=self.session,
        )
        time.sleep(0.5)
        data = self.cdp.call("Page.captureScreenshot", {"format": "png"}, session=self.session, timeout=20)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))


def live(page: Page) -> str:
    return page.wait_for("window.demo !== undefined && document.getElementById('status')?.className === 'live'",
                         "the page connected")


def test_two_pages_chat_and_a_dropped_one_resumes_with_nothing_missed(start_server, chromium):  # noqa: F811
    srv = start_server()
    url = f"http://127.0.0.1:{srv.port}/"
    with ws_connect(chromium.devtools_url(), max_size=None, open_timeout=10, compression=None) as ws:
        cdp = Cdp(ws)
        cdp.call("Target.setDiscoverTargets", {"discover": False})
        a, b = Page(cdp, url), Page(cdp, url)
        live(a)
        live(b)
        a.eval("document.getElementById('name').value = 'alice'")
        b.eval("document.getElementById('name').value = 'bob'")
        # Presence: each sees two members.
        for p in (a, b):
            p.wait_for("document.getElementById('members').textContent === '2 here'", "two members")
        for i in range(3):
            a.eval(f"demo.say('hello {i}')")
        b.wait_for("demo.chat.length >= 3", "bob got alice's first three")
        # Bob's connection drops and stays away for 1.5 s; alice goes on.
        b.eval("demo.hub.drop(1500)")
        b.wait_for("document.getElementById('status').className !== 'live'", "bob is disconnected")
        for i in range(3, 8):
            a.eval(f"demo.say('hello {i}')")
        a.wait_for("demo.chat.length >= 8", "alice sees her own messages")
        b.wait_for("demo.hub.reconnects >= 1 && document.getElementById('status').className === 'live'",
                   "bob reconnected by himself")
        b.wait_for("demo.chat.length >= 8", "bob caught up")
        b.eval("demo.say('back again')")
        a.wait_for("demo.chat.some(m => m.text === 'back again')", "alice got bob's message")
        b.wait_for("demo.chat.some(m => m.text === 'back again')", "bob got his own message")
        time.sleep(0.3)
        for page, who in ((a, "alice"), (b, "bob")):
            chat = page.chat()
            offsets = [m["offset"] for m in chat]
            assert offsets == list(range(1, len(chat) + 1)), f"{who}: offsets {offsets}"
            texts = [m["text"] for m in chat]
            assert texts == [f"hello {i}" for i in range(8)] + ["back again"], f"{who}: {texts}"
        resumes = json.loads(b.eval("JSON.stringify(demo.resumes)"))
        assert resumes and resumes[-1]["recovered"] is True, resumes
        # The ticker (5 a second) and the dashboard (1 a second) are pushed too.
        a.wait_for("demo.ticks >= 5", "ticker updates")
        a.wait_for("demo.stats >= 2", "dashboard updates")
        assert a.eval("document.getElementById('stats').rows.length") >= 9
        shot = os.environ.get("TETHER_DEMO_SCREENSHOT")
        if shot:
            a.wait_for("demo.ticks >= 40", "a sparkline worth showing", timeout=30)
            a.screenshot(shot)


def test_the_page_takes_a_development_token_when_the_hub_needs_one(start_server, chromium):  # noqa: F811
    """With client tokens on, the page asks GET /dev/token (`--dev-tokens`)
    and authenticates with its first message; it chats, and after a dropped
    connection it authenticates again as the same subject."""
    srv = start_server("--dev-tokens", "--token-secret", "a-secret-of-at-least-32-bytes-0123")
    url = f"http://127.0.0.1:{srv.port}/"
    with ws_connect(chromium.devtools_url(), max_size=None, open_timeout=10, compression=None) as ws:
        cdp = Cdp(ws)
        cdp.call("Target.setDiscoverTargets", {"discover": False})
        a = Page(cdp, url)
        live(a)
        subject = a.wait_for("demo.hub.subject", "the page got a token")
        assert subject.startswith("dev-"), subject
        a.eval("document.getElementById('name').value = 'alice'")
        a.eval("demo.say('with a token')")
        a.wait_for("demo.chat.some(m => m.text === 'with a token')", "the page published and got its message")
        a.wait_for("demo.ticks >= 2", "ticker updates")
        a.eval("demo.hub.drop(300)")
        a.wait_for("demo.hub.reconnects >= 1 && document.getElementById('status').className === 'live'",
                   "reconnected")
        assert a.eval("demo.hub.subject") == subject
        a.eval("demo.say('still me')")
        a.wait_for("demo.chat.some(m => m.text === 'still me')", "published after reconnecting")
