"""Reading an agent's /rpc-schema, conditionally on the ETag we already hold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from rpc_common.protocol import IF_NONE_MATCH_HEADER, url_target
from rpc_datasource.health.json_body import json_object
from rpc_datasource.health.response import not_found_hint, unauthorized_hint
from rpc_datasource.health.state import FailureReason
from rpc_datasource.transport.endpoint import AgentEndpoint
from rpc_datasource.transport.http import AgentRequestError, signed_get

SCHEMA_CAP_SETTING = "FOREST_SCHEMA_MAX_BYTES"


class SchemaFetchError(Exception):
    """The schema could not be read: the message names the URL and the cause."""


@dataclass(frozen=True)
class FetchedSchema:
    """A 200 answer: the schema and its ETag."""

    schema: dict[str, Any]
    etag: str | None


async def fetch_schema(
    session: aiohttp.ClientSession, endpoint: AgentEndpoint, if_none_match: str | None = None
) -> FetchedSchema | None:
    """The schema, or None when the agent answers 304 to `if_none_match`."""
    url = endpoint.schema_url
    extra = {IF_NONE_MATCH_HEADER: if_none_match} if if_none_match else None
    try:
        reply = await signed_get(
            session, endpoint, url, max_bytes=endpoint.schema_max_bytes, extra_headers=extra
        )
    except AgentRequestError as error:
        cause = str(error)
        if error.reason is FailureReason.BAD_BODY:
            cause += f" (raise schema_max_bytes / {SCHEMA_CAP_SETTING} for a larger schema)"
        raise SchemaFetchError(f"cannot read the schema at {url}: {cause}") from None
    if reply.status == 304:
        return None
    if reply.status != 200:
        raise SchemaFetchError(
            f"cannot read the schema at {url}: {_describe_refusal(reply.status, reply.body, url)}"
        )
    schema = json_object(reply.body)
    if schema is None or not isinstance(schema.get("collections"), list):
        raise SchemaFetchError(f"cannot read the schema at {url}: the answer is not a schema")
    return FetchedSchema(schema, reply.headers.get("ETag"))


def _describe_refusal(status: int, body: bytes, url: str) -> str:
    reason = (json_object(body) or {}).get("reason")
    hint = ""
    if status == 401:
        hint = unauthorized_hint(reason)
    elif status == 404:
        hint = not_found_hint(url_target(url))
    return f"HTTP {status}" + (f" ({reason})" if reason else "") + hint
