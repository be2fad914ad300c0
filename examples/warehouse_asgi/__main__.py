"""`python -m examples.warehouse_asgi --host H --port P --db PATH`: the FastAPI warehouse on
uvicorn (the same as `uvicorn --factory`, with the settings checked first)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

import uvicorn

from examples.logs import configure_logging
from examples.warehouse_asgi.app import create_app
from rpc_agent.core import load_agent_settings
from rpc_common.settings import ConfigurationError

logger = logging.getLogger("examples.warehouse_asgi")


def ignore_signal(_signum: int, _frame: FrameType | None) -> None:
    """uvicorn raises the stop signal again once it has stopped gracefully: exit 0 instead."""


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load settings from the environment, serve until signalled."""
    parser = argparse.ArgumentParser(prog="python -m examples.warehouse_asgi", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--db", type=Path, default=Path("warehouse.db"))
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        settings = load_agent_settings()
    except ConfigurationError as error:
        print(f"warehouse_asgi: {error}", file=sys.stderr)
        return 2
    app = create_app(args.db, settings)
    logger.info(
        "schema ETag %s, instance %s", app.agent.schema_answer().etag, app.agent.instance_id
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, ignore_signal)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        print(f"warehouse_asgi: cannot listen on {args.host}:{args.port}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
