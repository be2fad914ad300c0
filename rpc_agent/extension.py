"""`RpcAgent`: the Flask extension a data server embeds to be watched by a master."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from importlib import metadata
from typing import Any

from flask import Flask
from pydantic import ValidationError

from rpc_agent.health_watch import HealthWatch, health_etag
from rpc_agent.routes import build_blueprint
from rpc_agent.schema import SchemaCache, SchemaProvider, empty_schema
from rpc_agent.settings import AgentSettings
from rpc_agent.sse import SseConnectionManager
from rpc_common.settings import ConfigurationError, describe_validation_error

logger = logging.getLogger(__name__)

EXTENSION_KEY = "rpc_agent"
DISTRIBUTION = "forest-rpc-pair"


def package_version() -> str:
    """The installed distribution's version, or a marker when running from a bare checkout."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def load_agent_settings() -> AgentSettings:
    """Settings from the environment; a refused value is a one-line `ConfigurationError`."""
    try:
        return AgentSettings()
    except ValidationError as error:
        raise ConfigurationError(describe_validation_error(error)) from None


class RpcAgent:
    """Serves health, schema and the legacy SSE stream under the configured prefix."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        settings: AgentSettings | None = None,
        schema_provider: SchemaProvider | None = None,
    ) -> None:
        self.settings = settings if settings is not None else load_agent_settings()
        self.health_watch = HealthWatch(self.settings.health_max_watchers)
        self.schema_cache = SchemaCache(
            schema_provider or empty_schema, on_change=self.health_watch.notify
        )
        self.sse_manager = SseConnectionManager()
        self.instance_id = uuid.uuid4().hex
        self.version = package_version()
        self._started = time.monotonic()
        self._shutdown = threading.Event()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the agent's routes on `app` and record it in `app.extensions`."""
        app.register_blueprint(build_blueprint(self))
        app.extensions[EXTENSION_KEY] = self

    @property
    def shutting_down(self) -> bool:
        return self._shutdown.is_set()

    def begin_shutdown(self) -> None:
        """Answer health with 503 from now on, held watches at once, `RpcServerStop` to SSE."""
        if self._shutdown.is_set():
            return
        self._shutdown.set()
        logger.info("agent %s shutting down", self.instance_id)
        self.health_watch.notify()
        self.sse_manager.shutdown()

    def schema_changed(self) -> None:
        """Tell held watches to look at the schema again (after the app changed it)."""
        self.schema_cache.current()

    def health_etag(self, body: dict[str, Any]) -> str:
        """The health state's token, as sent in the `ETag` of /health."""
        return health_etag(body["status"], body["instance_id"], body["schema_etag"])

    def health_body(self) -> dict[str, Any]:
        """The small JSON body of /health."""
        _, etag = self.schema_cache.current()
        return {
            "status": "shutting_down" if self.shutting_down else "ok",
            "version": self.version,
            "instance_id": self.instance_id,
            "schema_etag": etag,
            "uptime_s": round(time.monotonic() - self._started, 3),
        }
