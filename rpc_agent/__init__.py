"""The RPC agent: a Flask extension serving authenticated health, schema and legacy SSE routes."""

from rpc_agent.extension import RpcAgent
from rpc_agent.schema import SchemaProvider
from rpc_agent.settings import AgentSettings
from rpc_common.settings import ConfigurationError

__all__ = ["AgentSettings", "ConfigurationError", "RpcAgent", "SchemaProvider"]
