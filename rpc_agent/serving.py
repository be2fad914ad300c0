"""Serve an app with its embedded agent: on SIGTERM/SIGINT, health turns 503 and SSE ends."""

from __future__ import annotations

from flask import Flask

from rpc_agent.extension import RpcAgent
from rpc_common.serving import serve_until_signalled

# Threads for the application's own traffic, on top of one per watch the agent may hold.
TRAFFIC_THREADS = 16


def serve_agent_until_signalled(app: Flask, agent: RpcAgent, host: str, port: int) -> None:
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
