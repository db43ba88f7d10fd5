"""tether's WebSocket server (`/echo`) against Node's `ws` package as a
client: tests/interop/node/ws_client.js runs a fixed sequence (text,
binary, fragmented text and binary with a ping between fragments, 16 MiB,
ping/pong, close 4001) and prints one JSON line, checked here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CLIENT = HERE / "node" / "ws_client.js"
NODE = shutil.which("node")


def run_node(script: Path, *args: str, timeout: float = 60) -> dict:
    if NODE is None:
        pytest.fail("node not found on PATH (scripts/test installs nodejs)")
    if not (HERE / "node_modules" / "ws").is_dir():
        pytest.fail("tests/interop/node_modules/ws missing: run scripts/test (npm install)")
    proc = subprocess.run(
        [NODE, str(script), *args],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON from {script.name} (exit {proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    result = json.loads(lines[-1])
    assert proc.returncode == 0 and result.get("ok"), (
        f"{script.name} failed (exit {proc.returncode}): {result}\nstderr:\n{proc.stderr}"
    )
    return result


def check_sequence(result: dict) -> None:
    assert result["steps"] == ["text", "binary", "fragmented", "16MiB", "ping", "close"], result
    assert result["text"] is True, result
    assert result["binary"] is True, result
    assert result["fragmented_text"] is True, result
    assert result["fragmented_binary"] is True, result
    assert result["pong_between_fragments"] is True, result
    assert result["big_len"] == 16 << 20, result
    assert result["big"] is True, result
    assert result["pong"] == "node-ping", result
    # The server echoes the client's close code (RFC 6455 §5.5.1).
    assert result["close_code"] == 4001, result


@pytest.mark.parametrize("server_mode", ["shared", "context", "off"])
@pytest.mark.parametrize(
    "client_args",
    [[], ["--deflate"], ["--deflate", "--threshold", "0"]],
    ids=["client-no-deflate", "client-deflate", "client-deflate-all"],
)
def test_node_ws_client(start_server, server_mode, client_args):
    srv = start_server("--ws-compression", server_mode)
    result = run_node(CLIENT, f"ws://127.0.0.1:{srv.port}/echo", *client_args)
    check_sequence(result)
    negotiated = "permessage-deflate" in result["extensions"]
    assert negotiated == (bool(client_args) and server_mode != "off"), result
