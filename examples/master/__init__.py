"""The master app: watches a data server through `RpcDatasource` and reports on it."""

from examples.master.app import create_master_app
from examples.master.events import DatasourceEventLog

__all__ = ["DatasourceEventLog", "create_master_app"]
