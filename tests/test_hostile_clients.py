"""The runner (the warehouse: uvicorn on httptools, the agent in front) and gunicorn with the
recommended ASGI workers under anonymous hostile load: a legitimate master sees no outage,
and the log stays bounded."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rpc_agent.servers.http_protocol import HEADERS_DEADLINE_S
from rpc_datasource import HealthCheckClient
from tests.support import TEST_SECRET, running_process, wait_until

pytestmark = pytest.mark.slow

SOFT_OPEN_FILES = 1024  # the common default the runner must not be bound by


@dataclass
class Runner:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    processes: int  # that serve requests, each with its own rate limit

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()


def low_open_files_limit() -> None:
    """In the child: `ulimit -n 1024`, the hard limit as it is."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT_OPEN_FILES, hard))


def runner_command(port: int, db: Path) -> list[str]:
    """The warehouse on the project's runner."""
    return [sys.executable, "-m", "examples.warehouse", "--port", str(port), "--db", str(db)]


def gunicorn_uvicorn_command(port: int, db: Path) -> list[str]:
    """The warehouse under gunicorn with the recommended ASGI workers."""
    return [
        *(sys.executable, "-m", "gunicorn", "-c", "python:rpc_agent.gunicorn"),
        *("--no-control-socket", "-w", "2", "-b", f"127.0.0.1:{port}"),
        *("-k", "rpc_agent.servers.uvicorn_worker.UvicornWorker"),
        f"examples.warehouse:create_asgi_app({str(db)!r})",
    ]


@pytest.fixture(
    params=[runner_command, gunicorn_uvicorn_command], ids=["runner", "gunicorn-uvicorn"]
)
def runner(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runner]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("FOREST_")}
    env["FOREST_AUTH_SECRET"] = TEST_SECRET
    log_path, db = tmp_path / "warehouse.log", tmp_path / "w.db"
    workers = 2 if request.param is gunicorn_uvicorn_command else 1
    command = request.param(0, db)
    with running_process(command, env, log_path, low_open_files_limit) as (process, port):
        yield Runner(process, port, log_path, workers)


@dataclass
class Verdict:
    downs: int
    probes: int
    failures: int
    last_error: str | None = None


def probed_while(runner: Runner, attack: Callable[[], None]) -> Verdict:
    """A legitimate master (0.5 s, the default 5 s timeout, threshold 3) watches while
    `attack` runs."""
    downs: list[float] = []
    client = HealthCheckClient(
        runner.url, TEST_SECRET, 0.5, 3, 5.0, on_server_down=lambda: downs.append(1.0)
    )
    client.start()
    try:
        attack()
        stats = client.stats()
    finally:
        client.stop()
    return Verdict(len(downs), stats.probes, stats.failures, stats.last_error)


def raise_own_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def connections(port: int, count: int) -> list[socket.socket]:
    opened = []
    for _ in range(count):
        opened.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    return opened


def closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_requests_with_10000_headers_are_refused_and_cost_the_master_nothing(
    runner: Runner,
) -> None:
    request = b"GET /forest/health HTTP/1.1\r\nHost: x\r\n"
    request += b"".join(b"X-Filler-%d: %d\r\n" % (n, n) for n in range(10_000)) + b"\r\n"
    answers: list[bytes] = []

    def attack() -> None:
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:  # about 30 a second, for 4 s
            with socket.create_connection(("127.0.0.1", runner.port), timeout=5) as sock:
                # The server may close before it has read it all.
                with contextlib.suppress(OSError):
                    sock.sendall(request)
                answers.append(sock.recv(64))
            time.sleep(1 / 30)  # the attack's own pace, not a wait for a result

    verdict = probed_while(runner, attack)
    assert verdict.downs == 0 and verdict.failures == 0, verdict
    assert len(answers) >= 60
    assert all(answer.startswith(b"HTTP/1.1 400") or answer == b"" for answer in answers)


def test_idle_slowloris_and_slow_reading_connections_cost_the_master_nothing(
    runner: Runner,
) -> None:
    raise_own_open_files_limit()
    opened: list[socket.socket] = []
    slowloris: list[socket.socket] = []
    dripping = threading.Event()

    def drip() -> None:
        while not dripping.wait(2.0):
            for sock in slowloris:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X-Still-There: 1\r\n")

    def attack() -> None:
        opened.extend(connections(runner.port, 2_000))  # never send a request
        slowloris.extend(connections(runner.port, 1_000))
        for sock in slowloris:
            sock.sendall(b"GET /products HTTP/1.1\r\nHost: x\r\n")
        readers = connections(runner.port, 100)  # ask, never read the answers
        for sock in readers:
            sock.sendall(b"GET /products HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
        opened.extend(readers)
        threading.Thread(target=drip, daemon=True).start()
        # The master probes through the whole header deadline and a little past it.
        assert wait_until(
            lambda: sum(closed_by_peer(s) for s in slowloris[:50]) == 50,
            HEADERS_DEADLINE_S + 5.0,
        )

    idle = opened[:2_000]
    closed: set[int] = set()

    def all_idle_closed() -> bool:
        closed.update(
            index for index, sock in enumerate(idle) if index not in closed and closed_by_peer(sock)
        )
        return len(closed) == len(idle)

    try:
        verdict = probed_while(runner, attack)
        # Past the headers deadline the server closes them, in its own time on a busy machine.
        all_closed = wait_until(all_idle_closed, 10.0)
    finally:
        dripping.set()
        for sock in opened + slowloris:
            sock.close()
    # No outage. On a machine starved by a second copy of the suite, one probe of the ~20 may
    # wait out its timeout behind 3,100 hostile connections: a blip the threshold (3) absorbs.
    assert verdict.downs == 0 and verdict.failures <= 1, verdict
    assert verdict.probes >= 15
    assert all_closed, f"{len(closed)} of {len(idle)} never-sending connections closed"
    assert not any("Too many open files" in line for line in runner.log_lines())


def test_invalid_requests_leave_few_and_short_log_lines(runner: Runner) -> None:
    before = len(runner.log_lines())
    for number in range(300):
        with socket.create_connection(("127.0.0.1", runner.port), timeout=5) as sock:
            if number % 2:
                sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
            else:
                sock.sendall(b"G" * 70_000 + b" /forest/health HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.recv(64)
    new = runner.log_lines()[before:]
    # The rate limit is per process: 10 lines at once, then one a second, in each.
    assert len(new) <= 15 * runner.processes, new[:40]
    assert max((len(line) for line in new), default=0) <= 400
