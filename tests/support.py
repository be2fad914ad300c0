"""Test helpers: the test-only secret, signed headers, and real servers on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from rpc_common.signing import SignatureScheme, signed_headers

# TEST VALUE ONLY: never use this secret outside the test suite.
TEST_SECRET = "test-only-secret-not-for-production-0123456789"
OTHER_SECRET = "another-test-only-secret-not-for-production-99"


def signed(
    target: str,
    *,
    method: str = "GET",
    secret: str = TEST_SECRET,
    scheme: SignatureScheme = "v2",
) -> dict[str, str]:
    """Signature headers for one request to `target` (path and query)."""
    return signed_headers(secret, method=method, target=target, scheme=scheme)


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
