"""The warehouse Flask app: a couple of data routes, the embedded RPC agent, /metrics."""

from __future__ import annotations

from pathlib import Path

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from prometheus_client import REGISTRY, make_wsgi_app
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from examples.warehouse.database import connect, read_schema
from rpc_agent import AgentSettings, RpcAgent, metrics
from rpc_agent.asgi import ASGIApp
from rpc_agent.extension import EXTENSION_KEY
from rpc_agent.servers.runner import asgi_app


def create_app(db_path: Path | str, settings: AgentSettings | None = None) -> Flask:
    """The warehouse app; its agent serves the schema read from `db_path` at start.

    Under gunicorn: `gunicorn -c python:rpc_agent.gunicorn 'examples.warehouse:create_app("w.db")'`.
    """
    app = Flask("warehouse")
    connection = connect(Path(db_path))
    schema = read_schema(connection)
    RpcAgent(app, settings=settings, schema_provider=lambda: schema)
    metrics.instrument(REGISTRY)
    # Each worker process has its own; under gunicorn a scrape sees the one that answers.
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/metrics": make_wsgi_app(REGISTRY)})  # type: ignore[method-assign]

    @app.get("/manufacturers")
    def manufacturers() -> ResponseReturnValue:
        rows = connection.execute("SELECT * FROM manufacturers ORDER BY id").fetchall()
        return jsonify([dict(row) for row in rows])

    @app.get("/products")
    def products() -> ResponseReturnValue:
        rows = connection.execute("SELECT * FROM products ORDER BY id").fetchall()
        return jsonify([dict(row) for row in rows])

    return app


def create_asgi_app(db_path: Path | str, settings: AgentSettings | None = None) -> ASGIApp:
    """The warehouse for ASGI workers, agent in front on the event loop:
    `gunicorn -c python:rpc_agent.gunicorn -k rpc_agent.servers.uvicorn_worker.UvicornWorker
    'examples.warehouse.app:create_asgi_app("w.db")'`."""
    app = create_app(db_path, settings)
    return asgi_app(app, app.extensions[EXTENSION_KEY])
