"""The warehouse Flask app: a couple of data routes, the embedded RPC agent, /metrics."""

from __future__ import annotations

from pathlib import Path

from flask import Flask, Response, jsonify
from flask.typing import ResponseReturnValue
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from examples.warehouse.database import connect, read_schema
from rpc_agent import AgentSettings, RpcAgent, metrics


def create_app(db_path: Path | str, settings: AgentSettings | None = None) -> Flask:
    """The warehouse app; its agent serves the schema read from `db_path` at start.

    Under gunicorn: `gunicorn -c python:rpc_agent.gunicorn 'examples.warehouse:create_app("w.db")'`.
    """
    app = Flask("warehouse")
    connection = connect(Path(db_path))
    schema = read_schema(connection)
    RpcAgent(app, settings=settings, schema_provider=lambda: schema)
    metrics.instrument(REGISTRY)

    @app.get("/metrics")
    def prometheus_metrics() -> ResponseReturnValue:
        # Each worker process has its own; under gunicorn a scrape sees the one that answers.
        return Response(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)

    @app.get("/manufacturers")
    def manufacturers() -> ResponseReturnValue:
        rows = connection.execute("SELECT * FROM manufacturers ORDER BY id").fetchall()
        return jsonify([dict(row) for row in rows])

    @app.get("/products")
    def products() -> ResponseReturnValue:
        rows = connection.execute("SELECT * FROM products ORDER BY id").fetchall()
        return jsonify([dict(row) for row in rows])

    return app
