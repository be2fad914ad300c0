"""Many stub agents in one process: one 127.0.0.1 port per agent, for `master_scale`.

Each healthy port answers `GET /forest/health` as an agent does: 200, the health JSON
(`status`, `version`, `instance_id`, `schema_etag`, `uptime_s`; its own instance id per
port), `ETag`, `Cache-Control: no-store`, `Date`, keep-alive, idle connections closed after
15 s (the project's runner). A `?wait=S` request whose `If-None-Match` is the current ETag
is held S seconds (at most 300), then answered the same way. It does not verify signatures:
it only refuses (401 `missing_headers`) a request without `X-Timestamp` and `X-Signature`,
so the master pays for signing while the stub spends no CPU on HMACs. Each hung port
accepts, reads and never answers. It counts accepted connections and requests per kind.

`python -m bench.scenarios._stub_agents --healthy N --hung H` prints one JSON line when
ready (`{"healthy": [ports], "hung": [ports], "control": port}`). Connecting to the control
port returns the counters as one JSON line. It runs until stdin closes, SIGTERM, or
`--max-seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import signal
import sys
import threading
import time
import uuid
from email.utils import formatdate
from functools import partial
from urllib.parse import parse_qsl

HOST = "127.0.0.1"
HEALTH_PATH = "/forest/health"
IDLE_CLOSE_S = 15.0
MAX_WAIT_S = 300.0
HEAD_END = b"\r\n\r\n"
MAX_HEAD = 16384


class Counters:
    """What the stub has seen, by kind of port."""

    def __init__(self) -> None:
        self.values = dict.fromkeys(
            ("healthy_accepts", "healthy_requests", "hung_accepts", "hung_requests", "held"), 0
        )


COUNTERS = Counters()
_DATES: dict[int, str] = {}


def http_date() -> str:
    """The `Date` header, formatted once a second."""
    now = int(time.time())
    if now not in _DATES:
        _DATES.clear()
        _DATES[now] = formatdate(now, usegmt=True)
    return _DATES[now]


class StubAgent:
    """One agent's identity: its instance id, schema ETag and health ETag."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.instance_id = uuid.uuid4().hex
        schema_etag = hashlib.sha256(self.instance_id.encode()).hexdigest()[:16]
        fields = {
            "status": "ok",
            "version": "0.1.0",
            "instance_id": self.instance_id,
            "schema_etag": schema_etag,
        }
        self.head = (json.dumps(fields, separators=(",", ":"))[:-1] + ',"uptime_s":').encode()
        state = f"ok\n{self.instance_id}\n{schema_etag}"
        self.etag = f'"{hashlib.sha256(state.encode()).hexdigest()[:32]}"'

    def reply(self, status: int = 200, body: bytes | None = None) -> bytes:
        """A complete HTTP/1.1 answer: the health JSON unless `body` is given."""
        if body is None:
            body = self.head + b"%.3f}" % (time.monotonic() - self.started)
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}[status]
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nETag: {self.etag}\r\n"
            f"Date: {http_date()}\r\n\r\n"
        )
        return head.encode() + body


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Method, target and lower-cased headers of one request head."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = [*lines[0].split(" "), "", ""][:3]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers


class HealthProtocol(asyncio.Protocol):
    """One connection to a healthy stub agent: requests answered in order, watches held."""

    def __init__(self, agent: StubAgent) -> None:
        self.agent = agent
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.held: asyncio.TimerHandle | None = None
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        COUNTERS.values["healthy_accepts"] += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        self.serve()

    def serve(self) -> None:
        """Answer every complete request in the buffer, unless one is being held."""
        while self.held is None and self.transport is not None:
            end = self.buffer.find(HEAD_END)
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.transport.close()
                break
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            COUNTERS.values["healthy_requests"] += 1
            self.answer(*parse_head(head))
        if self.held is None and self.transport is not None:
            if self.idle is not None:
                self.idle.cancel()
            self.idle = asyncio.get_running_loop().call_later(IDLE_CLOSE_S, self.transport.close)

    def answer(self, method: str, target: str, headers: dict[str, str]) -> None:
        """Send the answer to one request, or hold it (a watch)."""
        assert self.transport is not None
        path, _, query = target.partition("?")
        if path != HEALTH_PATH or method != "GET":
            self.transport.write(self.agent.reply(404, b'{"error":"not_found"}'))
            return
        if "x-signature" not in headers or "x-timestamp" not in headers:
            body = b'{"error":"Unauthorized","reason":"missing_headers"}'
            self.transport.write(self.agent.reply(401, body))
            return
        wait = dict(parse_qsl(query)).get("wait") if query else None
        if wait is not None and headers.get("if-none-match") == self.agent.etag:
            try:
                seconds = min(MAX_WAIT_S, float(wait))
            except ValueError:
                self.transport.write(self.agent.reply(400, b'{"error":"bad_request"}'))
                return
            if seconds > 0:
                COUNTERS.values["held"] += 1
                loop = asyncio.get_running_loop()
                self.held = loop.call_later(seconds, self.release)
                return
        self.transport.write(self.agent.reply())

    def release(self) -> None:
        """A held watch's wait ran out: answer it, then serve what came meanwhile."""
        self.held = None
        COUNTERS.values["held"] -= 1
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.agent.reply())
            self.serve()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.held is not None:
            self.held.cancel()
            self.held = None
            COUNTERS.values["held"] -= 1
        if self.idle is not None:
            self.idle.cancel()
        self.transport = None


class HungProtocol(asyncio.Protocol):
    """A hung agent: accepts, reads, counts the requests, never answers."""

    def __init__(self) -> None:
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        COUNTERS.values["hung_accepts"] += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(HEAD_END)) >= 0:
            self.buffer = self.buffer[end + 4 :]
            COUNTERS.values["hung_requests"] += 1


async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Write the counters and this process's CPU seconds as one JSON line, then close."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    figures = {**COUNTERS.values, "cpu_s": usage.ru_utime + usage.ru_stime}
    writer.write(json.dumps(figures).encode() + b"\n")
    await writer.drain()
    writer.close()


def watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set `stop` once stdin reaches EOF (the parent is gone or done)."""

    def read_until_eof() -> None:
        while os.read(0, 4096):
            pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=read_until_eof, name="stdin-lifeline", daemon=True).start()


async def serve(healthy: int, hung: int, max_seconds: float) -> None:
    """Open every port, announce them, serve until told to stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watch_stdin(loop, stop)
    started = time.monotonic()
    servers = []
    for _ in range(healthy):
        agent = StubAgent(started)
        servers.append(await loop.create_server(partial(HealthProtocol, agent), HOST, 0))
    for _ in range(hung):
        servers.append(await loop.create_server(HungProtocol, HOST, 0, backlog=1024))
    control_server = await asyncio.start_server(control, HOST, 0)
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    ready = {
        "healthy": ports[:healthy],
        "hung": ports[healthy:],
        "control": control_server.sockets[0].getsockname()[1],
    }
    print(json.dumps(ready), flush=True)
    try:
        await asyncio.wait_for(stop.wait(), max_seconds)
    except TimeoutError:
        pass
    finally:
        for server in (*servers, control_server):
            server.close()


def read_counters(port: int, timeout: float = 5.0) -> dict[str, float]:
    """The counters of the stub whose control port is `port`."""
    import socket

    with socket.create_connection((HOST, port), timeout=timeout) as connection:
        data = b""
        while not data.endswith(b"\n"):
            chunk = connection.recv(4096)
            if not chunk:
                break
            data += chunk
    figures: dict[str, float] = json.loads(data)
    return figures


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--healthy", type=int, required=True)
    parser.add_argument("--hung", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(serve(args.healthy, args.hung, args.max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
