"""Runs the real `tether serve` binary for the interop tests.

`Server(args)` starts `target/release/tether serve --listen 127.0.0.1:0
*args`, waits for its `listening on http://127.0.0.1:PORT ...` line and
exposes the port. `check_stopped(server)` sends SIGTERM and fails the test
unless the process exits with status 0 within 15 s (it is killed otherwise).
The fixtures in conftest.py use these; `server_fixture(*args)` makes a
module-scoped fixture for a test module of its own.

The binary is `target/release/tether` (build it with `cargo build --release
--bin tether`, as scripts/test does), or the path in $INTEROP_TETHER_BIN.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("INTEROP_TETHER_BIN", REPO / "target" / "release" / "tether"))
LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
MAX_OUTPUT_LINES = 10_000


class Server:
    """A running `tether serve` process and everything it printed."""

    def __init__(self, args: list[str], nofile: int | None = None):
        """`nofile`: the process's open-file limit (soft and hard), for
        tests of descriptor exhaustion."""
        if not BINARY.is_file():
            pytest.fail(f"{BINARY} not found: run `cargo build --release --bin tether` (scripts/test does)")
        # The server takes TETHER_* variables as configuration: pass none.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
        env["NO_COLOR"] = "1"
        env.setdefault("RUST_BACKTRACE", "1")
        self.args = [str(BINARY), "serve", "--listen", "127.0.0.1:0", *args]
        self.lines: list[str] = []
        self.returncode: int | None = None
        self._listening = threading.Event()
        self.host = ""
        self.port = 0
        def limit_files() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            self.args,
            preexec_fn=limit_files if nofile is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # the listening line may be on either
            env=env,
        )
        # Drains the output for the whole life of the process, so the server
        # never blocks on a full pipe, and spots the listening line.
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        # Set by the reader at the listening line, or at end of output.
        self._listening.wait(START_TIMEOUT)
        if not self.port:
            why = "exited" if self.proc.poll() is not None else f"printed no such line within {START_TIMEOUT}s"
            rc = self.stop()
            pytest.fail(
                f"no 'listening on' line: {' '.join(self.args)} {why} (status {rc})\n"
                + self.output()
            )

    def _read_output(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\r\n")
            if len(self.lines) < MAX_OUTPUT_LINES:
                self.lines.append(line)
            if not self._listening.is_set():
                m = LISTENING.search(line)
                if m:
                    self.host, self.port = m.group(1), int(m.group(2))
                    self._listening.set()
        self._listening.set()  # end of output: stop waiting

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return "server output:\n" + "\n".join("  | " + line for line in self.lines)

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def running(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.running():
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        """Waits for the process to exit; its status, or None if still running."""
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(2.0)
        return self.returncode

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then wait up to `timeout`; kills it if it is still
        running. Returns the exit status (negative: killed by a signal)."""
        if self.running():
            self.signal(signal.SIGTERM)
        rc = self.wait(timeout)
        if rc is None:
            self.proc.kill()
            self.wait(5.0)
            raise AssertionError(
                f"server did not exit within {timeout}s of SIGTERM (killed)\n" + self.output()
            )
        return rc


def check_stopped(server: Server) -> None:
    # Exited, and no test waited for it: it stopped by itself.
    died_early = not server.running() and server.returncode is None
    rc = server.stop()
    if died_early:
        pytest.fail(f"server exited by itself during the test with status {rc}\n" + server.output())
    if rc != 0:
        pytest.fail(f"server exited with status {rc} after SIGTERM (want 0)\n" + server.output())


def server_fixture(*args: str, scope: str = "module"):
    """A fixture (assign it to a module-level name) running one server
    with `args` for the whole `scope`."""

    @pytest.fixture(scope=scope)
    def fixture():
        s = Server([str(a) for a in args])
        yield s
        check_stopped(s)

    return fixture
