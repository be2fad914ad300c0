"""The warehouse's data routes in FastAPI, wrapped in the agent's ASGI middleware."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI

from examples.warehouse.database import connect, read_schema
from rpc_agent import AgentSettings
from rpc_agent.asgi import RpcAgentMiddleware


def create_app(db_path: Path, settings: AgentSettings | None = None) -> RpcAgentMiddleware:
    """The FastAPI warehouse behind its agent; `.agent` begins the shutdown."""
    api = FastAPI(title="warehouse")
    connection = connect(db_path)
    schema = read_schema(connection)

    @api.get("/manufacturers")
    def manufacturers() -> list[dict[str, Any]]:
        rows = connection.execute("SELECT * FROM manufacturers ORDER BY id").fetchall()
        return [dict(row) for row in rows]

    @api.get("/products")
    def products() -> list[dict[str, Any]]:
        rows = connection.execute("SELECT * FROM products ORDER BY id").fetchall()
        return [dict(row) for row in rows]

    return RpcAgentMiddleware(api, settings=settings, schema_provider=lambda: schema)
