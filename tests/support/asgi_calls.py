"""Calling the ASGI middleware in-process: raw apps, scopes, one exchange, signed requests."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI, Request

from rpc_agent import AgentSettings
from rpc_agent.asgi import RpcAgentMiddleware
from rpc_common.signing import signed_headers
from tests.support import PRODUCTS_SCHEMA, TEST_SECRET

Message = dict[str, Any]


Scope = dict[str, Any]


ASGIApp = Callable[..., Awaitable[None]]


HEALTH = "/forest/health"


SCHEMA = "/forest/rpc-schema"


SSE = "/forest/sse"


# Bound on anything that must happen eventually.
DEADLINE_S = 5.0


# Bound on a whole test's coroutine.
TEST_DEADLINE_S = 20.0


# A wait (and a heartbeat interval) no test lets run out: an answer came from an event.
LONG_WAIT = 20


LONG_INTERVAL = 30.0


POLL_S = 0.005


SCHEMA_A = PRODUCTS_SCHEMA


PRODUCTS = [{"id": 1, "label": "kettle"}, {"id": 2, "label": "teapot"}]


def fastapi_app(events: list[str] | None = None) -> FastAPI:
    """A FastAPI app with one route, `/products`, and a lifespan that records into `events`."""
    recorded = events if events is not None else []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        recorded.append("startup")
        yield
        recorded.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/products")
    async def list_products() -> list[dict[str, Any]]:
        return PRODUCTS

    @app.post("/products")
    async def create_product(request: Request) -> dict[str, Any]:
        body = await request.body()
        return {"received": body.decode(), "length": len(body)}

    return app


class RawApp:
    """A minimal ASGI callable: answers every http request with a JSON echo of what it got,
    records every scope it is called with, and runs the lifespan protocol."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []
        self.events: list[str] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.events.append("startup")
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.events.append("shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        echo = {
            "method": scope["method"],
            "path": scope["path"],
            "raw_path": bytes(scope.get("raw_path") or b"").decode("latin-1"),
            "query": bytes(scope["query_string"]).decode("latin-1"),
            "body_length": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        data = json.dumps(echo).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 299,
                "headers": [(b"content-type", b"application/json"), (b"x-wrapped", b"raw")],
            }
        )
        await send({"type": "http.response.body", "body": data[:10], "more_body": True})
        await send({"type": "http.response.body", "body": data[10:]})


def http_scope(
    method: str,
    target: str,
    headers: dict[str, str],
    *,
    root_path: str = "",
    with_raw_path: bool = True,
) -> Scope:
    """An http scope as a server (uvicorn) builds it for a request line `method target`: the
    raw path as sent, the path percent-decoded, the query string as sent; a `root_path` (the
    server's `--root-path`) is put in front of both paths."""
    raw, _, query = target.partition("?")
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": root_path + unquote(raw),
        "query_string": query.encode("latin-1"),
        "root_path": root_path,
        "headers": [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in {"Host": "127.0.0.1:8000", **headers}.items()
        ],
        "client": ("127.0.0.1", 50123),
        "server": ("127.0.0.1", 8000),
    }
    if with_raw_path:
        scope["raw_path"] = (root_path + raw).encode("latin-1")
    return scope


class Exchange:
    """One request in flight through an ASGI app: what it was given and what it sent back.

    `receive` hands out the request messages, then blocks until `disconnect()`; from then on
    it answers `http.disconnect`, as servers do. `send` checks the order of the response
    messages and records them."""

    def __init__(self, app: ASGIApp, scope: Scope, request_messages: list[Message]) -> None:
        self.scope = scope
        self.sent: list[Message] = []
        self.gone = False
        self._incoming: asyncio.Queue[Message] = asyncio.Queue()
        for message in request_messages:
            self._incoming.put_nowait(message)
        self._progress = asyncio.Event()
        self.task = asyncio.ensure_future(app(scope, self._receive, self._send))
        self.task.add_done_callback(lambda _: self._progress.set())

    async def _receive(self) -> Message:
        if self.gone and self._incoming.empty():
            return {"type": "http.disconnect"}
        return await self._incoming.get()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        assert not self.complete, f"{kind} sent after the response was complete"
        if kind == "http.response.start":
            assert self.start is None, "a second http.response.start"
        else:
            assert kind == "http.response.body", kind
            assert self.start is not None, "a body before http.response.start"
        self.sent.append(message)
        self._progress.set()

    def disconnect(self) -> None:
        """The client went away."""
        self.gone = True
        self._incoming.put_nowait({"type": "http.disconnect"})

    # what was sent

    @property
    def start(self) -> Message | None:
        return next((m for m in self.sent if m["type"] == "http.response.start"), None)

    @property
    def status(self) -> int:
        assert self.start is not None, "no response started"
        return int(self.start["status"])

    @property
    def headers(self) -> dict[str, str]:
        """The response headers, names lowercased (each name sent once is checked)."""
        assert self.start is not None, "no response started"
        pairs = [
            (bytes(n).decode("latin-1").lower(), bytes(v).decode("latin-1"))
            for n, v in self.start["headers"]
        ]
        names = [name for name, _ in pairs]
        assert len(names) == len(set(names)), f"a header sent twice: {names}"
        return dict(pairs)

    @property
    def chunks(self) -> list[bytes]:
        """The non-empty body chunks, in order."""
        return [
            bytes(m.get("body", b""))
            for m in self.sent
            if m["type"] == "http.response.body" and m.get("body")
        ]

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def complete(self) -> bool:
        """Whether the response's last body message (more_body false) was sent."""
        return any(
            m["type"] == "http.response.body" and not m.get("more_body", False) for m in self.sent
        )

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[tuple[str, str]]:
        """The SSE events sent so far, as (name, data)."""
        found = []
        for block in self.body.decode().split("\n\n"):
            if not block:
                continue
            name, data = "message", []
            for line in block.split("\n"):
                key, _, value = line.partition(": ")
                if key == "event":
                    name = value
                elif key == "data":
                    data.append(value)
            found.append((name, "\n".join(data)))
        return found

    # waiting

    async def until(
        self, condition: Callable[[], bool], timeout: float = DEADLINE_S, what: str = ""
    ) -> None:
        """Wait until `condition()` holds, re-checked at each message sent; fails at the
        deadline, or at once when the app failed."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self.task.done() and self.task.exception() is not None:
                        raise self.task.exception()  # type: ignore[misc]
                    if condition():
                        return
                    if self.task.done():
                        raise AssertionError(f"the app returned before {what or condition}")
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            raise AssertionError(
                f"not within {timeout} s: {what or condition}; sent {self.sent!r:.600}"
            ) from None

    async def ended(self, timeout: float = DEADLINE_S) -> Exchange:
        """Wait for the app to return (its exception, if any, is raised here)."""
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except TimeoutError:
            raise AssertionError(
                f"the app did not return within {timeout} s; sent {self.sent!r:.600}"
            ) from None
        return self

    async def response(self, timeout: float = DEADLINE_S) -> Exchange:
        """Wait for the complete response and for the app to return."""
        await self.ended(timeout)
        assert self.complete, f"the app returned without completing its response: {self.sent}"
        return self

    async def first_events(self, count: int, timeout: float = DEADLINE_S) -> list[tuple[str, str]]:
        await self.until(lambda: len(self.events()) >= count, timeout, f"{count} SSE events")
        return self.events()[:count]


def request(
    app: ASGIApp,
    target: str = HEALTH,
    *,
    method: str = "GET",
    sign: bool = True,
    signed_target: str | None = None,
    secret: str = TEST_SECRET,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    chunks: list[bytes] | None = None,
    etag: str | None = None,
    root_path: str = "",
    with_raw_path: bool = True,
) -> Exchange:
    """Start one request to `app`, signed with v2 for `target` (under `root_path`) unless told
    otherwise; the body goes in one message, or in `chunks` (`[]`: no body message at all)."""
    sent: dict[str, str] = {}
    if sign:
        sent.update(
            signed_headers(
                secret,
                method=method,
                target=signed_target or root_path + target,
                body=b"".join(chunks or [body]),
            )
        )
    if body and chunks is None:
        sent["Content-Length"] = str(len(body))
    if etag is not None:
        sent["If-None-Match"] = etag
    sent.update(headers or {})
    if chunks is None:
        messages = [{"type": "http.request", "body": body, "more_body": False}]
    else:
        messages = [
            {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
            for i, chunk in enumerate(chunks)
        ]
    scope = http_scope(method, target, sent, root_path=root_path, with_raw_path=with_raw_path)
    return Exchange(app, scope, messages)


async def call(app: ASGIApp, target: str = HEALTH, **options: Any) -> Exchange:
    """One request, answered completely within the deadline."""
    return await request(app, target, **options).response()


async def eventually(condition: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    """Poll `condition` (state the middleware changes without sending anything)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(POLL_S)


def asgi_test(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in its own event loop, bounded by TEST_DEADLINE_S."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), TEST_DEADLINE_S))

    return run


def wrapped(
    app: ASGIApp | None = None,
    schema_provider: Callable[[], dict[str, Any]] | None = None,
    **settings: Any,
) -> RpcAgentMiddleware:
    """The middleware on TEST_SECRET around `app` (a FastAPI app by default)."""
    options: dict[str, Any] = {"auth_secret": TEST_SECRET, **settings}
    return RpcAgentMiddleware(
        app if app is not None else fastapi_app(),
        settings=AgentSettings(**options),
        schema_provider=schema_provider or (lambda: SCHEMA_A),
    )


async def current_etag(middleware: RpcAgentMiddleware) -> str:
    exchange = await call(middleware, HEALTH)
    assert exchange.status == 200
    return exchange.headers["etag"]


def watch(wait: object) -> str:
    return f"{HEALTH}?wait={wait}"
