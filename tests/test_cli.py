"""`forest-rpc` as a user runs it: a subprocess against real agents, its exit codes and lines."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support import OTHER_SECRET, TEST_SECRET, agent_app, closed_port, live_server
from tests.support.scripted_server import Answer, scripted_server
from tests.support.warehouse import Warehouse, running_warehouse

pytestmark = pytest.mark.slow

COMMAND_DEADLINE_S = 20.0


def forest_rpc(
    *args: str, secret: str | None = TEST_SECRET, timeout: float = COMMAND_DEADLINE_S
) -> subprocess.CompletedProcess[str]:
    """Run `python -m rpc_datasource ARGS` with only the secret set among FOREST_*."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("FOREST_")}
    if secret is not None:
        env["FOREST_AUTH_SECRET"] = secret
    return subprocess.run(
        [sys.executable, "-m", "rpc_datasource", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line, got {text!r}"
    return lines[0]


def test_probe_of_an_agent_that_is_up_exits_0_with_its_instance_id(warehouse: Warehouse) -> None:
    instance_id = warehouse.get("/forest/health").json()["instance_id"]
    done = forest_rpc("probe", warehouse.url)
    assert done.returncode == 0, done.stderr
    assert one_line(done.stdout).startswith(f"ok instance_id={instance_id} ")
    assert done.stderr == ""


def test_probe_json_is_one_object_with_the_contract_fields(warehouse: Warehouse) -> None:
    done = forest_rpc("probe", warehouse.url, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(one_line(done.stdout))
    assert report["status"] == "ok"
    assert report["reason"] is None
    assert report["latency_ms"] > 0
    assert report["instance_id"] == warehouse.get("/forest/health").json()["instance_id"]


def test_a_uri_that_ends_in_the_health_route_works_too(warehouse: Warehouse) -> None:
    done = forest_rpc("probe", warehouse.url + "/forest/health")
    assert done.returncode == 0, done.stdout + done.stderr


def test_probe_of_an_agent_shutting_down_exits_4() -> None:
    app, agent = agent_app()
    with live_server(app) as server:
        agent.begin_shutdown()
        done = forest_rpc("probe", server.url, "--json")
    assert done.returncode == 4, done.stdout + done.stderr
    report = json.loads(one_line(done.stdout))
    assert (report["status"], report["reason"]) == ("shutting_down", "shutting_down")


def test_probe_of_a_port_nobody_listens_on_exits_2() -> None:
    done = forest_rpc("probe", f"http://127.0.0.1:{closed_port()}")
    assert done.returncode == 2
    assert "Connection refused" in one_line(done.stdout)


def test_probe_with_a_secret_the_agent_refuses_exits_5_naming_the_reason(
    warehouse: Warehouse,
) -> None:
    done = forest_rpc("probe", warehouse.url, secret=OTHER_SECRET)
    assert done.returncode == 5
    assert "401" in one_line(done.stdout) and "bad_signature" in done.stdout


def test_probe_under_the_wrong_prefix_exits_3_naming_the_path_and_the_setting(
    warehouse: Warehouse,
) -> None:
    done = forest_rpc("probe", warehouse.url, "--prefix", "/api/forest")
    assert done.returncode == 3
    line = one_line(done.stdout)
    assert "HTTP 404" in line and "/api/forest/health" in line and "FOREST_URL_PREFIX" in line


def test_https_to_an_http_port_exits_2_and_says_tls(warehouse: Warehouse) -> None:
    done = forest_rpc("probe", warehouse.url.replace("http://", "https://"))
    assert done.returncode == 2
    line = one_line(done.stdout)
    assert "TLS" in line and "http://" in line


@pytest.mark.parametrize(
    ("args", "secret", "names"),
    [
        (("probe", "http://127.0.0.1:1"), None, "FOREST_AUTH_SECRET"),
        (("probe", "http://127.0.0.1:1"), "Zq7-k3y", "FOREST_AUTH_SECRET"),
        (("probe", "http://127.0.0.1:1", "--prefix", "api/"), TEST_SECRET, "--prefix (as given)"),
        (("probe", "127.0.0.1:1"), TEST_SECRET, "URI (as given) must be an http"),
        (("probe",), TEST_SECRET, "uri"),
        (("fly", "http://127.0.0.1:1"), TEST_SECRET, "fly"),
        (("probe", "http://127.0.0.1:1", "--timeout", "soon"), TEST_SECRET, "--timeout"),
    ],
)
def test_usage_and_configuration_errors_exit_1_with_one_line_naming_the_problem(
    args: tuple[str, ...], secret: str | None, names: str
) -> None:
    done = forest_rpc(*args, secret=secret)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert line.startswith("forest-rpc: ") and names in line
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert TEST_SECRET not in line and "Zq7-k3y" not in line  # never the secret's value


# kubelet's timeoutSeconds in the test below: 5 s in the docs' example, doubled here because a
# loaded 2-core machine may take seconds to start a Python process at all.
KUBELET_TIMEOUT_S = 10.0


def test_a_kubernetes_exec_probe_of_a_hung_agent_fails_within_its_timeout() -> None:
    """As kubelet runs `exec: [forest-rpc, probe, URI, --timeout, 1]` with timeoutSeconds 5:
    the command itself ends, non-zero, before kubelet would have to kill it."""
    with scripted_server() as server:
        server.script(Answer(hold=True))
        started = time.monotonic()
        done = forest_rpc("probe", server.url, "--timeout", "1", timeout=KUBELET_TIMEOUT_S)
        took = time.monotonic() - started
    assert done.returncode == 3
    assert "timed out after 1 s" in one_line(done.stdout)
    assert took < KUBELET_TIMEOUT_S


def test_schema_prints_the_agents_schema_and_diffs_it_against_a_file(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    done = forest_rpc("schema", warehouse.url)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed == warehouse.get("/forest/rpc-schema").json()

    older = json.loads(done.stdout)
    older["collections"][0]["fields"] = older["collections"][0]["fields"][:-1]
    dropped = printed["collections"][0]["fields"][-1]["name"]
    saved = tmp_path / "schema.json"
    saved.write_text(json.dumps(older), encoding="utf-8")
    diffed = forest_rpc("schema", warehouse.url, "--diff", str(saved))
    assert diffed.returncode == 0, diffed.stderr
    assert one_line(diffed.stdout) == f"+field {printed['collections'][0]['name']}.{dropped}"


def test_schema_of_an_unreachable_agent_is_one_line_and_exit_2() -> None:
    done = forest_rpc("schema", f"http://127.0.0.1:{closed_port()}")
    assert done.returncode == 2
    assert "cannot read the schema" in one_line(done.stderr)


def test_sign_prints_headers_that_the_agent_accepts(warehouse: Warehouse) -> None:
    done = forest_rpc("sign", "GET", "/forest/health")
    assert done.returncode == 0, done.stderr
    headers = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert set(headers) == {"X-Timestamp", "X-Signature"}
    assert headers["X-Signature"].startswith("v2=")
    answer = requests.get(warehouse.url + "/forest/health", headers=headers, timeout=5)
    assert answer.status_code == 200


@pytest.fixture
def watching(warehouse: Warehouse) -> Iterator[subprocess.Popen[str]]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("FOREST_")}
    env["FOREST_AUTH_SECRET"] = TEST_SECRET
    process = subprocess.Popen(
        [sys.executable, "-m", "rpc_datasource", "watch", warehouse.url, "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=COMMAND_DEADLINE_S)


def _read_lines_into(process: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.put(line.rstrip("\n"))


def _wait_for_line(lines: queue.Queue[str], wanted: str, seen: list[str]) -> str:
    """The first line (after those already `seen`) that contains `wanted`; fails at the deadline."""
    deadline = time.monotonic() + COMMAND_DEADLINE_S
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        seen.append(line)
        if wanted in line:
            return line
    pytest.fail(f"no line with {wanted!r} within {COMMAND_DEADLINE_S} s; got {seen}")


def test_watch_prints_a_line_for_each_change_of_state(
    watching: subprocess.Popen[str], warehouse: Warehouse, tmp_path: Path
) -> None:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines_into, args=(watching, lines), daemon=True).start()
    seen: list[str] = []
    _wait_for_line(lines, " up ok instance_id=", seen)

    assert warehouse.stop() == 0
    down = _wait_for_line(lines, " DOWN after ", seen)
    assert down.endswith("DOWN after 1 failed probe(s) [shutting_down]"), seen

    restart = tmp_path / "restart"
    with running_warehouse(tmp_path / "warehouse.db", restart, port=warehouse.port) as again:
        new_instance_id = again.get("/forest/health").json()["instance_id"]
        _wait_for_line(lines, " RECOVERED", seen)
        restarted = _wait_for_line(lines, " RESTARTED new instance_id=", seen)
    assert restarted.endswith(f"RESTARTED new instance_id={new_instance_id}")
    assert sum(" DOWN " in line for line in seen) == 1, seen


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_watch_prints_a_line_per_probe_and_exits_0_when_interrupted(
    watching: subprocess.Popen[str], signum: int
) -> None:
    assert watching.stdout is not None
    lines = [watching.stdout.readline() for _ in range(2)]
    assert all(" up ok instance_id=" in line for line in lines), lines
    watching.send_signal(signum)
    assert watching.wait(timeout=COMMAND_DEADLINE_S) == 0
