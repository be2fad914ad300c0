"""`RpcDatasource`: the master's view of one agent's schema, kept fresh by health polling."""

from __future__ import annotations

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
from rpc_datasource.callbacks import call_logged
from rpc_datasource.health_client import Callback, HealthCheckClient
from rpc_datasource.http import new_session
from rpc_datasource.schema_fetch import FetchedSchema, fetch_schema
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
        self._secret = settings.auth_secret.get_secret_value()
        self._session = new_session()
        self._lock = threading.Lock()
        self._closed = False
        try:
            fetched = self._fetch_schema(if_none_match=None)
        except BaseException:
            self._session.close()
            raise
        assert fetched is not None, "an unconditional GET never answers 304"
        self._schema = fetched.schema
        self._etag = fetched.etag
        self.reloads = 0
        self.health = HealthCheckClient.from_settings(
            settings,
            on_server_down=on_server_down,
            on_server_recovered=on_server_recovered,
            on_schema_check=self._check_schema,
            known_schema_etag=fetched.etag,
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
            settings = settings.model_copy(update=given)
        else:
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
        """Stop watching the agent (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.health.stop()
        self._session.close()
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

    def _fetch_schema(self, if_none_match: str | None) -> FetchedSchema | None:
        return fetch_schema(
            self._session,
            self.settings.schema_url(),
            self._secret,
            timeout=self.settings.health_check_timeout,
            scheme=self.settings.signature_scheme,
            if_none_match=if_none_match,
        )

    def _check_schema(self) -> None:
        """Fetch the schema if its ETag moved; swap it in and notify only if it changed."""
        fetched = self._fetch_schema(if_none_match=self.schema_etag)
        if fetched is None:
            logger.info("schema of %s unchanged (304)", self.settings.rpc_uri)
            return
        with self._lock:
            changed = fetched.schema != self._schema
            self._etag = fetched.etag
            if changed:
                self._schema = fetched.schema
                self.reloads += 1
        if not changed:
            logger.info("schema of %s unchanged", self.settings.rpc_uri)
            return
        logger.info("schema of %s reloaded (ETag %s)", self.settings.rpc_uri, fetched.etag)
        call_logged(logger, "on_schema_change callback", self.on_schema_change, fetched.schema)
