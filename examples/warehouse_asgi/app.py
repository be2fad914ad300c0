"""The warehouse's data routes in FastAPI, wrapped in the agent's ASGI middleware."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from examples.warehouse.database import check_database, connect, read_schema
from rpc_agent import AgentSettings
from rpc_agent.asgi import RpcAgentMiddleware


def create_app(
    db_path: Path, settings: AgentSettings | None = None, db_check_interval: float = 5.0
) -> RpcAgentMiddleware:
    """The FastAPI warehouse behind its agent; `.agent` begins the shutdown, and its
    readiness check of the database is a coroutine function."""
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

    async def database_ready() -> None:
        # sqlite3 has no asyncio driver: the blocking call goes to a thread, the check's
        # timeout still bounds it.
        await asyncio.to_thread(check_database, db_path)

    middleware = RpcAgentMiddleware(api, settings=settings, schema_provider=lambda: schema)
    middleware.agent.add_check("database", database_ready, interval=db_check_interval)
    return middleware
