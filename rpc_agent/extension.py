"""`RpcAgent`: the Flask extension a data server embeds to be watched by a master."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rpc_agent.core.agent import AgentCore
from rpc_agent.core.schema import SchemaProvider
from rpc_agent.core.settings import AgentSettings
from rpc_agent.wsgi import RpcAgentMiddleware

if TYPE_CHECKING:
    from flask import Flask

EXTENSION_KEY = "rpc_agent"


class RpcAgent(AgentCore):
    """The agent as a Flask extension: its routes are answered in front of the app's own
    (`app.wsgi_app` is wrapped in `rpc_agent.wsgi.RpcAgentMiddleware`), so the app's
    `before_request` hooks and error handlers never see them."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        settings: AgentSettings | None = None,
        schema_provider: SchemaProvider | None = None,
    ) -> None:
        super().__init__(settings=settings, schema_provider=schema_provider)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Serve the agent's routes on `app` and record it in `app.extensions`; a second
        agent on the same app is a `RuntimeError`."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(f"an RpcAgent is already registered on the app {app.name!r}")
        app.wsgi_app = RpcAgentMiddleware(app.wsgi_app, agent=self)  # type: ignore[method-assign]
        app.extensions[EXTENSION_KEY] = self
