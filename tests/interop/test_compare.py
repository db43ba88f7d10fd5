"""`tether compare` at high `--speed` completes, delivers every message by
every transport, and its byte counts agree with the server's own counters
(`tether_wire_bytes_total` on `/metrics`), against the in-process server
and against a `tether serve` given with `--url`.
"""

from __future__ import annotations

import json
import subprocess

from tether_server import BINARY


def compare(*args: str, timeout: float = 120) -> dict:
    r = subprocess.run([str(BINARY), "compare", *args, "--quiet", "--json", "-"],
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"status {r.returncode}\n{r.stderr}"
    return json.loads(r.stdout)


def check_chat(chat: dict, messages: int, browser_headers: bool = True) -> None:
    by_name = {t["transport"]: t for t in chat["transports"]}
    assert set(by_name) == {"polling", "long-polling", "SSE", "WebSocket"}
    for t in by_name.values():
        assert t["delivered"] == messages, t
        assert len(t["latencies_ms"]) == messages
        assert all(v is not None and v >= 0 for v in t["latencies_ms"]), t
        if "socket_agrees" in t:
            assert t["socket_agrees"], f"engine and socket counts differ: {t}"
    assert chat["server"]["agrees"], chat["server"]
    ws, poll = by_name["WebSocket"], by_name["polling"]
    # A frame header per message is 2-14 bytes; the upgrade adds a few
    # hundred once, spread over the messages.
    assert ws["exchanges"] >= messages
    assert poll["total_bytes"] > ws["total_bytes"]
    r = chat["ratios"]
    if browser_headers:
        assert r["head_bytes_per_poll"] > 300, r  # request and response heads
    assert r["overhead_polling_vs_websocket"] > 1, r


def test_compare_in_process_at_high_speed_agrees_with_the_server(tmp_path):
    report = compare("--speed", "50", "--messages", "30", "--requests", "20", "--svg", str(tmp_path))
    check_chat(report["chat"], 30)
    modes = {m["mode"]: m for m in report["keepalive"]["modes"]}
    assert modes["HTTP/1.1 keep-alive"]["connections"] == 1
    assert modes["HTTP/1.1 new connection each"]["connections"] == 20
    assert modes["HTTP/1.0 keep-alive"]["connections"] == 1
    assert modes["HTTP/1.0 new connection each"]["connections"] == 20
    for m in modes.values():
        assert m["server"]["agrees"], m
    # TCP's handshake and teardown, seen on the loopback interface: about 2
    # packets per request with keep-alive, about 10 without.
    ka, new = modes["HTTP/1.1 keep-alive"]["loopback"], modes["HTTP/1.1 new connection each"]["loopback"]
    assert new["packets"] > 2 * ka["packets"], (ka, new)
    for name in ("chat-bytes.svg", "chat-latency.svg", "keepalive.svg", "keepalive-packets.svg"):
        text = (tmp_path / name).read_text()
        assert text.startswith("<svg") and text.rstrip().endswith("</svg>"), name


def test_compare_against_a_running_server(start_server):
    server = start_server("--log", "warn")
    report = compare("chat", "--url", server.url("").rstrip("/"), "--speed", "100", "--messages", "20",
                     "--headers", "minimal")
    assert "keepalive" not in report
    check_chat(report["chat"], 20, browser_headers=False)
