"""The master example: its command's errors, the event lines, /status and /metrics."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from examples.master import create_master_app
from rpc_datasource import FailureReason, RpcDatasource
from rpc_datasource.instrumentation import metrics
from tests.support import TEST_SECRET, LiveServer, agent_app, start_server, wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MASTER = (sys.executable, "-m", "examples.master")


def schema_with(*product_fields: str) -> dict[str, Any]:
    fields = [{"name": name, "type": "TEXT"} for name in ("id", *product_fields)]
    return {"collections": [{"name": "products", "fields": fields}], "charts": []}


@pytest.fixture
def agent_server() -> Iterator[LiveServer]:
    server = start_server(agent_app(lambda: schema_with("name"))[0])
    yield server
    server.stop()


def test_master_without_secret_prints_one_line_naming_it() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FOREST_")}
    result = subprocess.run(
        [sys.executable, "-m", "examples.master", "--rpc-uri", "http://127.0.0.1:9"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "FOREST_AUTH_SECRET" in lines[0]
    assert "Traceback" not in result.stderr


def test_event_lines_status_and_metrics_through_an_outage_with_a_migration(
    agent_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rpc_datasource")
    registry = CollectorRegistry()
    metrics.instrument(registry)
    reloaded = threading.Event()
    went_down = threading.Event()
    datasource = RpcDatasource.build(
        uri=agent_server.url,
        auth_secret=TEST_SECRET,
        health_check_interval=0.05,
        health_check_failure_threshold=2,
        health_check_timeout=1.0,
        on_schema_change=lambda schema: reloaded.set(),
        on_server_down=went_down.set,
        name="warehouse",
    )
    app = create_master_app({"warehouse": datasource}, registry).test_client()
    restarted: LiveServer | None = None
    try:
        assert wait_until(lambda: datasource.health.stats().state == "up")
        assert app.get("/status").status_code == 200
        port = agent_server.port
        agent_server.stop()
        assert went_down.wait(20)
        while_down = app.get("/status")
        assert while_down.status_code == 503
        assert while_down.json is not None and while_down.json["warehouse"]["state"] == "down"
        up = ("forest_datasource_agent_up", ("agent", "warehouse"))
        # The hooks that update the metrics may run just after the callback.
        assert wait_until(lambda: scrape(app).get(up) == 0)
        restarted = start_server(agent_app(lambda: schema_with("name", "weight_grams"))[0], port)
        assert reloaded.wait(20)

        records = [r for r in caplog.records if r.name.startswith("rpc_datasource")]
        down = [r for r in records if "warehouse DOWN" in r.getMessage()]
        recovered = [r for r in records if "warehouse RECOVERED" in r.getMessage()]
        schema = [r for r in records if "warehouse SCHEMA RELOADED" in r.getMessage()]
        assert [r.levelno for r in down] == [logging.WARNING]
        cause = r"2 failed probe\(s\) \[(refused|connection)\]: connection failed"
        assert re.search(cause, down[0].getMessage())
        assert [r.levelno for r in recovered] == [logging.INFO]
        assert "s outage" in recovered[0].getMessage()
        assert [r.levelno for r in schema] == [logging.INFO]
        assert "+field products.weight_grams" in schema[0].getMessage()
        failed_probes = [r for r in records if "probe failed" in r.getMessage()]
        assert failed_probes and {r.levelno for r in failed_probes} == {logging.DEBUG}

        status = app.get("/status")
        assert status.status_code == 200 and status.json is not None
        report = status.json["warehouse"]
        assert report["state"] == "up"
        assert report["schema_reloads"] == 1
        assert report["schema_etag"] == datasource.schema_etag
        assert report["failures"] >= 2
        assert report["last_error"].startswith("connection failed")

        after = scrape(app)
        assert after[up] == 1
        transitions = "forest_datasource_state_transitions_total"
        assert after[transitions, ("agent", "warehouse"), ("state", "down")] == 1
        assert after[transitions, ("agent", "warehouse"), ("state", "up")] == 2
        failures = {
            labels[1][1]: value
            for (name, *labels), value in after.items()
            if name == "forest_datasource_probe_failures_total"
        }
        assert set(failures) == {str(reason) for reason in FailureReason}
        assert failures["refused"] + failures["connection"] >= 2
        assert sum(failures.values()) == failures["refused"] + failures["connection"]
        assert after["forest_datasource_schema_reloads_total", ("agent", "warehouse")] == 1
        requests = "forest_datasource_schema_requests_total"
        assert after[requests, ("agent", "warehouse"), ("outcome", "loaded")] == 1
        assert after[requests, ("agent", "warehouse"), ("outcome", "reloaded")] == 1
        info = (
            "forest_datasource_schema_info",
            ("agent", "warehouse"),
            ("etag", datasource.schema_etag),
        )
        assert after[info] == 1
    finally:
        datasource.close()
        metrics.uninstrument(registry)
        if restarted is not None:
            restarted.stop()


def scrape(app: FlaskClient) -> dict[tuple[Any, ...], float]:
    """The master's /metrics, parsed as Prometheus would: (name, *sorted labels) to value."""
    response = app.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=")
    return {
        (found.name, *sorted(found.labels.items())): found.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for found in family.samples
    }


def test_index_and_health_of_the_master_itself(agent_server: LiveServer) -> None:
    with RpcDatasource.build(uri=agent_server.url, auth_secret=TEST_SECRET) as datasource:
        app = create_master_app({"warehouse": datasource}, CollectorRegistry()).test_client()
        index = app.get("/")
        assert index.status_code == 200 and index.json is not None
        assert {"/status", "/metrics", "/health"} <= set(index.json)
        assert app.get("/health").json == {"status": "ok"}


def test_a_taken_port_is_one_error_line_and_exit_code_1(agent_server: LiveServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*MASTER, "--rpc-uri", agent_server.url, "--port", str(port)],
            cwd=REPO,
            env={**os.environ, "FOREST_AUTH_SECRET": TEST_SECRET},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"master: cannot listen on 127.0.0.1:{port}: Address already in use"]
