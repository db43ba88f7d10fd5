"""The stale-connection test (issue 14): 300 requests at random gaps of
0.5 to 1.5 s, straddling the server's 1 s idle timeout, through tether's
pooled keep-alive client (`tether bench stale`) and through hyper-util's
legacy client (`bench/src/bin/bench-stale-hyper.rs`), against a tether
server at `--keep-alive-timeout 1s` (which advertises `timeout=1`) and
against nginx at `keepalive_timeout 1s` (which advertises nothing); each
directly over loopback and through a proxy that delays every byte and FIN
by 50 ms each way (`delay_proxy.py`: a 100 ms round trip, where a server's
FIN is 50 ms late and a request sent meanwhile meets a closed socket).

tether's client must get zero errors in all four; hyper-util's errors
are counted, not asserted. All eight runs go at once, with the same
seeded schedule, so the test takes about five minutes; scripts/test runs
this file beside the other suites. The results are written to
target/stale-connections.json and printed.

Needs: target/release/tether, target/bench/release/bench-stale-hyper
(scripts/test builds both) and nginx (scripts/test installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from delay_proxy import DelayProxy
from tether_server import BINARY, REPO

HYPER = Path(os.environ.get("INTEROP_STALE_HYPER_BIN", REPO / "target" / "bench" / "release" / "bench-stale-hyper"))
REQUESTS = int(os.environ.get("INTEROP_STALE_REQUESTS", "300"))
RESULTS = REPO / "target" / "stale-connections.json"
SEED = 14
ONE_WAY_DELAY = 0.05

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_timeout 1s;
    server {{
        listen 127.0.0.1:{port};
        location = /healthz {{
            default_type text/plain;
            return 200 "ok";
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"{what} did not listen on {port} within 15 s")


@pytest.fixture
def nginx(tmp_path):
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if exe is None:
        pytest.fail("nginx is not installed (scripts/test installs Debian's nginx-light)")
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=tmp_path, port=port))
    proc = subprocess.Popen([exe, "-c", str(conf), "-p", str(tmp_path), "-e", str(tmp_path / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc, "nginx")
        yield f"http://127.0.0.1:{port}/healthz"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# 300 gaps of up to 1.5 s: well past the suite's 90 s default.
@pytest.mark.timeout(REQUESTS * 1.5 + 180)
def test_tether_client_gets_no_stale_connection_errors(start_server, nginx):
    if not HYPER.is_file():
        pytest.fail(f"{HYPER} not found: scripts/test builds it (cargo build --release "
                    "--manifest-path bench/Cargo.toml --bin bench-stale-hyper)")
    server = start_server("--keep-alive-timeout", "1s", "--log", "warn")
    direct = {"tether": server.url("/healthz"), "nginx": nginx}
    proxies = {name: DelayProxy(int(url.split(":")[2].split("/")[0]), ONE_WAY_DELAY) for name, url in direct.items()}
    targets = dict(direct)
    for name, proxy in proxies.items():
        targets[f"{name} (+50 ms)"] = f"http://127.0.0.1:{proxy.port}/healthz"
    # The same advertised behaviour the test relies on.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"timeout=1" in s.recv(4096)

    runs = {}
    for name, url in targets.items():
        runs[("tether", name)] = [str(BINARY), "bench", "stale", url, "--requests", str(REQUESTS),
                                  "--seed", str(SEED), "--json"]
        runs[("hyper-util", name)] = [str(HYPER), "--url", url, "--requests", str(REQUESTS),
                                      "--seed", str(SEED)]
    procs = {key: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for key, argv in runs.items()}
    # 300 gaps of at most 1.5 s: 450 s at most, plus the requests.
    limit = REQUESTS * 1.5 + 120
    results = {}
    try:
        for key, proc in procs.items():
            try:
                out, err = proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                for p in procs.values():
                    p.kill()
                pytest.fail(f"{key} did not finish within {limit:.0f} s")
            assert proc.returncode == 0, f"{key}: status {proc.returncode}\n{err}"
            results[f"{key[0]} -> {key[1]}"] = json.loads(out)
    finally:
        for proxy in proxies.values():
            proxy.stop()

    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print("\nstale-connection test:", REQUESTS, "requests at 0.5-1.5 s gaps, server idle timeout 1 s")
    for name, r in results.items():
        print(f"  {name:36} ok {r['ok']:4}  errors {r['errors']:3}  {r['error_kinds']}")

    for name in targets:
        mine = results[f"tether -> {name}"]
        assert mine["errors"] == 0, f"tether's client against {name}: {mine}"
        assert mine["ok"] == REQUESTS
        # Keep-alive was used (gaps under the timeout reuse the connection)
        # and connections were retired, not failed.
        assert 0 < mine["connections"] < REQUESTS, mine
        assert mine["reused"] > 0, mine
        theirs = results[f"hyper-util -> {name}"]
        assert theirs["ok"] + theirs["errors"] == REQUESTS, theirs
    # tether advertises timeout=1: its client retires by the hint; nginx
    # advertises nothing: only its FIN (seen before reuse) tells, and
    # across the delay the retry rule covers the FIN still on its way.
    assert results["tether -> tether"]["closed"].get("advertised_timeout", 0) > 0
    assert results["tether -> nginx"]["closed"].get("peer_closed", 0) > 0
