"""The command line both warehouses share: `--host --port --db --log-level`, logging, and
the agent's settings from the environment."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from examples.logs import configure_logging
from rpc_agent import AgentSettings
from rpc_common.settings import ConfigurationError


def parse_arguments(
    prog: str, description: str | None, argv: list[str] | None, *, choose_server: bool = False
) -> argparse.Namespace:
    """The warehouse's arguments (`--server` too, for a WSGI app that may run on either);
    logging is configured at the level asked."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--db", type=Path, default=Path("warehouse.db"))
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--db-check-interval",
        type=float,
        default=5.0,
        help="seconds between the agent's readiness checks of the database (default 5)",
    )
    if choose_server:
        parser.add_argument(
            "--server",
            choices=("runner", "waitress"),
            default="runner",
            help="the project's runner (uvicorn), or waitress with the agent's graceful stop",
        )
    arguments = parser.parse_args(argv)
    configure_logging(arguments.log_level)
    return arguments


def settings_or_none(name: str) -> AgentSettings | None:
    """The agent's settings, or None after printing the one-line reason they were refused."""
    try:
        return AgentSettings()
    except ConfigurationError as error:
        print(f"{name}: {error}", file=sys.stderr)
        return None
