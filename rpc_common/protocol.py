"""The wire protocol between agent and datasource, in one place (pure, no I/O): the routes
and their prefix, the header names, the body caps, the signed request target, ETag matching,
and the legacy SSE route's event names."""

from __future__ import annotations

import functools
from enum import Enum
from urllib.parse import quote, urlsplit

DEFAULT_URL_PREFIX = "/forest"


class Route(Enum):
    """The agent's routes, under the URL prefix; the value is the route's name in events and
    metrics."""

    HEALTH = "health"
    SCHEMA = "rpc-schema"
    SSE = "sse"

    @property
    def path(self) -> str:
        """The route's path under the prefix, e.g. `/health`."""
        return "/" + self.value

    @property
    def label(self) -> str:
        """The route's name in events and metrics: `health`, `rpc-schema`, `sse`."""
        return self.value


TIMESTAMP_HEADER = "X-Timestamp"
SIGNATURE_HEADER = "X-Signature"
IF_NONE_MATCH_HEADER = "If-None-Match"
ETAG_HEADER = "ETag"


def asgi_header(name: str) -> bytes:
    """A header's name as an ASGI scope carries it: lower-case bytes."""
    return name.lower().encode("latin-1")


def wsgi_environ_key(name: str) -> str:
    """A request header's key in a WSGI environ, e.g. `HTTP_X_TIMESTAMP`."""
    return "HTTP_" + name.upper().replace("-", "_")


# Agent routes are GETs; a request body larger than this is refused before it is read.
MAX_REQUEST_BODY = 64 * 1024
# What a client reads of an answer at most, unless told otherwise.
DEFAULT_HEALTH_MAX_BYTES = 64 * 1024
DEFAULT_SCHEMA_MAX_BYTES = 64 * 1024 * 1024

# Characters a request target keeps unquoted in its path (RFC 3986 pchar and "/").
_PATH_SAFE = "/;=,~!$&'()*+:@"


def request_target(path: str, query: str = "", *, quoted: bool = True) -> str:
    """The path and query as the v2 signature binds them; an empty query is no query. A path
    that is not `quoted` yet (a server's decoded path) is quoted as a client would send it."""
    if not quoted:
        path = quote(path, safe=_PATH_SAFE)
    return f"{path}?{query}" if query else path


@functools.lru_cache(maxsize=1024)
def url_target(url: str) -> str:
    """The request target of `url`, as the client sending it signs it."""
    parts = urlsplit(url)
    return request_target(parts.path or "/", parts.query)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an `If-None-Match` value names `etag` (weak comparison, as RFC 9110 asks)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


# The legacy SSE route's events.
HEARTBEAT_EVENT = "heartbeat"
STOP_EVENT = "RpcServerStop"
SUPERSEDED_EVENT = "superseded"
# Sent with `superseded` as the event's `retry`: how long the ended stream's client waits
# before it connects again, so that two masters on one agent don't take turns forever.
SUPERSEDED_RETRY_MS = 30_000
