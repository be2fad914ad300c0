"""fetch_schema against a real (scripted) agent on 127.0.0.1: what each answer becomes, that
nothing odd escapes, and the schema size cap."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from rpc_common.protocol import DEFAULT_SCHEMA_MAX_BYTES
from rpc_datasource import AgentEndpoint, SchemaFetchError
from rpc_datasource.runtime.engine import new_session
from rpc_datasource.schema.fetch import FetchedSchema, fetch_schema
from tests.support import TEST_SECRET, closed_port
from tests.support.scripted_server import Answer, ScriptedServer, scripted_server

SCHEMA_PATH = "/forest/rpc-schema"
SCHEMA = {"collections": [{"name": "products", "fields": []}], "charts": []}


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with scripted_server() as running:
        yield running


def endpoint_at(root: str, **options: Any) -> AgentEndpoint:
    """The endpoint of an agent whose routes are under `root` + `/forest`."""
    options.setdefault("timeout", 2.0)
    return AgentEndpoint(root + "/forest", TEST_SECRET, **options)


def fetch(endpoint: AgentEndpoint, if_none_match: str | None = None) -> FetchedSchema | None:
    """One `fetch_schema` in a fresh session."""

    async def run() -> FetchedSchema | None:
        async with new_session() as session:
            return await fetch_schema(session, endpoint, if_none_match)

    return asyncio.run(run())


def test_a_schema_and_its_etag(server: ScriptedServer) -> None:
    server.script(Answer.json(SCHEMA, headers={"ETag": '"abc"'}))
    fetched = fetch(endpoint_at(server.url))
    assert fetched is not None
    assert fetched.schema == SCHEMA
    assert fetched.etag == '"abc"'

    [request] = server.received
    assert request.target == SCHEMA_PATH
    assert "If-None-Match" not in request.headers
    assert request.headers["X-Signature"].startswith("v2=")


def test_not_modified_is_none_and_sends_the_etag(server: ScriptedServer) -> None:
    server.script(Answer(304))
    assert fetch(endpoint_at(server.url), if_none_match='"abc"') is None
    [request] = server.received
    assert request.headers["If-None-Match"] == '"abc"'


def test_a_refusal_names_the_url_and_the_agents_reason(server: ScriptedServer) -> None:
    server.script(Answer.json({"error": "Unauthorized", "reason": "bad_signature"}, status=401))
    url = server.url + SCHEMA_PATH
    with pytest.raises(SchemaFetchError, match=re.escape(f"{url}: HTTP 401 (bad_signature)")):
        fetch(endpoint_at(server.url))


def test_a_401_also_names_the_reasons_usual_cause(server: ScriptedServer) -> None:
    server.script(Answer.json({"error": "Unauthorized", "reason": "bad_signature"}, status=401))
    with pytest.raises(SchemaFetchError) as raised:
        fetch(endpoint_at(server.url))
    message = str(raised.value)
    assert "FOREST_AUTH_PREVIOUS_SECRETS" in message
    assert "rewrites the path" in message
    assert "docs/protocol.md" in message


def test_another_refusal_gets_no_401_hint(server: ScriptedServer) -> None:
    server.script(Answer.json({"error": "bad_request", "reason": "bad_signature"}, status=400))
    with pytest.raises(SchemaFetchError) as raised:
        fetch(endpoint_at(server.url))
    assert str(raised.value).endswith("HTTP 400 (bad_signature)")


def test_no_connection_names_the_url_and_the_cause() -> None:
    root = f"http://127.0.0.1:{closed_port()}"
    url = root + SCHEMA_PATH
    with pytest.raises(SchemaFetchError, match=re.escape(f"{url}: connection failed")):
        fetch(endpoint_at(root))


def test_a_silent_agent_is_a_fetch_error_at_the_timeout(server: ScriptedServer) -> None:
    server.script(Answer.never())
    with pytest.raises(SchemaFetchError, match=re.escape("timed out after 0.5 s")):
        fetch(endpoint_at(server.url, timeout=0.5))


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
def test_a_body_that_is_not_a_schema_is_a_fetch_error(server: ScriptedServer, body: bytes) -> None:
    server.script(Answer(200, body, {"Content-Type": "application/json"}))
    with pytest.raises(SchemaFetchError, match="the answer is not a schema"):
        fetch(endpoint_at(server.url))


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b"oops", b"[1]"])
def test_an_error_body_that_is_not_a_json_object_still_names_the_status(
    server: ScriptedServer, body: bytes
) -> None:
    server.script(Answer(500, body))
    with pytest.raises(SchemaFetchError, match=r"HTTP 500$"):
        fetch(endpoint_at(server.url))


def big_schema(at_least_bytes: int) -> dict[str, Any]:
    """A valid schema whose JSON is at least `at_least_bytes` long."""
    fields = [{"name": f"field_{index}", "type": "String"} for index in range(20)]
    collection_size = len(json.dumps({"name": "collection_00000", "fields": fields}))
    count = at_least_bytes // collection_size + 1
    collections = [{"name": f"collection_{index:05d}", "fields": fields} for index in range(count)]
    return {"collections": collections, "charts": []}


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
def test_a_schema_over_the_cap_is_one_fetch_error_naming_the_cap_and_its_setting(
    server: ScriptedServer, gzipped: bool
) -> None:
    cap = 10_000
    schema = big_schema(cap + 1)
    if gzipped:  # on the wire under the cap: only the decoded size can trip it
        assert len(gzip.compress(json.dumps(schema).encode())) < cap
    server.script(Answer.json(schema, gzip=gzipped))
    with pytest.raises(SchemaFetchError) as raised:
        fetch(endpoint_at(server.url, schema_max_bytes=cap))
    message = str(raised.value)
    assert f"body over {cap} bytes" in message
    assert "FOREST_SCHEMA_MAX_BYTES" in message
    assert server.received[0].target == SCHEMA_PATH
    assert len(server.received) == 1  # not retried


def test_a_schema_of_one_and_a_half_megabytes_is_read_with_the_default_cap(
    server: ScriptedServer,
) -> None:
    schema = big_schema(1_500_000)
    assert 1_500_000 <= len(json.dumps(schema)) < DEFAULT_SCHEMA_MAX_BYTES
    server.script(Answer.json(schema, headers={"ETag": '"big"'}))
    fetched = fetch(endpoint_at(server.url))
    assert fetched is not None
    assert fetched.schema == schema
    assert fetched.etag == '"big"'
