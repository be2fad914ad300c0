"""`WatchedAgent`: what the threaded and the asyncio clients share, whoever drives them."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

from rpc_common.signing import SignatureScheme
from rpc_datasource.endpoint import AgentEndpoint
from rpc_datasource.events import ProbeEvent, ProbeHook
from rpc_datasource.policy import ProbePolicy
from rpc_datasource.probe import ProbeOutcome
from rpc_datasource.probe_logging import ProbeLog
from rpc_datasource.stats import HealthStats, StatsRecorder
from rpc_datasource.watch_mode import ProbeRequest
from rpc_datasource.watcher import HealthWatcher

logger = logging.getLogger(__name__)


class WatchedAgent:
    """One agent's endpoint, policy, counters and watcher; the subclass runs the watcher.

    The watcher's hooks are, in order: the counters, the log lines, the subclass's
    `_fire_callbacks`, then the caller's own hooks.
    """

    def __init__(
        self,
        url: str,
        auth_secret: str,
        policy: ProbePolicy,
        *,
        signature_scheme: SignatureScheme,
        hooks: Sequence[ProbeHook],
        rng: random.Random | None,
        name: str | None = None,
    ) -> None:
        self.policy = policy
        self.endpoint = AgentEndpoint.for_agent(
            url, auth_secret, scheme=signature_scheme, timeout=float(policy.timeout)
        )
        if self.endpoint.secret_is_short:
            logger.warning("auth_secret for %s is shorter than 32 bytes", url)
        self.url = url
        self.name = name or url
        self._closed = False
        self._stats = StatsRecorder()
        self._watcher = HealthWatcher(
            self.name,
            policy,
            self._probe,
            (self._stats, ProbeLog(), self._fire_callbacks, *hooks),
            rng=rng,
        )

    @property
    def closed(self) -> bool:
        """True once the client was stopped (it cannot be started again)."""
        return self._closed

    @property
    def detection_bound_s(self) -> float:
        """The longest an outage can go unnoticed (see `ProbePolicy.detection_bound_s`)."""
        return self.policy.detection_bound_s

    def stats(self) -> HealthStats:
        """A consistent snapshot of the counters."""
        return self._stats.snapshot()

    async def _probe(self, request: ProbeRequest) -> ProbeOutcome:
        raise NotImplementedError

    def _fire_callbacks(self, event: ProbeEvent) -> None:
        raise NotImplementedError
