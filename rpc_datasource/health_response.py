"""Reading a health answer into a `ProbeResult` (pure: status, body and Date in, result out)."""

from __future__ import annotations

from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from rpc_datasource.health_state import FailureReason, ProbeResult
from rpc_datasource.json_body import json_object


def clock_skew_seconds(date_header: str | None, local_now: datetime) -> float | None:
    """How far the agent's clock (its `Date` header) is ahead of ours; None if unreadable."""
    if not date_header:
        return None
    try:
        agent_now = parsedate_to_datetime(date_header)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if agent_now.tzinfo is None:
        return None
    return (agent_now - local_now).total_seconds()


def _unauthorized_cause(body: dict[str, Any] | None, skew: float | None) -> str:
    reason = body.get("reason") if body else None
    cause = f"HTTP 401 Unauthorized ({reason or 'no reason given'})"
    if reason == "timestamp_out_of_window" and skew is not None:
        cause += f": the agent's clock is {skew:+.0f} s from ours"
    elif reason == "bad_signature":
        cause += ": is the auth secret the agent's?"
    return cause


def classify_health_response(
    status: int, body: bytes, date_header: str | None, local_now: datetime
) -> ProbeResult:
    """A success only for a 2xx whose JSON has status "ok" and a string instance_id."""
    parsed = json_object(body)
    if parsed is not None and parsed.get("status") == "shutting_down":
        return ProbeResult.shutting_down(f"HTTP {status}: agent is shutting down")
    if status == 401:
        return ProbeResult.failed(
            FailureReason.UNAUTHORIZED,
            _unauthorized_cause(parsed, clock_skew_seconds(date_header, local_now)),
        )
    if not 200 <= status < 300:
        return ProbeResult.failed(FailureReason.HTTP_STATUS, f"HTTP {status}")
    if parsed is None:
        return ProbeResult.failed(
            FailureReason.BAD_BODY, f"HTTP {status} with a body that is not a JSON object"
        )
    instance_id = parsed.get("instance_id")
    if parsed.get("status") != "ok" or not isinstance(instance_id, str):
        return ProbeResult.failed(
            FailureReason.BAD_BODY, f"HTTP {status} with a body that is not the health JSON"
        )
    etag = parsed.get("schema_etag")
    return ProbeResult.ok(instance_id, etag if isinstance(etag, str) else None)
