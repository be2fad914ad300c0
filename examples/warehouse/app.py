"""The warehouse Flask app: a couple of data routes, the embedded RPC agent, /metrics."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from prometheus_client import REGISTRY, make_wsgi_app
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from examples.warehouse.database import check_database, connect, read_schema
from rpc_agent import AgentSettings, RpcAgent, metrics
from rpc_agent.asgi import ASGIApp
from rpc_agent.extension import EXTENSION_KEY
from rpc_agent.servers.runner import asgi_app

# How often the database check runs, and how long it may take.
DB_CHECK_INTERVAL_S = 5.0
DB_CHECK_TIMEOUT_S = 2.0


def create_app(
    db_path: Path | str,
    settings: AgentSettings | None = None,
    db_check_interval: float = DB_CHECK_INTERVAL_S,
) -> Flask:
    """The warehouse app; its agent serves the schema read from `db_path` at start, and is
    ready while its database answers (a readiness check every `db_check_interval` seconds).

    Under gunicorn: `gunicorn -c python:rpc_agent.gunicorn 'examples.warehouse:create_app("w.db")'`.
    """
    app = Flask("warehouse")
    connection = connect(Path(db_path))
    schema = read_schema(connection)
    agent = RpcAgent(app, settings=settings, schema_provider=lambda: schema)
    agent.add_check(
        "database",
        partial(check_database, Path(db_path)),
        interval=db_check_interval,
        timeout=DB_CHECK_TIMEOUT_S,
    )
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
