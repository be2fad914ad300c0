"""`python -m examples.warehouse --host H --port P --db PATH`: serve the warehouse."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from examples.logs import configure_logging
from examples.warehouse.app import create_app
from rpc_agent.core import load_agent_settings
from rpc_agent.extension import EXTENSION_KEY
from rpc_agent.serving import serve_agent_until_signalled
from rpc_common.settings import ConfigurationError

logger = logging.getLogger("examples.warehouse")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load settings from the environment, serve until signalled."""
    parser = argparse.ArgumentParser(prog="python -m examples.warehouse", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--db", type=Path, default=Path("warehouse.db"))
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        settings = load_agent_settings()
    except ConfigurationError as error:
        print(f"warehouse: {error}", file=sys.stderr)
        return 2
    app = create_app(args.db, settings)
    agent = app.extensions[EXTENSION_KEY]
    logger.info("schema ETag %s, instance %s", agent.schema_cache.current()[1], agent.instance_id)
    try:
        serve_agent_until_signalled(app, agent, args.host, args.port)
    except OSError as error:
        print(f"warehouse: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
