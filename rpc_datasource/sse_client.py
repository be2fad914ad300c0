"""The legacy SSE client (kept for comparison): follows /forest/sse and reconnects with backoff."""

from __future__ import annotations

import codecs
import contextlib
import logging
import random
import socket
import threading
from collections.abc import Callable

import requests
from urllib3.exceptions import HTTPError as Urllib3Error

from rpc_common.signing import SignatureScheme, signed_headers
from rpc_common.sse_protocol import HEARTBEAT_EVENT, STOP_EVENT
from rpc_datasource.callbacks import call_logged
from rpc_datasource.endpoint import request_target
from rpc_datasource.sse_parser import SseEvent, SseParser
from rpc_datasource.timing import jittered, reconnect_backoff

logger = logging.getLogger(__name__)

SILENCE_HEARTBEATS = 3
BACKOFF_JITTER = 0.2


def new_session() -> requests.Session:
    """A keep-alive session that never reads proxy or netrc settings from the environment."""
    session = requests.Session()
    session.trust_env = False
    return session


class SseStreamError(Exception):
    """The stream could not be opened or was refused."""


class SseClient:
    """Follows the agent's event stream on one thread; calls `on_rpc_stop` on `RpcServerStop`.

    Every (re)connection is signed afresh. Silence longer than three heartbeat intervals
    counts as a lost connection. Reconnects wait 2, 4, 8, 16, then 30 s (with jitter),
    and the backoff resets after a heartbeat.
    """

    def __init__(
        self,
        url: str,
        auth_secret: str,
        on_rpc_stop: Callable[[], None] | None = None,
        *,
        heartbeat_interval: float = 10.0,
        connect_timeout: float = 5.0,
        signature_scheme: SignatureScheme = "v2",
        on_event: Callable[[SseEvent], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not auth_secret:
            raise ValueError("auth_secret must not be empty")
        if not heartbeat_interval > 0:
            raise ValueError(
                f"heartbeat_interval must be greater than 0, got {heartbeat_interval!r}"
            )
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be > 0, got {connect_timeout!r}")
        self.url = url
        self.on_rpc_stop = on_rpc_stop
        self.on_event = on_event
        self.silence_timeout = SILENCE_HEARTBEATS * heartbeat_interval
        self.connect_timeout = connect_timeout
        self.connection_attempts = 0
        self._secret = auth_secret
        self._scheme: SignatureScheme = signature_scheme
        self._rng = rng or random.Random()
        self._session = new_session()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._response: requests.Response | None = None
        self._failures_in_a_row = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        """Start following the stream on a background thread (idempotent; not after close)."""
        with self._lock:
            if self._closed or self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="rpc-sse-client", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop at once: interrupt the open stream and join the thread (idempotent)."""
        with self._lock:
            if self._closed:
                return
            logger.debug("closing SSE client for %s", self.url)
            self._closed = True
            thread, response = self._thread, self._response
        self._wake.set()
        if response is not None:
            _interrupt(response)
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._session.close()
        logger.debug("SSE client for %s closed", self.url)

    def _run(self) -> None:
        while not self._closed:
            try:
                self._follow_stream()
            except Exception as error:
                # After close() the interrupted read may fail in any way: that is the end.
                if self._closed:
                    return
                self._log_stream_error(error)
            if self._closed:
                return
            self._failures_in_a_row += 1
            delay = jittered(reconnect_backoff(self._failures_in_a_row), BACKOFF_JITTER, self._rng)
            logger.info("reconnecting to %s in %.1f s", self.url, delay)
            self._wake.wait(delay)

    def _follow_stream(self) -> None:
        self.connection_attempts += 1
        logger.info("connecting to %s (attempt %d)", self.url, self.connection_attempts)
        headers = signed_headers(self._secret, target=request_target(self.url), scheme=self._scheme)
        headers["Accept"] = "text/event-stream"
        response = self._session.get(
            self.url,
            headers=headers,
            stream=True,
            timeout=(self.connect_timeout, self.silence_timeout),
        )
        with self._lock:
            if self._closed:
                response.close()
                return
            self._response = response
        try:
            if response.status_code != 200:
                raise SseStreamError(f"HTTP {response.status_code}")
            logger.info("connected to %s", self.url)
            self._read_events(response)
            logger.info("stream from %s ended", self.url)
        finally:
            with self._lock:
                self._response = None
            response.close()

    def _read_events(self, response: requests.Response) -> None:
        parser = SseParser()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for chunk in response.iter_content(chunk_size=None):
            for event in parser.feed(decoder.decode(chunk)):
                self._handle(event)
            if self._closed:
                return

    def _handle(self, event: SseEvent) -> None:
        if event.event == HEARTBEAT_EVENT:
            self._failures_in_a_row = 0
        elif event.event == STOP_EVENT:
            logger.warning("%s announced RpcServerStop", self.url)
            call_logged(logger, f"on_rpc_stop callback for {self.url}", self.on_rpc_stop)
        else:
            logger.debug("ignoring SSE event %r from %s", event.event, self.url)
        call_logged(logger, f"on_event callback for {self.url}", self.on_event, event)

    def _log_stream_error(self, error: BaseException) -> None:
        if isinstance(error, SseStreamError):
            logger.debug("SSE stream %s refused: %s", self.url, error)
        elif isinstance(error, requests.ConnectionError | Urllib3Error | OSError):
            logger.debug("SSE connection to %s lost: %s", self.url, error)
        else:
            logger.warning("SSE stream %s failed", self.url, exc_info=error)


def _socket_of(response: requests.Response) -> socket.socket | None:
    """The socket a streaming response reads from.

    A keep-alive stream's socket hangs off urllib3's connection; after `Connection: close`,
    http.client hands it to the response object instead (its file's raw `SocketIO`).
    """
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is None:
        socket_io = getattr(getattr(getattr(response.raw, "_fp", None), "fp", None), "raw", None)
        sock = getattr(socket_io, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _interrupt(response: requests.Response) -> None:
    """Shut the response's socket down so a read blocked in another thread returns now."""
    sock = _socket_of(response)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
