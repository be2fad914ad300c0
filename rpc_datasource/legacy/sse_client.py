"""The legacy SSE client (kept for comparison): follows /forest/sse on the shared engine and
reconnects with backoff."""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import random
import threading
from collections.abc import Callable

import aiohttp

from rpc_common.protocol import HEARTBEAT_EVENT, STOP_EVENT, SUPERSEDED_EVENT, Route
from rpc_common.signing import SignatureScheme
from rpc_datasource.health.response import unauthorized_hint
from rpc_datasource.health.timing import jittered, reconnect_backoff
from rpc_datasource.legacy.sse_parser import SseEvent, SseParser
from rpc_datasource.runtime.callbacks import OrderedCallbacks
from rpc_datasource.runtime.engine import Engine, Spawned, shared_engine
from rpc_datasource.transport.endpoint import AgentEndpoint

logger = logging.getLogger(__name__)

SILENCE_HEARTBEATS = 3
BACKOFF_JITTER = 0.2
# How much of a refusal's body is read for its reason.
REFUSAL_BYTES = 4096
# When a superseded stream's event names no `retry`; each supersede in a row doubles the
# wait, up to the cap, so that two masters on one agent soon stop taking turns.
SUPERSEDED_BACKOFF_S = 30.0
SUPERSEDED_BACKOFF_CAP_S = 600.0


class SseClient:
    """Follows the agent's event stream; calls `on_rpc_stop` on `RpcServerStop`.

    It runs as a coroutine on the engine every client shares, so `close()` returns at once
    whatever the agent does. Every (re)connection is signed afresh; `connect_timeout` bounds
    the wait for the answer's headers, and silence longer than three heartbeat intervals
    counts as a lost connection. Reconnects wait 2, 4, 8, 16, then 30 s (with jitter), and the
    backoff resets after a heartbeat. A stream the agent ends as `superseded` (another master
    opened one) waits for the event's `retry` (30 s), doubled at each supersede in a row up to
    10 minutes, instead of taking the stream back at once.
    Callbacks run in order, off the event loop.
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
        self.endpoint = AgentEndpoint(
            url.rstrip("/").removesuffix(Route.SSE.path),
            auth_secret,
            scheme=signature_scheme,
            timeout=connect_timeout,
        )
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._closed = False
        self._engine: Engine | None = None
        self._spawned: Spawned | None = None
        self._callbacks = OrderedCallbacks(logger, url)
        self._failures_in_a_row = 0
        self._superseded_retry_s: float | None = None
        self._superseded_in_a_row = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        """Start following the stream (idempotent; not after close)."""
        with self._lock:
            if self._closed or self._engine is not None:
                return
            self._engine = shared_engine.acquire()
            self._spawned = self._engine.spawn(self._run(self._engine))

    def close(self) -> None:
        """Stop at once: cancel the stream or the backoff in progress (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            engine, spawned = self._engine, self._spawned
        self._callbacks.close()
        if spawned is not None:
            spawned.cancel()
        if engine is not None:
            shared_engine.release()
        logger.debug("SSE client for %s closed", self.url)

    async def _run(self, engine: Engine) -> None:
        while True:
            self._superseded_retry_s = None
            await self._follow_stream(engine)
            if self._superseded_retry_s is not None:
                doubled = self._superseded_retry_s * 2.0 ** min(self._superseded_in_a_row - 1, 16)
                delay = jittered(min(doubled, SUPERSEDED_BACKOFF_CAP_S), BACKOFF_JITTER, self._rng)
            else:
                self._superseded_in_a_row = 0
                self._failures_in_a_row += 1
                delay = jittered(
                    reconnect_backoff(self._failures_in_a_row), BACKOFF_JITTER, self._rng
                )
            logger.info("reconnecting to %s in %.1f s", self.url, delay)
            await asyncio.sleep(delay)

    async def _follow_stream(self, engine: Engine) -> None:
        self.connection_attempts += 1
        logger.info("connecting to %s (attempt %d)", self.url, self.connection_attempts)
        headers = self.endpoint.signed_headers(self.url, {"Accept": "text/event-stream"})
        try:
            async with asyncio.timeout(self.connect_timeout):
                response = await engine.session.get(
                    self.url, headers=headers, allow_redirects=False
                )
            async with response:
                if response.status != 200:
                    await self._log_refusal(response)
                    return
                logger.info("connected to %s", self.url)
                await self._read_events(response, engine)
        except TimeoutError:
            logger.info("SSE stream %s: no answer or no event in time", self.url)
        except (aiohttp.ClientError, OSError) as error:
            logger.info("SSE connection to %s lost: %s", self.url, error or type(error).__name__)
        except Exception:
            logger.warning("SSE stream %s failed; reconnecting", self.url, exc_info=True)

    async def _read_events(self, response: aiohttp.ClientResponse, engine: Engine) -> None:
        parser = SseParser()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            async with asyncio.timeout(self.silence_timeout):
                chunk = await response.content.readany()
            if not chunk:
                logger.info("stream from %s ended", self.url)
                return
            for event in parser.feed(decoder.decode(chunk)):
                self._handle(event, parser, engine)

    async def _log_refusal(self, response: aiohttp.ClientResponse) -> None:
        reason = ""
        try:
            body = json.loads(await response.content.read(REFUSAL_BYTES))
            reason = f" ({body['reason']})" if isinstance(body, dict) and "reason" in body else ""
            if reason and response.status == 401:
                reason += unauthorized_hint(body["reason"])
        except (ValueError, TypeError, aiohttp.ClientError, OSError):
            pass
        level = logging.WARNING if response.status == 401 else logging.INFO
        logger.log(level, "SSE stream %s refused: HTTP %d%s", self.url, response.status, reason)

    def _handle(self, event: SseEvent, parser: SseParser, engine: Engine) -> None:
        if event.event == HEARTBEAT_EVENT:
            self._failures_in_a_row = 0
        elif event.event == STOP_EVENT:
            logger.warning("%s announced RpcServerStop", self.url)
            self._submit(engine, "on_rpc_stop", self.on_rpc_stop)
        elif event.event == SUPERSEDED_EVENT:
            retry_ms = parser.retry_ms
            self._superseded_retry_s = (
                retry_ms / 1000 if retry_ms is not None else SUPERSEDED_BACKOFF_S
            )
            self._superseded_in_a_row += 1
            if self._superseded_in_a_row == 1:
                logger.warning(
                    "%s ended this stream: another master opened one (the agent keeps one, and "
                    "logs who); waiting %.0f s before reconnecting instead of taking it back",
                    self.url,
                    self._superseded_retry_s,
                )
        else:
            logger.debug("ignoring SSE event %r from %s", event.event, self.url)
        self._submit(engine, "on_event", self.on_event, event)

    def _submit(
        self, engine: Engine, what: str, callback: Callable[..., object] | None, *args: object
    ) -> None:
        self._callbacks.submit(engine.callback_executor, what, callback, *args)
