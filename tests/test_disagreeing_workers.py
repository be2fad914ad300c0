"""Two workers of one server (one `instance_id`) serving two schemas: the datasource names
both ETags in one WARNING and reloads at most once per polling interval."""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
from werkzeug.serving import WSGIRequestHandler, make_server

from rpc_agent.process.state import INSTANCE_ID_ENV
from rpc_datasource import RpcDatasource
from tests.support import TEST_SECRET, agent_app, wait_until

pytestmark = pytest.mark.slow

INTERVAL_S = 0.25
PROBES = 16


class SpreadingRelay:
    """A TCP relay on 127.0.0.1 handing each new connection to one of the backends, picked
    at random (seeded), as a kernel spreads connections over the workers of one server."""

    def __init__(self, ports: list[int]) -> None:
        self._ports = ports
        self._pick = random.Random(7)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        self._thread = threading.Thread(target=self._accept, name="test-relay", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            backend = socket.create_connection(("127.0.0.1", self._pick.choice(self._ports)))
            self._sockets += [client, backend]
            for source, target in ((client, backend), (backend, client)):
                threading.Thread(target=_pipe, args=(source, target), daemon=True).start()

    def close(self) -> None:
        for each in self._sockets:
            each.close()
        self._thread.join(2.0)


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
        target.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def schema(*fields: str) -> dict[str, object]:
    collection = {"name": "products", "fields": [{"name": field} for field in fields]}
    return {"collections": [collection], "charts": []}


class OneRequestPerConnection(WSGIRequestHandler):
    """HTTP/1.0: the server closes each connection after its answer."""

    protocol_version = "HTTP/1.0"


@contextmanager
def worker(served: dict[str, object]) -> Iterator[int]:
    """One agent serving `served` on a server that closes each connection; its port."""
    app, _ = agent_app(lambda: served)
    server = make_server(
        "127.0.0.1", 0, app, threaded=True, request_handler=OneRequestPerConnection
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@contextmanager
def two_workers(monkeypatch: pytest.MonkeyPatch) -> Iterator[SpreadingRelay]:
    """Two agents of one server start (one instance_id), one before a migration, one after;
    each connection is closed after one answer, so each probe reaches the next worker."""
    monkeypatch.setenv(INSTANCE_ID_ENV, "0123456789abcdef0123456789abcdef")
    with ExitStack() as stack:
        ports = [
            stack.enter_context(worker(served))
            for served in (schema("id"), schema("id", "weight_grams"))
        ]
        relay = SpreadingRelay(ports)
        stack.callback(relay.close)
        yield relay


def test_alternating_schemas_give_one_warning_and_one_reload_per_interval(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    downs: list[int] = []
    with two_workers(monkeypatch) as relay, caplog.at_level(logging.WARNING):
        started = time.monotonic()
        datasource = RpcDatasource.build(
            uri=f"http://127.0.0.1:{relay.port}",
            auth_secret=TEST_SECRET,
            health_check_interval=INTERVAL_S,
            on_server_down=lambda: downs.append(1),
        )
        try:
            assert wait_until(lambda: datasource.health.stats().probes >= PROBES, 30.0)
            reloads = datasource.reloads
            elapsed = time.monotonic() - started
        finally:
            datasource.close()
    warnings = [r.getMessage() for r in caplog.records if "two schemas in turn" in r.getMessage()]
    assert len(warnings) == 1, warnings
    etags = {schema_etag for schema_etag in warnings[0].split() if schema_etag.startswith('"')}
    assert len(etags) == 2
    assert 1 <= reloads <= elapsed / INTERVAL_S + 1  # at most one per polling interval
    assert downs == []
