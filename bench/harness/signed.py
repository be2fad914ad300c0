"""One signed request to an agent, on a raw `http.client` connection (no pooling, no retry),
so a benchmark sees exactly what the agent answered."""

from __future__ import annotations

import http.client
from dataclasses import dataclass
from urllib.parse import urlsplit

from rpc_common.signing import SignatureScheme, signed_headers


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def signed_get(
    url: str,
    target: str,
    secret: str,
    *,
    timeout: float = 5.0,
    scheme: SignatureScheme = "v2",
    headers: dict[str, str] | None = None,
) -> Answer:
    """GET `target` (path and query) of the server at `url`, signed with `secret`; `OSError`
    (refused, reset, timed out) when no answer comes."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port, timeout=timeout
    )
    try:
        sent = {
            **signed_headers(secret, method="GET", target=target, scheme=scheme),
            **(headers or {}),
        }
        connection.request("GET", target, headers=sent)
        response = connection.getresponse()
        return Answer(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()
