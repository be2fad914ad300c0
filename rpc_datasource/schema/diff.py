"""What changed between two schemas: collections and fields added or removed (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SchemaDiff:
    """Collections and `collection.field` names added or removed."""

    collections_added: list[str] = field(default_factory=list)
    collections_removed: list[str] = field(default_factory=list)
    fields_added: list[str] = field(default_factory=list)
    fields_removed: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One short line, e.g. `+field products.weight_grams`."""
        parts = [f"+collection {name}" for name in self.collections_added]
        parts += [f"-collection {name}" for name in self.collections_removed]
        parts += [f"+field {name}" for name in self.fields_added]
        parts += [f"-field {name}" for name in self.fields_removed]
        return ", ".join(parts) or "no collection or field added or removed"


def _named(items: Any) -> list[dict[str, Any]]:
    """The dict entries of a list that have a name; anything else is skipped."""
    if not isinstance(items, list):
        return []
    return [item for item in items if isinstance(item, dict) and item.get("name") is not None]


def _fields_by_collection(schema: dict[str, Any]) -> dict[str, set[str]]:
    return {
        str(collection["name"]): {str(field["name"]) for field in _named(collection.get("fields"))}
        for collection in _named(schema.get("collections"))
    }


def diff_schemas(old: dict[str, Any], new: dict[str, Any]) -> SchemaDiff:
    """Compare two schemas by collection name and field name."""
    before, after = _fields_by_collection(old), _fields_by_collection(new)
    kept = before.keys() & after.keys()
    return SchemaDiff(
        collections_added=sorted(after.keys() - before.keys()),
        collections_removed=sorted(before.keys() - after.keys()),
        fields_added=sorted(f"{c}.{f}" for c in kept for f in after[c] - before[c]),
        fields_removed=sorted(f"{c}.{f}" for c in kept for f in before[c] - after[c]),
    )
