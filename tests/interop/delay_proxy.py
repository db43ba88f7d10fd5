"""A TCP proxy that delays every byte, FIN and reset by a fixed time each
way, so loopback behaves like a network with a round trip of twice that.

On loopback a server's FIN reaches the client within microseconds, so a
client almost never sends a request on a connection the server has just
closed. Across a real network the FIN is a one-way delay late, and a
request sent in that window meets a closed socket: the race the
stale-connection test is about. `DelayProxy(target_port, delay)` listens
on a free port (`.port`) and runs in a thread of its own until `.stop()`.

What it forwards, each after `delay`, in order: data, the half-close
(`write_eof`) when one side closed its sending side, and a reset (closing
with `SO_LINGER` 0) when one side reset the connection.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

CHUNK = 65536


class DelayProxy:
    def __init__(self, target_port: int, delay: float, host: str = "127.0.0.1"):
        self.target = (host, target_port)
        self.delay = delay
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or not self.port:
            raise RuntimeError("the delay proxy did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    def stop(self) -> None:
        """Cancels every connection's tasks, then stops the loop."""

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        self._thread.join(10)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.wait_for(asyncio.open_connection(*self.target), 10)
        except (OSError, asyncio.TimeoutError):
            reset(client_w)
            return
        try:
            await asyncio.gather(self._pump(client_r, server_w), self._pump(server_r, client_w))
        finally:
            for w in (client_w, server_w):
                w.transport.abort()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Reads `src` and replays what it saw on `dst`, each event `delay`
        after it was seen (a queue keeps their order)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        async def replay() -> None:
            while True:
                due, kind, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    if kind == "data":
                        dst.write(data)
                        await dst.drain()
                    elif kind == "eof":
                        if dst.can_write_eof():
                            dst.write_eof()
                        return
                    else:
                        reset(dst)
                        return
                except (OSError, RuntimeError):
                    reset(dst)
                    return

        replaying = asyncio.ensure_future(replay())
        while True:
            try:
                data = await src.read(CHUNK)
            except (ConnectionResetError, OSError):
                queue.put_nowait((loop.time() + self.delay, "reset", b""))
                break
            if not data:
                queue.put_nowait((loop.time() + self.delay, "eof", b""))
                break
            queue.put_nowait((loop.time() + self.delay, "data", data))
        # Bounded: every event is due within `delay`, a write within 30 s.
        try:
            await asyncio.wait_for(replaying, self.delay + 30)
        except asyncio.TimeoutError:
            reset(dst)


def reset(writer: asyncio.StreamWriter) -> None:
    """Closes with a reset (RST), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()
