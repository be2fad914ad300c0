"""Unit tests of reading a health answer into a ProbeResult."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest

from rpc_datasource.health.response import classify_health_response, clock_skew_seconds
from rpc_datasource.health.state import FailureReason, ProbeKind

LOCAL_NOW = datetime(2026, 11, 21, 9, 30, 0, tzinfo=UTC)


def health_body(**overrides: Any) -> bytes:
    body: dict[str, Any] = {
        "status": "ok",
        "version": "1.2.3",
        "instance_id": "3f1c9e2a",
        "schema_etag": '"a1b2c3"',
        "uptime_s": 12.5,
    }
    body.update(overrides)
    return json.dumps(body).encode()


def without(key: str) -> bytes:
    body = json.loads(health_body())
    del body[key]
    return json.dumps(body).encode()


def http_date(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


def unauthorized(reason: str) -> bytes:
    return json.dumps({"error": "Unauthorized", "reason": reason}).encode()


# --- successes ----------------------------------------------------------------------------


def test_200_with_health_json_is_ok() -> None:
    result = classify_health_response(200, health_body(), None, LOCAL_NOW)
    assert result.kind is ProbeKind.OK
    assert result.instance_id == "3f1c9e2a"
    assert result.schema_etag == '"a1b2c3"'
    assert result.reason is None


def test_200_without_schema_etag_is_ok_with_no_etag() -> None:
    result = classify_health_response(200, without("schema_etag"), None, LOCAL_NOW)
    assert result.kind is ProbeKind.OK
    assert result.instance_id == "3f1c9e2a"
    assert result.schema_etag is None


def test_200_with_non_string_schema_etag_is_ok_with_no_etag() -> None:
    result = classify_health_response(200, health_body(schema_etag=17), None, LOCAL_NOW)
    assert result.kind is ProbeKind.OK
    assert result.schema_etag is None


def test_200_with_minimal_health_json_is_ok() -> None:
    body = json.dumps({"status": "ok", "instance_id": "x"}).encode()
    result = classify_health_response(200, body, None, LOCAL_NOW)
    assert result.kind is ProbeKind.OK
    assert result.instance_id == "x"


def test_other_2xx_with_health_json_is_ok() -> None:
    result = classify_health_response(201, health_body(), None, LOCAL_NOW)
    assert result.kind is ProbeKind.OK


def test_date_header_does_not_matter_on_success() -> None:
    later = http_date(LOCAL_NOW + timedelta(hours=3))
    result = classify_health_response(200, health_body(), later, LOCAL_NOW)
    assert result.kind is ProbeKind.OK


def test_degraded_is_a_success_non_critical_checks_failing_still_serve() -> None:
    result = classify_health_response(200, health_body(status="degraded"), None, LOCAL_NOW)
    assert result.kind is ProbeKind.OK
    assert result.instance_id == "3f1c9e2a"


def test_unavailable_is_a_not_ready_failure_naming_the_failing_checks() -> None:
    body = json.dumps(
        {
            "status": "unavailable",
            "instance_id": "3f1c9e2a",
            "checks": {
                "database": {"status": "failing", "reason": "timeout", "since": "x"},
                "cache": {"status": "ok", "reason": None, "since": "x"},
            },
        }
    ).encode()
    result = classify_health_response(503, body, None, LOCAL_NOW)
    assert result.kind is ProbeKind.FAILED
    assert result.reason is FailureReason.NOT_READY
    assert result.cause == "HTTP 503: agent not ready (database: timeout)"


def test_unavailable_while_starting_names_the_reason() -> None:
    body = b'{"status": "unavailable", "reason": "starting", "instance_id": "x"}'
    result = classify_health_response(503, body, None, LOCAL_NOW)
    assert result.reason is FailureReason.NOT_READY
    assert result.cause == "HTTP 503: agent not ready (starting)"


def test_a_404_names_the_path_and_the_prefix_settings() -> None:
    result = classify_health_response(404, b"<h1>Not Found</h1>", None, LOCAL_NOW, "/api/health")
    assert result.reason is FailureReason.HTTP_STATUS
    assert result.cause.startswith("HTTP 404: no agent route at /api/health")
    assert "FOREST_URL_PREFIX" in result.cause


# --- 2xx failures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(health_body(status="starting"), id="status-unknown"),
        pytest.param(health_body(status="OK"), id="status-upper-case"),
        pytest.param(without("status"), id="no-status"),
        pytest.param(health_body(instance_id=42), id="instance-id-int"),
        pytest.param(health_body(instance_id=None), id="instance-id-null"),
        pytest.param(health_body(instance_id=["a"]), id="instance-id-list"),
        pytest.param(without("instance_id"), id="no-instance-id"),
        pytest.param(b'[{"status": "ok", "instance_id": "x"}]', id="json-list"),
        pytest.param(b'"ok"', id="json-string"),
        pytest.param(b"null", id="json-null"),
        pytest.param(b"<html>ok</html>", id="html"),
        pytest.param(b'{"status": "ok", "instance_id": "x"', id="truncated-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"status": "ok", "instance_id": "\xff\xfe"}', id="invalid-utf8"),
        pytest.param(b"\xff\xfe\xfd", id="binary"),
    ],
)
def test_200_with_a_body_that_is_not_the_health_json_fails(body: bytes) -> None:
    result = classify_health_response(200, body, None, LOCAL_NOW)
    assert result.kind is ProbeKind.FAILED
    assert result.reason is FailureReason.BAD_BODY
    assert result.instance_id is None
    assert "200" in result.cause


def test_200_with_a_deeply_nested_body_fails_without_raising() -> None:
    # Small enough for the body cap, too deep for the JSON parser's recursion limit: it is
    # "a body that is not the health JSON", so a failure, not an exception that would end
    # this client's polling.
    body = b"[" * 100_000 + b"]" * 100_000
    result = classify_health_response(200, body, None, LOCAL_NOW)
    assert result.kind is ProbeKind.FAILED
    assert result.reason is FailureReason.BAD_BODY


def test_204_with_empty_body_fails() -> None:
    result = classify_health_response(204, b"", None, LOCAL_NOW)
    assert result.kind is ProbeKind.FAILED
    assert result.reason is FailureReason.BAD_BODY
    assert "204" in result.cause


# --- shutting down ------------------------------------------------------------------------


def test_503_shutting_down_is_shutting_down() -> None:
    body = json.dumps({"status": "shutting_down"}).encode()
    result = classify_health_response(503, body, None, LOCAL_NOW)
    assert result.kind is ProbeKind.SHUTTING_DOWN
    assert result.reason is FailureReason.SHUTTING_DOWN
    assert "503" in result.cause


def test_503_full_shutting_down_body_is_shutting_down() -> None:
    result = classify_health_response(503, health_body(status="shutting_down"), None, LOCAL_NOW)
    assert result.kind is ProbeKind.SHUTTING_DOWN
    assert result.reason is FailureReason.SHUTTING_DOWN
    assert result.instance_id is None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"Service Unavailable", id="text"),
        pytest.param(b'{"status": "maintenance"}', id="other-status"),
        pytest.param(b'["shutting_down"]', id="json-list"),
        pytest.param(health_body(), id="ok-body"),
    ],
)
def test_503_without_shutting_down_body_fails_naming_503(body: bytes) -> None:
    result = classify_health_response(503, body, None, LOCAL_NOW)
    assert result.kind is ProbeKind.FAILED
    assert result.reason is FailureReason.HTTP_STATUS
    assert "503" in result.cause


# --- other statuses -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 404, 302, 301, 400, 100])
def test_non_2xx_fails_naming_the_status(status: int) -> None:
    result = classify_health_response(status, health_body(), None, LOCAL_NOW)
    assert result.kind is ProbeKind.FAILED
    assert result.reason is FailureReason.HTTP_STATUS
    assert str(status) in result.cause


@pytest.mark.parametrize("status", [500, 404, 302])
def test_non_2xx_with_empty_body_fails(status: int) -> None:
    result = classify_health_response(status, b"", None, LOCAL_NOW)
    assert result.kind is ProbeKind.FAILED
    assert result.reason is FailureReason.HTTP_STATUS
    assert str(status) in result.cause


# --- 401 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reason",
    ["bad_signature", "missing_headers", "malformed_timestamp", "timestamp_out_of_window"],
)
def test_401_names_the_reason(reason: str) -> None:
    result = classify_health_response(401, unauthorized(reason), None, LOCAL_NOW)
    assert result.kind is ProbeKind.FAILED
    assert result.reason is FailureReason.UNAUTHORIZED
    assert "401" in result.cause
    assert reason in result.cause


@pytest.mark.parametrize("body", [b"", b"Unauthorized", b"[]", b'{"error": "Unauthorized"}'])
def test_401_without_a_reason_still_fails(body: bytes) -> None:
    result = classify_health_response(401, body, None, LOCAL_NOW)
    assert result.kind is ProbeKind.FAILED
    assert result.reason is FailureReason.UNAUTHORIZED
    assert "401" in result.cause


@pytest.mark.parametrize(
    ("reason", "fragments"),
    [
        pytest.param(
            "bad_signature",
            [
                "FOREST_AUTH_SECRET",
                "FOREST_AUTH_PREVIOUS_SECRETS",
                "proxy that rewrites the path",
                "FOREST_URL_PREFIX on both sides",
                "sign v1",
                "docs/protocol.md",
            ],
            id="bad_signature",
        ),
        pytest.param(
            "missing_headers", ["proxy", "underscores", "docs/protocol.md"], id="missing_headers"
        ),
        pytest.param("malformed_timestamp", ["ISO 8601", "offset"], id="malformed_timestamp"),
        pytest.param(
            "timestamp_out_of_window",
            ["FOREST_ALLOWED_CLOCK_SKEW"],
            id="timestamp_out_of_window-no-date",
        ),
    ],
)
def test_401_names_the_reasons_usual_cause_in_one_line(reason: str, fragments: list[str]) -> None:
    cause = classify_health_response(401, unauthorized(reason), None, LOCAL_NOW).cause
    assert cause.startswith(f"HTTP 401 Unauthorized ({reason}): ")
    for fragment in fragments:
        assert fragment in cause
    assert "\n" not in cause
    assert "is the auth secret" not in cause  # the old hint named only one of the causes


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            unauthorized("rate_limited"), "HTTP 401 Unauthorized (rate_limited)", id="unknown"
        ),
        pytest.param(
            b'{"reason": ["bad_signature"]}',
            "HTTP 401 Unauthorized (['bad_signature'])",
            id="not-a-string",
        ),
        pytest.param(b"", "HTTP 401 Unauthorized (no reason given)", id="no-body"),
    ],
)
def test_401_with_a_reason_we_dont_know_adds_no_hint(body: bytes, expected: str) -> None:
    assert classify_health_response(401, body, None, LOCAL_NOW).cause == expected


def test_401_out_of_window_reports_agent_clock_ahead() -> None:
    date = http_date(LOCAL_NOW + timedelta(seconds=412))
    result = classify_health_response(401, unauthorized("timestamp_out_of_window"), date, LOCAL_NOW)
    assert result.kind is ProbeKind.FAILED
    assert "timestamp_out_of_window" in result.cause
    assert "+412 s" in result.cause


def test_401_out_of_window_reports_agent_clock_behind() -> None:
    date = http_date(LOCAL_NOW - timedelta(seconds=600))
    result = classify_health_response(401, unauthorized("timestamp_out_of_window"), date, LOCAL_NOW)
    assert result.kind is ProbeKind.FAILED
    assert "-600 s" in result.cause


@pytest.mark.parametrize(
    "date",
    [
        pytest.param(None, id="no-date"),
        pytest.param("", id="empty"),
        pytest.param("garbage", id="garbage"),
        pytest.param("Sat, 21 Nov 2026 09:30:00", id="no-zone"),
        pytest.param("Sat, 31 Feb 2026 09:30:00 GMT", id="impossible-day"),
        pytest.param("Sat, 21 Nov 2026 99:30:00 GMT", id="impossible-hour"),
        pytest.param("Sat, 21 Nov 99999999999 09:30:00 GMT", id="huge-year"),
    ],
)
def test_401_out_of_window_with_unreadable_date_still_classifies(date: str | None) -> None:
    result = classify_health_response(401, unauthorized("timestamp_out_of_window"), date, LOCAL_NOW)
    assert result.kind is ProbeKind.FAILED
    assert "timestamp_out_of_window" in result.cause
    assert " s " not in result.cause  # no skew figure made up


# --- failure reasons ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        pytest.param(401, unauthorized("bad_signature"), FailureReason.UNAUTHORIZED, id="401"),
        pytest.param(401, b"", FailureReason.UNAUTHORIZED, id="401-empty"),
        pytest.param(401, health_body(), FailureReason.UNAUTHORIZED, id="401-health-json"),
        pytest.param(500, health_body(), FailureReason.HTTP_STATUS, id="500"),
        pytest.param(503, b"", FailureReason.HTTP_STATUS, id="503-empty"),
        pytest.param(404, b"not found", FailureReason.HTTP_STATUS, id="404"),
        pytest.param(302, b"", FailureReason.HTTP_STATUS, id="302"),
        pytest.param(200, b"<html>", FailureReason.BAD_BODY, id="bad-json"),
        pytest.param(200, b"", FailureReason.BAD_BODY, id="empty-json"),
        pytest.param(200, b"[1, 2]", FailureReason.BAD_BODY, id="json-not-object"),
        pytest.param(200, health_body(status="busy"), FailureReason.BAD_BODY, id="not-ok"),
        pytest.param(200, without("instance_id"), FailureReason.BAD_BODY, id="no-instance-id"),
        pytest.param(
            503, health_body(status="shutting_down"), FailureReason.SHUTTING_DOWN, id="503-shut"
        ),
        pytest.param(
            200, health_body(status="shutting_down"), FailureReason.SHUTTING_DOWN, id="200-shut"
        ),
    ],
)
def test_each_failure_kind_has_its_reason(status: int, body: bytes, reason: FailureReason) -> None:
    result = classify_health_response(status, body, None, LOCAL_NOW)
    assert not result.succeeded
    assert result.reason is reason
    assert result.cause  # every failure also says why, in words


def test_401_keeps_its_reason_whatever_the_date() -> None:
    date = http_date(LOCAL_NOW + timedelta(seconds=412))
    result = classify_health_response(401, unauthorized("timestamp_out_of_window"), date, LOCAL_NOW)
    assert result.reason is FailureReason.UNAUTHORIZED


# --- clock_skew_seconds -------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0, 1, 412, -412, 86_400, -3_600])
def test_clock_skew_seconds(seconds: int) -> None:
    date = http_date(LOCAL_NOW + timedelta(seconds=seconds))
    assert clock_skew_seconds(date, LOCAL_NOW) == pytest.approx(float(seconds))


def test_clock_skew_seconds_with_a_numeric_offset() -> None:
    # 11:30 at +02:00 is 09:30 UTC: the same instant as LOCAL_NOW.
    assert clock_skew_seconds("Sat, 21 Nov 2026 11:30:00 +0200", LOCAL_NOW) == 0.0


def test_clock_skew_seconds_with_a_local_now_in_another_zone() -> None:
    local_now = LOCAL_NOW.astimezone(timezone(timedelta(hours=-5)))
    date = http_date(LOCAL_NOW + timedelta(seconds=30))
    assert clock_skew_seconds(date, local_now) == pytest.approx(30.0)


@pytest.mark.parametrize(
    "date",
    [
        pytest.param(None, id="none"),
        pytest.param("", id="empty"),
        pytest.param("garbage", id="garbage"),
        pytest.param("Sat, 21 Nov 2026 09:30:00 -0000", id="unknown-zone"),
        pytest.param("Sat, 21 Nov 2026 09:30:00", id="no-zone"),
        pytest.param("Sat, 31 Feb 2026 09:30:00 GMT", id="impossible-day"),
        pytest.param("Sat, 21 Nov 99999999999 09:30:00 GMT", id="huge-year"),
    ],
)
def test_clock_skew_seconds_unreadable_is_none(date: str | None) -> None:
    assert clock_skew_seconds(date, LOCAL_NOW) is None
