"""One health probe over HTTP: a signed GET of `/health`, read into a `ProbeResult`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import aiohttp

from rpc_datasource.endpoint import AgentEndpoint
from rpc_datasource.health_response import classify_health_response
from rpc_datasource.health_state import ProbeResult
from rpc_datasource.http import AgentRequestError, signed_get

ProbeOutcome = tuple[ProbeResult, float | None]
Probe = Callable[[], Awaitable[ProbeOutcome]]


async def probe_health(session: aiohttp.ClientSession, endpoint: AgentEndpoint) -> ProbeOutcome:
    """The agent's health and the probe's latency (None when no answer came)."""
    try:
        reply = await signed_get(
            session, endpoint, endpoint.health_url, max_bytes=endpoint.health_max_bytes
        )
    except AgentRequestError as error:
        return ProbeResult.failed(error.reason, str(error)), None
    result = classify_health_response(
        reply.status, reply.body, reply.headers.get("Date"), datetime.now(UTC)
    )
    return result, reply.latency_s
