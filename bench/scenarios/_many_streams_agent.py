"""Bench only: the warehouse with an SSE manager that keeps every stream, not one at a time.

The product's agent keeps one legacy SSE stream (a new one supersedes the old, whose client
then waits 30 s or more). To measure what N streams cost an agent, this launcher replaces
the manager the agent makes (`rpc_agent.core.agent.SseConnectionManager`) with one that keeps
every stream, then serves as the warehouse does:
`python -m bench.scenarios._many_streams_agent --host H --port P --db PATH [--server waitress]`,
or under gunicorn `bench.scenarios._many_streams_agent:create_app("w.db")` (or
`create_asgi_app`). Nothing is patched when the module is only imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flask import Flask

import rpc_agent.core.agent as agent_module
from examples import warehouse
from examples.warehouse.__main__ import main as warehouse_main
from rpc_agent import AgentSettings
from rpc_agent.asgi import ASGIApp
from rpc_agent.core.sse import SseConnection, SseConnectionManager, StreamEnd


class EveryStreamManager(SseConnectionManager):
    """Keeps every stream open: a new one supersedes none; shutdown and replacement end all."""

    def __init__(self) -> None:
        super().__init__()
        self._streams: set[SseConnection] = set()

    def register(self, client: str = "-") -> SseConnection:
        connection = SseConnection()
        with self._lock:
            self._streams.add(connection)
            self._current = connection
            shutting_down = self._shutting_down
        if shutting_down:
            connection.end(StreamEnd.SHUTDOWN)
        return connection

    def unregister(self, connection: SseConnection) -> None:
        with self._lock:
            self._streams.discard(connection)
            if self._current is connection:
                self._current = next(iter(self._streams), None)

    def shutdown(self) -> None:
        with self._lock:
            self._shutting_down = True
            streams = list(self._streams)
        for stream in streams:
            stream.end(StreamEnd.SHUTDOWN)

    def end_current(self) -> None:
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.end(StreamEnd.REPLACED)


def keep_every_stream() -> None:
    """Agents made from now on in this process keep every SSE stream."""
    agent_module.SseConnectionManager = EveryStreamManager  # type: ignore[attr-defined]


def create_app(db_path: Path | str, settings: AgentSettings | None = None) -> Flask:
    """`examples.warehouse:create_app` with every stream kept (for gunicorn's WSGI workers)."""
    keep_every_stream()
    return warehouse.create_app(db_path, settings)


def create_asgi_app(db_path: Path | str, settings: AgentSettings | None = None) -> ASGIApp:
    """`examples.warehouse:create_asgi_app` with every stream kept (for ASGI workers)."""
    keep_every_stream()
    return warehouse.create_asgi_app(db_path, settings)


def main(argv: list[str] | None = None) -> int:
    """The warehouse's command, with every stream kept."""
    keep_every_stream()
    return warehouse_main(argv)


if __name__ == "__main__":
    sys.exit(main())
