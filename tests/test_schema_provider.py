"""The user's schema provider is off the request path: called at start (a bad one stops the
start in one line), then in the background; health and schema answer from memory."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from rpc_agent import AgentCore, AgentSettings, ConfigurationError
from rpc_agent.core.schema import SchemaProviderError, validated_schema
from rpc_datasource import HealthCheckClient
from tests.support import TEST_SECRET, running_process, signed, wait_until

pytestmark = pytest.mark.slow

GOOD = {"collections": [], "charts": []}
# The provider's timeout in the app below: a health answer that waited on it would take this.
PROVIDER_TIMEOUT_S = 1.0
PROBES = 200


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        ({"collections"}, "returned a set"),
        ([GOOD], "returned a list"),
        ({"collections": []}, "'charts' is not a list"),
        ({"collections": {}, "charts": []}, "'collections' is not a list"),
        ({"collections": [object()], "charts": []}, "not JSON"),
    ],
)
def test_a_result_that_is_not_a_schema_is_named(result: object, problem: str) -> None:
    with pytest.raises(SchemaProviderError, match=problem):
        validated_schema(result)


def test_a_schema_is_taken_as_a_copy() -> None:
    given: dict[str, Any] = {"collections": [{"name": "a"}], "charts": []}
    taken = validated_schema(given)
    given["collections"].append({"name": "b"})
    assert taken == {"collections": [{"name": "a"}], "charts": []}


def raising() -> Mapping[str, Any]:
    raise RuntimeError("no such table: products")


def hanging() -> Mapping[str, Any]:
    threading.Event().wait(5)
    return GOOD


@pytest.mark.parametrize(
    ("provider", "problem"),
    [
        (raising, "raised RuntimeError: no such table: products"),
        (lambda: {"collections"}, "returned a set"),
        (lambda: [GOOD], "returned a list"),
        (lambda: {"collections": []}, "'charts' is not a list"),
        (hanging, "gave no answer within 0.2 s"),
    ],
)
def test_a_provider_that_fails_at_start_stops_the_start_in_one_line(
    provider: Any, problem: str
) -> None:
    settings = AgentSettings(auth_secret=TEST_SECRET, schema_provider_timeout=0.2)
    with pytest.raises(ConfigurationError) as raised:
        AgentCore(settings=settings, schema_provider=provider)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("schema_provider ")
    assert problem in message


def test_schema_changed_reads_the_provider_in_the_background() -> None:
    current = {"schema": GOOD}
    calls = 0

    def provider() -> Mapping[str, Any]:
        nonlocal calls
        calls += 1
        return current["schema"]

    agent = AgentCore(settings=AgentSettings(auth_secret=TEST_SECRET), schema_provider=provider)
    before = agent.schema_answer().etag
    for _ in range(5):
        agent.health_answer()
        agent.schema_answer()
    assert calls == 1, "requests never call the provider"
    current["schema"] = {"collections": [{"name": "products"}], "charts": []}
    assert agent.schema_changed().result(timeout=5)
    assert agent.schema_answer().etag != before
    assert agent.health_answer().schema_etag == agent.schema_answer().etag


def test_the_refresh_interval_picks_a_change_up_without_a_call() -> None:
    current = {"schema": GOOD}
    settings = AgentSettings(auth_secret=TEST_SECRET, schema_refresh_interval=0.05)
    agent = AgentCore(settings=settings, schema_provider=lambda: current["schema"])
    before = agent.schema_answer().etag
    current["schema"] = {"collections": [{"name": "products"}], "charts": []}
    assert wait_until(lambda: agent.schema_answer().etag != before, 5.0)


@dataclass
class ProviderApp:
    """A real data server (the project's runner) whose provider the test switches."""

    process: subprocess.Popen[bytes]
    port: int
    mode_file: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def switch(self, mode: str) -> None:
        self.mode_file.write_text(mode)

    def health(self) -> requests.Response:
        return requests.get(
            self.url + "/forest/health", headers=signed("/forest/health"), timeout=5
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def provider_app(tmp_path: Path) -> Iterator[ProviderApp]:
    mode_file = tmp_path / "mode"
    mode_file.write_text("a")
    log_path = tmp_path / "app.log"
    env = {name: value for name, value in os.environ.items() if not name.startswith("FOREST_")}
    env.update(
        FOREST_AUTH_SECRET=TEST_SECRET,
        FOREST_SCHEMA_REFRESH_INTERVAL="0.2",
        FOREST_SCHEMA_PROVIDER_TIMEOUT=str(PROVIDER_TIMEOUT_S),
    )
    command = [sys.executable, "-m", "tests.support.provider_app", "0", str(mode_file)]
    with running_process(command, env, log_path) as (process, port):
        yield ProviderApp(process, port, mode_file, log_path)


def slowest_health(app: ProviderApp) -> float:
    took = []
    session = requests.Session()
    for _ in range(PROBES):
        started = time.perf_counter()
        answer = session.get(
            app.url + "/forest/health", headers=signed("/forest/health"), timeout=5
        )
        took.append(time.perf_counter() - started)
        assert answer.status_code == 200
    session.close()
    return max(took)


def test_a_failing_provider_never_slows_health_nor_causes_an_outage(
    provider_app: ProviderApp,
) -> None:
    downs: list[float] = []
    client = HealthCheckClient(
        provider_app.url, TEST_SECRET, 0.5, 3, 2.0, on_server_down=lambda: downs.append(1.0)
    )
    client.start()
    try:
        good_etag = provider_app.health().json()["schema_etag"]
        for mode in ("raise", "hang", "set"):
            provider_app.switch(mode)
            assert wait_until(lambda: "schema_error" in provider_app.health().json(), 10.0)
            # Never as long as the provider's timeout (the p99 is measured in bench/).
            assert slowest_health(provider_app) < PROVIDER_TIMEOUT_S, mode
            body = provider_app.health().json()
            assert body["status"] == "ok" and body["schema_etag"] == good_etag
            assert len(body["schema_error"]) <= 200
            provider_app.switch("a")
            assert wait_until(lambda: "schema_error" not in provider_app.health().json(), 10.0)
        provider_app.switch("b")
        assert wait_until(lambda: provider_app.health().json()["schema_etag"] != good_etag, 10.0)
        assert client.stats().failures == 0
    finally:
        client.stop()
    assert downs == []
    warnings = [line for line in provider_app.log().splitlines() if "provider failed" in line]
    assert len(warnings) == 3, warnings
    assert "database is locked" in warnings[0]
    assert "no answer within 1 s" in warnings[1]
    assert "returned a set" in warnings[2]
