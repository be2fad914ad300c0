"""The warehouse Flask app: a couple of data routes and the embedded RPC agent."""

from __future__ import annotations

from pathlib import Path

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

from examples.warehouse.database import connect, read_schema
from rpc_agent import AgentSettings, RpcAgent


def create_app(db_path: Path | str, settings: AgentSettings | None = None) -> Flask:
    """The warehouse app; its agent serves the schema read from `db_path` at start.

    Under gunicorn: `gunicorn -c python:rpc_agent.gunicorn 'examples.warehouse:create_app("w.db")'`.
    """
    app = Flask("warehouse")
    connection = connect(Path(db_path))
    schema = read_schema(connection)
    RpcAgent(app, settings=settings, schema_provider=lambda: schema)

    @app.get("/manufacturers")
    def manufacturers() -> ResponseReturnValue:
        rows = connection.execute("SELECT * FROM manufacturers ORDER BY id").fetchall()
        return jsonify([dict(row) for row in rows])

    @app.get("/products")
    def products() -> ResponseReturnValue:
        rows = connection.execute("SELECT * FROM products ORDER BY id").fetchall()
        return jsonify([dict(row) for row in rows])

    return app
