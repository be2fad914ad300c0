"""The agent under waitress (the README's recipe, as `python -m examples.warehouse --server
waitress` runs it): held watches leave the app its threads,
and SIGTERM is a graceful stop (503, held watches answered, RpcServerStop, exit 0)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.support import TEST_SECRET, running_process, signed, wait_until
from tests.support.server_processes import HeldWatch, SseStream

pytestmark = pytest.mark.slow

WAREHOUSE_ON_WAITRESS = [sys.executable, "-m", "examples.warehouse", "--server", "waitress"]
LONG_WAIT_S = 20.0
PROMPT_S = 2.0  # an app request answered well before any watch's wait runs out


@dataclass
class Waitress:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> requests.Response:
        return requests.get(
            self.url + "/forest/health", headers=signed("/forest/health"), timeout=5
        )


@pytest.fixture
def waitress_server(tmp_path: Path) -> Iterator[Waitress]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("FOREST_")}
    env.update(FOREST_AUTH_SECRET=TEST_SECRET, FOREST_SHUTDOWN_DRAIN_SECONDS="0.5")
    log_path = tmp_path / "waitress.log"
    command = [*WAREHOUSE_ON_WAITRESS, "--port", "0", "--db", str(tmp_path / "w.db")]
    with running_process(command, env, log_path) as (process, port):
        yield Waitress(process, port, log_path)


def test_four_masters_watching_leave_the_app_its_threads(waitress_server: Waitress) -> None:
    etag = waitress_server.health().headers["ETag"]
    watches = [HeldWatch(waitress_server.port, etag, LONG_WAIT_S).start() for _ in range(4)]
    try:
        assert all(watch.sent.wait(5.0) for watch in watches)
        # Two are held (half of waitress's 4 threads); the other two are answered at once.
        assert wait_until(lambda: sum(watch.answered.is_set() for watch in watches) == 2, 5.0)
        started = time.monotonic()
        answer = requests.get(waitress_server.url + "/products", timeout=LONG_WAIT_S)
        took = time.monotonic() - started
        assert answer.status_code == 200
        assert took < PROMPT_S
    finally:
        waitress_server.process.send_signal(signal.SIGTERM)
        for watch in watches:
            watch.close()


def test_sigterm_is_a_graceful_stop(waitress_server: Waitress) -> None:
    etag = waitress_server.health().headers["ETag"]
    watch = HeldWatch(waitress_server.port, etag, LONG_WAIT_S).start()
    stream = SseStream(waitress_server.port).start()
    try:
        assert stream.first_event.wait(5.0)
        assert watch.sent.wait(5.0)
        signalled = time.monotonic()
        waitress_server.process.send_signal(signal.SIGTERM)
        assert watch.answered.wait(5.0)
        assert watch.status == 503 and watch.body is not None
        assert watch.body["status"] == "shutting_down"
        assert watch.answered_at is not None and watch.answered_at - signalled < 1.0
        assert stream.ended.wait(5.0)
        assert "RpcServerStop" in stream.names()
        assert waitress_server.process.wait(timeout=10.0) == 0
    finally:
        stream.close()
        watch.close()
