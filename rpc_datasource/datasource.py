"""`RpcDatasource`: the master's view of one agent's schema, kept fresh by health probes."""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

from pydantic import ValidationError

from rpc_common.settings import ConfigurationError, describe_validation_error
from rpc_common.signing import SignatureScheme
from rpc_datasource.endpoint import AgentEndpoint
from rpc_datasource.engine import Engine, shared_engine
from rpc_datasource.events import ProbeEvent
from rpc_datasource.health_client import Callback, HealthCheckClient
from rpc_datasource.schema_fetch import FetchedSchema, SchemaFetchError, fetch_schema
from rpc_datasource.schema_refresh import SchemaRefreshDecision
from rpc_datasource.settings import DatasourceSettings

logger = logging.getLogger(__name__)

SchemaCallback = Callable[[dict[str, Any]], None]

_open_datasources: weakref.WeakSet[RpcDatasource] = weakref.WeakSet()


def _close_open_datasources() -> None:
    for datasource in list(_open_datasources):
        datasource.close()


atexit.register(_close_open_datasources)


def load_datasource_settings(**overrides: Any) -> DatasourceSettings:
    """Settings from the environment, `overrides` first; a refused value is one line."""
    try:
        return DatasourceSettings(**overrides)
    except ValidationError as error:
        raise ConfigurationError(describe_validation_error(error)) from None


class RpcDatasource:
    """Holds the agent's schema; reloads it after an outage or a redeploy, only if it changed."""

    def __init__(
        self,
        settings: DatasourceSettings,
        *,
        on_schema_change: SchemaCallback | None = None,
        on_server_down: Callback | None = None,
        on_server_recovered: Callback | None = None,
    ) -> None:
        self.settings = settings
        self.on_schema_change = on_schema_change
        self.endpoint = AgentEndpoint.from_settings(settings)
        self._lock = threading.Lock()
        self._closed = False
        self._engine: Engine = shared_engine.acquire()
        try:
            fetched = self._engine.run(
                fetch_schema(self._engine.session, self.endpoint),
                timeout=settings.health_check_timeout + 1.0,
            )
        except TimeoutError as error:
            shared_engine.release()
            raise SchemaFetchError(
                f"cannot read the schema at {self.endpoint.schema_url}: {error}"
            ) from None
        except BaseException:
            shared_engine.release()
            raise
        assert fetched is not None, "an unconditional GET never answers 304"
        self._schema = fetched.schema
        self._etag = fetched.etag
        self._refresh = SchemaRefreshDecision(fetched.etag)
        self._fetching: asyncio.Task[None] | None = None
        self._last_fetch_failed = False
        self.reloads = 0
        self.health = HealthCheckClient.from_settings(
            settings,
            on_server_down=on_server_down,
            on_server_recovered=on_server_recovered,
            hooks=(self._on_probe,),
        )
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
        health_check_timeout: float | None = None,
        signature_scheme: SignatureScheme | None = None,
        on_server_down: Callback | None = None,
        on_server_recovered: Callback | None = None,
        settings: DatasourceSettings | None = None,
    ) -> RpcDatasource:
        """Read the schema once (a `SchemaFetchError` names the URL and cause) and start watching.

        Arguments left out come from `settings`, else from `FOREST_*` environment variables.
        """
        overrides = {
            "rpc_uri": uri,
            "auth_secret": auth_secret,
            "health_check_interval": health_check_interval,
            "health_check_failure_threshold": health_check_failure_threshold,
            "health_check_timeout": health_check_timeout,
            "signature_scheme": signature_scheme,
        }
        given = {name: value for name, value in overrides.items() if value is not None}
        if settings is not None:
            # Validated again with the arguments, as if given to the constructor.
            given = {
                **{name: getattr(settings, name) for name in type(settings).model_fields},
                **given,
            }
        settings = load_datasource_settings(**given)
        return cls(
            settings,
            on_schema_change=on_schema_change,
            on_server_down=on_server_down,
            on_server_recovered=on_server_recovered,
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
        fetching = self._fetching
        if fetching is not None:
            self._engine.loop.call_soon_threadsafe(fetching.cancel)
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
        if self._closed or not self._refresh.wants_fetch(event):
            return
        if self._fetching is not None and not self._fetching.done():
            self._refresh.ask_again()
            return
        self._fetching = asyncio.get_running_loop().create_task(self._fetch_and_apply())

    async def _fetch_and_apply(self) -> None:
        """Fetch the schema if its ETag moved; swap it in and notify only if it changed."""
        uri = self.settings.rpc_uri
        try:
            fetched = await fetch_schema(self._engine.session, self.endpoint, self.schema_etag)
        except SchemaFetchError as error:
            self._refresh.ask_again()
            level = logging.DEBUG if self._last_fetch_failed else logging.WARNING
            self._last_fetch_failed = True
            logger.log(level, "%s; will ask again at the next successful probe", error)
            return
        self._last_fetch_failed = False
        if fetched is None:
            self._refresh.fetched(self.schema_etag)
            logger.info("schema of %s unchanged (304)", uri)
            return
        self._refresh.fetched(fetched.etag)
        if not self._swap_in(fetched):
            logger.info("schema of %s unchanged", uri)
            return
        logger.info("schema of %s reloaded (ETag %s)", uri, fetched.etag)
        self.health.queue_callback("on_schema_change", self.on_schema_change, fetched.schema)

    def _swap_in(self, fetched: FetchedSchema) -> bool:
        """Take the fetched schema and ETag; whether the content changed."""
        with self._lock:
            changed = fetched.schema != self._schema
            self._etag = fetched.etag
            if changed:
                self._schema = fetched.schema
                self.reloads += 1
            return changed
