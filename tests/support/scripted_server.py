"""A tiny scripted HTTP/1.1 server on 127.0.0.1 for tests of the HTTP client side.

A test queues the answers the next requests get (`ScriptedServer.script`) and reads back the
requests that came (`ScriptedServer.received`): method, raw target and headers. An answer can
be a plain status/headers/body, a gzip-encoded body, a body or head drip-fed one byte at a
time, a connection cut mid-body, no answer at all (held until the server stops), or a
redirect. A request with nothing left in the queue gets `UNSCRIPTED` (a 500).

`scripted_server()` runs one in a background thread and always stops it: the queued waits
(held answers, drips) are released, every connection is shut down and every thread joined.
Every wait here is bounded.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import socketserver
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

# Upper bounds on every wait, so that no test can hang on the server itself.
HOLD_LIMIT_S = 30.0
DRIP_LIMIT_S = 10.0
READ_TIMEOUT_S = 10.0
STOP_WAIT_S = 5.0
POLL_INTERVAL_S = 0.02


@dataclass(frozen=True)
class Answer:
    """One scripted answer.

    `gzip` sends `body` gzip-compressed with `Content-Encoding: gzip`. Without
    `content_length` the body is delimited by closing the connection. `drip_body_s` /
    `drip_head_s` send the body / the status line and headers one byte every that many
    seconds (for at most DRIP_LIMIT_S). `cut_after` declares the whole body but sends only
    that many bytes of it, then closes. `hold` never answers: the connection stays open,
    silent, until the server is released or stopped, then closes.
    """

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    gzip: bool = False
    content_length: bool = True
    drip_body_s: float | None = None
    drip_head_s: float | None = None
    cut_after: int | None = None
    hold: bool = False

    @classmethod
    def json(cls, document: Any, status: int = 200, **options: Any) -> Answer:
        """`document` as a JSON body with `Content-Type: application/json`."""
        headers = {"Content-Type": "application/json", **options.pop("headers", {})}
        return cls(status, json.dumps(document).encode(), headers, **options)

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Answer:
        return cls(status, headers={"Location": location})

    @classmethod
    def never(cls) -> Answer:
        """No answer at all until the server is released or stopped."""
        return cls(hold=True)

    def drip_body(self, every_s: float) -> Answer:
        return replace(self, drip_body_s=every_s)

    def drip_head(self, every_s: float) -> Answer:
        return replace(self, drip_head_s=every_s)

    def cut(self, after_bytes: int) -> Answer:
        return replace(self, cut_after=after_bytes)


UNSCRIPTED = Answer(500, b"no answer scripted for this request")


@dataclass(frozen=True)
class Received:
    """One request as the server read it (`headers` looks names up case-insensitively)."""

    method: str
    target: str
    headers: Message
    body: bytes


class ScriptedServer:
    """The server's state: the answer queue, the requests received, the stop signal."""

    def __init__(self) -> None:
        self._answers: deque[Answer] = deque()
        self._received: list[Received] = []
        self._changed = threading.Condition()
        self.released = threading.Event()
        self._tcp = _TCPServer(self)
        self._thread = threading.Thread(
            target=self._tcp.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL_S},
            name=f"scripted-server-{self.port}",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return int(self._tcp.server_address[1])

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`, no trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def script(self, *answers: Answer) -> None:
        """Queue the answers for the next requests, in order."""
        with self._changed:
            self._answers.extend(answers)

    @property
    def received(self) -> list[Received]:
        """The requests received so far, in arrival order (a copy)."""
        with self._changed:
            return list(self._received)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Whether `count` requests have arrived within `timeout` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._received) >= count, timeout)

    def release(self) -> None:
        """End every held answer and drip now (and any later one at once)."""
        self.released.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Release the handlers, stop serving, shut every connection and join every thread."""
        self.release()
        deadline = time.monotonic() + STOP_WAIT_S
        if self._thread.is_alive():
            self._tcp.shutdown()
            self._thread.join(STOP_WAIT_S)
        self._tcp.close_connections(deadline)
        self._tcp.server_close()

    def _take(self, received: Received) -> Answer:
        with self._changed:
            self._received.append(received)
            self._changed.notify_all()
            return self._answers.popleft() if self._answers else UNSCRIPTED


class _TCPServer(socketserver.TCPServer):
    """A thread per connection; remembers each so that stop() can shut and join them."""

    allow_reuse_address = True

    def __init__(self, scripted: ScriptedServer) -> None:
        self.scripted = scripted
        self._lock = threading.Lock()
        self._connections: dict[threading.Thread, socket.socket] = {}
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=f"scripted-server-{self.server_address[1]}-connection",
            daemon=True,
        )
        with self._lock:
            self._connections[thread] = request
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except OSError:
            pass  # the client went away (or stop() shut the socket): nothing to report
        finally:
            self.shutdown_request(request)
            with self._lock:
                self._connections.pop(threading.current_thread(), None)

    def close_connections(self, deadline: float) -> None:
        with self._lock:
            open_now = list(self._connections.items())
        for _, connection in open_now:
            with contextlib.suppress(OSError):  # already closed
                connection.shutdown(socket.SHUT_RDWR)
        for thread, _ in open_now:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = READ_TIMEOUT_S
    server: _TCPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read `received` instead."""

    def do_GET(self) -> None:
        self._answer()

    do_POST = do_PUT = do_DELETE = do_GET

    def _answer(self) -> None:
        scripted = self.server.scripted
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        # The request line as sent: `self.path` may have been normalised.
        target = self.requestline.split(" ")[1]
        answer = scripted._take(Received(self.command, target, self.headers, body))
        self.close_connection = True
        if answer.hold:
            scripted.released.wait(HOLD_LIMIT_S)
            return
        head, body = _encode(answer)
        if answer.drip_head_s is not None:
            if not self._drip(head, answer.drip_head_s):
                return
        else:
            self.wfile.write(head)
        if answer.cut_after is not None:
            self.wfile.write(body[: answer.cut_after])
            return
        if answer.drip_body_s is not None:
            if not self._drip(body, answer.drip_body_s):
                return
        else:
            self.wfile.write(body)
        # Keep-alive only when the body's end is known from its length.
        self.close_connection = not answer.content_length

    def _drip(self, data: bytes, every_s: float) -> bool:
        """Send `data` a byte at a time; False if released or out of time before the end."""
        released = self.server.scripted.released
        deadline = time.monotonic() + DRIP_LIMIT_S
        for index in range(len(data)):
            if released.wait(every_s) or time.monotonic() > deadline:
                return False
            self.wfile.write(data[index : index + 1])
        return True


def _encode(answer: Answer) -> tuple[bytes, bytes]:
    """The status line with headers, and the body, as they go on the wire."""
    body = gzip.compress(answer.body) if answer.gzip else answer.body
    headers = dict(answer.headers)
    if answer.gzip:
        headers["Content-Encoding"] = "gzip"
    bodiless = answer.status < 200 or answer.status in (204, 304)
    if bodiless:
        body = b""
    elif answer.content_length:
        headers["Content-Length"] = str(len(body))
    else:
        headers["Connection"] = "close"
    try:
        phrase = HTTPStatus(answer.status).phrase
    except ValueError:
        phrase = "Scripted"
    lines = [f"HTTP/1.1 {answer.status} {phrase}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), body


@contextmanager
def scripted_server() -> Iterator[ScriptedServer]:
    """A running `ScriptedServer`, always stopped (threads joined) on the way out."""
    server = ScriptedServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
