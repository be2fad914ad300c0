"""The shape of the health request and how answers map to probe results, with a faked peer."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
import responses

from rpc_common.signing import parse_timestamp, verify_request
from rpc_datasource import HealthCheckClient
from rpc_datasource.health_state import ProbeKind
from rpc_datasource.http import MAX_BODY_BYTES, AgentRequestError, new_session, signed_get
from tests.support import OTHER_SECRET, TEST_SECRET, library_threads

BASE = "http://agent.test:5001"
HEALTH_URL = f"{BASE}/forest/health"
HEALTH_BODY: dict[str, Any] = {
    "status": "ok",
    "version": "1.2.3",
    "instance_id": "instance-abc",
    "schema_etag": '"etag-1"',
    "uptime_s": 12.5,
}


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as faked:
        yield faked


@pytest.fixture
def make_client() -> Iterator[Callable[..., HealthCheckClient]]:
    made: list[HealthCheckClient] = []

    def build(
        url: str = HEALTH_URL, secret: str = TEST_SECRET, **options: Any
    ) -> HealthCheckClient:
        client = HealthCheckClient(url, secret, timeout=1.0, **options)
        made.append(client)
        return client

    yield build
    for client in made:
        client.stop()


def sent_headers(mocked: responses.RequestsMock, index: int = -1) -> tuple[str, str]:
    request = mocked.calls[index].request
    return request.headers["X-Timestamp"], request.headers["X-Signature"]


def independent_v1_signature(secret: str, timestamp: str) -> str:
    return hmac.new(secret.encode(), timestamp.encode(), hashlib.sha256).hexdigest()


def independent_v2_signature(secret: str, timestamp: str, target: str) -> str:
    empty_body_digest = hashlib.sha256(b"").hexdigest()
    message = f"{timestamp}\nGET\n{target}\n{empty_body_digest}"
    return "v2=" + hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def verifies(
    timestamp: str,
    signature: str,
    target: str = "/forest/health",
    *,
    secret: str = TEST_SECRET,
    method: str = "GET",
) -> bool:
    """Whether the agent's verifier accepts these headers for a bodiless request."""
    failure = verify_request(
        timestamp, signature, method=method, target=target, body=b"", secrets=[secret]
    )
    return failure is None


# --- what is sent ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "target"),
    [
        (HEALTH_URL, "/forest/health"),
        (f"{HEALTH_URL}?probe=1&x=y", "/forest/health?probe=1&x=y"),
        (f"{BASE}/custom/prefix/health", "/custom/prefix/health"),
    ],
)
def test_v2_signature_binds_the_request_target(
    mocked: responses.RequestsMock, url: str, target: str
) -> None:
    mocked.get(url, json=HEALTH_BODY)
    with new_session() as session:
        reply = signed_get(session, url, TEST_SECRET, timeout=1.0)
    assert reply.status == 200

    timestamp, signature = sent_headers(mocked)
    assert signature.startswith("v2=")
    assert signature == independent_v2_signature(TEST_SECRET, timestamp, target)
    assert verifies(timestamp, signature, target)
    # Bound to this target, this secret, this method.
    assert not verifies(timestamp, signature, "/forest/rpc-schema")
    assert not verifies(timestamp, signature, target, secret=OTHER_SECRET)
    assert not verifies(timestamp, signature, target, method="POST")


def test_timestamp_is_current_utc_iso8601(mocked: responses.RequestsMock) -> None:
    mocked.get(HEALTH_URL, json=HEALTH_BODY)
    before = datetime.now(UTC)
    with new_session() as session:
        signed_get(session, HEALTH_URL, TEST_SECRET, timeout=1.0)
    after = datetime.now(UTC)

    timestamp, _ = sent_headers(mocked)
    assert timestamp.endswith(("Z", "+00:00"))
    sent_at = parse_timestamp(timestamp)
    assert sent_at is not None
    # Millisecond precision: allow the truncation below `before`.
    assert (before - sent_at).total_seconds() < 0.01
    assert sent_at <= after


def test_v1_signature_is_the_hmac_of_the_timestamp(mocked: responses.RequestsMock) -> None:
    mocked.get(HEALTH_URL, json=HEALTH_BODY)
    with new_session() as session:
        signed_get(session, HEALTH_URL, TEST_SECRET, timeout=1.0, scheme="v1")

    timestamp, signature = sent_headers(mocked)
    assert not signature.startswith("v2=")
    assert signature == independent_v1_signature(TEST_SECRET, timestamp)
    assert verifies(timestamp, signature)


@pytest.mark.parametrize("scheme", ["v1", "v2"])
def test_client_probe_sends_signed_headers_in_its_scheme(
    mocked: responses.RequestsMock, make_client: Callable[..., HealthCheckClient], scheme: str
) -> None:
    mocked.get(HEALTH_URL, json=HEALTH_BODY)
    client = make_client(signature_scheme=scheme)
    assert client.probe_now().kind is ProbeKind.OK

    assert len(mocked.calls) == 1
    timestamp, signature = sent_headers(mocked)
    if scheme == "v1":
        assert signature == independent_v1_signature(TEST_SECRET, timestamp)
    else:
        assert signature == independent_v2_signature(TEST_SECRET, timestamp, "/forest/health")


def test_each_probe_is_signed_afresh(
    mocked: responses.RequestsMock, make_client: Callable[..., HealthCheckClient]
) -> None:
    mocked.get(HEALTH_URL, json=HEALTH_BODY)
    client = make_client()
    client.probe_now()
    client.probe_now()

    assert len(mocked.calls) == 2
    first_ts, first_sig = sent_headers(mocked, 0)
    second_ts, second_sig = sent_headers(mocked, 1)
    for timestamp, signature in ((first_ts, first_sig), (second_ts, second_sig)):
        assert verifies(timestamp, signature)
    first_at, second_at = parse_timestamp(first_ts), parse_timestamp(second_ts)
    assert first_at is not None and second_at is not None
    assert second_at >= first_at
    # A different timestamp means a different signature (never a replayed header).
    assert (first_ts == second_ts) == (first_sig == second_sig)


def test_probe_now_starts_no_threads(
    mocked: responses.RequestsMock, make_client: Callable[..., HealthCheckClient]
) -> None:
    mocked.get(HEALTH_URL, json=HEALTH_BODY)
    client = make_client()
    client.probe_now()
    assert library_threads("rpc-health") == []
    assert client.stats().probes == 0  # a diagnostic probe leaves the state machine alone


# --- what comes back -------------------------------------------------------------------------


def test_health_json_is_ok_with_identity(
    mocked: responses.RequestsMock, make_client: Callable[..., HealthCheckClient]
) -> None:
    mocked.get(HEALTH_URL, json=HEALTH_BODY)
    result = make_client().probe_now()
    assert result.kind is ProbeKind.OK
    assert result.instance_id == HEALTH_BODY["instance_id"]
    assert result.schema_etag == HEALTH_BODY["schema_etag"]


def test_any_2xx_with_health_json_is_ok(
    mocked: responses.RequestsMock, make_client: Callable[..., HealthCheckClient]
) -> None:
    mocked.get(HEALTH_URL, json={"status": "ok", "instance_id": "minimal"}, status=203)
    result = make_client().probe_now()
    assert result.kind is ProbeKind.OK
    assert result.instance_id == "minimal"
    assert result.schema_etag is None


def test_503_shutting_down_is_its_own_kind(
    mocked: responses.RequestsMock, make_client: Callable[..., HealthCheckClient]
) -> None:
    mocked.get(HEALTH_URL, json={**HEALTH_BODY, "status": "shutting_down"}, status=503)
    result = make_client().probe_now()
    assert result.kind is ProbeKind.SHUTTING_DOWN
    assert "shutting down" in result.cause


def test_a_503_without_the_shutting_down_body_is_a_plain_failure(
    mocked: responses.RequestsMock, make_client: Callable[..., HealthCheckClient]
) -> None:
    mocked.get(HEALTH_URL, body="Service Unavailable", status=503)
    result = make_client().probe_now()
    assert result.kind is ProbeKind.FAILED
    assert "503" in result.cause


@pytest.mark.parametrize(
    "error",
    [
        requests.ConnectionError("connection refused by the fake peer"),
        requests.exceptions.ChunkedEncodingError("the fake peer hung up"),
    ],
    ids=["connection-error", "broken-body"],
)
def test_a_connection_error_is_a_failure(
    mocked: responses.RequestsMock,
    make_client: Callable[..., HealthCheckClient],
    error: Exception,
) -> None:
    mocked.get(HEALTH_URL, body=error)
    result = make_client().probe_now()
    assert result.kind is ProbeKind.FAILED
    assert result.cause.startswith("connection failed")


def test_signed_get_maps_a_connection_error(mocked: responses.RequestsMock) -> None:
    mocked.get(HEALTH_URL, body=requests.ConnectionError("no route to the fake peer"))
    with new_session() as session, pytest.raises(AgentRequestError, match="connection failed"):
        signed_get(session, HEALTH_URL, TEST_SECRET, timeout=1.0)


def test_a_timeout_is_a_failure(
    mocked: responses.RequestsMock, make_client: Callable[..., HealthCheckClient]
) -> None:
    mocked.get(HEALTH_URL, body=requests.ReadTimeout("the fake peer is silent"))
    result = make_client().probe_now()
    assert result.kind is ProbeKind.FAILED
    assert "timed out" in result.cause


def test_a_body_over_the_cap_is_a_failure(
    mocked: responses.RequestsMock, make_client: Callable[..., HealthCheckClient]
) -> None:
    mocked.get(HEALTH_URL, body=b" " * (MAX_BODY_BYTES + 1), status=200)
    with new_session() as session, pytest.raises(AgentRequestError):
        signed_get(session, HEALTH_URL, TEST_SECRET, timeout=1.0)
    result = make_client().probe_now()
    assert result.kind is ProbeKind.FAILED
    assert "body" in result.cause


def test_a_health_body_exactly_at_the_cap_is_accepted(
    mocked: responses.RequestsMock, make_client: Callable[..., HealthCheckClient]
) -> None:
    text = json.dumps(HEALTH_BODY).encode()
    padded = text + b" " * (MAX_BODY_BYTES - len(text))
    assert len(padded) == MAX_BODY_BYTES
    mocked.get(HEALTH_URL, body=padded, content_type="application/json")
    result = make_client().probe_now()
    assert result.kind is ProbeKind.OK
    assert result.instance_id == HEALTH_BODY["instance_id"]


def test_a_compressed_body_that_expands_over_the_cap_is_a_failure(
    mocked: responses.RequestsMock, make_client: Callable[..., HealthCheckClient]
) -> None:
    text = json.dumps(HEALTH_BODY).encode()
    bomb = gzip.compress(text + b" " * (MAX_BODY_BYTES * 2))
    assert len(bomb) < MAX_BODY_BYTES // 100
    mocked.get(
        HEALTH_URL,
        body=bomb,
        content_type="application/json",
        headers={"Content-Encoding": "gzip"},
    )
    result = make_client().probe_now()
    assert result.kind is ProbeKind.FAILED
    assert "body" in result.cause


def test_a_small_compressed_health_body_is_read(
    mocked: responses.RequestsMock, make_client: Callable[..., HealthCheckClient]
) -> None:
    mocked.get(
        HEALTH_URL,
        body=gzip.compress(json.dumps(HEALTH_BODY).encode()),
        content_type="application/json",
        headers={"Content-Encoding": "gzip"},
    )
    result = make_client().probe_now()
    assert result.kind is ProbeKind.OK
    assert result.instance_id == HEALTH_BODY["instance_id"]


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, {"error": "boom"}),
        (404, {"error": "not found"}),
        (304, {"status": "ok", "instance_id": "not-modified"}),
        (200, {"status": "ok"}),
        (200, {"status": "ok", "instance_id": None}),
        (200, {"status": "OK", "instance_id": "x"}),
        (200, ["ok"]),
    ],
)
def test_anything_but_a_2xx_health_json_is_a_failure(
    mocked: responses.RequestsMock,
    make_client: Callable[..., HealthCheckClient],
    status: int,
    body: Any,
) -> None:
    mocked.get(HEALTH_URL, json=body, status=status)
    result = make_client().probe_now()
    assert result.kind is ProbeKind.FAILED
    assert result.instance_id is None


def test_a_redirect_is_a_failure_and_the_signature_does_not_follow_it(
    mocked: responses.RequestsMock, make_client: Callable[..., HealthCheckClient]
) -> None:
    """The contract: anything but a 2xx from the health URL is a failure. Following a 3xx
    elsewhere would both count a foreign 200 as the agent's health and hand the agent's
    signed headers (replayable within the clock skew) to another host."""
    elsewhere = "http://elsewhere.test/forest/health"
    mocked.get(HEALTH_URL, status=302, headers={"Location": elsewhere})
    mocked.get(elsewhere, json={"status": "ok", "instance_id": "not-the-agent"})
    result = make_client().probe_now()
    assert [call.request.url for call in mocked.calls] == [HEALTH_URL]
    assert result.kind is ProbeKind.FAILED
    assert "302" in result.cause


def test_a_non_json_200_is_a_failure(
    mocked: responses.RequestsMock, make_client: Callable[..., HealthCheckClient]
) -> None:
    mocked.get(HEALTH_URL, body="<html>OK</html>", content_type="text/html")
    result = make_client().probe_now()
    assert result.kind is ProbeKind.FAILED


def test_a_401_names_the_agents_reason(
    mocked: responses.RequestsMock, make_client: Callable[..., HealthCheckClient]
) -> None:
    mocked.get(HEALTH_URL, json={"error": "Unauthorized", "reason": "bad_signature"}, status=401)
    result = make_client().probe_now()
    assert result.kind is ProbeKind.FAILED
    assert "401" in result.cause
    assert "bad_signature" in result.cause
