"""The agent's blueprint: /health, /rpc-schema and the legacy /sse, all authenticated."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from flask import Blueprint, Response, jsonify, request
from werkzeug.wrappers import Response as BaseResponse

from rpc_agent.auth import refuse_unless_signed
from rpc_agent.health_watch import BadWait, parse_wait

if TYPE_CHECKING:
    from rpc_agent.extension import RpcAgent

logger = logging.getLogger(__name__)

BLUEPRINT_NAME = "forest_rpc_agent"


def build_blueprint(agent: RpcAgent) -> Blueprint:
    """A blueprint bound to one agent, mounted at the agent's URL prefix."""
    blueprint = Blueprint(BLUEPRINT_NAME, __name__, url_prefix=agent.settings.url_prefix or None)

    @blueprint.before_request
    def authenticate() -> Response | None:
        return refuse_unless_signed(agent.settings)

    @blueprint.get("/health")
    def health() -> Response:
        wait = request.args.get("wait")
        if wait is not None:
            try:
                seconds = parse_wait(wait, agent.settings.health_max_wait)
            except BadWait as error:
                response = jsonify(error="bad_request", reason=str(error))
                response.status_code = 400
                return response
            hold_while_unchanged(seconds)
        body = agent.health_body()
        response = jsonify(body)
        response.status_code = 503 if agent.shutting_down else 200
        response.headers["Cache-Control"] = "no-store"
        response.headers["ETag"] = agent.health_etag(body)
        return response

    def hold_while_unchanged(seconds: float) -> None:
        """Hold the request while the state is the one the client last saw (a watch)."""
        generation = agent.health_watch.generation
        seen = request.headers.get("If-None-Match")
        unchanged = seen == agent.health_etag(agent.health_body())
        if seconds <= 0 or agent.shutting_down or not unchanged:
            return
        logger.debug("holding a health watch for up to %g s", seconds)
        if not agent.health_watch.hold(seconds, generation):
            logger.debug("over %d held watches: answering at once", agent.health_watch.max_watchers)

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
