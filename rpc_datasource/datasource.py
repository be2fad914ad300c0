"""`RpcDatasource`: the master's view of one agent's schema, kept fresh by health probes."""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from rpc_common.signing import SignatureScheme
from rpc_datasource.health.events import (
    ProbeEvent,
    ProbeHook,
    SchemaEvent,
    SchemaOutcome,
    schema_hooks,
)
from rpc_datasource.health.policy import ProbeMode
from rpc_datasource.health_client import HealthCheckClient
from rpc_datasource.instrumentation.log_lines import SchemaLog
from rpc_datasource.runtime.client_base import Callback
from rpc_datasource.runtime.engine import Engine, shared_engine
from rpc_datasource.schema.diff import diff_schemas
from rpc_datasource.schema.fetch import FetchedSchema, SchemaFetchError, fetch_schema
from rpc_datasource.schema.refresh import SchemaRefreshDecision
from rpc_datasource.settings import DatasourceSettings
from rpc_datasource.transport.endpoint import AgentEndpoint

logger = logging.getLogger(__name__)

SchemaCallback = Callable[[dict[str, Any]], None]

_open_datasources: weakref.WeakSet[RpcDatasource] = weakref.WeakSet()


def _close_open_datasources() -> None:
    for datasource in list(_open_datasources):
        datasource.close()


atexit.register(_close_open_datasources)


# `build()`'s short names of settings, so that a refused argument is named as it was given.
BUILD_ARGUMENT_OF_SETTING = {
    "rpc_uri": "uri",
    "health_check_timeout": "timeout",
    "health_check_recovery_threshold": "recovery_threshold",
    "health_check_mode": "mode",
    "health_check_watch_wait": "watch_wait",
}


class RpcDatasource:
    """Holds the agent's schema; reloads it after an outage or a redeploy, only if it changed."""

    def __init__(
        self,
        settings: DatasourceSettings,
        schema: FetchedSchema,
        *,
        on_schema_change: SchemaCallback | None = None,
        on_server_down: Callback | None = None,
        on_server_recovered: Callback | None = None,
        hooks: Sequence[ProbeHook] = (),
        name: str | None = None,
        endpoint: AgentEndpoint | None = None,
    ) -> None:
        """The datasource of the agent `settings` name, holding `schema` as first read from
        it; no I/O here: `start()` begins watching (`connect()` and `build()` do all three).
        `endpoint` is `settings.endpoint()`, when the caller made it already."""
        self.settings = settings
        self.name = name or settings.rpc_uri
        self.on_schema_change = on_schema_change
        self.endpoint = endpoint or settings.endpoint()
        self._schema_hooks = (SchemaLog(),)
        self._lock = threading.Lock()
        self._closed = False
        self._engine: Engine | None = None
        self._schema = schema.schema
        self._etag = schema.etag
        self._refresh = SchemaRefreshDecision(
            schema.etag, min_fetch_gap_s=settings.health_check_interval
        )
        self._warned_disagreement: tuple[str, str] | None = None
        self._fetching: asyncio.Task[None] | None = None
        self.reloads = 0
        self._report(SchemaOutcome.LOADED, schema.etag)
        self.health = HealthCheckClient(
            endpoint=self.endpoint,
            policy=settings.policy(),
            on_server_down=on_server_down,
            on_server_recovered=on_server_recovered,
            hooks=(self._on_probe, *hooks),
            name=self.name,
        )

    @classmethod
    def connect(
        cls,
        settings: DatasourceSettings,
        *,
        on_schema_change: SchemaCallback | None = None,
        on_server_down: Callback | None = None,
        on_server_recovered: Callback | None = None,
        hooks: Sequence[ProbeHook] = (),
        name: str | None = None,
    ) -> RpcDatasource:
        """Read the schema once (a `SchemaFetchError` names the URL and cause), then start
        watching the agent."""
        endpoint = settings.endpoint()
        engine = shared_engine.acquire()
        try:
            try:
                fetched = engine.run(
                    fetch_schema(engine.session, endpoint), timeout=endpoint.timeout + 1.0
                )
            except TimeoutError as error:
                raise SchemaFetchError(
                    f"cannot read the schema at {endpoint.schema_url}: {error}"
                ) from None
            assert fetched is not None, "an unconditional GET never answers 304"
            datasource = cls(
                settings,
                fetched,
                on_schema_change=on_schema_change,
                on_server_down=on_server_down,
                on_server_recovered=on_server_recovered,
                hooks=hooks,
                name=name,
                endpoint=endpoint,
            )
            datasource.start()
        finally:
            shared_engine.release()
        return datasource

    def start(self) -> None:
        """Begin watching the agent (idempotent; a closed datasource stays closed)."""
        with self._lock:
            if self._closed or self._engine is not None:
                return
            self._engine = shared_engine.acquire()
        _open_datasources.add(self)
        self.health.start()

    @classmethod
    def build(
        cls,
        uri: str | None = None,
        auth_secret: str | None = None,
        health_check_interval: float | None = None,
        health_check_failure_threshold: int | None = None,
        on_schema_change: SchemaCallback | None = None,
        *,
        timeout: float | None = None,
        health_check_timeout: float | None = None,
        recovery_threshold: int | None = None,
        mode: ProbeMode | None = None,
        watch_wait: float | None = None,
        signature_scheme: SignatureScheme | None = None,
        url_prefix: str | None = None,
        schema_max_bytes: int | None = None,
        on_server_down: Callback | None = None,
        on_server_recovered: Callback | None = None,
        hooks: Sequence[ProbeHook] = (),
        settings: DatasourceSettings | None = None,
        name: str | None = None,
    ) -> RpcDatasource:
        """Read the schema once (a `SchemaFetchError` names the URL and cause) and start watching.

        Every setting of `DatasourceSettings` is an argument here (`timeout`,
        `recovery_threshold`, `mode`, `watch_wait` are the short names of the
        `health_check_*` ones); those left out come from `settings`, else from `FOREST_*`
        environment variables. `hooks` get each probe's event. `name` is what logs, hooks and
        metrics call the agent (the `uri` when not given). `uri` is the agent's base URI; one
        that already ends in the health route works too.
        """
        overrides: dict[str, Any] = {
            "rpc_uri": uri,
            "auth_secret": auth_secret,
            "health_check_interval": health_check_interval,
            "health_check_failure_threshold": health_check_failure_threshold,
            "health_check_timeout": timeout if timeout is not None else health_check_timeout,
            "health_check_recovery_threshold": recovery_threshold,
            "health_check_mode": mode,
            "health_check_watch_wait": watch_wait,
            "signature_scheme": signature_scheme,
            "url_prefix": url_prefix,
            "schema_max_bytes": schema_max_bytes,
        }
        given = {name: value for name, value in overrides.items() if value is not None}
        if settings is not None:
            # Validated again with the arguments, as if given to the constructor.
            given = {
                **{name: getattr(settings, name) for name in type(settings).model_fields},
                **given,
            }
        settings = DatasourceSettings.given_as(BUILD_ARGUMENT_OF_SETTING, **given)
        return cls.connect(
            settings,
            on_schema_change=on_schema_change,
            on_server_down=on_server_down,
            on_server_recovered=on_server_recovered,
            hooks=hooks,
            name=name,
        )

    @property
    def schema(self) -> dict[str, Any]:
        with self._lock:
            return self._schema

    @property
    def schema_etag(self) -> str | None:
        with self._lock:
            return self._etag

    @property
    def collections(self) -> list[dict[str, Any]]:
        """The schema's collections, each with its name and fields."""
        return list(self.schema.get("collections", []))

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop watching the agent (idempotent); returns at once, whatever the agent does."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.health.stop()
        fetching, engine = self._fetching, self._engine
        if engine is None:
            return
        if fetching is not None:
            engine.loop.call_soon_threadsafe(fetching.cancel)
        shared_engine.release()
        _open_datasources.discard(self)

    def __enter__(self) -> RpcDatasource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _on_probe(self, event: ProbeEvent) -> None:
        """A probe hook, on the engine's loop: start a schema fetch when one is due."""
        if self._closed:
            return
        wanted = self._refresh.wants_fetch(event, asyncio.get_running_loop().time())
        self._warn_of_disagreement()
        if not wanted:
            return
        if self._fetching is not None and not self._fetching.done():
            self._refresh.ask_again()
            return
        self._fetching = asyncio.get_running_loop().create_task(self._fetch_and_apply())

    def _warn_of_disagreement(self) -> None:
        """One WARNING per pair of ETags that one `instance_id` alternates between."""
        pair = self._refresh.disagreeing
        if pair is None or pair == self._warned_disagreement:
            return
        if self._warned_disagreement is not None and set(pair) == set(self._warned_disagreement):
            return
        self._warned_disagreement = pair
        logger.warning(
            "%s: one instance_id answers two schemas in turn (ETags %s and %s): workers of one "
            "server serve different schemas, most likely some started before a migration and "
            "some after; restart the server so that every worker loads the same schema "
            "(reloading at most once every %g s until then)",
            self.name,
            pair[0],
            pair[1],
            self._refresh.min_fetch_gap_s,
        )

    async def _fetch_and_apply(self) -> None:
        """Fetch the schema if its ETag moved; swap it in and notify only if it changed."""
        try:
            assert self._engine is not None, "probe hooks run only once started"
            fetched = await fetch_schema(self._engine.session, self.endpoint, self.schema_etag)
        except SchemaFetchError as error:
            self._refresh.ask_again()
            self._report(SchemaOutcome.FAILED, self.schema_etag, error=str(error))
            return
        if fetched is None:
            self._refresh.fetched(self.schema_etag)
            self._report(SchemaOutcome.NOT_MODIFIED, self.schema_etag)
            return
        self._refresh.fetched(fetched.etag)
        change = self._swap_in(fetched)
        if change is None:
            self._report(SchemaOutcome.UNCHANGED, fetched.etag)
            return
        self._report(SchemaOutcome.RELOADED, fetched.etag, change=change)
        self.health.queue_callback("on_schema_change", self.on_schema_change, fetched.schema)

    def _swap_in(self, fetched: FetchedSchema) -> str | None:
        """Take the fetched schema and ETag; what changed in the content, or None."""
        with self._lock:
            previous = self._schema
            self._etag = fetched.etag
            if fetched.schema == previous:
                return None
            self._schema = fetched.schema
            self.reloads += 1
        return diff_schemas(previous, fetched.schema).describe()

    def _report(
        self,
        outcome: SchemaOutcome,
        etag: str | None,
        *,
        change: str | None = None,
        error: str | None = None,
    ) -> None:
        event = SchemaEvent(self.name, outcome, etag, change=change, error=error)
        schema_hooks.deliver(event, self.name, self._schema_hooks)
