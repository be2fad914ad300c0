"""Signed HTTP GETs to an agent with a pooled session, a time limit and a body size cap."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError

from rpc_common.signing import SignatureScheme, signed_headers

MAX_BODY_BYTES = 1 << 20


class AgentRequestError(Exception):
    """The request got no usable answer: no connection, a timeout, or an oversized body."""


@dataclass(frozen=True)
class AgentResponse:
    """What came back: status, a few headers, the body, and how long it took."""

    status: int
    headers: dict[str, str]
    body: bytes
    latency_s: float


def json_object(body: bytes) -> dict[str, Any] | None:
    """An answer's body as a JSON object; None for anything else, however malformed."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


def request_target(url: str) -> str:
    """The path and query of `url`, as the signature binds them."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def new_session() -> requests.Session:
    """A keep-alive session that never reads proxy or netrc settings from the environment."""
    session = requests.Session()
    session.trust_env = False
    return session


def signed_get(
    session: requests.Session,
    url: str,
    secret: str,
    *,
    timeout: float,
    scheme: SignatureScheme = "v2",
    extra_headers: dict[str, str] | None = None,
) -> AgentResponse:
    """One freshly signed GET, redirects not followed; gives up after `timeout` of silence."""
    headers = signed_headers(secret, target=request_target(url), scheme=scheme)
    headers.update(extra_headers or {})
    started = time.monotonic()
    try:
        # A redirect is an answer of its own: following it would send our signature elsewhere.
        with session.get(
            url, headers=headers, timeout=(timeout, timeout), stream=True, allow_redirects=False
        ) as reply:
            body = reply.raw.read(MAX_BODY_BYTES + 1, decode_content=True)
            elapsed = time.monotonic() - started
            if len(body) > MAX_BODY_BYTES:
                raise AgentRequestError(f"body over {MAX_BODY_BYTES} bytes")
            if elapsed > timeout:
                raise AgentRequestError(f"timed out: answer took {elapsed:.2f} s")
            kept = {name: reply.headers[name] for name in ("Date", "ETag") if name in reply.headers}
            return AgentResponse(reply.status_code, kept, body, elapsed)
    except (requests.Timeout, ReadTimeoutError):
        raise AgentRequestError(f"timed out after {timeout:g} s") from None
    except (requests.RequestException, Urllib3Error, OSError) as error:
        raise AgentRequestError(f"connection failed: {_innermost_message(error)}") from None


def _innermost_message(error: BaseException) -> str:
    """The message of the deepest chained exception, e.g. `[Errno 111] Connection refused`."""
    while (inner := error.__cause__ or error.__context__) is not None:
        error = inner
    text = str(error)
    errno_at = text.find("[Errno")
    return text[errno_at:] if errno_at >= 0 else text or type(error).__name__
