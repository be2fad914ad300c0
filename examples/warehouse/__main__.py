"""`python -m examples.warehouse --host H --port P --db PATH [--server waitress]`: serve the
warehouse."""

from __future__ import annotations

import logging
import sys

from examples.warehouse.app import create_app
from examples.warehouse.cli import parse_arguments, settings_or_none
from rpc_agent.extension import EXTENSION_KEY
from rpc_agent.servers import waitress
from rpc_agent.servers.listening import ListenError
from rpc_agent.servers.runner import serve_agent_until_signalled
from rpc_common.settings import ConfigurationError

logger = logging.getLogger("examples.warehouse")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load settings from the environment, serve until signalled."""
    args = parse_arguments("examples.warehouse", __doc__, argv, choose_server=True)
    settings = settings_or_none("warehouse")
    if settings is None:
        return 2
    try:
        app = create_app(args.db, settings, db_check_interval=args.db_check_interval)
    except ConfigurationError as error:  # the schema provider refused at start
        print(f"warehouse: {error}", file=sys.stderr)
        return 2
    agent = app.extensions[EXTENSION_KEY]
    logger.info("schema ETag %s, instance %s", agent.schema_cache.current()[1], agent.instance_id)
    try:
        if args.server == "waitress":
            waitress.serve(app, agent=agent, host=args.host, port=args.port)
        else:
            serve_agent_until_signalled(app, agent, args.host, args.port)
    except ListenError as error:
        print(f"warehouse: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
