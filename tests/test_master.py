"""The master example: its command's configuration errors, event lines and /status."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.master import DatasourceEventLog, create_master_app
from rpc_datasource import RpcDatasource
from tests.support import TEST_SECRET, LiveServer, agent_app, start_server

REPO = Path(__file__).resolve().parents[1]


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


def test_event_lines_and_status_through_an_outage_with_a_migration(
    agent_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="examples.master")
    events = DatasourceEventLog("warehouse")
    reloaded = threading.Event()
    went_down = threading.Event()

    def on_server_down() -> None:
        events.on_server_down()
        went_down.set()

    def on_schema_change(schema: dict[str, Any]) -> None:
        events.on_schema_change(schema)
        reloaded.set()

    datasource = RpcDatasource.build(
        uri=agent_server.url,
        auth_secret=TEST_SECRET,
        health_check_interval=0.05,
        health_check_failure_threshold=2,
        health_check_timeout=1.0,
        on_schema_change=on_schema_change,
        on_server_down=on_server_down,
        on_server_recovered=events.on_server_recovered,
    )
    restarted: LiveServer | None = None
    try:
        events.attach(datasource)
        port = agent_server.port
        agent_server.stop()
        assert went_down.wait(20)
        restarted = start_server(agent_app(lambda: schema_with("name", "weight_grams"))[0], port)
        assert reloaded.wait(20)
        messages = [record.getMessage() for record in caplog.records]
        down = [m for m in messages if "warehouse DOWN" in m]
        recovered = [m for m in messages if "warehouse RECOVERED" in m]
        schema = [m for m in messages if "warehouse SCHEMA RELOADED" in m]
        assert any("connected: collections products" in m for m in messages)
        assert len(down) == 1 and "failed probe(s): connection failed" in down[0]
        assert len(recovered) == 1 and "s outage" in recovered[0]
        assert len(schema) == 1 and "+field products.weight_grams" in schema[0]

        status = create_master_app({"warehouse": datasource}).test_client().get("/status").json
        assert status is not None
        report = status["warehouse"]
        assert report["state"] == "up"
        assert report["schema_reloads"] == 1
        assert report["schema_etag"] == datasource.schema_etag
        assert report["failures"] >= 2
        assert report["last_error"].startswith("connection failed")
    finally:
        datasource.close()
        if restarted is not None:
            restarted.stop()
