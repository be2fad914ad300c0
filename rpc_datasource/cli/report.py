"""What `forest-rpc probe` says of one probe: an exit code and one line (pure).

The exit codes follow `grpc_health_probe`'s idea: one code per kind of trouble, so that a
Kubernetes exec probe, a script or a person can tell "down" from "misconfigured".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum

from rpc_datasource.health.events import ProbeEvent
from rpc_datasource.health.state import FailureReason, ProbeKind, ProbeResult


class ProbeExit(IntEnum):
    """`forest-rpc probe`'s exit codes (the contract's "Commands")."""

    UP = 0
    USAGE = 1
    CANNOT_CONNECT = 2
    NO_HEALTH_ANSWER = 3
    NOT_SERVING = 4
    UNAUTHORIZED = 5


_EXIT_BY_REASON = {
    FailureReason.REFUSED: ProbeExit.CANNOT_CONNECT,
    FailureReason.DNS: ProbeExit.CANNOT_CONNECT,
    FailureReason.CONNECTION: ProbeExit.CANNOT_CONNECT,
    FailureReason.TIMEOUT: ProbeExit.NO_HEALTH_ANSWER,
    FailureReason.HTTP_STATUS: ProbeExit.NO_HEALTH_ANSWER,
    FailureReason.BAD_BODY: ProbeExit.NO_HEALTH_ANSWER,
    FailureReason.SHUTTING_DOWN: ProbeExit.NOT_SERVING,
    FailureReason.NOT_READY: ProbeExit.NOT_SERVING,
    FailureReason.UNAUTHORIZED: ProbeExit.UNAUTHORIZED,
}


@dataclass(frozen=True)
class ProbeReport:
    """One probe as the command reports it."""

    result: ProbeResult
    latency_s: float | None

    @property
    def exit_code(self) -> ProbeExit:
        if self.result.succeeded:
            return ProbeExit.UP
        assert self.result.reason is not None, "a failed probe has a reason"
        return _EXIT_BY_REASON[self.result.reason]

    @property
    def status(self) -> str:
        """`ok`, `degraded`, `shutting_down`, `unavailable`, or `down` when no health answer."""
        if self.result.succeeded:
            return "degraded" if self.result.degraded else "ok"
        if self.result.kind is ProbeKind.SHUTTING_DOWN:
            return "shutting_down"
        if self.result.reason is FailureReason.NOT_READY:
            return "unavailable"
        return "down"

    @property
    def latency_ms(self) -> float | None:
        return None if self.latency_s is None else round(self.latency_s * 1000, 1)

    def line(self) -> str:
        """One line for a person: `ok instance_id=… 3.1 ms` or `down (refused): <cause>`."""
        if self.result.succeeded:
            failing = ", ".join(self.result.failing_checks)
            checks = f" failing checks: {failing}" if failing else ""
            return (
                f"{self.status} instance_id={self.result.instance_id} {self.latency_ms} ms{checks}"
            )
        return f"{self.status} ({self.result.reason}): {self.result.cause}"

    def json_line(self) -> str:
        """One JSON object: `status`, `reason`, `latency_ms`, `instance_id` (and `cause`)."""
        return json.dumps(
            {
                "status": self.status,
                "reason": None if self.result.reason is None else str(self.result.reason),
                "latency_ms": self.latency_ms,
                "instance_id": self.result.instance_id,
                "failing_checks": list(self.result.failing_checks),
                "cause": self.result.cause or None,
            }
        )


def state_change_lines(event: ProbeEvent) -> list[str]:
    """What `forest-rpc watch` adds after a probe's line when the probe changed something: the
    outage (as `on_server_down` sees it), the recovery, a restart."""
    lines = []
    if event.went_down:
        lines.append(f"DOWN after {event.consecutive_failures} failed probe(s) [{event.reason}]")
    if event.recovered:
        lines.append("RECOVERED")
    if event.restarted:
        lines.append(f"RESTARTED new instance_id={event.result.instance_id}")
    return lines
