"""AgentSettings (FOREST_* environment, secret rules, ranges) and describe_validation_error."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from rpc_agent.core.settings import AgentSettings
from rpc_common.settings import describe_validation_error
from tests.support import OTHER_SECRET, TEST_SECRET

SHORT_SECRET = "tooshort-XYZZY"
SECRET_VAR = "FOREST_AUTH_SECRET"


def _refusal(**kwargs: Any) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        AgentSettings(**kwargs)
    return caught.value


# --- the auth secret ---------------------------------------------------------------------------


def test_missing_secret_is_refused() -> None:
    error = _refusal()

    assert [item["loc"] for item in error.errors()] == [("auth_secret",)]
    described = describe_validation_error(error)
    assert described.startswith("configuration error: ")
    assert f"{SECRET_VAR} is not set" in described
    assert "\n" not in described


def test_missing_secret_error_text_names_the_variable() -> None:
    error = _refusal()

    assert SECRET_VAR in str(error)


def test_unprefixed_variable_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_SECRET", TEST_SECRET)

    error = _refusal()

    assert SECRET_VAR in describe_validation_error(error)


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        pytest.param("", "is empty", id="empty"),
        pytest.param(SHORT_SECRET, "too short", id="short"),
        pytest.param("Z" * 31, "too short", id="31-bytes"),
        pytest.param("é" * 15 + "Z", "too short", id="31-bytes-multibyte"),
    ],
)
@pytest.mark.parametrize("source", ["env", "code"])
def test_bad_secret_is_refused_and_named_but_not_printed(
    monkeypatch: pytest.MonkeyPatch, value: str, phrase: str, source: str
) -> None:
    if source == "env":
        monkeypatch.setenv(SECRET_VAR, value)
        error = _refusal()
    else:
        error = _refusal(auth_secret=value)

    described = describe_validation_error(error)
    for text in (str(error), repr(error), described):
        assert SECRET_VAR in text
        assert phrase in text
        if value:
            assert value not in text
    assert "XYZZY" not in str(error) + repr(error) + described
    assert "\n" not in described
    assert described.startswith("configuration error: ")


def test_short_secret_message_gives_sizes_in_bytes() -> None:
    described = describe_validation_error(_refusal(auth_secret=SHORT_SECRET))

    assert f"({len(SHORT_SECRET)} bytes; at least 32 are required)" in described


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param("Z" * 32, id="32-ascii"),
        pytest.param("é" * 16, id="32-bytes-16-chars"),
        pytest.param(TEST_SECRET, id="test-secret"),
    ],
)
def test_secret_of_32_bytes_or_more_is_accepted(secret: str) -> None:
    settings = AgentSettings(auth_secret=secret)

    assert settings.auth_secret.get_secret_value() == secret


def test_secret_is_not_shown_by_the_settings_object(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOREST_AUTH_PREVIOUS_SECRETS", OTHER_SECRET)

    settings = AgentSettings(auth_secret=TEST_SECRET)

    for text in (str(settings), repr(settings), settings.model_dump_json()):
        assert TEST_SECRET not in text
        assert OTHER_SECRET not in text


def test_secret_is_not_printed_when_another_field_is_refused() -> None:
    error = _refusal(auth_secret=TEST_SECRET, allowed_clock_skew=-1)

    for text in (str(error), repr(error), describe_validation_error(error)):
        assert TEST_SECRET not in text


# --- reading the environment -------------------------------------------------------------------


def test_defaults() -> None:
    settings = AgentSettings(auth_secret=TEST_SECRET)

    assert settings.allowed_clock_skew == 300
    assert settings.sse_heartbeat_interval == 10
    assert settings.require_bound_signatures is False
    assert settings.auth_previous_secrets is None
    assert settings.url_prefix == "/forest"
    assert settings.verification_secrets() == [TEST_SECRET]


def test_values_are_read_from_forest_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOREST_AUTH_SECRET", TEST_SECRET)
    monkeypatch.setenv("FOREST_ALLOWED_CLOCK_SKEW", "42.5")
    monkeypatch.setenv("FOREST_SSE_HEARTBEAT_INTERVAL", "2")
    monkeypatch.setenv("FOREST_REQUIRE_BOUND_SIGNATURES", "true")
    monkeypatch.setenv("FOREST_URL_PREFIX", "/api/forest")

    settings = AgentSettings()

    assert settings.auth_secret.get_secret_value() == TEST_SECRET
    assert settings.allowed_clock_skew == 42.5
    assert settings.sse_heartbeat_interval == 2.0
    assert settings.require_bound_signatures is True
    assert settings.url_prefix == "/api/forest"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("false", False), ("0", False)],
)
def test_require_bound_signatures_from_env(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool
) -> None:
    monkeypatch.setenv("FOREST_REQUIRE_BOUND_SIGNATURES", raw)

    assert AgentSettings(auth_secret=TEST_SECRET).require_bound_signatures is expected


def test_previous_secrets_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    older = "yet-another-test-only-previous-secret-000001"
    monkeypatch.setenv("FOREST_AUTH_SECRET", TEST_SECRET)
    monkeypatch.setenv("FOREST_AUTH_PREVIOUS_SECRETS", f" {OTHER_SECRET} ,, ,{older},")

    settings = AgentSettings()

    assert settings.verification_secrets() == [TEST_SECRET, OTHER_SECRET, older]


@pytest.mark.parametrize("raw", ["", " ", ",", " , ,"])
def test_blank_previous_secrets_add_nothing(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("FOREST_AUTH_PREVIOUS_SECRETS", raw)

    settings = AgentSettings(auth_secret=TEST_SECRET)

    assert settings.verification_secrets() == [TEST_SECRET]


def test_code_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOREST_AUTH_SECRET", OTHER_SECRET)
    monkeypatch.setenv("FOREST_ALLOWED_CLOCK_SKEW", "42")

    settings = AgentSettings(auth_secret=TEST_SECRET, allowed_clock_skew=7)

    assert settings.auth_secret.get_secret_value() == TEST_SECRET
    assert settings.allowed_clock_skew == 7


def test_root_prefix_means_no_prefix() -> None:
    assert AgentSettings(auth_secret=TEST_SECRET, url_prefix="/").url_prefix == ""


# --- out of range ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("allowed_clock_skew", -1),
        ("allowed_clock_skew", 0),
        ("allowed_clock_skew", 86_401),
        ("allowed_clock_skew", "soon"),
        ("sse_heartbeat_interval", 0),
        ("sse_heartbeat_interval", -5),
        ("sse_heartbeat_interval", 3_601),
        ("url_prefix", "forest"),
        ("url_prefix", "/forest/"),
        ("url_prefix", ""),
        ("require_bound_signatures", "maybe"),
    ],
)
def test_out_of_range_value_names_the_field(field: str, value: object) -> None:
    error = _refusal(auth_secret=TEST_SECRET, **{field: value})

    assert [item["loc"] for item in error.errors()] == [(field,)]
    assert field in str(error)
    described = describe_validation_error(error)
    assert f"FOREST_{field.upper()}" in described
    assert "\n" not in described


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("FOREST_ALLOWED_CLOCK_SKEW", "-30"),
        ("FOREST_ALLOWED_CLOCK_SKEW", "abc"),
        ("FOREST_SSE_HEARTBEAT_INTERVAL", "0"),
        ("FOREST_URL_PREFIX", "forest/"),
    ],
)
def test_out_of_range_environment_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str
) -> None:
    monkeypatch.setenv(variable, raw)

    error = _refusal(auth_secret=TEST_SECRET)

    assert variable in describe_validation_error(error)


def test_bounds_themselves_are_accepted() -> None:
    settings = AgentSettings(
        auth_secret=TEST_SECRET, allowed_clock_skew=86_400, sse_heartbeat_interval=3_600
    )

    assert settings.allowed_clock_skew == 86_400
    assert settings.sse_heartbeat_interval == 3_600


# --- describe_validation_error -----------------------------------------------------------------


def test_every_refused_setting_is_described_on_one_line() -> None:
    error = _refusal(allowed_clock_skew=-1, sse_heartbeat_interval=0)

    described = describe_validation_error(error)

    assert described.startswith("configuration error: ")
    assert "\n" not in described
    assert f"{SECRET_VAR} is not set" in described
    assert "FOREST_ALLOWED_CLOCK_SKEW" in described
    assert "FOREST_SSE_HEARTBEAT_INTERVAL" in described
    assert described.count("; ") == 2


def test_variable_is_not_repeated_when_the_message_already_names_it() -> None:
    described = describe_validation_error(_refusal(auth_secret=SHORT_SECRET))

    assert described.count(SECRET_VAR) == 1
    assert "Value error" not in described


@pytest.mark.parametrize("prefix", ["api/forest/", "/api/forest/", "/a b"])
def test_the_datasource_refuses_a_malformed_prefix_in_one_line_naming_it(prefix: str) -> None:
    from rpc_datasource.settings import DatasourceSettings

    with pytest.raises(ValidationError) as caught:
        DatasourceSettings(
            rpc_uri="http://127.0.0.1:5001", auth_secret=TEST_SECRET, url_prefix=prefix
        )
    line = describe_validation_error(caught.value)
    assert "\n" not in line
    assert "url_prefix" in line and "FOREST_URL_PREFIX" in line
