"""HMAC-SHA256 request signing and verification for the RPC wire protocol (pure, no I/O)."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from rpc_common.protocol import SIGNATURE_HEADER, TIMESTAMP_HEADER

BOUND_PREFIX = "v2="
DEFAULT_CLOCK_SKEW = 300.0
# Real timestamps are ~30 characters; anything far longer is refused before parsing.
MAX_TIMESTAMP_LENGTH = 64

SignatureScheme = Literal["v1", "v2"]

# ISO 8601 date-time with an explicit zone, ASCII digits only; fromisoformat alone is laxer.
# Up to nanoseconds, as Go's RFC3339Nano and Java's Instant print them.
_TIMESTAMP_SHAPE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]{1,9})?)?"
    r"([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)"
)
# Python's datetime holds microseconds: digits past the sixth are dropped.
_SUB_MICROSECOND = re.compile(r"(?<=[.,][0-9]{6})[0-9]{1,3}")


class VerificationFailure(StrEnum):
    """Why a request was refused: the `reason` of the agent's 401 body."""

    MISSING_HEADERS = "missing_headers"
    MALFORMED_TIMESTAMP = "malformed_timestamp"
    TIMESTAMP_OUT_OF_WINDOW = "timestamp_out_of_window"
    BAD_SIGNATURE = "bad_signature"


def format_timestamp(moment: datetime) -> str:
    """Render an aware datetime as the ISO 8601 UTC form clients send, e.g. `...09:30:00.123Z`."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_timestamp(value: str) -> datetime | None:
    """Parse an ISO 8601 timestamp with an explicit UTC offset; None when it is not one."""
    if len(value) > MAX_TIMESTAMP_LENGTH or not _TIMESTAMP_SHAPE.fullmatch(value):
        return None
    try:
        microseconds = _SUB_MICROSECOND.sub("", value, count=1)
        parsed = datetime.fromisoformat(microseconds.replace(",", ".").upper())
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            return None
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


EMPTY_BODY_DIGEST = hashlib.sha256(b"").hexdigest()


def body_digest(body: bytes) -> str:
    """Lowercase hex SHA-256 of a request body (of b"" when there is none)."""
    return hashlib.sha256(body).hexdigest() if body else EMPTY_BODY_DIGEST


def _hmac_hex(secret: str, message: str) -> str:
    return hmac.digest(secret.encode("utf-8"), message.encode("utf-8"), "sha256").hex()


def sign_original(secret: str, timestamp: str) -> str:
    """The original scheme: HMAC-SHA256 of the timestamp alone."""
    return _hmac_hex(secret, timestamp)


def sign_bound(secret: str, timestamp: str, method: str, target: str, body: bytes = b"") -> str:
    """The request-bound `v2` scheme: HMAC over timestamp, method, target and body digest."""
    message = "\n".join([timestamp, method.upper(), target, body_digest(body)])
    return BOUND_PREFIX + _hmac_hex(secret, message)


def signed_headers(
    secret: str,
    *,
    method: str = "GET",
    target: str = "/",
    body: bytes = b"",
    scheme: SignatureScheme = "v2",
    now: datetime | None = None,
) -> dict[str, str]:
    """Build the `X-Timestamp` and `X-Signature` headers for a request sent now."""
    timestamp = format_timestamp(now or datetime.now(UTC))
    if scheme == "v1":
        signature = sign_original(secret, timestamp)
    else:
        signature = sign_bound(secret, timestamp, method, target, body)
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature}


def _signature_matches(provided: str, expected: str) -> bool:
    # compare_digest on str refuses non-ASCII input, so compare bytes instead.
    return hmac.compare_digest(
        expected.encode("ascii"), provided.encode("utf-8", errors="surrogatepass")
    )


def verify_request(
    timestamp: str | None,
    signature: str | None,
    *,
    method: str,
    target: str,
    body: bytes,
    secrets: Iterable[str],
    allowed_clock_skew: float = DEFAULT_CLOCK_SKEW,
    require_bound: bool = False,
    now: datetime | None = None,
) -> VerificationFailure | None:
    """Check a request's `X-Timestamp` and `X-Signature`; None when accepted, else why not."""
    if not timestamp or not signature:
        return VerificationFailure.MISSING_HEADERS
    sent_at = parse_timestamp(timestamp)
    if sent_at is None:
        return VerificationFailure.MALFORMED_TIMESTAMP
    current = now or datetime.now(UTC)
    if abs((current - sent_at).total_seconds()) > allowed_clock_skew:
        return VerificationFailure.TIMESTAMP_OUT_OF_WINDOW
    bound = signature.startswith(BOUND_PREFIX)
    if require_bound and not bound:
        return VerificationFailure.BAD_SIGNATURE
    for secret in secrets:
        if bound:
            expected = sign_bound(secret, timestamp, method, target, body)
        else:
            expected = sign_original(secret, timestamp)
        if _signature_matches(signature, expected):
            return None
    return VerificationFailure.BAD_SIGNATURE
