"""Serve an app with its embedded agent: on SIGTERM/SIGINT, health turns 503 and SSE ends."""

from __future__ import annotations

from flask import Flask

from rpc_agent.extension import RpcAgent
from rpc_common.serving import serve_until_signalled


def serve_agent_until_signalled(app: Flask, agent: RpcAgent, host: str, port: int) -> None:
    """Serve on cheroot; a stop signal begins the agent's shutdown (health 503, held watches
    and the SSE stream answered at once), then the server drains for
    `shutdown_drain_seconds` before it stops."""
    serve_until_signalled(
        app,
        host,
        port,
        on_stop_signal=agent.begin_shutdown,
        drain_seconds=agent.settings.shutdown_drain_seconds,
    )
