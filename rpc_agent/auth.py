"""Flask glue for request authentication: every agent route answers 401 JSON when refused."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flask import Response, jsonify, request

from rpc_agent.settings import AgentSettings
from rpc_common.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_request

logger = logging.getLogger(__name__)


def request_target(environ: Mapping[str, Any]) -> str:
    """The request target as the client sent it: path and query."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        return str(raw)
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    path = quote(path, safe="/;=,~!$&'()*+:@")
    query = environ.get("QUERY_STRING", "")
    return f"{path}?{query}" if query else path


def refuse_unless_signed(settings: AgentSettings) -> Response | None:
    """A 401 JSON response when the current request's signature is refused, else None."""
    failure = verify_request(
        request.headers.get(TIMESTAMP_HEADER),
        request.headers.get(SIGNATURE_HEADER),
        method=request.method,
        target=request_target(request.environ),
        body=request.get_data(cache=True),
        secrets=settings.verification_secrets(),
        allowed_clock_skew=settings.allowed_clock_skew,
        require_bound=settings.require_bound_signatures,
    )
    if failure is None:
        return None
    logger.warning(
        "refused %s %s from %s: %s", request.method, request.path, request.remote_addr, failure
    )
    response = jsonify(error="Unauthorized", reason=str(failure))
    response.status_code = 401
    return response
