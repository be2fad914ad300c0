"""Serve a WSGI app with its agent on waitress, with the agent's graceful stop.

waitress has a fixed pool of request threads (4 by default) and no stop of its own: SIGTERM
kills the process. `serve` holds watches on at most half of the threads and, at the first
SIGTERM or SIGINT, begins the agent's shutdown (health 503, held watches answered, SSE
`RpcServerStop`), keeps serving for `FOREST_SHUTDOWN_DRAIN_SECONDS`, then stops waitress and
returns, so the process exits 0.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import TYPE_CHECKING, Any

import waitress

from rpc_agent.core.agent import AgentCore
from rpc_agent.process import stop_signal
from rpc_agent.servers.console import log_to_stderr_unless_configured
from rpc_agent.servers.listening import ListenError

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

logger = logging.getLogger(__name__)

DEFAULT_THREADS = 4


def held_watch_share(threads: int) -> int:
    """How many of a pool's threads held watches may take: half, none with one thread."""
    return threads // 2


class WaitressStopped(SystemExit):
    """Raised on the serving thread, after the drain, to end waitress's loop."""


def _end_serving(_signum: int, _frame: FrameType | None) -> None:
    raise WaitressStopped(0)


def serve(
    app: WSGIApplication,
    *,
    agent: AgentCore,
    host: str = "127.0.0.1",
    port: int = 8080,
    threads: int = DEFAULT_THREADS,
    **options: Any,
) -> None:
    """Serve `app` (already wrapped by `agent`) on waitress until SIGTERM or SIGINT, then
    drain and return; `options` go to waitress (`channel_timeout`, `connection_limit`...).
    Call it from the main thread; `ListenError` (one line naming host and port) when the port
    can't be had."""
    log_to_stderr_unless_configured()
    agent.held_requests.cap(held_watch_share(threads))
    try:
        server: Any = waitress.create_server(app, host=host, port=port, threads=threads, **options)
    except OSError as error:
        raise ListenError.of(host, port, error) from None
    for signum in stop_signal.STOP_SIGNALS:
        signal.signal(signum, _end_serving)
    stop_signal.install(stop_signal.STOP_SIGNALS, stop_signal.shutdown_of(agent))
    logger.info(
        "serving on http://%s:%s (waitress, %d threads)",
        server.effective_host,
        server.effective_port,
        threads,
    )
    try:
        server.run()  # ends its loop on the WaitressStopped raised after the drain
    finally:
        server.close()
    logger.info("stopped")
