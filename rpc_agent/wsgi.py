"""`RpcAgentMiddleware` for any WSGI app: serves the agent's routes under the prefix and
passes every other path to the app untouched."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from rpc_agent.core.routes import (
    AgentMiddlewareBase,
    AgentRequest,
    HoldHealth,
    OpenSse,
    Reply,
)
from rpc_common import protocol

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

logger = logging.getLogger(__name__)

STATUS_LINES = {
    200: "200 OK",
    304: "304 Not Modified",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    405: "405 Method Not Allowed",
    413: "413 Content Too Large",
    503: "503 Service Unavailable",
}


def environ_target(environ: WSGIEnvironment) -> str:
    """The request target as the client sent it: path and query."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        path, _, query = str(raw).partition("?")
        return protocol.request_target(path, query)
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    return protocol.request_target(path, environ.get("QUERY_STRING", ""), quoted=False)


def read_body(environ: WSGIEnvironment) -> bytes | None:
    """The request body (b"" when there is none), or None when it is over the cap."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > protocol.MAX_REQUEST_BODY:
        return None
    if length > 0:
        return bytes(environ["wsgi.input"].read(length))
    return b""


def agent_request(environ: WSGIEnvironment, body: bytes) -> AgentRequest:
    return AgentRequest(
        method=environ.get("REQUEST_METHOD", "GET"),
        target=environ_target(environ),
        query=environ.get("QUERY_STRING", ""),
        timestamp=environ.get(protocol.wsgi_environ_key(protocol.TIMESTAMP_HEADER)),
        signature=environ.get(protocol.wsgi_environ_key(protocol.SIGNATURE_HEADER)),
        if_none_match=environ.get(protocol.wsgi_environ_key(protocol.IF_NONE_MATCH_HEADER)),
        body=body,
        client=f"{environ.get('REMOTE_ADDR') or '-'}:{environ.get('REMOTE_PORT') or '-'}",
    )


# Servers that start a thread for each request: a held watch takes no thread from the app.
THREAD_PER_REQUEST_SERVERS = ("Werkzeug/",)
# Held at once under a thread pool of a size nobody told us.
UNKNOWN_POOL_HOLDS = 1


def hold_bound(environ: WSGIEnvironment, capped_by_server: bool) -> int | None:
    """How many watches a request thread of this server may hold at once, besides the
    setting: no more bound where the server's glue set its share (the gunicorn hook, the
    waitress recipe) or the server starts a thread per request; one where the pool's size is
    unknown, so watches never take an unknown server's threads."""
    software = str(environ.get("SERVER_SOFTWARE", ""))
    if capped_by_server or software.startswith(THREAD_PER_REQUEST_SERVERS):
        return None
    return UNKNOWN_POOL_HOLDS


class RpcAgentMiddleware(AgentMiddlewareBase["WSGIApplication"]):
    """Wraps a WSGI app with the agent; `.agent` is its `AgentCore` (`begin_shutdown()`).

    A held watch holds a server thread, so watches are held only under a threaded server
    (`wsgi.multithread`), on a bounded share of its threads (see `hold_bound`); a
    single-threaded worker answers them at once.
    """

    app: WSGIApplication

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        route = self.routes.match(environ.get("PATH_INFO", ""))
        if route is None:
            return self.app(environ, start_response)
        body = read_body(environ)
        if body is None:
            return self._send(self.routes.too_large(route), environ, start_response)
        outcome = self.routes.handle(route, agent_request(environ, body))
        if isinstance(outcome, HoldHealth):
            outcome = self._hold(outcome, environ)
        if isinstance(outcome, OpenSse):
            start_response(STATUS_LINES[200], list(outcome.headers))
            return encoded(
                self.agent.sse_manager.open_stream(
                    self.agent.settings.sse_heartbeat_interval, outcome.client
                )
            )
        return self._send(outcome, environ, start_response)

    def _hold(self, hold: HoldHealth, environ: WSGIEnvironment) -> Reply:
        watch = self.agent.held_requests
        if not environ.get("wsgi.multithread"):
            logger.debug("single-threaded server: answering a health watch at once")
        elif watch.hold(hold.seconds, hold.generation, hold_bound(environ, watch.capped_by_server)):
            logger.debug("held a health watch for up to %g s", hold.seconds)
        else:
            self.routes.held_over_bound()
        return self.routes.held_reply()

    @staticmethod
    def _send(
        reply: Reply, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        start_response(STATUS_LINES[reply.status], list(reply.headers))
        if environ.get("REQUEST_METHOD") == "HEAD":
            return []
        return [reply.body]


def encoded(blocks: Iterator[str]) -> Iterator[bytes]:
    """SSE blocks as the bytes a WSGI server writes; closing it closes the stream."""
    try:
        for block in blocks:
            yield block.encode()
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:
            close()
