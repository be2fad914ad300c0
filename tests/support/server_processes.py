"""Real servers embedding the agent, run as subprocesses on 127.0.0.1: gunicorn (gthread or
sync workers, with `rpc_agent.servers.gunicorn`'s hooks) around the Flask warehouse, and uvicorn
around the FastAPI warehouse (`python -m examples.warehouse_asgi`). How each is started is
`bench.harness.fleet.ServerKind`, the launcher the benchmarks use too.

`running_server` starts one, waits until it answers, and always ends it (and any worker
left behind) afterwards. `SseStream` and `HeldWatch` hold an SSE stream or a health watch
open on their own thread, stamping what arrives with the monotonic time. Nothing here
imports pytest: failures are `ServerError`s.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench.harness.fleet import (
    GUNICORN_GTHREAD,
    GUNICORN_SYNC,
    GUNICORN_UVICORN,
    UVICORN,
    ServerKind,
)
from examples.warehouse.database import connect
from tests.support import TEST_SECRET, free_port, signed, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
HEALTH = "/forest/health"
SCHEMA = "/forest/rpc-schema"
SSE = "/forest/sse"

READY_DEADLINE_S = 20.0
EXIT_DEADLINE_S = 10.0
REQUEST_TIMEOUT_S = 5.0
# How long a read on an open SSE stream or a held watch may wait for its next byte.
STREAM_READ_TIMEOUT_S = 30.0
HEARTBEAT_INTERVAL = "0.2"
START_ATTEMPTS = 3

# A request line in gunicorn's access log (above) or uvicorn's (`... - "GET /x HTTP/1.1" 200`).
ACCESS_LINE = re.compile(
    r'(?:^<(?P<pid>\d+)> )?.*?"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[0-9.]+" (?P<status>\d{3})'
    r'(?: "(?P<agent>[^"]*)")?'
)
BOOTED_WORKER = re.compile(r"Booting worker with pid: (\d+)")
ANNOUNCED_INSTANCE_ID = re.compile(r"rpc_agent: server instance_id ([0-9a-f]{32})")


class ServerError(RuntimeError):
    """A server did not start, answer or stop as expected (the message quotes its log)."""


ALL_KINDS = (GUNICORN_GTHREAD, GUNICORN_SYNC, GUNICORN_UVICORN, UVICORN)
GUNICORN_KINDS = (GUNICORN_GTHREAD, GUNICORN_SYNC, GUNICORN_UVICORN)
# Whose access log names the worker that answered (gunicorn's format; uvicorn's has no pid).
PID_LOGGING_GUNICORN_KINDS = (GUNICORN_GTHREAD, GUNICORN_SYNC)


def server_env(settings: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without any `FOREST_*` variable, plus the test's settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FOREST_")}
    env["FOREST_AUTH_SECRET"] = TEST_SECRET
    env["FOREST_SSE_HEARTBEAT_INTERVAL"] = HEARTBEAT_INTERVAL
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings or {})
    return env


@dataclass(frozen=True)
class LoggedRequest:
    """One line of the server's access log."""

    method: str
    target: str
    status: int
    pid: str | None  # gunicorn's worker; None under uvicorn
    agent: str | None  # the User-Agent (gunicorn only)

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


@dataclass(frozen=True)
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RunningServer:
    """One server process (its own session: the master and its workers) and its log."""

    kind: ServerKind
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def get(self, target: str, headers: dict[str, str] | None = None) -> requests.Response:
        """A signed GET of `target` (path and query) on a new connection, closed after the
        answer (gunicorn's gthread workers keep an idle connection up to 2 s when stopping)."""
        all_headers = {**signed(target), "Connection": "close", **(headers or {})}
        return requests.get(self.url + target, headers=all_headers, timeout=REQUEST_TIMEOUT_S)

    def get_unsigned(self, target: str, timeout: float = REQUEST_TIMEOUT_S) -> requests.Response:
        """A GET of `target` without signature headers (for the app's own routes)."""
        return requests.get(self.url + target, headers={"Connection": "close"}, timeout=timeout)

    def raw_get(self, target: str, headers: dict[str, str] | None = None) -> RawAnswer:
        """A GET of `target` exactly as written (`requests` would normalise `%68` to `h`)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S)
        try:
            connection.request("GET", target, headers=headers or {})
            response = connection.getresponse()
            return RawAnswer(
                response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            )
        finally:
            connection.close()

    def access_log(self) -> list[LoggedRequest]:
        found = []
        for line in self.log().splitlines():
            match = ACCESS_LINE.search(line)
            if match:
                found.append(
                    LoggedRequest(
                        match["method"],
                        match["target"],
                        int(match["status"]),
                        match["pid"],
                        match["agent"],
                    )
                )
        return found

    def booted_workers(self) -> set[str]:
        return set(BOOTED_WORKER.findall(self.log()))

    def announced_instance_ids(self) -> list[str]:
        """What gunicorn's master logged as the server's instance_id, at each (re)start."""
        return ANNOUNCED_INSTANCE_ID.findall(self.log())

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = EXIT_DEADLINE_S) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ServerError(
                f"{self.kind.name} did not exit within {timeout} s; log:\n{self.log()}"
            ) from None

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send `signum` and wait for the exit code."""
        self.send_signal(signum)
        return self.wait_exit()

    def end(self) -> None:
        """Whatever happened, at once: SIGKILL to the whole session (workers too), and reap.
        The group is killed only while the master is unreaped, so its id is still ours; a
        test that checks a graceful stop calls `stop()` first."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def start_server(
    kind: ServerKind,
    db_path: Path,
    log_dir: Path,
    *,
    port: int | None = None,
    settings: dict[str, str] | None = None,
) -> RunningServer:
    """Start `kind` and wait until it is ready (on a free port unless given, retried when
    the port was taken meanwhile); a `ServerError` otherwise, the process ended."""
    log_dir.mkdir(parents=True, exist_ok=True)
    if kind.is_gunicorn and not db_path.exists():
        # Each gunicorn worker opens the database, and one that finds the file another has
        # just made, before its tables are there, serves an empty schema: create it first.
        connect(db_path).close()
    attempts = 1 if port is not None else START_ATTEMPTS
    for attempt in range(1, attempts + 1):
        chosen = port or free_port()
        log_path = log_dir / f"{kind.name}-{chosen}-{time.monotonic_ns()}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                kind.command(chosen, db_path, access_log=True),
                cwd=REPO_ROOT,
                env=server_env(settings),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = RunningServer(kind, process, chosen, log_path)
        try:
            wait_until_ready(server)
            return server
        except BaseException:
            exited_early = process.poll() is not None
            server.end()
            if not exited_early or attempt == attempts:
                raise
    raise AssertionError("unreachable")


def wait_until_ready(server: RunningServer) -> None:
    """Until a signed health probe answers 200 and every gunicorn worker has booted."""
    deadline = time.monotonic() + READY_DEADLINE_S
    pause = threading.Event()
    problem = "no attempt made"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerError(
                f"{server.kind.name} exited with {server.process.returncode} before it was "
                f"ready; log:\n{server.log()}"
            )
        try:
            response = server.get(HEALTH)
        except requests.RequestException as error:
            problem = repr(error)
        else:
            workers = len(server.booted_workers()) if server.kind.is_gunicorn else 1
            if response.status_code == 200 and workers >= server.kind.workers:
                return
            problem = f"HTTP {response.status_code}, {workers} worker(s) booted"
        pause.wait(0.05)
    raise ServerError(
        f"{server.kind.name} not ready within {READY_DEADLINE_S} s ({problem}); "
        f"log:\n{server.log()}"
    )


@contextmanager
def running_server(
    kind: ServerKind,
    db_path: Path,
    log_dir: Path,
    *,
    port: int | None = None,
    settings: dict[str, str] | None = None,
) -> Iterator[RunningServer]:
    """`start_server`, and always `end()` it afterwards."""
    server = start_server(kind, db_path, log_dir, port=port, settings=settings)
    try:
        yield server
    finally:
        server.end()


def wait_for_logged(
    server: RunningServer,
    count: int,
    match: Callable[[LoggedRequest], bool],
    timeout: float = REQUEST_TIMEOUT_S,
) -> list[LoggedRequest]:
    """The logged requests that `match`, once there are at least `count` of them (a server
    writes the line after the answer); a `ServerError` if they never all appear."""
    found: list[LoggedRequest] = []

    def enough() -> bool:
        found[:] = [line for line in server.access_log() if match(line)]
        return len(found) >= count

    if not wait_until(enough, timeout):
        raise ServerError(f"only {len(found)} of {count} requests logged:\n{server.log()}")
    return found


# --- held connections ---------------------------------------------------------------------


class HangUp:
    """Closes a connection another thread is reading from. `http.client` forgets the socket
    of a response that closes the connection (`Connection: close`, as gunicorn's sync workers
    answer), so it is kept here once the request is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._done = False

    def connected(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._socket = connection.sock
            done = self._done
        if done:
            self._shut(connection)

    def now(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._done = True
        self._shut(connection)

    def _shut(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            sock = self._socket or connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        connection.close()


@dataclass
class SseEvent:
    name: str
    data: str
    at: float  # time.monotonic() when its block was complete


@dataclass
class SseStream:
    """A signed GET of the SSE route, read on a thread until the server ends it."""

    port: int
    events: list[SseEvent] = field(default_factory=list)
    status: int | None = None
    content_type: str = ""
    error: BaseException | None = None
    ended_at: float | None = None
    first_event: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=STREAM_READ_TIMEOUT_S
        )
        self._hangup = HangUp()
        self._thread = threading.Thread(target=self._read, name="test-sse-stream", daemon=True)

    def start(self) -> SseStream:
        self._thread.start()
        return self

    def recorded(self) -> list[SseEvent]:
        with self._lock:
            return list(self.events)

    def names(self) -> list[str]:
        return [event.name for event in self.recorded()]

    def event_named(self, name: str) -> SseEvent | None:
        return next((event for event in self.recorded() if event.name == name), None)

    def close(self) -> None:
        """Hang up (if still open) and join the thread."""
        self._hangup.now(self._connection)
        if self._thread.is_alive():
            self._thread.join(EXIT_DEADLINE_S)

    def _read(self) -> None:
        try:
            self._connection.request("GET", SSE, headers=signed(SSE))
            self._hangup.connected(self._connection)
            response = self._connection.getresponse()
            self.status = response.status
            self.content_type = response.getheader("Content-Type", "")
            name, data = "", []
            while line := response.readline():
                text = line.decode("utf-8").rstrip("\r\n")
                if text:
                    key, _, value = text.partition(":")
                    value = value.removeprefix(" ")
                    if key == "event":
                        name = value
                    elif key == "data":
                        data.append(value)
                elif name or data:
                    with self._lock:
                        self.events.append(SseEvent(name, "\n".join(data), time.monotonic()))
                    self.first_event.set()
                    name, data = "", []
        except BaseException as error:
            self.error = error
        finally:
            self.ended_at = time.monotonic()
            self.ended.set()
            self.first_event.set()


@dataclass
class HeldWatch:
    """A signed health watch (`?wait=S` with the current health ETag), on a thread."""

    port: int
    etag: str
    wait_s: float
    status: int | None = None
    body: dict[str, Any] | None = None
    error: BaseException | None = None
    sent_at: float | None = None
    answered_at: float | None = None
    sent: threading.Event = field(default_factory=threading.Event)  # the request is written
    answered: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=self.wait_s + STREAM_READ_TIMEOUT_S
        )
        self._hangup = HangUp()
        self._thread = threading.Thread(target=self._ask, name="test-held-watch", daemon=True)

    @property
    def target(self) -> str:
        return f"{HEALTH}?wait={self.wait_s:g}"

    def start(self) -> HeldWatch:
        self.sent_at = time.monotonic()
        self._thread.start()
        return self

    def close(self) -> None:
        """Hang up (if not answered yet) and join the thread."""
        self._hangup.now(self._connection)
        if self._thread.is_alive():
            self._thread.join(EXIT_DEADLINE_S)

    def _ask(self) -> None:
        try:
            headers = {**signed(self.target), "If-None-Match": self.etag}
            self._connection.request("GET", self.target, headers=headers)
            self._hangup.connected(self._connection)
            self.sent.set()
            response = self._connection.getresponse()
            body = response.read()
            self.status = response.status
            self.body = json.loads(body)
        except BaseException as error:
            self.error = error
        finally:
            self.answered_at = time.monotonic()
            self.sent.set()
            self.answered.set()
