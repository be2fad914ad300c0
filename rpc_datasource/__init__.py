"""The RPC datasource: watches an agent's health and keeps its schema fresh."""

from rpc_common.settings import ConfigurationError
from rpc_common.version import package_version
from rpc_datasource.datasource import RpcDatasource
from rpc_datasource.health.events import (
    ProbeEvent,
    SchemaEvent,
    SchemaOutcome,
    get_probe_hooks,
    get_schema_hooks,
    set_probe_hooks,
    set_schema_hooks,
)
from rpc_datasource.health.policy import ProbePolicy
from rpc_datasource.health.state import FailureReason, HealthState
from rpc_datasource.health_client import HealthCheckClient
from rpc_datasource.instrumentation.stats import HealthStats
from rpc_datasource.schema.fetch import SchemaFetchError
from rpc_datasource.settings import DatasourceSettings
from rpc_datasource.transport.endpoint import AgentEndpoint

__version__ = package_version()

__all__ = [
    "AgentEndpoint",
    "ConfigurationError",
    "DatasourceSettings",
    "FailureReason",
    "HealthCheckClient",
    "HealthState",
    "HealthStats",
    "ProbeEvent",
    "ProbePolicy",
    "RpcDatasource",
    "SchemaEvent",
    "SchemaFetchError",
    "SchemaOutcome",
    "__version__",
    "get_probe_hooks",
    "get_schema_hooks",
    "set_probe_hooks",
    "set_schema_hooks",
]
