"""The agent's blueprint: /health, /rpc-schema and the legacy /sse, all authenticated."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Blueprint, Response, jsonify, request
from werkzeug.wrappers import Response as BaseResponse

from rpc_agent.auth import refuse_unless_signed

if TYPE_CHECKING:
    from rpc_agent.extension import RpcAgent

BLUEPRINT_NAME = "forest_rpc_agent"


def build_blueprint(agent: RpcAgent) -> Blueprint:
    """A blueprint bound to one agent, mounted at the agent's URL prefix."""
    blueprint = Blueprint(BLUEPRINT_NAME, __name__, url_prefix=agent.settings.url_prefix or None)

    @blueprint.before_request
    def authenticate() -> Response | None:
        return refuse_unless_signed(agent.settings)

    @blueprint.get("/health")
    def health() -> Response:
        response = jsonify(agent.health_body())
        response.status_code = 503 if agent.shutting_down else 200
        response.headers["Cache-Control"] = "no-store"
        return response

    @blueprint.get("/rpc-schema")
    def rpc_schema() -> BaseResponse:
        schema, etag = agent.schema_cache.current()
        response = jsonify(schema)
        response.set_etag(etag.strip('"'))
        response.headers["Cache-Control"] = "no-cache"
        return response.make_conditional(request)

    @blueprint.get("/sse")
    def sse() -> Response:
        stream = agent.sse_manager.open_stream(agent.settings.sse_heartbeat_interval)
        response = Response(stream, mimetype="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        return response

    return blueprint
