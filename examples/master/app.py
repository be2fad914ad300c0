"""The master's Flask app: `GET /status` reports each watched datasource."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

from rpc_datasource import RpcDatasource


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
        "last_outage_s": stats.last_outage_s,
        "detection_bound_s": round(datasource.health.detection_bound_s, 3),
        "schema_etag": datasource.schema_etag,
        "schema_reloads": datasource.reloads,
        "collections": [collection["name"] for collection in datasource.collections],
    }


def create_master_app(datasources: Mapping[str, RpcDatasource]) -> Flask:
    """A master app reporting on `datasources` (name to datasource)."""
    app = Flask("master")

    @app.get("/status")
    def status() -> ResponseReturnValue:
        return jsonify(
            {name: datasource_status(datasource) for name, datasource in datasources.items()}
        )

    return app
