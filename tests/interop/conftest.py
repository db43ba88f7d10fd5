"""Fixtures that run the real `tether serve` binary (see tether_server.py).

- `start_server(*args)`: a factory; each server it starts is stopped with
  SIGTERM at teardown and must exit with status 0 within 15 s.
- `server`: one default-configured server shared by a test module.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tether_server import Server, check_stopped  # noqa: E402


@pytest.fixture
def start_server():
    """Factory: start_server('--keep-alive-max', '3') -> Server; `nofile=N`
    runs it with an open-file limit of N."""
    servers: list[Server] = []

    def start(*args: str, nofile: int | None = None) -> Server:
        s = Server([str(a) for a in args], nofile=nofile)
        servers.append(s)
        return s

    yield start
    errors = []
    for s in servers:
        try:
            check_stopped(s)
        except BaseException as e:  # report every server, then fail
            errors.append(str(e))
    if errors:
        pytest.fail("\n\n".join(errors))


@pytest.fixture(scope="module")
def server():
    """One server with the default configuration for a whole module."""
    s = Server([])
    yield s
    check_stopped(s)
