"""`AgentCore`: the framework-neutral agent state: identity, uptime, shutdown, the health
answer, the schema and its ETag, the held watches and the legacy SSE streams."""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from rpc_agent.core.checks import STARTING_REASON, Check, Readiness, ReadinessChecks
from rpc_agent.core.held_requests import HeldRequests, health_etag
from rpc_agent.core.schema import SchemaCache, SchemaProvider, canonical_json, empty_schema
from rpc_agent.core.settings import AgentSettings
from rpc_agent.core.sse import SseConnectionManager
from rpc_agent.process import state as server_process
from rpc_common.version import package_version

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthAnswer:
    """The health answer for one state, built once: everything but the uptime."""

    status_code: int
    etag: str
    schema_etag: str
    schema_error: str | None
    shutting_down: bool
    checks_version: int
    body_head: bytes  # the JSON body up to the uptime's value

    def body(self, uptime_s: float) -> bytes:
        return self.body_head + b"%.3f}" % uptime_s


@dataclass(frozen=True)
class SchemaAnswer:
    """The schema's JSON body and its ETag, built once per schema."""

    etag: str
    body: bytes


class AgentCore:
    """The agent's state and answers, shared by the Flask, WSGI and ASGI adapters."""

    def __init__(
        self,
        *,
        settings: AgentSettings | None = None,
        schema_provider: SchemaProvider | None = None,
    ) -> None:
        self.settings = settings if settings is not None else AgentSettings()
        self.held_requests = HeldRequests(self.settings.health_max_watchers)
        self.schema_cache = SchemaCache(
            schema_provider or empty_schema,
            timeout=self.settings.schema_provider_timeout,
            refresh_interval=self.settings.schema_refresh_interval,
            on_change=self.held_requests.notify,
        )
        self.sse_manager = SseConnectionManager()
        self.instance_id = server_process.server_instance_id()
        self.version = package_version()
        self.verification_secrets = tuple(self.settings.verification_secrets())
        self.checks = ReadinessChecks(self.held_requests.notify, self.verification_secrets)
        self._started = time.monotonic()
        self._shutdown = threading.Event()
        self._health: HealthAnswer | None = None
        self._schema: SchemaAnswer | None = None
        server_process.register_agent(self)

    @property
    def shutting_down(self) -> bool:
        return self._shutdown.is_set()

    @property
    def shutdown_drain_seconds(self) -> float:
        """How long a stopping server keeps answering 503 before it closes."""
        return self.settings.shutdown_drain_seconds

    def begin_shutdown(self) -> None:
        """Answer health with 503 from now on, held watches at once, `RpcServerStop` to SSE."""
        if self._shutdown.is_set():
            return
        self._shutdown.set()
        logger.info("agent %s shutting down", self.instance_id)
        self.held_requests.notify()
        self.sse_manager.shutdown()

    def adopt_instance_id(self, instance_id: str) -> None:
        """Answer the server's `instance_id` (an app loaded before the server announced
        one, as with gunicorn's `--preload`)."""
        self.instance_id = instance_id
        self._health = None

    def cap_held_requests(self, most: int) -> None:
        """Hold at most `most` health watches at once (a threaded server's share for them)."""
        self.held_requests.cap(most)

    def step_aside(self) -> None:
        """This process is being replaced while the server lives on (a reload): answer held
        watches and end the SSE stream (its client reconnects to a new worker), but do not
        announce a shutdown."""
        logger.info("agent %s replaced by a newer start of the server", self.instance_id)
        self.held_requests.notify()
        self.sse_manager.end_current()

    def add_check(
        self,
        name: str,
        check: Check,
        *,
        interval: float = 5.0,
        timeout: float = 2.0,
        critical: bool = True,
    ) -> None:
        """A readiness check, run every `interval` seconds in the background: a plain or
        coroutine function that returns when the data server can serve and raises when it
        cannot (the reason is its text), within `timeout`. A critical one failing makes
        health `503` `unavailable`; a non-critical one, `200` `degraded`. Called outside a
        running event loop (an app factory), it waits for the first result, up to `timeout`,
        so that the server starts ready."""
        self.checks.add(name, check, interval=interval, timeout=timeout, critical=critical)

    def schema_changed(self) -> Future[bool]:
        """Read the schema provider again, in the background (after the app changed its
        schema); the future says whether the schema changed. Held watches are answered when
        it did."""
        return self.schema_cache.refresh()

    def uptime_s(self) -> float:
        return time.monotonic() - self._started

    def health_answer(self) -> HealthAnswer:
        """The current health state; rebuilt only when the shutdown, the schema or a check
        moved, never waiting on a check or the schema provider."""
        _, schema_etag = self.schema_cache.current()
        schema_error = self.schema_cache.error
        shutting_down = self.shutting_down
        self.checks.ensure_running()  # in a worker forked after the checks were added
        checks_version = self.checks.version
        state = self._health
        if (
            state is None
            or state.schema_etag != schema_etag
            or state.schema_error != schema_error
            or state.shutting_down != shutting_down
            or state.checks_version != checks_version
        ):
            state = self._health = self._build_health(
                schema_etag, schema_error, shutting_down, checks_version
            )
        return state

    def _build_health(
        self, schema_etag: str, schema_error: str | None, shutting_down: bool, checks_version: int
    ) -> HealthAnswer:
        readiness = self.checks.readiness()
        reason = None
        if shutting_down:
            status, code = "shutting_down", 503
        elif readiness in (Readiness.STARTING, Readiness.UNAVAILABLE):
            status, code = "unavailable", 503
            reason = STARTING_REASON if readiness is Readiness.STARTING else None
        else:
            status, code = str(readiness), 200
        fields: dict[str, Any] = {
            "status": status,
            "version": self.version,
            "instance_id": self.instance_id,
            "schema_etag": schema_etag,
        }
        if reason is not None:
            fields["reason"] = reason
        if schema_error is not None:
            fields["schema_error"] = schema_error
        if self.checks:
            fields["checks"] = {
                name: (
                    found.as_json()
                    if found is not None
                    else {"status": "failing", "reason": STARTING_REASON, "since": None}
                )
                for name, found in self.checks.statuses().items()
            }
        head = json.dumps(fields, separators=(",", ":"))[:-1] + ',"uptime_s":'
        return HealthAnswer(
            status_code=code,
            etag=health_etag(status, self.instance_id, schema_etag, self.checks.token()),
            schema_etag=schema_etag,
            schema_error=schema_error,
            shutting_down=shutting_down,
            checks_version=checks_version,
            body_head=head.encode(),
        )

    def schema_answer(self) -> SchemaAnswer:
        """The schema's body and ETag; the body is encoded once per schema."""
        schema, etag = self.schema_cache.current()
        answer = self._schema
        if answer is None or answer.etag != etag:
            answer = self._schema = SchemaAnswer(etag, canonical_json(schema).encode())
        return answer
