"""Run a Flask app with its agent on cheroot, shutting down cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from cheroot import wsgi
from flask import Flask

from rpc_agent.extension import RpcAgent

logger = logging.getLogger(__name__)


def serve_until_signalled(
    app: Flask,
    agent: RpcAgent,
    host: str,
    port: int,
    *,
    threads: int = 16,
    drain_seconds: float = 1.0,
    on_ready: Callable[[str, int], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then `begin_shutdown()`, drain SSE streams briefly, stop."""
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s", signal.Signals(signum).name)
        stop_requested.set()

    stop_signals = {signal.SIGTERM, signal.SIGINT}
    previous = {sig: signal.signal(sig, request_stop) for sig in stop_signals}
    server = wsgi.Server((host, port), app, numthreads=threads, server_name="rpc-agent")
    try:
        # The server's threads inherit a mask that blocks the stop signals, so they reach
        # the main thread, whose wait they interrupt at once.
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        try:
            server.prepare()
            serving = threading.Thread(target=server.serve, name="wsgi-server")
            serving.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
        bound_host, bound_port = server.bind_addr[:2]
        logger.info("serving on http://%s:%d", bound_host, bound_port)
        if on_ready is not None:
            on_ready(bound_host, bound_port)
        while not stop_requested.wait(1.0):
            pass
        agent.begin_shutdown()
        deadline = time.monotonic() + drain_seconds
        while agent.sse_manager.current is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        server.stop()
        serving.join()
        logger.info("stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
