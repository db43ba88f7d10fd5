#!/usr/bin/env python3
"""Opens N TLS keep-alive connections to 127.0.0.1:PORT (one `GET /healthz`
each, then idle) and reports the growth of process PID's RSS per
connection. The README's TLS measurements against nginx use it.

usage: scripts/tls-idle.py PORT PID CAFILE N   (raise `ulimit -n` first)"""
import asyncio, ssl, sys, time

port, pid, cafile, n = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

async def one(ctx, held):
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    w.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    await r.readexactly(length)
    held.append((r, w))

async def main():
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    held = []
    await one(ctx, held)  # warm up
    await asyncio.sleep(1)
    before = rss_kib(pid)
    t0 = time.monotonic()
    for i in range(0, n, 100):
        await asyncio.gather(*(one(ctx, held) for _ in range(min(100, n - i))))
    took = time.monotonic() - t0
    await asyncio.sleep(3)
    after = rss_kib(pid)
    print(f"{n} idle TLS keep-alive connections: RSS {before} -> {after} KiB, "
          f"{(after - before) / n:.2f} KiB per connection; opened in {took:.1f}s ({n / took:.0f}/s incl. one request each)")
    for r, w in held:
        w.close()

asyncio.run(main())
