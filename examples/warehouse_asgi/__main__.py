"""`python -m examples.warehouse_asgi --host H --port P --db PATH`: the FastAPI warehouse,
its agent as ASGI middleware, on uvicorn (the project's runner for an ASGI app)."""

from __future__ import annotations

import logging
import sys

from examples.warehouse.cli import parse_arguments, settings_or_none
from examples.warehouse_asgi.app import create_app
from rpc_agent.servers.listening import ListenError
from rpc_agent.servers.runner import serve_asgi_until_signalled

logger = logging.getLogger("examples.warehouse_asgi")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load settings from the environment, serve until signalled."""
    args = parse_arguments("examples.warehouse_asgi", __doc__, argv)
    settings = settings_or_none("warehouse_asgi")
    if settings is None:
        return 2
    app = create_app(args.db, settings, db_check_interval=args.db_check_interval)
    logger.info(
        "schema ETag %s, instance %s", app.agent.schema_answer().etag, app.agent.instance_id
    )
    try:
        serve_asgi_until_signalled(app, args.host, args.port)
    except ListenError as error:
        print(f"warehouse_asgi: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
