"""AgentSettings (FOREST_* environment, secret rules, ranges) and its one-line refusals."""

from __future__ import annotations

from typing import Any

import pytest

from rpc_agent.core.settings import AgentSettings
from rpc_common.settings import ConfigurationError
from tests.support import OTHER_SECRET, TEST_SECRET

SHORT_SECRET = "tooshort-XYZZY"
SECRET_VAR = "FOREST_AUTH_SECRET"


def _refusal(**kwargs: Any) -> str:
    """The one line `AgentSettings(**kwargs)` is refused with."""
    with pytest.raises(ConfigurationError) as caught:
        AgentSettings(**kwargs)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    return str(caught.value)


# --- the auth secret ---------------------------------------------------------------------------


def test_missing_secret_is_refused() -> None:
    described = _refusal()

    assert described == f"configuration error: {SECRET_VAR} (auth_secret) is not set or is empty"


def test_missing_secret_error_text_names_the_variable() -> None:
    assert SECRET_VAR in _refusal()


def test_unprefixed_variable_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_SECRET", TEST_SECRET)

    assert SECRET_VAR in _refusal()


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
        described = _refusal()
        assert described.startswith(f"configuration error: {SECRET_VAR} (auth_secret) is ")
    else:
        described = _refusal(auth_secret=value)
        assert described.startswith("configuration error: auth_secret (as given) is ")
        assert SECRET_VAR not in described  # the argument was wrong, not the environment
    assert phrase in described
    if value:
        assert value not in described
    assert "XYZZY" not in described
    assert "\n" not in described


def test_short_secret_message_gives_sizes_in_bytes() -> None:
    described = _refusal(auth_secret=SHORT_SECRET)

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
    assert TEST_SECRET not in _refusal(auth_secret=TEST_SECRET, allowed_clock_skew=-1)


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
def test_out_of_range_argument_names_the_argument(field: str, value: object) -> None:
    described = _refusal(auth_secret=TEST_SECRET, **{field: value})

    assert described.startswith(f"configuration error: {field} (as given)")
    assert "; " not in described  # that one setting only
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

    described = _refusal(auth_secret=TEST_SECRET)

    assert described.startswith(f"configuration error: {variable} (")


def test_bounds_themselves_are_accepted() -> None:
    settings = AgentSettings(
        auth_secret=TEST_SECRET, allowed_clock_skew=86_400, sse_heartbeat_interval=3_600
    )

    assert settings.allowed_clock_skew == 86_400
    assert settings.sse_heartbeat_interval == 3_600


# --- the one line ------------------------------------------------------------------------------


def test_every_refused_setting_is_described_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOREST_SSE_HEARTBEAT_INTERVAL", "0")

    described = _refusal(allowed_clock_skew=-1)

    assert described.startswith("configuration error: ")
    assert "\n" not in described
    assert f"{SECRET_VAR} (auth_secret) is not set" in described
    assert "allowed_clock_skew (as given)" in described
    assert "FOREST_SSE_HEARTBEAT_INTERVAL (sse_heartbeat_interval)" in described
    assert described.count("; ") == 2


def test_variable_is_not_repeated_when_the_message_already_names_it() -> None:
    described = _refusal(auth_secret=SHORT_SECRET)
    assert described.count("auth_secret") == 1
    assert "Value error" not in described


@pytest.mark.parametrize("prefix", ["api/forest/", "/api/forest/", "/a b"])
def test_the_datasource_refuses_a_malformed_prefix_in_one_line_naming_it(prefix: str) -> None:
    from rpc_datasource.settings import DatasourceSettings

    with pytest.raises(ConfigurationError) as caught:
        DatasourceSettings(
            rpc_uri="http://127.0.0.1:5001", auth_secret=TEST_SECRET, url_prefix=prefix
        )
    line = str(caught.value)
    assert "\n" not in line
    assert line.startswith("configuration error: url_prefix (as given) must ")


def test_the_datasource_names_a_malformed_prefix_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from rpc_datasource.settings import DatasourceSettings

    monkeypatch.setenv("FOREST_URL_PREFIX", "api/forest")
    with pytest.raises(ConfigurationError) as caught:
        DatasourceSettings(rpc_uri="http://127.0.0.1:5001", auth_secret=TEST_SECRET)
    assert str(caught.value).startswith("configuration error: FOREST_URL_PREFIX (url_prefix) must ")


def test_build_names_a_refused_argument_by_its_own_short_name() -> None:
    from rpc_datasource import RpcDatasource

    with pytest.raises(ConfigurationError) as caught:
        RpcDatasource.build(uri="http://127.0.0.1:5001", auth_secret=TEST_SECRET, timeout=-1)
    line = str(caught.value)
    assert line.startswith("configuration error: timeout (as given) must be ")
    assert "health_check_timeout" not in line and "FOREST_" not in line
