"""The RPC agent: authenticated health, schema and legacy SSE routes for Flask
(`RpcAgent`), any WSGI app (`rpc_agent.wsgi`) and any ASGI app (`rpc_agent.asgi`)."""

from rpc_agent.core.agent import AgentCore
from rpc_agent.core.schema import SchemaProvider
from rpc_agent.core.settings import AgentSettings
from rpc_agent.extension import RpcAgent
from rpc_common.settings import ConfigurationError
from rpc_common.version import package_version

__version__ = package_version()

__all__ = [
    "AgentCore",
    "AgentSettings",
    "ConfigurationError",
    "RpcAgent",
    "SchemaProvider",
    "__version__",
]
