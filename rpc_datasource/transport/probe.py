"""One health probe over HTTP: a signed GET of `/health`, read into a `ProbeResult`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import NamedTuple

import aiohttp

from rpc_common.protocol import IF_NONE_MATCH_HEADER, url_target
from rpc_datasource.health.response import classify_health_response
from rpc_datasource.health.state import ProbeResult
from rpc_datasource.health.watch_rules import PLAIN, ProbeRequest
from rpc_datasource.transport.endpoint import AgentEndpoint
from rpc_datasource.transport.http import AgentRequestError, signed_get


class ProbeOutcome(NamedTuple):
    """The result, the latency (None when no answer came) and the health state's ETag."""

    result: ProbeResult
    latency_s: float | None
    health_etag: str | None = None


Probe = Callable[[ProbeRequest], Awaitable[ProbeOutcome]]


async def probe_health(
    session: aiohttp.ClientSession, endpoint: AgentEndpoint, request: ProbeRequest = PLAIN
) -> ProbeOutcome:
    """The agent's health; a watch is held up to its wait, plus `timeout` to answer."""
    url = endpoint.health_url
    extra = None
    timeout = None
    if request.wait is not None:
        url = f"{url}{'&' if '?' in url else '?'}wait={request.wait:g}"
        timeout = request.wait + endpoint.timeout
        if request.if_none_match is not None:
            extra = {IF_NONE_MATCH_HEADER: request.if_none_match}
    try:
        reply = await signed_get(
            session,
            endpoint,
            url,
            max_bytes=endpoint.health_max_bytes,
            extra_headers=extra,
            timeout=timeout,
        )
    except AgentRequestError as error:
        return ProbeOutcome(ProbeResult.failed(error.reason, str(error)), None)
    result = classify_health_response(
        reply.status,
        reply.body,
        reply.headers.get("Date"),
        datetime.now(UTC),
        url_target(endpoint.health_url),
    )
    return ProbeOutcome(result, reply.latency_s, reply.headers.get("ETag"))
