"""The master app: watches a data server through `RpcDatasource` and reports on it."""

from examples.master.app import create_master_app

__all__ = ["create_master_app"]
