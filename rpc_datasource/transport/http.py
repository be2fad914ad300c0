"""Signed GETs to an agent over aiohttp: one total deadline, a body cap, a reason on failure."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from dataclasses import dataclass

import aiohttp

from rpc_datasource.health.state import FailureReason
from rpc_datasource.transport.endpoint import AgentEndpoint

KEPT_HEADERS = ("Date", "ETag")


class AgentRequestError(Exception):
    """The request got no usable answer; `reason` says which kind of failure it was."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class AgentResponse:
    """What came back: status, a few headers, the body, and how long it took."""

    status: int
    headers: dict[str, str]
    body: bytes
    latency_s: float


async def signed_get(
    session: aiohttp.ClientSession,
    endpoint: AgentEndpoint,
    url: str,
    *,
    max_bytes: int,
    extra_headers: dict[str, str] | None = None,
    timeout: float | None = None,
) -> AgentResponse:
    """One freshly signed GET of `url`, redirects not followed.

    `timeout` (by default `endpoint.timeout`) bounds the whole request: name lookup,
    connect, headers and body, so an agent that drip-feeds its answer fails at the deadline
    like one that never answers.
    """
    deadline = endpoint.timeout if timeout is None else timeout
    headers = endpoint.signed_headers(url, extra_headers)
    started = time.monotonic()
    try:
        async with asyncio.timeout(deadline):
            # A redirect is an answer of its own: following it would send our signature away.
            async with session.get(url, headers=headers, allow_redirects=False) as reply:
                body = await _read_capped(reply, max_bytes)
                kept = {name: reply.headers[name] for name in KEPT_HEADERS if name in reply.headers}
                return AgentResponse(reply.status, kept, body, time.monotonic() - started)
    except TimeoutError:
        raise AgentRequestError(FailureReason.TIMEOUT, f"timed out after {deadline:g} s") from None
    except aiohttp.ClientSSLError as error:
        raise AgentRequestError(FailureReason.CONNECTION, _tls_message(error)) from None
    except aiohttp.ClientConnectorDNSError as error:
        raise AgentRequestError(FailureReason.DNS, f"name lookup failed: {error}") from None
    except aiohttp.ClientConnectorError as error:
        reason = (
            FailureReason.REFUSED
            if error.os_error.errno == errno.ECONNREFUSED
            else FailureReason.CONNECTION
        )
        raise AgentRequestError(reason, f"connection failed: {_os_message(error)}") from None
    except (aiohttp.ClientError, OSError, ValueError) as error:
        raise AgentRequestError(
            FailureReason.CONNECTION, f"connection failed: {_os_message(error)}"
        ) from None


async def _read_capped(reply: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The (decoded) body, refused as soon as it passes `max_bytes`."""
    too_large = AgentRequestError(FailureReason.BAD_BODY, f"body over {max_bytes} bytes")
    declared = reply.content_length
    if declared is not None and declared > max_bytes:
        reply.close()
        raise too_large
    if declared is not None and not reply.headers.get("Content-Encoding"):
        return await reply.read()  # exactly `declared` bytes: within the cap
    body = bytearray()
    async for chunk in reply.content.iter_any():
        body += chunk
        if len(body) > max_bytes:
            reply.close()
            raise too_large
    return bytes(body)


def _tls_message(error: aiohttp.ClientSSLError) -> str:
    """`TLS failed (WRONG_VERSION_NUMBER): ...`: the TLS cause, which errno 1 would hide."""
    cause = getattr(error, "os_error", None) or error.__cause__
    reason = getattr(cause, "reason", None) or type(error).__name__
    hint = ""
    if reason == "WRONG_VERSION_NUMBER":
        hint = ": the agent answers plain HTTP here (use an http:// URI)"
    return f"TLS failed ({reason}){hint}"


def _os_message(error: BaseException) -> str:
    """`[Errno 111] Connection refused` rather than aiohttp's wording with the host in it."""
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, OSError) and current.errno:
            return f"[Errno {current.errno}] {os.strerror(current.errno)}"
        current = current.__cause__ or current.__context__
    return str(error) or type(error).__name__
