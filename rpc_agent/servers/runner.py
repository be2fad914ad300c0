"""The project's runner: serve a WSGI app, with its agent in front, on uvicorn until
SIGTERM/SIGINT.

The agent's routes are answered by the ASGI middleware on uvicorn's event loop, and the app's
own routes by the WSGI app on a2wsgi's thread pool. A connection costs no thread until a whole
request has arrived, and one whose headers are not whole within 10 s, or that sends over 100
header fields, is closed (`rpc_agent.servers.http_protocol`), so idle, slowly trickling (slowloris)
or bloated requests, however many, can't starve the agent or the app; the open files limit
is raised to its hard limit at start; held watches and SSE streams are coroutines. On the
stop signal the agent's shutdown begins at once (health 503, held watches and the SSE stream
answered), the server keeps serving for `shutdown_drain_seconds`, then stops, and the
process exits 0.
"""

from __future__ import annotations

import logging
import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from a2wsgi import WSGIMiddleware

from rpc_agent.asgi import ASGIApp, RpcAgentMiddleware
from rpc_agent.core.agent import AgentCore
from rpc_agent.process.stop_signal import STOP_SIGNALS
from rpc_agent.servers.console import log_to_stderr_unless_configured
from rpc_agent.servers.http_protocol import GuardedHttpToolsProtocol
from rpc_agent.servers.listening import listening_socket
from rpc_common.log_limit import AnonymousLinesFilter

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

logger = logging.getLogger(__name__)

# Threads for the app's own (WSGI) requests; the agent's routes need none.
APP_THREADS = 16
# Once stopping, how long open requests of the app may still take.
GRACEFUL_STOP_S = 5
# Idle keep-alive connections are closed after this; above the datasource's own 8 s, so the
# client, not the server, closes an idle pooled connection.
KEEP_ALIVE_S = 15


# uvicorn's warnings about requests any client can send: rate-limited with the agent's refusals.
INVALID_REQUEST_LINES = ("Invalid HTTP request received.", "Unsupported upgrade request.")


def raise_open_files_limit() -> int:
    """Raise the soft limit of open files to the hard one (a common soft 1024 is exhausted
    by 1,000 idle connections); the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as error:
            logger.warning("cannot raise the open files limit from %d to %d: %s", soft, hard, error)
            return soft
        logger.debug("open files limit raised from %d to %d", soft, hard)
        return hard
    return soft


def quiet_invalid_requests() -> None:
    """Put uvicorn's invalid-request warnings through the rate limit of anonymous lines."""
    server_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(each, AnonymousLinesFilter) for each in server_log.filters):
        server_log.addFilter(AnonymousLinesFilter(INVALID_REQUEST_LINES))


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """uvicorn raises the stop signal again once it has stopped gracefully: exit normally."""


@contextmanager
def _signals_end_quietly() -> Iterator[None]:
    previous = {signum: signal.signal(signum, _ignore) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def serve_asgi_until_signalled(app: ASGIApp, host: str, port: int) -> None:
    """Serve an ASGI app on uvicorn until SIGTERM or SIGINT, then exit normally (an agent's
    ASGI middleware begins its shutdown and drains at the signal). `ListenError` (one line
    naming host and port) when the port can't be had."""
    log_to_stderr_unless_configured()
    raise_open_files_limit()
    quiet_invalid_requests()
    sock = listening_socket(host, port)
    config = uvicorn.Config(
        app,
        http=GuardedHttpToolsProtocol,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_STOP_S,
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    server = uvicorn.Server(config)
    bound_host, bound_port = sock.getsockname()[:2]
    logger.info("serving on http://%s:%d", bound_host, bound_port)
    try:
        with _signals_end_quietly():
            server.run(sockets=[sock])
    finally:
        sock.close()
    logger.info("stopped")


def asgi_app(app: WSGIApplication, agent: AgentCore | None = None) -> ASGIApp:
    """A WSGI app as an ASGI one: its own routes on a2wsgi's threads, `agent`'s (if given)
    answered in front of it on the event loop (for the runner and ASGI workers)."""
    wsgi_on_threads: ASGIApp = WSGIMiddleware(app, workers=APP_THREADS)  # type: ignore[arg-type,assignment]
    if agent is None:
        return wsgi_on_threads
    return RpcAgentMiddleware(wsgi_on_threads, agent=agent)


def serve_until_signalled(
    app: WSGIApplication, host: str, port: int, *, agent: AgentCore | None = None
) -> None:
    """Serve a WSGI app on a2wsgi's threads, with `agent`'s routes answered in front of it on
    the event loop if given, until SIGTERM or SIGINT (see `serve_asgi_until_signalled`)."""
    serve_asgi_until_signalled(asgi_app(app, agent), host, port)


def serve_agent_until_signalled(
    app: WSGIApplication, agent: AgentCore, host: str, port: int
) -> None:
    """Serve a WSGI app and its agent: at the stop signal the agent's shutdown begins, the
    server drains for `shutdown_drain_seconds`, then stops."""
    serve_until_signalled(app, host, port, agent=agent)
