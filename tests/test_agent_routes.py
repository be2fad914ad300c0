"""The agent's HTTP routes through Flask's test client: auth, health, schema and shutdown."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from rpc_agent import AgentSettings, RpcAgent
from rpc_common.signing import sign_bound, sign_original, signed_headers
from tests.support import OTHER_SECRET, PRODUCTS_SCHEMA, TEST_SECRET, agent_app, signed
from tests.support.odd_headers import HAND_PICKED

pytestmark = pytest.mark.slow

ROUTES = ["/forest/health", "/forest/rpc-schema", "/forest/sse"]
REASONS = {"missing_headers", "malformed_timestamp", "timestamp_out_of_window", "bad_signature"}
THIRD_SECRET = "a-third-test-only-secret-never-configured-anywhere-42"


def make_agent(
    schema_provider: Callable[[], Mapping[str, Any]] | None = None, **overrides: Any
) -> tuple[Flask, RpcAgent, FlaskClient]:
    app, agent = agent_app(schema_provider or (lambda: PRODUCTS_SCHEMA), **overrides)
    return app, agent, app.test_client()


@pytest.fixture
def client() -> FlaskClient:
    return make_agent()[2]


def get_signed(client: FlaskClient, target: str, **kwargs: Any) -> TestResponse:
    return client.get(target, headers=signed(target, **kwargs))


def assert_refused(response: TestResponse, reason: str) -> None:
    assert response.status_code == 401, response.data[:300]
    assert response.mimetype == "application/json"
    assert response.get_json() == {"error": "Unauthorized", "reason": reason}


def wsgi_value(text: str) -> str:
    """What a real WSGI server hands the app for a header sent as UTF-8 bytes (PEP 3333)."""
    return text.encode("utf-8").decode("latin-1")


def raw_headers(client: FlaskClient, target: str, timestamp: str, signature: str) -> TestResponse:
    """A GET whose auth headers go straight into the environ.

    werkzeug's `Headers` refuse newlines and non-latin-1 text; a real server hands the app
    whatever bytes arrived, decoded as latin-1, which is what this reproduces.
    """
    environ = {"HTTP_X_TIMESTAMP": wsgi_value(timestamp), "HTTP_X_SIGNATURE": wsgi_value(signature)}
    return client.get(target, environ_overrides=environ)


# --- construction -------------------------------------------------------------------------


def test_constructor_with_app_registers_routes_and_extension() -> None:
    app = Flask(__name__)
    agent = RpcAgent(app, settings=AgentSettings(auth_secret=TEST_SECRET))
    assert app.extensions["rpc_agent"] is agent
    response = get_signed(app.test_client(), "/forest/health")
    assert response.status_code == 200
    assert response.get_json()["instance_id"] == agent.instance_id


def test_init_app_style_registers_routes_and_extension() -> None:
    app = Flask(__name__)
    agent = RpcAgent(settings=AgentSettings(auth_secret=TEST_SECRET))
    assert "rpc_agent" not in app.extensions
    agent.init_app(app)
    assert app.extensions["rpc_agent"] is agent
    client = app.test_client()
    assert get_signed(client, "/forest/health").status_code == 200
    schema = get_signed(client, "/forest/rpc-schema")
    assert schema.status_code == 200
    assert schema.get_json() == {"collections": [], "charts": []}


def test_a_second_agent_on_the_same_app_is_refused() -> None:
    app, first, client = make_agent()
    second = RpcAgent(settings=AgentSettings(auth_secret=TEST_SECRET))
    with pytest.raises(RuntimeError, match="already registered"):
        second.init_app(app)
    assert app.extensions["rpc_agent"] is first
    assert get_signed(client, "/forest/health").get_json()["instance_id"] == first.instance_id


def test_the_apps_own_hooks_do_not_see_agent_requests() -> None:
    app, _, client = make_agent()

    @app.before_request
    def login_required() -> tuple[str, int]:
        return "login first", 403

    assert get_signed(client, "/forest/health").status_code == 200
    assert client.get("/anything").status_code == 403


def test_custom_url_prefix_moves_the_routes() -> None:
    _, _, client = make_agent(url_prefix="/agent/v1")
    for route in ("/agent/v1/health", "/agent/v1/rpc-schema"):
        assert get_signed(client, route).status_code == 200, route
    assert_refused(client.get("/agent/v1/health"), "missing_headers")
    assert get_signed(client, "/forest/health").status_code == 404


# --- health -------------------------------------------------------------------------------


def test_health_answers_small_uncached_json(client: FlaskClient) -> None:
    response = get_signed(client, "/forest/health")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert len(response.data) < 400
    body = response.get_json()
    assert body["status"] == "ok"
    for key in ("version", "instance_id", "schema_etag"):
        assert isinstance(body[key], str) and body[key], key
    uptime = body["uptime_s"]
    assert isinstance(uptime, int | float) and not isinstance(uptime, bool)
    assert math.isfinite(uptime) and uptime >= 0


def test_instance_id_is_new_for_each_agent() -> None:
    first = get_signed(make_agent()[2], "/forest/health").get_json()
    second = get_signed(make_agent()[2], "/forest/health").get_json()
    assert first["instance_id"] != second["instance_id"]


def test_instance_id_is_stable_for_one_agent(client: FlaskClient) -> None:
    ids = {get_signed(client, "/forest/health").get_json()["instance_id"] for _ in range(3)}
    assert len(ids) == 1


def test_uptime_grows(client: FlaskClient) -> None:
    before = get_signed(client, "/forest/health").get_json()["uptime_s"]
    threading.Event().wait(0.05)
    after = get_signed(client, "/forest/health").get_json()["uptime_s"]
    assert after > before


# --- authentication -----------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
def test_unsigned_request_is_refused(client: FlaskClient, route: str) -> None:
    assert_refused(client.get(route), "missing_headers")


@pytest.mark.parametrize("route", ROUTES)
def test_one_header_alone_is_refused(client: FlaskClient, route: str) -> None:
    headers = signed(route)
    for name in headers:
        assert_refused(client.get(route, headers={name: headers[name]}), "missing_headers")


@pytest.mark.parametrize("route", ROUTES)
def test_wrong_secret_is_refused(client: FlaskClient, route: str) -> None:
    assert_refused(get_signed(client, route, secret=THIRD_SECRET), "bad_signature")
    assert_refused(get_signed(client, route, secret=THIRD_SECRET, scheme="v1"), "bad_signature")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "timestamp",
    [
        "yesterday",
        "2026-11-21T09:30:00.123",  # no offset
        "2026-13-40T09:30:00Z",
        "1732181400",
        "2026-11-21 09:30:00 UTC",
    ],
)
def test_malformed_timestamp_is_refused(client: FlaskClient, route: str, timestamp: str) -> None:
    # The signature matches the timestamp: only the timestamp itself can be the reason.
    headers = {"X-Timestamp": timestamp, "X-Signature": sign_original(TEST_SECRET, timestamp)}
    assert_refused(client.get(route, headers=headers), "malformed_timestamp")


def test_naive_timestamp_of_now_is_malformed(client: FlaskClient) -> None:
    timestamp = datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds")
    signature = sign_bound(TEST_SECRET, timestamp, "GET", "/forest/health")
    response = client.get(
        "/forest/health", headers={"X-Timestamp": timestamp, "X-Signature": signature}
    )
    assert_refused(response, "malformed_timestamp")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("age", [330.0, -330.0, 3600.0 * 24 * 365])
def test_timestamp_out_of_window_is_refused(client: FlaskClient, route: str, age: float) -> None:
    moment = datetime.now(UTC) - timedelta(seconds=age)
    headers = signed_headers(TEST_SECRET, target=route, now=moment)
    assert_refused(client.get(route, headers=headers), "timestamp_out_of_window")


@pytest.mark.parametrize("age", [270.0, -270.0])
def test_timestamp_within_window_is_accepted(client: FlaskClient, age: float) -> None:
    moment = datetime.now(UTC) - timedelta(seconds=age)
    headers = signed_headers(TEST_SECRET, target="/forest/health", now=moment)
    assert client.get("/forest/health", headers=headers).status_code == 200


def test_allowed_clock_skew_setting_narrows_the_window() -> None:
    _, _, client = make_agent(allowed_clock_skew=60)
    moment = datetime.now(UTC) - timedelta(seconds=90)
    headers = signed_headers(TEST_SECRET, target="/forest/health", now=moment)
    assert_refused(client.get("/forest/health", headers=headers), "timestamp_out_of_window")
    assert get_signed(client, "/forest/health").status_code == 200


@pytest.mark.parametrize("hours", [2, -5, 14])
def test_timestamp_with_explicit_offset_is_read_as_that_instant(
    client: FlaskClient, hours: int
) -> None:
    local = datetime.now(UTC).astimezone(timezone(timedelta(hours=hours)))
    timestamp = local.isoformat(timespec="milliseconds")
    assert not timestamp.endswith("Z") and not timestamp.endswith("+00:00")
    signature = sign_bound(TEST_SECRET, timestamp, "GET", "/forest/health")
    response = client.get(
        "/forest/health", headers={"X-Timestamp": timestamp, "X-Signature": signature}
    )
    assert response.status_code == 200


def test_plus_zero_offset_form_is_accepted(client: FlaskClient) -> None:
    timestamp = datetime.now(UTC).isoformat(timespec="milliseconds")
    assert timestamp.endswith("+00:00")
    headers = {"X-Timestamp": timestamp, "X-Signature": sign_original(TEST_SECRET, timestamp)}
    assert client.get("/forest/health", headers=headers).status_code == 200


@pytest.mark.parametrize("route", ["/forest/health", "/forest/rpc-schema"])
def test_original_scheme_is_accepted_by_default(client: FlaskClient, route: str) -> None:
    headers = signed(route, scheme="v1")
    assert not headers["X-Signature"].startswith("v2=")
    assert client.get(route, headers=headers).status_code == 200


def test_original_scheme_is_refused_when_bound_signatures_are_required() -> None:
    _, _, client = make_agent(require_bound_signatures=True)
    for route in ROUTES:
        assert_refused(get_signed(client, route, scheme="v1"), "bad_signature")
    assert get_signed(client, "/forest/health").status_code == 200
    assert get_signed(client, "/forest/rpc-schema").status_code == 200


def test_bound_signature_for_another_target_is_refused(client: FlaskClient) -> None:
    headers = signed("/forest/rpc-schema")
    assert client.get("/forest/rpc-schema", headers=headers).status_code == 200
    assert_refused(client.get("/forest/health", headers=headers), "bad_signature")


def test_bound_signature_covers_the_query_string(client: FlaskClient) -> None:
    assert get_signed(client, "/forest/health?probe=1").status_code == 200
    headers = signed("/forest/health")
    assert_refused(client.get("/forest/health?probe=1", headers=headers), "bad_signature")


def test_bound_signature_covers_the_method(client: FlaskClient) -> None:
    headers = signed("/forest/health", method="POST")
    assert_refused(client.get("/forest/health", headers=headers), "bad_signature")


def test_bound_signature_prefix_cannot_be_dropped(client: FlaskClient) -> None:
    headers = signed("/forest/health")
    headers["X-Signature"] = headers["X-Signature"].removeprefix("v2=")
    assert_refused(client.get("/forest/health", headers=headers), "bad_signature")


@pytest.mark.parametrize("scheme", ["v1", "v2"])
def test_previous_secret_is_accepted_during_rotation(scheme: Any) -> None:
    _, _, client = make_agent(auth_previous_secrets=f"{OTHER_SECRET}, ")
    for route in ("/forest/health", "/forest/rpc-schema"):
        assert get_signed(client, route, secret=OTHER_SECRET, scheme=scheme).status_code == 200
        assert get_signed(client, route, secret=TEST_SECRET, scheme=scheme).status_code == 200
        assert_refused(
            get_signed(client, route, secret=THIRD_SECRET, scheme=scheme), "bad_signature"
        )


def test_several_previous_secrets_are_accepted() -> None:
    _, _, client = make_agent(auth_previous_secrets=f"{OTHER_SECRET},{THIRD_SECRET}")
    for secret in (TEST_SECRET, OTHER_SECRET, THIRD_SECRET):
        assert get_signed(client, "/forest/health", secret=secret).status_code == 200


def test_previous_secret_is_refused_once_rotation_is_over(client: FlaskClient) -> None:
    assert_refused(get_signed(client, "/forest/health", secret=OTHER_SECRET), "bad_signature")


# --- schema -------------------------------------------------------------------------------


def test_schema_is_the_providers_with_a_strong_etag_matching_health(client: FlaskClient) -> None:
    response = get_signed(client, "/forest/rpc-schema")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == PRODUCTS_SCHEMA
    etag = response.headers["ETag"]
    assert not etag.startswith("W/")
    assert len(etag) > 2 and etag.startswith('"') and etag.endswith('"')
    assert get_signed(client, "/forest/health").get_json()["schema_etag"] == etag


def test_if_none_match_with_current_etag_gives_304(client: FlaskClient) -> None:
    etag = get_signed(client, "/forest/rpc-schema").headers["ETag"]
    headers = {**signed("/forest/rpc-schema"), "If-None-Match": etag}
    response = client.get("/forest/rpc-schema", headers=headers)
    assert response.status_code == 304
    assert response.data == b""


def test_if_none_match_with_another_etag_gives_the_schema(client: FlaskClient) -> None:
    headers = {**signed("/forest/rpc-schema"), "If-None-Match": '"not-the-current-etag"'}
    response = client.get("/forest/rpc-schema", headers=headers)
    assert response.status_code == 200
    assert response.get_json() == PRODUCTS_SCHEMA


def test_if_none_match_does_not_bypass_authentication(client: FlaskClient) -> None:
    etag = get_signed(client, "/forest/rpc-schema").headers["ETag"]
    assert_refused(
        client.get("/forest/rpc-schema", headers={"If-None-Match": etag}), "missing_headers"
    )


def reordered(value: Any) -> Any:
    """The same content with every mapping's keys in reverse insertion order."""
    if isinstance(value, dict):
        return {key: reordered(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(item) for item in value]
    return value


def test_etag_changes_when_and_only_when_the_content_changes() -> None:
    current: dict[str, Any] = {"schema": PRODUCTS_SCHEMA}
    _, agent, client = make_agent(schema_provider=lambda: current["schema"])

    def fetch() -> tuple[Any, str, str]:
        response = get_signed(client, "/forest/rpc-schema")
        assert response.status_code == 200
        health_etag = get_signed(client, "/forest/health").get_json()["schema_etag"]
        return response.get_json(), response.headers["ETag"], health_etag

    body, original_etag, health_etag = fetch()
    assert health_etag == original_etag

    migrated = reordered(PRODUCTS_SCHEMA)
    migrated["collections"][0]["fields"].append({"field": "price", "type": "Number"})
    current["schema"] = migrated
    assert agent.schema_changed().result(timeout=5)
    body, migrated_etag, health_etag = fetch()
    assert body == migrated
    assert migrated_etag != original_etag
    assert health_etag == migrated_etag
    stale = {**signed("/forest/rpc-schema"), "If-None-Match": original_etag}
    assert client.get("/forest/rpc-schema", headers=stale).status_code == 200

    shuffled = reordered(PRODUCTS_SCHEMA)
    assert list(shuffled) != list(PRODUCTS_SCHEMA)
    current["schema"] = shuffled
    assert agent.schema_changed().result(timeout=5)  # back to the original content
    body, shuffled_etag, health_etag = fetch()
    assert body == PRODUCTS_SCHEMA
    assert shuffled_etag == original_etag
    assert health_etag == original_etag
    fresh = {**signed("/forest/rpc-schema"), "If-None-Match": original_etag}
    assert client.get("/forest/rpc-schema", headers=fresh).status_code == 304


def test_equal_schemas_give_equal_etags_across_agents() -> None:
    first = get_signed(make_agent()[2], "/forest/rpc-schema").headers["ETag"]
    other_order = reordered(PRODUCTS_SCHEMA)
    second = get_signed(make_agent(lambda: other_order)[2], "/forest/rpc-schema").headers["ETag"]
    empty = get_signed(
        make_agent(lambda: {"collections": [], "charts": []})[2], "/forest/rpc-schema"
    )
    assert first == second
    assert empty.headers["ETag"] != first


# --- shutdown -----------------------------------------------------------------------------


def test_begin_shutdown_turns_health_to_503_and_is_idempotent() -> None:
    _, agent, client = make_agent()
    before = get_signed(client, "/forest/health").get_json()
    agent.begin_shutdown()
    for _ in range(2):
        response = get_signed(client, "/forest/health")
        assert response.status_code == 503
        assert response.mimetype == "application/json"
        body = response.get_json()
        assert body["status"] == "shutting_down"
        assert body["instance_id"] == before["instance_id"]
        agent.begin_shutdown()
    assert agent.shutting_down


def test_shutdown_health_still_requires_authentication() -> None:
    _, agent, client = make_agent()
    agent.begin_shutdown()
    assert_refused(client.get("/forest/health"), "missing_headers")


# --- odd header values never give a 5xx ---------------------------------------------------


def check_refused_with_a_known_reason(response: TestResponse) -> str:
    assert response.status_code < 500, response.data[:300]
    assert response.status_code == 401
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["error"] == "Unauthorized"
    assert body["reason"] in REASONS
    return str(body["reason"])


def fresh_timestamp() -> str:
    return signed_headers(TEST_SECRET, target="/forest/health")["X-Timestamp"]


@pytest.mark.parametrize("route", ROUTES)
def test_hand_picked_odd_values_never_give_a_server_error(client: FlaskClient, route: str) -> None:
    for value in HAND_PICKED:
        # Odd signature with a fresh timestamp: nothing but the signature can be wrong.
        reason = check_refused_with_a_known_reason(
            raw_headers(client, route, fresh_timestamp(), value)
        )
        assert reason == ("missing_headers" if value == "" else "bad_signature"), repr(value[:80])
        # Odd timestamp (signed with a secret the agent does not know, so never accepted).
        reason = check_refused_with_a_known_reason(
            raw_headers(client, route, value, sign_original(THIRD_SECRET, wsgi_value(value)))
        )
        if value == "":
            assert reason == "missing_headers"
        # Both odd.
        check_refused_with_a_known_reason(raw_headers(client, route, value, value))


def odd_text() -> st.SearchStrategy[str]:
    """Any text (control characters and non-ASCII included), some shaped like our headers."""
    return st.one_of(
        st.text(),
        st.text(max_size=2_000),
        st.text().map(lambda text: "v2=" + text),
        st.binary(max_size=200).map(lambda raw: raw.decode("latin-1")),
        st.from_regex(r"\A[0-9T:.Z+\-]{0,40}\Z"),
        st.text().map(lambda text: fresh_timestamp() + text),
    )


def test_generated_signatures_never_give_a_server_error() -> None:
    client = make_agent()[2]

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(signature=odd_text())
    def check(signature: str) -> None:
        response = raw_headers(client, "/forest/health", fresh_timestamp(), signature)
        reason = check_refused_with_a_known_reason(response)
        assert reason == ("missing_headers" if signature == "" else "bad_signature")

    check()


def test_generated_timestamps_never_give_a_server_error() -> None:
    client = make_agent()[2]

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(timestamp=odd_text(), route=st.sampled_from(ROUTES))
    def check(timestamp: str, route: str) -> None:
        # Some generated values are fresh, well-formed timestamps: an unknown secret keeps
        # every request refused, while the timestamp is still checked before the signature.
        signature = sign_original(THIRD_SECRET, wsgi_value(timestamp))
        reason = check_refused_with_a_known_reason(raw_headers(client, route, timestamp, signature))
        if timestamp == "":
            assert reason == "missing_headers"
        elif not wsgi_value(timestamp).isascii():
            assert reason == "malformed_timestamp"

    check()


def test_generated_header_pairs_never_give_a_server_error() -> None:
    client = make_agent()[2]

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(timestamp=odd_text(), signature=odd_text())
    def check(timestamp: str, signature: str) -> None:
        check_refused_with_a_known_reason(raw_headers(client, "/forest/sse", timestamp, signature))

    check()


def far_instants() -> st.SearchStrategy[datetime]:
    offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
        lambda minutes: timezone(timedelta(minutes=minutes))
    )
    return st.datetimes(
        min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=offsets
    ).filter(lambda moment: abs((moment - datetime.now(UTC)).total_seconds()) > 3_600)


def test_generated_offset_timestamps_are_read_as_instants() -> None:
    client = make_agent()[2]

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(moment=far_instants())
    def check(moment: datetime) -> None:
        timestamp = moment.isoformat()
        signature = sign_original(TEST_SECRET, timestamp)
        response = raw_headers(client, "/forest/health", timestamp, signature)
        assert check_refused_with_a_known_reason(response) == "timestamp_out_of_window"

    check()
