"""The master's Flask app: `/status` for orchestrators, `/metrics` for Prometheus, `/health`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from rpc_datasource import RpcDatasource

ROUTES = {
    "/status": "each watched data server's state; 503 while any is down",
    "/metrics": "Prometheus metrics of the probes and schema reads",
    "/health": "the master itself is alive (always 200)",
}


def datasource_status(datasource: RpcDatasource) -> dict[str, Any]:
    """The JSON-ready state, counters, last error and schema ETag of one datasource."""
    stats = datasource.health.stats()
    return {
        "uri": datasource.settings.rpc_uri,
        "state": stats.state,
        "state_since": stats.state_since.isoformat(),
        "probes": stats.probes,
        "failures": stats.failures,
        "consecutive_failures": stats.consecutive_failures,
        "last_latency_ms": (
            round(stats.last_latency_s * 1000, 2) if stats.last_latency_s is not None else None
        ),
        "last_error": stats.last_error,
        "last_reason": stats.last_reason,
        "failing_checks": list(stats.failing_checks),
        "last_outage_s": stats.last_outage_s,
        "detection_bound_s": round(datasource.health.detection_bound_s, 3),
        "schema_etag": datasource.schema_etag,
        "schema_reloads": datasource.reloads,
        "collections": [collection["name"] for collection in datasource.collections],
    }


def create_master_app(
    datasources: Mapping[str, RpcDatasource], registry: CollectorRegistry = REGISTRY
) -> Flask:
    """A master app reporting on `datasources` (name to datasource), and `registry`'s metrics."""
    app = Flask("master")

    @app.get("/")
    def index() -> ResponseReturnValue:
        return jsonify(ROUTES)

    @app.get("/status")
    def status() -> ResponseReturnValue:
        report = {name: datasource_status(datasource) for name, datasource in datasources.items()}
        any_down = any(entry["state"] == "down" for entry in report.values())
        return jsonify(report), 503 if any_down else 200

    @app.get("/health")
    def health() -> ResponseReturnValue:
        return jsonify({"status": "ok"})

    # prometheus_client's own app: it negotiates the format (OpenMetrics) and compression.
    metrics = make_wsgi_app(registry)
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/metrics": metrics})  # type: ignore[method-assign]
    return app
