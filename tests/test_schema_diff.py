"""Unit tests of the schema diff (collections and fields added or removed)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from rpc_datasource.schema.diff import SchemaDiff, diff_schemas


def collection(name: str, *fields: str) -> dict[str, Any]:
    return {
        "name": name,
        "fields": [{"name": field, "type": "String"} for field in fields],
        "actions": [],
    }


def schema(*collections: dict[str, Any]) -> dict[str, Any]:
    return {"collections": list(collections), "charts": []}


BASE = schema(
    collection("products", "id", "name", "price"),
    collection("orders", "id", "product_id", "quantity"),
)


def test_nothing_changed() -> None:
    diff = diff_schemas(BASE, copy.deepcopy(BASE))
    assert diff == SchemaDiff()
    assert diff.collections_added == []
    assert diff.collections_removed == []
    assert diff.fields_added == []
    assert diff.fields_removed == []
    text = diff.describe()
    assert text
    assert "+" not in text
    assert "-" not in text


def test_order_of_collections_and_fields_does_not_matter() -> None:
    reordered = schema(
        collection("orders", "quantity", "id", "product_id"),
        collection("products", "price", "id", "name"),
    )
    assert diff_schemas(BASE, reordered) == SchemaDiff()


def test_other_keys_do_not_matter() -> None:
    changed = copy.deepcopy(BASE)
    changed["charts"] = [{"name": "sales"}]
    changed["collections"][0]["fields"][0]["type"] = "Number"
    changed["collections"][0]["actions"] = [{"name": "restock"}]
    assert diff_schemas(BASE, changed) == SchemaDiff()


def test_added_field() -> None:
    new = schema(
        collection("products", "id", "name", "price", "weight_grams"),
        collection("orders", "id", "product_id", "quantity"),
    )
    diff = diff_schemas(BASE, new)
    assert diff.fields_added == ["products.weight_grams"]
    assert diff.fields_removed == []
    assert diff.collections_added == []
    assert diff.collections_removed == []
    assert "+field products.weight_grams" in diff.describe()


def test_removed_field() -> None:
    new = schema(
        collection("products", "id", "name"),
        collection("orders", "id", "product_id", "quantity"),
    )
    diff = diff_schemas(BASE, new)
    assert diff.fields_removed == ["products.price"]
    assert diff.fields_added == []
    assert "-field products.price" in diff.describe()


def test_renamed_field_is_one_removed_and_one_added() -> None:
    new = schema(
        collection("products", "id", "name", "price"),
        collection("orders", "id", "product_id", "qty"),
    )
    diff = diff_schemas(BASE, new)
    assert diff.fields_added == ["orders.qty"]
    assert diff.fields_removed == ["orders.quantity"]


def test_added_collection() -> None:
    new = schema(*BASE["collections"], collection("customers", "id", "email"))
    diff = diff_schemas(BASE, new)
    assert diff.collections_added == ["customers"]
    assert diff.collections_removed == []
    # The fields of a new collection come with it; they are not listed one by one.
    assert diff.fields_added == []
    assert "+collection customers" in diff.describe()


def test_removed_collection() -> None:
    new = schema(collection("products", "id", "name", "price"))
    diff = diff_schemas(BASE, new)
    assert diff.collections_removed == ["orders"]
    assert diff.collections_added == []
    assert diff.fields_removed == []
    assert "-collection orders" in diff.describe()


def test_everything_at_once_sorted_and_described() -> None:
    new = schema(
        collection("products", "id", "price", "weight_grams", "colour"),
        collection("zones", "id"),
        collection("customers", "id"),
    )
    diff = diff_schemas(BASE, new)
    assert diff.collections_added == ["customers", "zones"]
    assert diff.collections_removed == ["orders"]
    assert diff.fields_added == ["products.colour", "products.weight_grams"]
    assert diff.fields_removed == ["products.name"]
    text = diff.describe()
    for part in (
        "+collection customers",
        "+collection zones",
        "-collection orders",
        "+field products.colour",
        "+field products.weight_grams",
        "-field products.name",
    ):
        assert part in text
    assert "\n" not in text


def test_from_and_to_empty_schema() -> None:
    assert diff_schemas({}, BASE).collections_added == ["orders", "products"]
    assert diff_schemas(BASE, {}).collections_removed == ["orders", "products"]
    assert diff_schemas({}, {}) == SchemaDiff()


def test_collection_without_fields_key() -> None:
    old = schema({"name": "products"})
    new = schema(collection("products", "id"))
    assert diff_schemas(old, new).fields_added == ["products.id"]


def test_malformed_collections_are_skipped() -> None:
    malformed: list[Any] = [
        {"fields": [{"name": "id"}]},  # no name
        "products",
        None,
        42,
        ["orders"],
    ]
    old = {"collections": [*malformed, collection("products", "id")]}
    new = {"collections": [collection("products", "id", "sku"), *malformed[:2]]}
    diff = diff_schemas(old, new)
    assert diff.collections_added == []
    assert diff.collections_removed == []
    assert diff.fields_added == ["products.sku"]
    assert diff.fields_removed == []


def test_fields_that_are_not_dicts_are_skipped() -> None:
    old = schema({"name": "products", "fields": ["id", None, 3, ["x"], {"name": "id"}]})
    new = schema({"name": "products", "fields": [{"name": "id"}, {"name": "sku"}, "price"]})
    diff = diff_schemas(old, new)
    assert diff.fields_added == ["products.sku"]
    assert diff.fields_removed == []


def test_fields_without_a_name_are_skipped() -> None:
    # A field dict without a name is as malformed as a field that is not a dict: it must not
    # turn into a field called "None".
    old = schema({"name": "products", "fields": [{"name": "id"}, {"type": "String"}]})
    new = schema({"name": "products", "fields": [{"name": "id"}]})
    diff = diff_schemas(old, new)
    assert diff.fields_removed == []
    assert "None" not in diff.describe()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param({"collections": None}, BASE, id="collections-null"),
        pytest.param(
            schema({"name": "products", "fields": None}),
            schema(collection("products", "id")),
            id="fields-null",
        ),
    ],
)
def test_null_containers_do_not_raise(old: dict[str, Any], new: dict[str, Any]) -> None:
    diff = diff_schemas(old, new)
    assert isinstance(diff.describe(), str)
