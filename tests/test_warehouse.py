"""The real `python -m examples.warehouse` command, run as a subprocess on 127.0.0.1.

Each test starts the command the way a user would (its own process, its own SQLite file in
`tmp_path`, the secret in the environment) and talks to it over HTTP with signed requests.
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.harness.fleet import RUNNER
from examples.warehouse.database import PRODUCTS, add_column
from tests.support import TEST_SECRET, free_port, signed
from tests.support.warehouse import (
    EXIT_DEADLINE,
    HEALTH,
    REPO_ROOT,
    REQUEST_TIMEOUT,
    SCHEMA,
    SSE,
    Warehouse,
    field_names,
    running_warehouse,
    warehouse_env,
)

pytestmark = pytest.mark.slow

# --- configuration errors ------------------------------------------------------------------


def _warehouse_run(arguments: list[str], secret: str | None) -> subprocess.CompletedProcess[str]:
    """Run the warehouse command to its end (it is expected to refuse to start)."""
    return subprocess.run(
        arguments,
        cwd=REPO_ROOT,
        env=warehouse_env(secret),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "secret",
    [None, "", "short-XYZZY"],
    ids=["missing", "empty", "short"],
)
def test_refuses_to_start_without_a_usable_secret(secret: str | None, tmp_path: Path) -> None:
    result = _warehouse_run(RUNNER.command(free_port(), tmp_path / "warehouse.db"), secret)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {result.stderr!r}"
    assert lines[0].strip()
    assert "FOREST_AUTH_SECRET" in lines[0]
    if secret:
        assert secret not in result.stdout
        assert secret not in result.stderr


@pytest.mark.parametrize("server", ["runner", "waitress"])
def test_a_taken_port_is_one_line_naming_it(server: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        arguments = [*RUNNER.command(port, tmp_path / "warehouse.db"), "--server", server]
        result = _warehouse_run(arguments, TEST_SECRET)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"warehouse: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


# --- health and schema ---------------------------------------------------------------------


def test_health_answers_the_contract_body(warehouse: Warehouse) -> None:
    response = warehouse.get(HEALTH)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    assert len(response.content) < 1024
    body = response.json()
    assert body["status"] == "ok"
    assert isinstance(body["version"], str) and body["version"]
    assert isinstance(body["instance_id"], str) and body["instance_id"]
    assert isinstance(body["schema_etag"], str) and body["schema_etag"]
    uptime = body["uptime_s"]
    assert isinstance(uptime, int | float) and not isinstance(uptime, bool)
    assert uptime >= 0


def test_agent_routes_refuse_unsigned_requests(warehouse: Warehouse) -> None:
    for target in (HEALTH, SCHEMA):
        response = requests.get(warehouse.url + target, timeout=REQUEST_TIMEOUT)

        assert response.status_code == 401
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json() == {"error": "Unauthorized", "reason": "missing_headers"}


def test_metrics_count_the_agents_answers_and_refusals(warehouse: Warehouse) -> None:
    assert warehouse.get(HEALTH).status_code == 200
    assert requests.get(warehouse.url + HEALTH, timeout=REQUEST_TIMEOUT).status_code == 401

    response = requests.get(warehouse.url + "/metrics", timeout=REQUEST_TIMEOUT)

    assert response.status_code == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    answered = "forest_agent_requests_total"
    assert samples[answered, (("route", "health"), ("status", "200"))] >= 1
    assert samples[answered, (("route", "health"), ("status", "401"))] >= 1
    assert samples["forest_agent_unauthorized_total", (("reason", "missing_headers"),)] >= 1
    assert samples["forest_agent_shutting_down", ()] == 0
    instance_id = warehouse.get(HEALTH).json()["instance_id"]
    identity = [key for key in samples if key[0] == "forest_agent_info"]
    assert [dict(labels)["instance_id"] for _, labels in identity] == [instance_id]


def test_schema_lists_the_database_tables_with_an_etag_matching_health(
    warehouse: Warehouse,
) -> None:
    health = warehouse.get(HEALTH).json()
    response = warehouse.get(SCHEMA)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    schema = response.json()
    assert isinstance(schema["charts"], list)
    names = {item["name"] for item in schema["collections"]}
    assert {"manufacturers", "products"} <= names
    assert set(field_names(schema, "manufacturers")) >= {"id", "name", "country"}
    assert set(field_names(schema, "products")) >= {
        "id",
        "name",
        "manufacturer_id",
        "price_cents",
        "stock",
    }
    etag = response.headers["ETag"]
    assert not etag.startswith("W/"), "the schema ETag must be strong"
    assert etag == health["schema_etag"]


def test_schema_answers_304_to_the_current_etag(warehouse: Warehouse) -> None:
    etag = warehouse.get(SCHEMA).headers["ETag"]

    response = warehouse.get(SCHEMA, **{"If-None-Match": etag})

    assert response.status_code == 304
    assert response.content == b""


# --- signals -------------------------------------------------------------------------------


class SseReader:
    """Reads one signed SSE stream in a thread, recording `(event, data)` pairs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: list[tuple[str, str]] = []
        self.error: BaseException | None = None
        self.status: int | None = None
        self.content_type = ""
        self.got_first_event = threading.Event()
        self.ended = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sse-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def recorded(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self.events)

    def _run(self) -> None:
        try:
            with requests.get(
                self.url + SSE, headers=signed(SSE), stream=True, timeout=(REQUEST_TIMEOUT, 10.0)
            ) as response:
                self.status = response.status_code
                self.content_type = response.headers.get("Content-Type", "")
                event, data = "", []
                for line in response.iter_lines(chunk_size=1, decode_unicode=True):
                    if line.startswith("event:"):
                        event = line.removeprefix("event:").strip()
                    elif line.startswith("data:"):
                        data.append(line.removeprefix("data:").strip())
                    elif line == "" and event:
                        with self._lock:
                            self.events.append((event, "\n".join(data)))
                        self.got_first_event.set()
                        event, data = "", []
        except BaseException as error:
            self.error = error
        finally:
            self.ended.set()
            self.got_first_event.set()


def test_sigterm_sends_rpc_server_stop_to_the_open_stream_and_exits_0(
    warehouse: Warehouse,
) -> None:
    reader = SseReader(warehouse.url)
    reader.start()
    try:
        assert reader.got_first_event.wait(10.0), "no SSE event arrived"
        assert reader.error is None, repr(reader.error)
        assert reader.status == 200
        assert reader.content_type.startswith("text/event-stream")
        assert reader.recorded()[0] == ("heartbeat", '""')

        code = warehouse.stop(signal.SIGTERM)

        assert reader.ended.wait(EXIT_DEADLINE), "the SSE stream did not end after SIGTERM"
    finally:
        reader.join(EXIT_DEADLINE)
    assert reader.error is None, repr(reader.error)
    events = reader.recorded()
    assert events[-1] == ("RpcServerStop", '{"event": "RpcServerStop"}'), events
    assert [name for name, _ in events[:-1]] == ["heartbeat"] * (len(events) - 1)
    assert code == 0, warehouse.stderr()


def test_sigint_exits_0(warehouse: Warehouse) -> None:
    assert warehouse.get(HEALTH).status_code == 200

    code = warehouse.stop(signal.SIGINT)

    assert code == 0, warehouse.stderr()
    assert "Traceback" not in warehouse.stderr()


def test_sigterm_without_open_stream_exits_0(warehouse: Warehouse) -> None:
    code = warehouse.stop(signal.SIGTERM)

    assert code == 0, warehouse.stderr()
    assert "Traceback" not in warehouse.stderr()


# --- database and migration ----------------------------------------------------------------


def test_database_is_created_and_seeded_when_absent(db_path: Path, tmp_path: Path) -> None:
    assert not db_path.exists()

    with running_warehouse(db_path, tmp_path / "logs") as running:
        assert db_path.exists()
        products = requests.get(running.url + "/products", timeout=REQUEST_TIMEOUT)
        manufacturers = requests.get(running.url + "/manufacturers", timeout=REQUEST_TIMEOUT)
        assert running.stop() == 0, running.stderr()

    assert products.status_code == 200
    rows = products.json()
    assert len(rows) == len(PRODUCTS)
    assert [row["name"] for row in rows] == [product[1] for product in PRODUCTS]
    assert all(isinstance(row["price_cents"], int) for row in rows)
    assert manufacturers.status_code == 200
    manufacturer_ids = {row["id"] for row in manufacturers.json()}
    assert {row["manufacturer_id"] for row in rows} <= manufacturer_ids
    with sqlite3.connect(db_path) as connection:
        (count,) = connection.execute("SELECT COUNT(*) FROM products").fetchone()
    connection.close()
    assert count == len(PRODUCTS)


def test_existing_database_is_served_as_is_not_reseeded(db_path: Path, tmp_path: Path) -> None:
    with running_warehouse(db_path, tmp_path / "logs") as running:
        assert running.stop() == 0, running.stderr()
    with sqlite3.connect(db_path) as connection:
        connection.execute("DELETE FROM products WHERE id > 1")
    connection.close()

    with running_warehouse(db_path, tmp_path / "logs") as running:
        rows = requests.get(running.url + "/products", timeout=REQUEST_TIMEOUT).json()
        assert running.stop() == 0, running.stderr()

    assert [row["id"] for row in rows] == [1]


def test_migration_changes_the_schema_and_etag_at_the_next_start(
    db_path: Path, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    with running_warehouse(db_path, logs) as first:
        first_health = first.get(HEALTH).json()
        first_response = first.get(SCHEMA)
        assert first.stop() == 0, first.stderr()
    first_etag = first_response.headers["ETag"]
    first_schema = first_response.json()
    assert "weight_grams" not in field_names(first_schema, "products")

    with running_warehouse(db_path, logs) as second:
        second_health = second.get(HEALTH).json()
        second_response = second.get(SCHEMA)
        unchanged = second.get(SCHEMA, **{"If-None-Match": first_etag})
        assert second.stop() == 0, second.stderr()
    assert second_response.headers["ETag"] == first_etag
    assert second_health["schema_etag"] == first_etag
    assert second_response.json() == first_schema
    assert unchanged.status_code == 304
    assert second_health["instance_id"] != first_health["instance_id"]

    add_column(db_path, "products", "weight_grams", "INTEGER")

    with running_warehouse(db_path, logs) as third:
        third_health = third.get(HEALTH).json()
        third_response = third.get(SCHEMA)
        stale = third.get(SCHEMA, **{"If-None-Match": first_etag})
        assert third.stop() == 0, third.stderr()
    third_etag = third_response.headers["ETag"]
    third_schema = third_response.json()
    assert third_etag != first_etag
    assert third_health["schema_etag"] == third_etag
    assert stale.status_code == 200
    assert stale.json() == third_schema
    assert field_names(third_schema, "products") == [
        *field_names(first_schema, "products"),
        "weight_grams",
    ]
    assert field_names(third_schema, "manufacturers") == field_names(first_schema, "manufacturers")
    assert third_health["instance_id"] not in {
        first_health["instance_id"],
        second_health["instance_id"],
    }
