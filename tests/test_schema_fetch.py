"""fetch_schema against a faked agent: what each answer becomes, and that nothing odd escapes."""

from __future__ import annotations

import pytest
import responses

from rpc_datasource import SchemaFetchError
from rpc_datasource.http import new_session
from rpc_datasource.schema_fetch import fetch_schema
from tests.support import TEST_SECRET

URL = "http://agent.test/forest/rpc-schema"
SCHEMA = {"collections": [{"name": "products", "fields": []}], "charts": []}


@responses.activate
def test_a_schema_and_its_etag() -> None:
    responses.get(URL, json=SCHEMA, headers={"ETag": '"abc"'})
    fetched = fetch_schema(new_session(), URL, TEST_SECRET, timeout=2)
    assert fetched is not None
    assert fetched.schema == SCHEMA
    assert fetched.etag == '"abc"'


@responses.activate
def test_not_modified_is_none_and_sends_the_etag() -> None:
    responses.get(URL, status=304)
    assert fetch_schema(new_session(), URL, TEST_SECRET, timeout=2, if_none_match='"abc"') is None
    assert responses.calls[0].request.headers["If-None-Match"] == '"abc"'


@responses.activate
def test_a_refusal_names_the_url_and_the_agents_reason() -> None:
    responses.get(URL, status=401, json={"error": "Unauthorized", "reason": "bad_signature"})
    with pytest.raises(SchemaFetchError, match=r"rpc-schema: HTTP 401 \(bad_signature\)"):
        fetch_schema(new_session(), URL, TEST_SECRET, timeout=2)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"collections": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"not json",
        b"\xff\xfe",
        b'["a list"]',
        b'{"collections": "not a list"}',
    ],
)
@responses.activate
def test_a_body_that_is_not_a_schema_is_a_fetch_error(body: bytes) -> None:
    responses.get(URL, body=body, content_type="application/json")
    with pytest.raises(SchemaFetchError, match="the answer is not a schema"):
        fetch_schema(new_session(), URL, TEST_SECRET, timeout=2)


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b"oops", b"[1]"])
@responses.activate
def test_an_error_body_that_is_not_a_json_object_still_names_the_status(body: bytes) -> None:
    responses.get(URL, status=500, body=body)
    with pytest.raises(SchemaFetchError, match=r"HTTP 500$"):
        fetch_schema(new_session(), URL, TEST_SECRET, timeout=2)
