"""Serve an app with its embedded agent: on SIGTERM/SIGINT, health turns 503 and SSE ends."""

from __future__ import annotations

from flask import Flask

from rpc_agent.extension import RpcAgent
from rpc_common.serving import serve_until_signalled


def serve_agent_until_signalled(app: Flask, agent: RpcAgent, host: str, port: int) -> None:
    """Serve on cheroot; a stop signal begins the agent's shutdown and drains its SSE stream."""
    serve_until_signalled(
        app,
        host,
        port,
        on_stop_signal=agent.begin_shutdown,
        drained=lambda: agent.sse_manager.current is None,
    )
