"""uvicorn's httptools protocol with two guards against anonymous clients, for the runner and
the recommended gunicorn worker: a cap on the number of header fields and a deadline for a
request's headers. uvicorn has neither: a connection that never sends a whole request was
held for ever, and 10,000 header fields per request cost the h11 parser 40-110 ms each."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# As gunicorn's `limit_request_fields`; the agent's own requests send fewer than ten.
MAX_HEADER_FIELDS = 100
# From a connection's start, or a request's first byte, to its last header.
HEADERS_DEADLINE_S = 10.0


class TooManyHeaderFields(Exception):
    """Raised from the parser's callback: httptools turns it into a parser error, which
    uvicorn answers with 400 and a close."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """At most `MAX_HEADER_FIELDS` header fields per request, and whole headers within
    `headers_deadline_s`, or the connection is closed (idle connections that never send a
    request, slowloris)."""

    headers_deadline_s = HEADERS_DEADLINE_S

    _deadline: asyncio.TimerHandle | None = None
    _header_fields = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)

    def on_message_begin(self) -> None:
        self._header_fields = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_fields += 1
        if self._header_fields > MAX_HEADER_FIELDS:
            raise TooManyHeaderFields
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.headers_deadline_s, self._headers_too_late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_too_late(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()
