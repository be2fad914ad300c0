"""The servers' own log lines on stderr when the application configured no logging."""

from __future__ import annotations

import logging

AGENT_LOGGER = "rpc_agent"
LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_to_stderr_unless_configured() -> None:
    """As Werkzeug's server does: when no handler would show the agent's records, send them
    (INFO and up: where it serves, the stop, refusals) to stderr, so a server started from a
    bare script says where it listens. An application's own logging set-up wins."""
    agent_logger = logging.getLogger(AGENT_LOGGER)
    if agent_logger.hasHandlers():
        return
    if agent_logger.level == logging.NOTSET:
        agent_logger.setLevel(logging.INFO)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LINE_FORMAT))
    agent_logger.addHandler(handler)
