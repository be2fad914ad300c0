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
        self.schema_cache = SchemaCache(schema_provider or empty_schema)
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
        """Answer health with 503 from now on and send `RpcServerStop` to the SSE stream."""
        if self._shutdown.is_set():
            return
        self._shutdown.set()
        logger.info("agent %s shutting down", self.instance_id)
        self.sse_manager.shutdown()

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
