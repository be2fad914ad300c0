"""Reading an agent's answer body as a JSON object, whatever the peer sent (pure)."""

from __future__ import annotations

import json
from typing import Any


def json_object(body: bytes) -> dict[str, Any] | None:
    """An answer's body as a JSON object; None for anything else, however malformed."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None
