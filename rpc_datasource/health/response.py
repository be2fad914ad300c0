"""Reading a health answer into a `ProbeResult` (pure: status, body and Date in, result out)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from rpc_datasource.health.json_body import json_object
from rpc_datasource.health.state import FailureReason, ProbeResult


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


# The usual cause of each 401 reason, in one line (docs/protocol.md, "Refusals").
_UNAUTHORIZED_HINTS = {
    "bad_signature": (
        "a secret the agent does not accept (its FOREST_AUTH_SECRET or "
        "FOREST_AUTH_PREVIOUS_SECRETS), or a proxy that rewrites the path v2 signs "
        "(pass it unchanged, with FOREST_URL_PREFIX on both sides, or sign v1); "
        "see docs/protocol.md"
    ),
    "missing_headers": (
        "X-Timestamp or X-Signature did not reach the agent: a proxy or server dropped them "
        "(names with underscores?); see docs/protocol.md"
    ),
    "malformed_timestamp": "X-Timestamp is not ISO 8601 with Z or an offset",
    "timestamp_out_of_window": (
        "our clock and the agent's differ by more than its FOREST_ALLOWED_CLOCK_SKEW"
    ),
}


def unauthorized_hint(reason: object, skew: float | None = None) -> str:
    """The usual cause of a 401's `reason`, as `: <cause>` to append to the status line; the
    measured clock skew instead when it is known; "" for a reason we don't know."""
    if reason == "timestamp_out_of_window" and skew is not None:
        return f": the agent's clock is {skew:+.0f} s from ours"
    hint = _UNAUTHORIZED_HINTS.get(reason) if isinstance(reason, str) else None
    return f": {hint}" if hint else ""


def _unauthorized_cause(body: dict[str, Any] | None, skew: float | None) -> str:
    reason = body.get("reason") if body else None
    cause = f"HTTP 401 Unauthorized ({reason or 'no reason given'})"
    return cause + unauthorized_hint(reason, skew)


# What the agent answers while it can serve: "degraded" means only non-critical checks fail.
SERVING_STATUSES = frozenset({"ok", "degraded"})


def not_found_hint(target: str) -> str:
    """Why an agent route answers 404: the client's prefix is not the agent's."""
    return (
        f": no agent route at {target} (the agent's FOREST_URL_PREFIX and this client's "
        "url_prefix / FOREST_URL_PREFIX must be the same)"
    )


def failing_checks(body: dict[str, Any]) -> dict[str, str]:
    """The readiness checks the health body reports failing, each with its reason."""
    checks = body.get("checks")
    if not isinstance(checks, dict):
        return {}
    return {
        str(name): str(check.get("reason") or "failing")
        for name, check in checks.items()
        if isinstance(check, dict) and check.get("status") == "failing"
    }


def _not_ready_cause(status: int, body: dict[str, Any]) -> str:
    """`HTTP 503: agent not ready (database: timeout)`: the failing checks, or the reason."""
    failing = "; ".join(f"{name}: {reason}" for name, reason in failing_checks(body).items())
    reason = body.get("reason")
    detail = failing or (reason if isinstance(reason, str) else "unavailable")
    return f"HTTP {status}: agent not ready ({detail[:300]})"


def classify_health_response(
    status: int, body: bytes, date_header: str | None, local_now: datetime, target: str = ""
) -> ProbeResult:
    """A success only for a 2xx whose JSON has status "ok" or "degraded" and a string
    instance_id; `target` (the path asked for) names the route in a 404's cause."""
    parsed = json_object(body)
    if parsed is not None and parsed.get("status") == "shutting_down":
        return ProbeResult.shutting_down(f"HTTP {status}: agent is shutting down")
    if parsed is not None and parsed.get("status") == "unavailable":
        not_ready = ProbeResult.failed(FailureReason.NOT_READY, _not_ready_cause(status, parsed))
        return replace(not_ready, failing_checks=tuple(failing_checks(parsed)))
    if status == 404 and target:
        return ProbeResult.failed(FailureReason.HTTP_STATUS, "HTTP 404" + not_found_hint(target))
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
    if parsed.get("status") not in SERVING_STATUSES or not isinstance(instance_id, str):
        return ProbeResult.failed(
            FailureReason.BAD_BODY, f"HTTP {status} with a body that is not the health JSON"
        )
    etag = parsed.get("schema_etag")
    degraded = tuple(failing_checks(parsed)) if parsed.get("status") == "degraded" else ()
    if parsed.get("status") == "degraded" and not degraded:
        degraded = ("unnamed",)
    return ProbeResult.ok(instance_id, etag if isinstance(etag, str) else None, degraded)
