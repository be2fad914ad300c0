"""`python -m examples.master --rpc-uri URI`: watch a data server and serve GET /status."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from urllib.parse import urlsplit

from examples.logs import configure_logging
from examples.master.app import create_master_app
from examples.master.events import DatasourceEventLog
from rpc_agent.serving import serve_until_signalled
from rpc_common.settings import ConfigurationError
from rpc_datasource import RpcDatasource, SchemaFetchError
from rpc_datasource.datasource import load_datasource_settings
from rpc_datasource.settings import DatasourceSettings

logger = logging.getLogger("examples.master")


def connect(
    settings: DatasourceSettings, events: DatasourceEventLog, wait_seconds: float
) -> RpcDatasource:
    """Build the datasource, retrying each second for up to `wait_seconds` while it is down."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            datasource = RpcDatasource.build(
                settings=settings,
                on_schema_change=events.on_schema_change,
                on_server_down=events.on_server_down,
                on_server_recovered=events.on_server_recovered,
            )
        except SchemaFetchError as error:
            if time.monotonic() >= deadline:
                raise
            logger.info("waiting for the data server: %s", error)
            threading.Event().wait(1.0)
            continue
        events.attach(datasource)
        return datasource


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build the datasource from settings, serve /status until signalled."""
    parser = argparse.ArgumentParser(prog="python -m examples.master", description=__doc__)
    parser.add_argument("--rpc-uri", help="the data server's base URI (else FOREST_RPC_URI)")
    parser.add_argument("--name", help="what to call the data server in logs and /status")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the server")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        overrides = {"rpc_uri": args.rpc_uri} if args.rpc_uri else {}
        settings = load_datasource_settings(**overrides)
    except ConfigurationError as error:
        print(f"master: {error}", file=sys.stderr)
        return 2
    name = args.name or urlsplit(settings.rpc_uri).netloc
    events = DatasourceEventLog(name)
    try:
        datasource = connect(settings, events, args.wait)
    except SchemaFetchError as error:
        print(f"master: {error}", file=sys.stderr)
        return 1
    app = create_master_app({name: datasource})
    try:
        try:
            serve_until_signalled(app, args.host, args.port)
        except OSError as error:
            logger.warning(
                "cannot serve /status on port %d (%s): using any free port", args.port, error
            )
            serve_until_signalled(app, args.host, 0)
    finally:
        datasource.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
