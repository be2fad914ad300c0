"""A TCP relay in front of an agent that counts what crosses it, and can black-hole it.

`CountingRelay` listens on 127.0.0.1 port 0 and forwards every connection to the agent,
counting connections and bytes each way (headers included: it sees the socket, not HTTP).
`blackhole()` makes it a dead network path: nothing more is forwarded either way, every
connection stays open and silent, and new ones are accepted and never answered, as with a
host that vanished behind a firewall that drops packets. It runs its own event loop on a
daemon thread, so synchronous scenarios use it as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass

CHUNK = 65536


@dataclass(frozen=True)
class Traffic:
    """What has crossed the relay so far."""

    connections: int
    bytes_up: int  # client to agent
    bytes_down: int  # agent to client


class CountingRelay:
    """Forwards 127.0.0.1:`port` to the agent at `target_port`, counting."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._connections = 0
        self._up = 0
        self._down = 0
        self._blackholed = False
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="bench-relay", daemon=True)

    def __enter__(self) -> CountingRelay:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the relay did not start within 10 s")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def traffic(self) -> Traffic:
        with self._lock:
            return Traffic(self._connections, self._up, self._down)

    def blackhole(self) -> None:
        """From now on forward nothing, answer nothing, close nothing."""
        self._blackholed = True

    def close(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._relay, "127.0.0.1", 0, backlog=4096)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    async def _relay(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        # Cancelled when the relay closes: end quietly (asyncio's stream callback would log
        # a cancelled handler as an error on Python 3.11).
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await self._forward(client_in, client_out)
        finally:
            client_out.close()

    async def _forward(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        with self._lock:
            self._connections += 1
        if self._blackholed:
            await self._swallow(client_in)
            client_out.close()
            return
        try:
            agent_in, agent_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_out.close()
            return
        try:
            await asyncio.gather(
                self._pump(client_in, agent_out, upward=True),
                self._pump(agent_in, client_out, upward=False),
            )
        finally:
            agent_out.close()

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        while await reader.read(CHUNK):
            pass

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upward: bool
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                if self._blackholed:
                    await self._swallow(reader)
                    return
                with self._lock:
                    if upward:
                        self._up += len(data)
                    else:
                        self._down += len(data)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            if not self._blackholed:
                writer.close()
