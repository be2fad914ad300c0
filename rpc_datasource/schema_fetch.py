"""Reading an agent's /rpc-schema, conditionally on the ETag we already hold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from rpc_common.signing import SignatureScheme
from rpc_datasource.http import AgentRequestError, json_object, signed_get


class SchemaFetchError(Exception):
    """The schema could not be read: the message names the URL and the cause."""


@dataclass(frozen=True)
class FetchedSchema:
    """A 200 answer: the schema and its ETag."""

    schema: dict[str, Any]
    etag: str | None


def fetch_schema(
    session: requests.Session,
    url: str,
    secret: str,
    *,
    timeout: float,
    scheme: SignatureScheme = "v2",
    if_none_match: str | None = None,
) -> FetchedSchema | None:
    """The schema, or None when the agent answers 304 to `if_none_match`."""
    extra = {"If-None-Match": if_none_match} if if_none_match else None
    try:
        reply = signed_get(
            session, url, secret, timeout=timeout, scheme=scheme, extra_headers=extra
        )
    except AgentRequestError as error:
        raise SchemaFetchError(f"cannot read the schema at {url}: {error}") from None
    if reply.status == 304:
        return None
    if reply.status != 200:
        raise SchemaFetchError(
            f"cannot read the schema at {url}: {_describe_refusal(reply.status, reply.body)}"
        )
    schema = json_object(reply.body)
    if schema is None or not isinstance(schema.get("collections"), list):
        raise SchemaFetchError(f"cannot read the schema at {url}: the answer is not a schema")
    return FetchedSchema(schema, reply.headers.get("ETag"))


def _describe_refusal(status: int, body: bytes) -> str:
    reason = (json_object(body) or {}).get("reason")
    return f"HTTP {status}" + (f" ({reason})" if reason else "")
