"""Test helpers: the test-only secret, signed headers, agents and real servers on 127.0.0.1,
polling, free ports and the library's threads."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, jsonify
from pytest import MonkeyPatch
from werkzeug.serving import BaseWSGIServer, make_server

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

from rpc_agent import AgentCore, AgentSettings, RpcAgent, SchemaProvider
from rpc_agent.core.held_requests import health_etag
from rpc_common.signing import SignatureScheme, signed_headers

# TEST VALUE ONLY: never use this secret outside the test suite.
TEST_SECRET = "test-only-secret-not-for-production-0123456789"
OTHER_SECRET = "another-test-only-secret-not-for-production-99"

HEALTH_PATH = "/forest/health"

# Names of the threads the datasource side starts (engine, resolver, callbacks, SSE client).
LIBRARY_THREAD_PREFIXES = ("rpc-health", "rpc-callback")
POLL_S = 0.01


def signed(
    target: str,
    *,
    method: str = "GET",
    secret: str = TEST_SECRET,
    scheme: SignatureScheme = "v2",
    body: bytes = b"",
) -> dict[str, str]:
    """Signature headers for one request to `target` (path and query)."""
    return signed_headers(secret, method=method, target=target, body=body, scheme=scheme)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `condition` every 10 ms until it holds or `timeout` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return condition()
        pause.wait(min(POLL_S, remaining))
    return True


def library_threads(*prefixes: str) -> list[str]:
    """Names of the live threads whose name starts with one of `prefixes`
    (by default every thread the library starts: rpc-health*, rpc-callback*)."""
    wanted = prefixes or LIBRARY_THREAD_PREFIXES
    return [t.name for t in threading.enumerate() if t.name.startswith(wanted) and t.is_alive()]


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


_HELD_CLOSED: list[socket.socket] = []


def closed_port() -> int:
    """A port on 127.0.0.1 that refuses connections for the rest of this test process: bound
    and never listening, so that no server (of this suite, or of a second copy running beside
    it) takes it meanwhile, as one found free and released might be."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    _HELD_CLOSED.append(holder)
    return int(holder.getsockname()[1])


def agent_app(
    schema_provider: SchemaProvider | None = None, **settings: Any
) -> tuple[Flask, RpcAgent]:
    """A Flask app with an RpcAgent on TEST_SECRET; `settings` add to or override that."""
    app = Flask(__name__)
    options: dict[str, Any] = {"auth_secret": TEST_SECRET, **settings}
    agent = RpcAgent(app, settings=AgentSettings(**options), schema_provider=schema_provider)
    return app, agent


Failure = tuple[int, str]


def before_agent(app: Flask, hook: Callable[[WSGIEnvironment], Failure | None]) -> None:
    """Call `hook` with every request's environ before the app or its agent sees it (an
    outer WSGI layer, as a proxy would be); a `(status, text)` it returns is the answer."""
    inner = app.wsgi_app

    def front(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        failure = hook(environ)
        if failure is None:
            return inner(environ, start_response)
        status, text = failure
        start_response(f"{status} Failing", [("Content-Type", "text/plain")])
        return [text.encode()]

    app.wsgi_app = front  # type: ignore[method-assign]


class HangingApp:
    """A health route that blocks until released (or a long safety limit passes)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.app = Flask(__name__)
        self.app.add_url_rule(HEALTH_PATH, "health", self._hang)

    def _hang(self) -> Response:
        self.entered.set()
        self.release.wait(30)
        return jsonify(status="ok", instance_id="late")


@dataclass
class LiveServer:
    """A threaded WSGI server running in a background thread."""

    server: BaseWSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop serving and join the thread (idempotent)."""
        if self.thread.is_alive():
            self.server.shutdown()
            self.thread.join()
        self.server.server_close()


def start_server(app: Flask, port: int = 0) -> LiveServer:
    """Serve `app` on 127.0.0.1 (any free port unless given) in a thread."""
    server = make_server("127.0.0.1", port, app, threaded=True)
    # A short poll interval makes shutdown() return in milliseconds rather than half a second.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="test-server", daemon=True
    )
    thread.start()
    return LiveServer(server, thread)


@contextmanager
def live_server(app: Flask, port: int = 0) -> Iterator[LiveServer]:
    """A context manager around `start_server` that always stops the server."""
    running = start_server(app, port)
    try:
        yield running
    finally:
        running.stop()


def answers_signed_health(url: str) -> bool:
    """Whether the agent at `url` (its base URI) answers a signed health probe with 2xx."""
    import requests

    try:
        headers = signed(HEALTH_PATH)
        return requests.get(url + HEALTH_PATH, headers=headers, timeout=2).ok
    except requests.RequestException:  # refused, or accepted by a server still booting
        return False


@contextmanager
def running_process(
    command: list[str],
    env: dict[str, str],
    log_path: Path,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A server started on port 0 as a process in a session of its own (its output to
    `log_path`), with the port it got, once it answers signed health there; on the way out
    the whole session is killed."""
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=preexec_fn,
            start_new_session=True,
        )
    try:
        port = announced_port(log_path, process)
        url = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: answers_signed_health(url), 20.0), log_path.read_text()
        yield process, port
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# The line a server prints once it listens: the runner and waitress ("serving on"), gunicorn
# ("Listening at").
_LISTENING_LINE = re.compile(r"(?:serving on|Listening at:) http://127\.0\.0\.1:(\d+)")


def announced_port(log_path: Path, process: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """The port a server started on port 0 says it listens on (read from its log)."""
    found: list[int] = []

    def listening() -> bool:
        match = _LISTENING_LINE.search(log_path.read_text(errors="replace"))
        if match:
            found.append(int(match.group(1)))
        return bool(match) or process.poll() is not None

    wait_until(listening, timeout)
    assert found, f"no listening line within {timeout} s:\n{log_path.read_text(errors='replace')}"
    return found[0]


@contextmanager
def unresolvable_name(monkeypatch: MonkeyPatch) -> Iterator[str]:
    """`agent.invalid` (RFC 6761: never resolves), answered "no such name" by a name server
    on 127.0.0.1 that the datasource's resolver asks instead of the system's: no query leaves."""
    from tests.support.local_dns import local_name_server, resolving_through

    with local_name_server() as names, resolving_through(names, monkeypatch):
        yield f"agent.invalid:{free_port()}"
        assert names.queries("agent.invalid"), "the client never asked the local name server"


def agent_health(agent: AgentCore) -> dict[str, Any]:
    """The body an agent answers /health with right now, as a dict."""
    body: dict[str, Any] = json.loads(agent.health_answer().body(agent.uptime_s()))
    return body


def health_etag_of(body: dict[str, Any]) -> str:
    """The `ETag` an agent sends with the health `body`."""
    return health_etag(body["status"], body["instance_id"], body["schema_etag"])


# The schema the in-process agent tests serve: one collection, one chart.
PRODUCTS_SCHEMA: dict[str, Any] = {
    "collections": [
        {
            "name": "products",
            "fields": [
                {"field": "id", "type": "Number", "is_primary_key": True},
                {"field": "label", "type": "String", "is_sortable": True},
            ],
        }
    ],
    "charts": [{"name": "stock", "kind": "line"}],
}
