"""The warehouse data server as a real process for the tests: started, read, stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from bench.harness.fleet import RUNNER
from tests.support import TEST_SECRET, announced_port, signed

REPO_ROOT = Path(__file__).resolve().parents[2]


HEALTH = "/forest/health"


SCHEMA = "/forest/rpc-schema"


SSE = "/forest/sse"


STARTUP_DEADLINE = 15.0


EXIT_DEADLINE = 15.0


HEARTBEAT_INTERVAL = "0.2"


REQUEST_TIMEOUT = 5.0


def warehouse_env(secret: str | None = TEST_SECRET) -> dict[str, str]:
    """The caller's environment without any `FOREST_*` setting, plus the test's own."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FOREST_")}
    env["FOREST_SSE_HEARTBEAT_INTERVAL"] = HEARTBEAT_INTERVAL
    env["PYTHONUNBUFFERED"] = "1"
    if secret is not None:
        env["FOREST_AUTH_SECRET"] = secret
    return env


@dataclass
class Warehouse:
    """One running warehouse process and where its output goes."""

    process: subprocess.Popen[bytes]
    port: int
    stderr_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def get(self, target: str, **headers: str) -> requests.Response:
        """A signed GET of `target` (path and query), with extra headers if given."""
        all_headers = {**signed(target), **headers}
        return requests.get(self.url + target, headers=all_headers, timeout=REQUEST_TIMEOUT)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send `signum` and wait for the exit code (fails the test if it does not exit)."""
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=EXIT_DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"warehouse did not exit within {EXIT_DEADLINE} s of "
                f"{signal.Signals(signum).name}; stderr:\n{self.stderr()}"
            )


def wait_until_ready(warehouse: Warehouse, health: str = HEALTH) -> None:
    """Poll the signed health route until it answers 200, the process dies, or time runs out."""
    deadline = time.monotonic() + STARTUP_DEADLINE
    pause = threading.Event()
    last_problem = "no attempt made"
    while time.monotonic() < deadline:
        if warehouse.process.poll() is not None:
            pytest.fail(
                f"warehouse exited with {warehouse.process.returncode} before it was ready; "
                f"stderr:\n{warehouse.stderr()}"
            )
        try:
            response = requests.get(
                warehouse.url + health, headers=signed(health), timeout=REQUEST_TIMEOUT
            )
        except requests.RequestException as error:
            last_problem = repr(error)
        else:
            if response.status_code == 200:
                return
            last_problem = f"HTTP {response.status_code}: {response.text[:200]}"
        pause.wait(0.05)
    pytest.fail(
        f"warehouse not ready within {STARTUP_DEADLINE} s ({last_problem}); "
        f"stderr:\n{warehouse.stderr()}"
    )


@contextmanager
def running_warehouse(
    db_path: Path, log_dir: Path, *, port: int | None = None, settings: dict[str, str] | None = None
) -> Iterator[Warehouse]:
    """Start the command (on `port`, with extra `FOREST_*` settings if given), wait until its
    health route (under the settings' `FOREST_URL_PREFIX`) answers, and always end and reap
    it afterwards. Without a `port` it binds port 0 and reads the port it got from its log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = log_dir / f"warehouse-{port or 'new'}-{time.monotonic_ns()}.stderr"
    with stderr_path.open("wb") as stderr_file:
        process = subprocess.Popen(
            RUNNER.command(port or 0, db_path),
            cwd=REPO_ROOT,
            env={**warehouse_env(), **(settings or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr_file,
        )
        try:
            warehouse = Warehouse(
                process, port or announced_port(stderr_path, process), stderr_path
            )
            prefix = (settings or {}).get("FOREST_URL_PREFIX", "/forest")
            wait_until_ready(warehouse, f"{prefix}/health")
            yield warehouse
        finally:
            if process.poll() is None:  # a test that checks the graceful stop made it already
                process.kill()
            process.wait()


def collection(schema: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [item for item in schema["collections"] if item["name"] == name]
    assert len(matches) == 1, f"expected one collection {name!r}, got {schema['collections']}"
    return matches[0]


def field_names(schema: dict[str, Any], name: str) -> list[str]:
    return [item["name"] for item in collection(schema, name)["fields"]]
