"""A name server on 127.0.0.1 for tests: names in `.test` resolve to 127.0.0.1, names in
`.invalid` don't exist, names starting with `hang` are never answered. With
`resolving_through(server)` every aiohttp session asks it (and nothing else)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from aiohttp import connector
from aiohttp.resolver import AsyncResolver
from pytest import MonkeyPatch

A_RECORD = 1
FLAGS_ANSWER = 0x8180  # a response, recursion desired and available, no error
FLAGS_NO_SUCH_NAME = 0x8183


class LocalNameServer:
    """A UDP DNS server in a thread that answers just enough for c-ares."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._lock = threading.Lock()
        self._queries: list[str] = []
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._socket.getsockname()
        return f"{host}:{port}"

    def queries(self, name: str) -> int:
        """How many queries for `name` arrived."""
        with self._lock:
            return self._queries.count(name)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._socket.close()
        self._thread.join(2.0)

    def _serve(self) -> None:
        while True:
            try:
                query, client = self._socket.recvfrom(512)
            except OSError:
                return
            answer = self._answer(query)
            if answer is not None:
                self._socket.sendto(answer, client)

    def _answer(self, query: bytes) -> bytes | None:
        name, question = _question(query[12:])
        with self._lock:
            self._queries.append(name)
        if name.startswith("hang"):
            return None
        qtype = struct.unpack(">H", question[-4:-2])[0]
        header = query[:2]
        if name.endswith(".invalid") or not name.endswith(".test"):
            return header + struct.pack(">HHHHH", FLAGS_NO_SUCH_NAME, 1, 0, 0, 0) + question
        if qtype != A_RECORD:
            return header + struct.pack(">HHHHH", FLAGS_ANSWER, 1, 0, 0, 0) + question
        record = b"\xc0\x0c" + struct.pack(">HHIH", A_RECORD, 1, 1, 4)
        record += socket.inet_aton("127.0.0.1")
        return header + struct.pack(">HHHHH", FLAGS_ANSWER, 1, 1, 0, 0) + question + record


def _question(data: bytes) -> tuple[str, bytes]:
    """The queried name and the whole question section (name, type, class)."""
    labels = []
    at = 0
    while data[at]:
        labels.append(data[at + 1 : at + 1 + data[at]].decode("ascii"))
        at += data[at] + 1
    return ".".join(labels).lower(), data[: at + 5]


@contextmanager
def local_name_server() -> Iterator[LocalNameServer]:
    server = LocalNameServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def resolving_through(server: LocalNameServer, monkeypatch: MonkeyPatch) -> Iterator[None]:
    """Every aiohttp session made from now on resolves names through `server` (aiohttp's
    default resolver, which each connector makes, owns and closes, told which server to ask)."""
    resolver = partial(AsyncResolver, nameservers=[server.address])
    monkeypatch.setattr(connector, "DefaultResolver", resolver)
    yield
