"""`python -m examples.warehouse_asgi --host H --port P --db PATH`: the FastAPI warehouse on
uvicorn (the same as `uvicorn --factory`, with the settings checked first)."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

import uvicorn

from examples.warehouse.cli import parse_arguments, settings_or_none
from examples.warehouse_asgi.app import create_app

logger = logging.getLogger("examples.warehouse_asgi")


def ignore_signal(_signum: int, _frame: FrameType | None) -> None:
    """uvicorn raises the stop signal again once it has stopped gracefully: exit 0 instead."""


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load settings from the environment, serve until signalled."""
    args = parse_arguments("examples.warehouse_asgi", __doc__, argv)
    settings = settings_or_none("warehouse_asgi")
    if settings is None:
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
