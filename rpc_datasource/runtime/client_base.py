"""`ClientBase`: the one constructor and the state the threaded and asyncio clients share."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from rpc_common.protocol import DEFAULT_URL_PREFIX
from rpc_common.signing import SignatureScheme
from rpc_datasource.health.events import ProbeEvent, ProbeHook
from rpc_datasource.health.policy import ProbeMode, ProbePolicy
from rpc_datasource.health.watch_rules import ProbeRequest
from rpc_datasource.instrumentation.log_lines import ProbeLog
from rpc_datasource.instrumentation.stats import HealthStats, StatsRecorder
from rpc_datasource.runtime.watcher import HealthWatcher
from rpc_datasource.transport.endpoint import AgentEndpoint
from rpc_datasource.transport.probe import ProbeOutcome

if TYPE_CHECKING:
    from rpc_datasource.settings import DatasourceSettings

logger = logging.getLogger(__name__)

Callback = Callable[[], object]
Client = TypeVar("Client", bound="ClientBase")


def client_config(
    url: str | None,
    auth_secret: str | None,
    signature_scheme: SignatureScheme | None,
    url_prefix: str | None,
    endpoint: AgentEndpoint | None,
    policy: ProbePolicy | None,
    policy_options: dict[str, Any],
) -> tuple[AgentEndpoint, ProbePolicy]:
    """The endpoint and policy a client was given, as objects or as loose arguments (not
    both); the per-probe `timeout` is one value in the two."""
    loose_policy = {name: value for name, value in policy_options.items() if value is not None}
    if policy is not None and loose_policy:
        raise TypeError(f"give policy= or {', '.join(sorted(loose_policy))}, not both")
    loose_endpoint = [
        name
        for name, value in (
            ("url", url),
            ("auth_secret", auth_secret),
            ("signature_scheme", signature_scheme),
            ("url_prefix", url_prefix),
        )
        if value is not None
    ]
    if endpoint is not None:
        if loose_endpoint:
            raise TypeError(f"give endpoint= or {', '.join(loose_endpoint)}, not both")
        if policy is None:
            policy = ProbePolicy(**{"timeout": endpoint.timeout, **loose_policy})
        if policy.timeout != endpoint.timeout:
            raise ValueError(
                f"timeout must be one value: the endpoint says {endpoint.timeout!r}, "
                f"the policy {policy.timeout!r}"
            )
        return endpoint, policy
    if url is None or auth_secret is None:
        raise TypeError("url and auth_secret are required, unless endpoint= is given")
    if policy is None:
        policy = ProbePolicy(**loose_policy)
    endpoint = AgentEndpoint.for_agent(
        url,
        auth_secret,
        url_prefix=url_prefix if url_prefix is not None else DEFAULT_URL_PREFIX,
        scheme=signature_scheme or "v2",
        timeout=float(policy.timeout),
    )
    return endpoint, policy


class ClientBase:
    """One agent's endpoint, policy, counters and watcher; the subclass runs the watcher.

    The agent and the probe settings come either as objects (`endpoint=AgentEndpoint(...)`,
    `policy=ProbePolicy(...)`) or as the loose arguments, which default to `ProbePolicy`'s.
    The watcher's hooks are, in order: the counters, the log lines, the subclass's
    `_fire_callbacks`, then the caller's own hooks.
    """

    def __init__(
        self,
        url: str | None = None,
        auth_secret: str | None = None,
        polling_interval: float | None = None,
        failure_threshold: int | None = None,
        timeout: float | None = None,
        on_server_down: Callback | None = None,
        on_server_recovered: Callback | None = None,
        *,
        failure_retry_interval: float | None = None,
        jitter: float | None = None,
        recovery_threshold: int | None = None,
        mode: ProbeMode | None = None,
        watch_wait: float | None = None,
        signature_scheme: SignatureScheme | None = None,
        url_prefix: str | None = None,
        policy: ProbePolicy | None = None,
        endpoint: AgentEndpoint | None = None,
        hooks: Sequence[ProbeHook] = (),
        name: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.endpoint, self.policy = client_config(
            url,
            auth_secret,
            signature_scheme,
            url_prefix,
            endpoint,
            policy,
            {
                "polling_interval": polling_interval,
                "failure_threshold": failure_threshold,
                "timeout": timeout,
                "failure_retry_interval": failure_retry_interval,
                "jitter": jitter,
                "recovery_threshold": recovery_threshold,
                "mode": mode,
                "watch_wait": watch_wait,
            },
        )
        self.url = url if url is not None else self.endpoint.health_url
        if self.endpoint.secret_is_short:
            logger.warning("auth_secret for %s is shorter than 32 bytes", self.url)
        self.name = name or self.url
        self.on_server_down = on_server_down
        self.on_server_recovered = on_server_recovered
        self._closed = False
        self._stats = StatsRecorder()
        self._watcher = HealthWatcher(
            self.name,
            self.policy,
            self._probe,
            (self._stats, ProbeLog(), self._fire_callbacks, *hooks),
            rng=rng,
        )
        self._setup_driver()

    @classmethod
    def from_settings(
        cls: type[Client],
        settings: DatasourceSettings,
        on_server_down: Callback | None = None,
        on_server_recovered: Callback | None = None,
        **options: Any,
    ) -> Client:
        """A client for the agent and with the probe settings that `settings` describe."""
        return cls(
            endpoint=settings.endpoint(),
            policy=settings.policy(),
            on_server_down=on_server_down,
            on_server_recovered=on_server_recovered,
            **options,
        )

    @property
    def closed(self) -> bool:
        """True once the client was stopped (it cannot be started again)."""
        return self._closed

    @property
    def polling_interval(self) -> float:
        return self.policy.polling_interval

    @property
    def failure_threshold(self) -> int:
        return self.policy.failure_threshold

    @property
    def timeout(self) -> float:
        return self.policy.timeout

    @property
    def failure_retry_interval(self) -> float:
        return self.policy.retry_interval

    @property
    def jitter(self) -> float:
        return self.policy.jitter

    @property
    def detection_bound_s(self) -> float:
        """The longest an outage can go unnoticed (see `ProbePolicy.detection_bound_s`)."""
        return self.policy.detection_bound_s

    def stats(self) -> HealthStats:
        """A consistent snapshot of the counters."""
        return self._stats.snapshot()

    def _setup_driver(self) -> None:
        """Make the subclass's own state (its locks, queues, threads); called by `__init__`."""

    async def _probe(self, request: ProbeRequest) -> ProbeOutcome:
        raise NotImplementedError

    def _fire_callbacks(self, event: ProbeEvent) -> None:
        raise NotImplementedError
