"""Run a WSGI app on cheroot until SIGTERM/SIGINT: the project's production runner, with a
hook (the agent's shutdown) and a short drain before stopping."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from cheroot import wsgi

from rpc_agent.core import AgentCore

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

logger = logging.getLogger(__name__)

# Threads for the application's own traffic, on top of one per watch the agent may hold.
TRAFFIC_THREADS = 16

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
# cheroot's defaults (a listen backlog of 5, 10 idle keep-alive connections) make a polled
# agent refuse connections and re-handshake nearly every probe once many clients watch it.
LISTEN_BACKLOG = 128
IDLE_KEEP_ALIVE_CONNECTIONS = 1024


def serve_until_signalled(
    app: WSGIApplication,
    host: str,
    port: int,
    *,
    threads: int = 16,
    on_stop_signal: Callable[[], None] | None = None,
    drain_seconds: float = 1.0,
    on_ready: Callable[[str, int], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; then call `on_stop_signal`, keep serving for
    `drain_seconds` (so that pollers see the shutdown), and stop, joining the threads."""
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s", signal.Signals(signum).name)
        stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    server = wsgi.Server(
        (host, port),
        app,
        numthreads=threads,
        request_queue_size=LISTEN_BACKLOG,
    )
    server.keep_alive_conn_limit = IDLE_KEEP_ALIVE_CONNECTIONS
    try:
        # The server's threads inherit a mask that blocks the stop signals, so they reach
        # the main thread, whose wait they interrupt at once.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            server.prepare()
            serving = threading.Thread(target=server.serve, name="wsgi-server")
            serving.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        bound_host, bound_port = server.bind_addr[:2]
        logger.info("serving on http://%s:%d", bound_host, bound_port)
        if on_ready is not None:
            on_ready(bound_host, bound_port)
        while not stop_requested.wait(1.0):
            pass
        if on_stop_signal is not None:
            on_stop_signal()
        threading.Event().wait(drain_seconds)
        server.stop()
        serving.join()
        logger.info("stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve_agent_until_signalled(
    app: WSGIApplication, agent: AgentCore, host: str, port: int
) -> None:
    """Serve on cheroot; a stop signal begins the agent's shutdown (health 503, held watches
    and the SSE stream answered at once), then the server drains for
    `shutdown_drain_seconds` before it stops.

    A held watch holds a server thread, so the pool has one thread per watch the agent may
    hold (`health_max_watchers`) besides its `TRAFFIC_THREADS`: watchers never take them.
    """
    serve_until_signalled(
        app,
        host,
        port,
        threads=TRAFFIC_THREADS + agent.settings.health_max_watchers,
        on_stop_signal=agent.begin_shutdown,
        drain_seconds=agent.settings.shutdown_drain_seconds,
    )
