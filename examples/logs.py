"""Logging set-up shared by the example programs: one timestamped line per record."""

from __future__ import annotations

import logging


def configure_logging(level: str = "INFO") -> None:
    """Send records to stderr as `time level logger: message`."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
