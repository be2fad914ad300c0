"""Calling the application's callbacks: one that raises is logged and never stops the caller."""

from __future__ import annotations

import logging
from collections.abc import Callable


def call_logged(
    logger: logging.Logger, what: str, callback: Callable[..., object] | None, *args: object
) -> bool:
    """Call `callback(*args)` if there is one; False, with the traceback logged, if it raised."""
    if callback is None:
        return True
    try:
        callback(*args)
    except Exception:
        logger.exception("%s raised; carrying on", what)
        return False
    return True
