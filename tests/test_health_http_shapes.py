"""The shape of the health request and how answers map to probe results, against real (scripted)
HTTP servers on 127.0.0.1: what is signed and sent, and what each kind of answer, silence or
broken connection becomes."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from rpc_common.protocol import DEFAULT_HEALTH_MAX_BYTES
from rpc_common.signing import parse_timestamp, sign_bound, sign_original, verify_request
from rpc_datasource import HealthCheckClient
from rpc_datasource.health.state import FailureReason, ProbeKind, ProbeResult
from rpc_datasource.runtime.engine import new_session
from rpc_datasource.transport.endpoint import AgentEndpoint
from rpc_datasource.transport.http import AgentRequestError, AgentResponse, signed_get
from rpc_datasource.transport.probe import probe_health
from tests.support import (
    HEALTH_PATH,
    OTHER_SECRET,
    TEST_SECRET,
    closed_port,
    library_threads,
    unresolvable_name,
)
from tests.support.scripted_server import Answer, Received, ScriptedServer, scripted_server

pytestmark = pytest.mark.slow

HEALTH_BODY: dict[str, Any] = {
    "status": "ok",
    "version": "1.2.3",
    "instance_id": "instance-abc",
    "schema_etag": '"etag-1"',
    "uptime_s": 12.5,
}
HEALTHY = Answer.json(HEALTH_BODY)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with scripted_server() as running:
        yield running


@pytest.fixture
def health_url(server: ScriptedServer) -> str:
    return server.url + HEALTH_PATH


@pytest.fixture
def make_client(health_url: str) -> Iterator[Callable[..., HealthCheckClient]]:
    made: list[HealthCheckClient] = []

    def build(url: str = health_url, **options: Any) -> HealthCheckClient:
        client = HealthCheckClient(url, TEST_SECRET, timeout=2.0, **options)
        made.append(client)
        return client

    yield build
    for client in made:
        client.stop()


def endpoint_for(url: str, **options: Any) -> AgentEndpoint:
    """The endpoint of the agent whose health URL is `url` (timeout 2 s unless given)."""
    options.setdefault("timeout", 2.0)
    return AgentEndpoint.from_health_url(url, TEST_SECRET, **options)


def get(url: str, **options: Any) -> AgentResponse:
    """One `signed_get` of `url` in a fresh session, with the health body cap."""

    async def run() -> AgentResponse:
        endpoint = endpoint_for(url, **options)
        async with new_session() as session:
            return await signed_get(session, endpoint, url, max_bytes=endpoint.health_max_bytes)

    return asyncio.run(run())


def probe(url: str, **options: Any) -> ProbeResult:
    """One `probe_health` of `url` in a fresh session; the result."""

    async def run() -> ProbeResult:
        async with new_session() as session:
            outcome = await probe_health(session, endpoint_for(url, **options))
            return outcome.result

    return asyncio.run(run())


def timed_probe(url: str, **options: Any) -> tuple[ProbeResult, float]:
    """`probe(url)` and how many seconds it took."""
    started = time.monotonic()
    result = probe(url, **options)
    return result, time.monotonic() - started


def signature_headers(received: Received) -> tuple[str, str]:
    return received.headers["X-Timestamp"], received.headers["X-Signature"]


def independent_v1_signature(secret: str, timestamp: str) -> str:
    return hmac.new(secret.encode(), timestamp.encode(), hashlib.sha256).hexdigest()


def independent_v2_signature(secret: str, timestamp: str, target: str) -> str:
    empty_body_digest = hashlib.sha256(b"").hexdigest()
    message = f"{timestamp}\nGET\n{target}\n{empty_body_digest}"
    return "v2=" + hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def verifies(
    timestamp: str,
    signature: str,
    target: str = HEALTH_PATH,
    *,
    secret: str = TEST_SECRET,
    method: str = "GET",
) -> bool:
    """Whether the agent's verifier accepts these headers for a bodiless request."""
    failure = verify_request(
        timestamp, signature, method=method, target=target, body=b"", secrets=[secret]
    )
    return failure is None


def assert_failed(result: ProbeResult, reason: FailureReason) -> None:
    assert result.kind is ProbeKind.FAILED, result
    assert result.reason is reason, result
    assert result.instance_id is None


# --- what is sent ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [HEALTH_PATH, f"{HEALTH_PATH}?probe=1&x=y", "/custom/prefix/health"],
)
def test_v2_signature_binds_the_request_target(server: ScriptedServer, target: str) -> None:
    server.script(HEALTHY)
    reply = get(server.url + target)
    assert reply.status == 200

    [request] = server.received
    assert request.method == "GET"
    assert request.target == target
    timestamp, signature = signature_headers(request)
    assert signature.startswith("v2=")
    assert signature == independent_v2_signature(TEST_SECRET, timestamp, target)
    assert signature == sign_bound(TEST_SECRET, timestamp, "GET", target)
    assert verifies(timestamp, signature, request.target)
    # Bound to this target, this secret, this method.
    assert not verifies(timestamp, signature, "/forest/rpc-schema")
    assert not verifies(timestamp, signature, target, secret=OTHER_SECRET)
    assert not verifies(timestamp, signature, target, method="POST")


def test_timestamp_is_current_utc_iso8601(server: ScriptedServer, health_url: str) -> None:
    server.script(HEALTHY)
    before = datetime.now(UTC)
    get(health_url)
    after = datetime.now(UTC)

    timestamp, _ = signature_headers(server.received[0])
    assert timestamp.endswith(("Z", "+00:00"))
    sent_at = parse_timestamp(timestamp)
    assert sent_at is not None
    # Millisecond precision: allow the truncation below `before`.
    assert (before - sent_at).total_seconds() < 0.01
    assert sent_at <= after


def test_v1_signature_is_the_hmac_of_the_timestamp(server: ScriptedServer, health_url: str) -> None:
    server.script(HEALTHY)
    get(health_url, scheme="v1")

    timestamp, signature = signature_headers(server.received[0])
    assert not signature.startswith("v2=")
    assert signature == independent_v1_signature(TEST_SECRET, timestamp)
    assert signature == sign_original(TEST_SECRET, timestamp)
    assert verifies(timestamp, signature)


@pytest.mark.parametrize("scheme", ["v1", "v2"])
def test_client_probe_sends_signed_headers_in_its_scheme(
    server: ScriptedServer, make_client: Callable[..., HealthCheckClient], scheme: str
) -> None:
    server.script(HEALTHY)
    client = make_client(signature_scheme=scheme)
    assert client.probe_now().kind is ProbeKind.OK

    [request] = server.received
    assert request.target == HEALTH_PATH
    timestamp, signature = signature_headers(request)
    if scheme == "v1":
        assert signature == independent_v1_signature(TEST_SECRET, timestamp)
    else:
        assert signature == independent_v2_signature(TEST_SECRET, timestamp, HEALTH_PATH)
    assert verifies(timestamp, signature)


def test_each_probe_is_signed_afresh(
    server: ScriptedServer, make_client: Callable[..., HealthCheckClient]
) -> None:
    server.script(HEALTHY, HEALTHY)
    client = make_client()
    assert client.probe_now().kind is ProbeKind.OK
    assert client.probe_now().kind is ProbeKind.OK

    first, second = server.received
    first_ts, first_sig = signature_headers(first)
    second_ts, second_sig = signature_headers(second)
    for timestamp, signature in ((first_ts, first_sig), (second_ts, second_sig)):
        assert verifies(timestamp, signature)
    first_at, second_at = parse_timestamp(first_ts), parse_timestamp(second_ts)
    assert first_at is not None and second_at is not None
    assert second_at >= first_at
    # A different timestamp means a different signature (never a replayed header).
    assert (first_ts == second_ts) == (first_sig == second_sig)


def test_probe_now_starts_no_threads(
    server: ScriptedServer, make_client: Callable[..., HealthCheckClient]
) -> None:
    server.script(HEALTHY)
    client = make_client()
    assert client.probe_now().kind is ProbeKind.OK
    assert len(server.received) == 1
    assert library_threads("rpc-health", "rpc-callback") == []
    assert client.stats().probes == 0  # a diagnostic probe leaves the state machine alone


# --- what comes back -------------------------------------------------------------------------


def test_health_json_is_ok_with_identity(
    server: ScriptedServer, make_client: Callable[..., HealthCheckClient]
) -> None:
    server.script(HEALTHY)
    result = make_client().probe_now()
    assert result.kind is ProbeKind.OK
    assert result.instance_id == HEALTH_BODY["instance_id"]
    assert result.schema_etag == HEALTH_BODY["schema_etag"]
    assert result.reason is None


def test_any_2xx_with_health_json_is_ok(
    server: ScriptedServer, make_client: Callable[..., HealthCheckClient]
) -> None:
    server.script(Answer.json({"status": "ok", "instance_id": "minimal"}, status=203))
    result = make_client().probe_now()
    assert result.kind is ProbeKind.OK
    assert result.instance_id == "minimal"
    assert result.schema_etag is None


def test_signed_get_keeps_the_date_and_etag_headers_only(
    server: ScriptedServer, health_url: str
) -> None:
    server.script(
        Answer.json(
            HEALTH_BODY,
            headers={"ETag": '"e1"', "Date": "Mon, 01 Jan 2024 00:00:00 GMT", "X-Other": "x"},
        )
    )
    reply = get(health_url)
    assert reply.status == 200
    assert json.loads(reply.body) == HEALTH_BODY
    assert reply.headers == {"ETag": '"e1"', "Date": "Mon, 01 Jan 2024 00:00:00 GMT"}
    assert reply.latency_s >= 0


def test_503_shutting_down_is_its_own_kind(server: ScriptedServer, health_url: str) -> None:
    server.script(Answer.json({**HEALTH_BODY, "status": "shutting_down"}, status=503))
    result = probe(health_url)
    assert result.kind is ProbeKind.SHUTTING_DOWN
    assert result.reason is FailureReason.SHUTTING_DOWN
    assert "shutting down" in result.cause


def test_a_503_without_the_shutting_down_body_is_a_plain_failure(
    server: ScriptedServer, health_url: str
) -> None:
    server.script(Answer(503, b"Service Unavailable", {"Content-Type": "text/plain"}))
    result = probe(health_url)
    assert_failed(result, FailureReason.HTTP_STATUS)
    assert "503" in result.cause


def test_connection_refused_is_a_failure() -> None:
    url = f"http://127.0.0.1:{closed_port()}{HEALTH_PATH}"
    result = probe(url)
    assert_failed(result, FailureReason.REFUSED)
    assert result.cause.startswith("connection failed")


def test_signed_get_maps_connection_refused_to_its_reason() -> None:
    url = f"http://127.0.0.1:{closed_port()}{HEALTH_PATH}"
    with pytest.raises(AgentRequestError, match="connection failed") as raised:
        get(url)
    assert raised.value.reason is FailureReason.REFUSED


def test_a_connection_cut_mid_body_is_a_failure(server: ScriptedServer, health_url: str) -> None:
    server.script(HEALTHY.cut(after_bytes=10))
    result = probe(health_url)
    assert_failed(result, FailureReason.CONNECTION)
    assert result.cause.startswith("connection failed")


def test_a_name_that_does_not_resolve_is_a_dns_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    with unresolvable_name(monkeypatch) as where:
        result = probe(f"http://{where}/forest/health", timeout=5.0)
    assert_failed(result, FailureReason.DNS)
    assert "name lookup failed" in result.cause


def test_a_timeout_is_a_failure(server: ScriptedServer, health_url: str) -> None:
    server.script(Answer.never())
    result, took = timed_probe(health_url, timeout=0.5)
    assert_failed(result, FailureReason.TIMEOUT)
    assert "timed out" in result.cause
    assert 0.5 - 0.05 <= took < 0.5 + 1.0
    assert len(server.received) == 1


@pytest.mark.parametrize(
    "answer",
    [HEALTHY.drip_body(0.2), HEALTHY.drip_head(0.2)],
    ids=["drip-fed-body", "drip-fed-headers"],
)
def test_a_drip_fed_answer_times_out_at_the_total_deadline(
    server: ScriptedServer, health_url: str, answer: Answer
) -> None:
    """Every byte comes well within any per-read timeout, but the whole answer would take
    far longer than `timeout`: the deadline bounds the request, not each read."""
    server.script(answer)
    result, took = timed_probe(health_url, timeout=0.5)
    assert_failed(result, FailureReason.TIMEOUT)
    assert took < 0.5 + 1.0
    assert len(server.received) == 1


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "until-close"])
def test_a_body_over_the_cap_is_a_failure(
    server: ScriptedServer, health_url: str, declared: bool
) -> None:
    oversized = Answer(200, b" " * (DEFAULT_HEALTH_MAX_BYTES + 1), content_length=declared)
    server.script(oversized, oversized)
    with pytest.raises(AgentRequestError, match="body") as raised:
        get(health_url)
    assert raised.value.reason is FailureReason.BAD_BODY

    result = probe(health_url)
    assert_failed(result, FailureReason.BAD_BODY)
    assert "body" in result.cause


def test_a_health_body_exactly_at_the_cap_is_accepted(
    server: ScriptedServer, health_url: str
) -> None:
    text = json.dumps(HEALTH_BODY).encode()
    padded = text + b" " * (DEFAULT_HEALTH_MAX_BYTES - len(text))
    assert len(padded) == DEFAULT_HEALTH_MAX_BYTES
    server.script(Answer(200, padded, {"Content-Type": "application/json"}))
    result = probe(health_url)
    assert result.kind is ProbeKind.OK
    assert result.instance_id == HEALTH_BODY["instance_id"]


def test_a_smaller_cap_applies_to_the_probe(server: ScriptedServer, health_url: str) -> None:
    text = json.dumps(HEALTH_BODY).encode()
    server.script(Answer(200, text, {"Content-Type": "application/json"}))
    result = probe(health_url, health_max_bytes=len(text) - 1)
    assert_failed(result, FailureReason.BAD_BODY)


def test_a_compressed_body_that_expands_over_the_cap_is_a_failure(
    server: ScriptedServer, health_url: str
) -> None:
    text = json.dumps(HEALTH_BODY).encode()
    expanded = text + b" " * (DEFAULT_HEALTH_MAX_BYTES * 2)
    assert len(gzip.compress(expanded)) < DEFAULT_HEALTH_MAX_BYTES // 100
    server.script(Answer(200, expanded, {"Content-Type": "application/json"}, gzip=True))
    result = probe(health_url)
    assert_failed(result, FailureReason.BAD_BODY)
    assert "body" in result.cause


def test_a_small_compressed_health_body_is_read(server: ScriptedServer, health_url: str) -> None:
    server.script(Answer.json(HEALTH_BODY, gzip=True))
    result = probe(health_url)
    assert result.kind is ProbeKind.OK
    assert result.instance_id == HEALTH_BODY["instance_id"]


@pytest.mark.parametrize("status", [500, 502, 404, 418, 304, 204])
def test_a_non_2xx_or_bodiless_answer_is_a_failure_naming_the_status(
    server: ScriptedServer, health_url: str, status: int
) -> None:
    server.script(Answer.json({"status": "ok", "instance_id": "not-the-health"}, status=status))
    result = probe(health_url)
    assert result.kind is ProbeKind.FAILED
    assert result.instance_id is None
    assert f"HTTP {status}" in result.cause


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
    server: ScriptedServer,
    make_client: Callable[..., HealthCheckClient],
    status: int,
    body: Any,
) -> None:
    server.script(Answer.json(body, status=status))
    result = make_client().probe_now()
    assert result.kind is ProbeKind.FAILED
    assert result.instance_id is None
    expected = FailureReason.BAD_BODY if status == 200 else FailureReason.HTTP_STATUS
    assert result.reason is expected


def test_a_redirect_is_a_failure_and_the_signature_does_not_follow_it(
    server: ScriptedServer, health_url: str
) -> None:
    """The contract: anything but a 2xx from the health URL is a failure. Following a 3xx
    elsewhere would both count a foreign 200 as the agent's health and hand the agent's
    signed headers (replayable within the clock skew) to another host."""
    with scripted_server() as elsewhere:
        elsewhere.script(Answer.json({"status": "ok", "instance_id": "not-the-agent"}))
        server.script(Answer.redirect(elsewhere.url + HEALTH_PATH))
        result = probe(health_url)
        assert elsewhere.received == []
    assert len(server.received) == 1
    assert_failed(result, FailureReason.HTTP_STATUS)
    assert "302" in result.cause


def test_a_non_json_200_is_a_failure(server: ScriptedServer, health_url: str) -> None:
    server.script(Answer(200, b"<html>OK</html>", {"Content-Type": "text/html"}))
    result = probe(health_url)
    assert_failed(result, FailureReason.BAD_BODY)


def test_a_401_names_the_agents_reason(
    server: ScriptedServer, make_client: Callable[..., HealthCheckClient]
) -> None:
    server.script(Answer.json({"error": "Unauthorized", "reason": "bad_signature"}, status=401))
    result = make_client().probe_now()
    assert_failed(result, FailureReason.UNAUTHORIZED)
    assert "401" in result.cause
    assert "bad_signature" in result.cause
    assert "secret" in result.cause


def test_a_401_for_the_timestamp_window_names_the_clock_skew_from_the_date_header(
    server: ScriptedServer, health_url: str
) -> None:
    agent_now = datetime.now(UTC) + timedelta(minutes=10)
    server.script(
        Answer.json(
            {"error": "Unauthorized", "reason": "timestamp_out_of_window"},
            status=401,
            headers={"Date": format_datetime(agent_now, usegmt=True)},
        )
    )
    result = probe(health_url)
    assert_failed(result, FailureReason.UNAUTHORIZED)
    assert "timestamp_out_of_window" in result.cause
    assert "+600 s from ours" in result.cause or "+599 s from ours" in result.cause
