"""The RPC datasource: watches an agent's health and keeps its schema fresh."""

from rpc_common.settings import ConfigurationError
from rpc_datasource.datasource import RpcDatasource
from rpc_datasource.health_client import HealthCheckClient, HealthStats
from rpc_datasource.health_state import HealthState
from rpc_datasource.schema_fetch import SchemaFetchError
from rpc_datasource.settings import DatasourceSettings

__all__ = [
    "ConfigurationError",
    "DatasourceSettings",
    "HealthCheckClient",
    "HealthState",
    "HealthStats",
    "RpcDatasource",
    "SchemaFetchError",
]
