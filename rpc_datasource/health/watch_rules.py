"""Watch mode's decisions (pure): when the next probe is a held request, and when it is sent.

In watch mode a client keeps one held request (`GET /health?wait=S` with `If-None-Match`)
open while the agent is up, and sends the next one as soon as an answer comes. An answer
that comes back early with nothing changed means the agent did not hold it (an agent
without watch support, or over its watcher bound): the client then polls with plain probes
at `polling_interval`, and every `WATCH_RETRY_EVERY` successful probes tries a watch again,
sent right after the success, until the agent holds again. So a freeze is caught within the
polling bound between probes, and within the held bound during a retried watch.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from rpc_datasource.health.policy import ProbePolicy

logger = logging.getLogger(__name__)

# A held answer with no change comes at the end of the wait; one this early was not held.
EARLY_ANSWER_S = 0.5
# While the agent does not hold: plain probes, and a watch again after this many successes.
WATCH_RETRY_EVERY = 10


@dataclass(frozen=True)
class ProbeRequest:
    """What one probe asks: a plain health request, or a watch held up to `wait` seconds."""

    wait: float | None = None
    if_none_match: str | None = None

    @property
    def held(self) -> bool:
        return self.wait is not None


PLAIN = ProbeRequest()


class HeldRequestTracker:
    """Remembers the last health ETag seen and whether the agent holds watches."""

    def __init__(self, policy: ProbePolicy, name: str, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.name = name
        self._rng = rng or random.Random()
        self.health_etag: str | None = None
        self.not_holding = False
        self._plain_successes = 0

    def next_request(self, agent_up: bool) -> ProbeRequest:
        """A watch while the agent is up, holds watches (or is due a retry) and its state's
        ETag is known; else a plain probe."""
        if self.policy.mode != "watch" or not agent_up or self.health_etag is None:
            return PLAIN
        if self.not_holding and self._plain_successes < WATCH_RETRY_EVERY:
            return PLAIN
        self._plain_successes = 0
        wait = self.policy.held_wait(self._rng)
        return ProbeRequest(wait=wait, if_none_match=self.health_etag)

    def delay_after(
        self, request: ProbeRequest, succeeded: bool, health_etag: str | None, took_s: float
    ) -> float | None:
        """0 to send the next request at once; None for the policy's usual delay."""
        if self.policy.mode != "watch":
            return None
        if not succeeded:
            self.health_etag = None
            return None
        self.health_etag = health_etag
        if health_etag is None:
            self._stop_holding("gives no health ETag")
            return None
        if not request.held and self.not_holding:
            self._plain_successes += 1
            # The retried watch goes right after a success, so the held bound covers it.
            return 0.0 if self._plain_successes >= WATCH_RETRY_EVERY else None
        early = took_s < min(EARLY_ANSWER_S, 0.5 * (request.wait or 0.0))
        if request.held and health_etag == request.if_none_match and early:
            self._stop_holding("answered a watch at once with nothing changed")
            return None
        if request.held and self.not_holding:
            self.not_holding = False
            logger.info("%s holds watches again", self.name)
        return 0.0

    def _stop_holding(self, why: str) -> None:
        if self.not_holding:
            return
        self.not_holding = True
        self._plain_successes = 0
        logger.info(
            "%s %s (no watch support, or over its watcher bound): polling every %g s, "
            "trying a watch again every %d probes",
            self.name,
            why,
            self.policy.polling_interval,
            WATCH_RETRY_EVERY,
        )
