"""`python -m examples.master --rpc-uri URI`: watch a data server; serve /status and /metrics."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from urllib.parse import urlsplit

from examples.logs import configure_logging
from examples.master.app import create_master_app
from rpc_agent.servers.listening import ListenError, listening_socket
from rpc_agent.servers.runner import serve_until_signalled
from rpc_common.settings import ConfigurationError
from rpc_datasource import RpcDatasource, SchemaFetchError
from rpc_datasource.instrumentation import metrics
from rpc_datasource.settings import DatasourceSettings

logger = logging.getLogger("examples.master")


def connect(settings: DatasourceSettings, name: str, wait_seconds: float) -> RpcDatasource:
    """Build the datasource, retrying each second for up to `wait_seconds` while it is down.

    The library logs its events under `name`: DOWN (WARNING), RECOVERED and SCHEMA RELOADED.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            datasource = RpcDatasource.build(settings=settings, name=name)
        except SchemaFetchError as error:
            if time.monotonic() >= deadline:
                raise
            logger.info("waiting for the data server: %s", error)
            threading.Event().wait(1.0)
            continue
        names = ", ".join(collection["name"] for collection in datasource.collections)
        logger.info(
            "%s connected: collections %s (schema ETag %s; outages detected within %.1f s)",
            name,
            names or "(none)",
            datasource.schema_etag,
            datasource.health.detection_bound_s,
        )
        return datasource


def why_port_is_taken(host: str, port: int) -> str | None:
    """Why `host`:`port` can't be listened on, or None (checked before waiting for the agent)."""
    try:
        listening_socket(host, port).close()
    except ListenError as error:
        return str(error)
    return None


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build the datasource from settings, serve until signalled."""
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
        settings = DatasourceSettings(**overrides)
    except ConfigurationError as error:
        print(f"master: {error}", file=sys.stderr)
        return 2
    name = args.name or urlsplit(settings.rpc_uri).netloc
    taken = why_port_is_taken(args.host, args.port)
    if taken is not None:
        print(f"master: {taken}", file=sys.stderr)
        return 1
    metrics.instrument()
    try:
        datasource = connect(settings, name, args.wait)
    except SchemaFetchError as error:
        print(f"master: {error}", file=sys.stderr)
        return 1
    app = create_master_app({name: datasource})
    try:
        serve_until_signalled(app, args.host, args.port)
    except ListenError as error:
        print(f"master: {error}", file=sys.stderr)
        return 1
    finally:
        datasource.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
