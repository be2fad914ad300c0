"""`RpcAgentMiddleware` for any ASGI app (FastAPI, Starlette...): serves the agent's routes
under the prefix as coroutines (held watches and SSE streams hold no thread) and passes every
other path, and the lifespan, to the app."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from rpc_agent.core.routes import (
    AgentMiddlewareBase,
    AgentRequest,
    Headers,
    HoldHealth,
    OpenSse,
    Reply,
)
from rpc_agent.core.sse import SseStream
from rpc_agent.process import stop_signal
from rpc_common import protocol

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def route_path(scope: Scope) -> str:
    """The path within the app: ASGI's `path` includes the `root_path` it is mounted at."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        return path[len(root_path) :]
    return path


def scope_target(scope: Scope) -> str:
    """The request target as the client sent it: the raw path and the query."""
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    raw_path = scope.get("raw_path")
    if raw_path:
        return protocol.request_target(bytes(raw_path).decode("latin-1"), query)
    return protocol.request_target(scope["path"], query, quoted=False)


class RequestHeaders:
    """The few request headers the routes read, decoded as a WSGI server would (latin-1).

    As in a WSGI environ, `X_Timestamp` counts as `X-Timestamp`: the original Ruby client
    sends its headers with underscores.
    """

    WANTED = frozenset(
        protocol.asgi_header(name)
        for name in (
            protocol.TIMESTAMP_HEADER,
            protocol.SIGNATURE_HEADER,
            protocol.IF_NONE_MATCH_HEADER,
            "Content-Length",
        )
    )

    def __init__(self, scope: Scope) -> None:
        found: dict[bytes, str] = {}
        for name, value in scope.get("headers", ()):
            name = bytes(name).lower().replace(b"_", b"-")
            if name in self.WANTED and name not in found:
                found[name] = bytes(value).decode("latin-1")
        self._found = found

    def get(self, name: bytes) -> str | None:
        return self._found.get(name)

    def content_length(self) -> int:
        try:
            return int(self._found.get(b"content-length") or 0)
        except ValueError:
            return 0


async def read_body(receive: Receive, declared: int) -> bytes | None:
    """The request body, or None when it is (or grows) over the cap."""
    if declared > protocol.MAX_REQUEST_BODY:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > protocol.MAX_REQUEST_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def encoded_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


class RpcAgentMiddleware(AgentMiddlewareBase[ASGIApp]):
    """Wraps an ASGI app with the agent; `.agent` is its `AgentCore` (`begin_shutdown()`).

    At the lifespan's startup, under a server that runs the app on its main thread
    (uvicorn), it puts itself in front of the server's SIGTERM/SIGINT handlers, so the
    shutdown begins at the signal, before the server waits for open connections.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._watch_lifespan(receive), send)
            return
        route = self.routes.match(route_path(scope)) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        headers = RequestHeaders(scope)
        body = await read_body(receive, headers.content_length())
        if body is None:
            await self._send(self.routes.too_large(route), scope, send)
            return
        request = AgentRequest(
            method=scope["method"],
            target=scope_target(scope),
            query=bytes(scope.get("query_string", b"")).decode("latin-1"),
            timestamp=headers.get(protocol.asgi_header(protocol.TIMESTAMP_HEADER)),
            signature=headers.get(protocol.asgi_header(protocol.SIGNATURE_HEADER)),
            if_none_match=headers.get(protocol.asgi_header(protocol.IF_NONE_MATCH_HEADER)),
            body=body,
            client=":".join(str(part) for part in scope.get("client") or ("-", "-")),
        )
        outcome = self.routes.handle(route, request)
        if isinstance(outcome, OpenSse):
            await self._stream(outcome, receive, send)
            return
        reply = await self._hold(outcome, receive) if isinstance(outcome, HoldHealth) else outcome
        if reply is not None:
            await self._send(reply, scope, send)

    def _watch_lifespan(self, receive: Receive) -> Receive:
        async def watched() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                stop_signal.install(stop_signal.STOP_SIGNALS, stop_signal.shutdown_of(self.agent))
            elif message["type"] == "lifespan.shutdown":
                self.agent.begin_shutdown()
            return message

        return watched

    async def _hold(self, hold: HoldHealth, receive: Receive) -> Reply | None:
        """Hold a watch; None when the client went away meanwhile."""
        watch = self.agent.held_requests
        held = asyncio.ensure_future(watch.hold_async(hold.seconds, hold.generation))
        gone = asyncio.ensure_future(disconnected(receive))
        try:
            await asyncio.wait((held, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            held.cancel()
        if not held.done() or held.cancelled():
            logger.debug("a health watch's client went away")
            return None
        if not held.result():
            self.routes.held_over_bound()
        return self.routes.held_reply()

    async def _stream(self, sse: OpenSse, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        ended = asyncio.Event()
        gone = asyncio.ensure_future(disconnected(receive))
        stream = SseStream(self.agent.sse_manager, sse.client)

        def wake() -> None:
            loop.call_soon_threadsafe(ended.set)

        stream.connection.call_on_end(wake)
        interval = self.agent.settings.sse_heartbeat_interval
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": encoded_headers(sse.headers),
                }
            )
            while True:
                block, finished = stream.step()
                if block:
                    await send(
                        {"type": "http.response.body", "body": block.encode(), "more_body": True}
                    )
                if finished:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                ending = asyncio.ensure_future(ended.wait())
                try:
                    await asyncio.wait(
                        (ending, gone), timeout=interval, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    ending.cancel()
                if gone.done():
                    stream.disconnected()
                    return
        except OSError:
            stream.disconnected()
        finally:
            gone.cancel()
            stream.close()

    @staticmethod
    async def _send(reply: Reply, scope: Scope, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": encoded_headers(reply.headers),
            }
        )
        body = b"" if scope["method"] == "HEAD" else reply.body
        await send({"type": "http.response.body", "body": body})


async def disconnected(receive: Receive) -> None:
    """Return once the client has gone away."""
    while (await receive())["type"] != "http.disconnect":
        pass
