"""The schema an agent serves and its strong ETag, derived from the canonical JSON (pure)."""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

Schema = dict[str, Any]
SchemaProvider = Callable[[], Mapping[str, Any]]


def empty_schema() -> Schema:
    """The schema of an agent that exposes nothing yet."""
    return {"collections": [], "charts": []}


def canonical_json(schema: Mapping[str, Any]) -> str:
    """JSON with sorted keys and no spaces: equal content gives equal text."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def schema_etag(schema: Mapping[str, Any]) -> str:
    """A strong ETag (quoted) from the SHA-256 of the canonical JSON."""
    digest = hashlib.sha256(canonical_json(schema).encode("utf-8")).hexdigest()
    return f'"{digest[:32]}"'


class SchemaCache:
    """Asks the provider for the schema and recomputes the ETag only when the content changed."""

    def __init__(
        self, provider: SchemaProvider, on_change: Callable[[], None] | None = None
    ) -> None:
        self._provider = provider
        self._on_change = on_change
        self._lock = threading.Lock()
        self._schema: Schema | None = None
        self._etag = ""

    def current(self) -> tuple[Schema, str]:
        """The provider's schema now and its ETag; `on_change` runs when the ETag moved."""
        fresh = self._provider()
        changed = False
        with self._lock:
            if self._schema is None or fresh != self._schema:
                changed = self._schema is not None
                self._schema = copy.deepcopy(dict(fresh))
                self._etag = schema_etag(self._schema)
            schema, etag = self._schema, self._etag
        if changed and self._on_change is not None:
            self._on_change()
        return schema, etag
