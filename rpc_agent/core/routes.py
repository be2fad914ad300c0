"""The agent's routes on a neutral view of a request: authentication, /health (and its held
watch), /rpc-schema and /sse. Adapters turn a request into an `AgentRequest` and carry out
what `AgentRoutes.handle` returns: a `Reply`, a `HoldHealth` or an `OpenSse`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import parse_qsl

from rpc_agent.core import events
from rpc_agent.core.agent import AgentCore, HealthAnswer
from rpc_agent.core.held_requests import BadWait, parse_wait
from rpc_agent.core.schema import SchemaProvider
from rpc_agent.core.settings import AgentSettings
from rpc_common import log_limit
from rpc_common.log_limit import clipped, dropped_note
from rpc_common.protocol import ETAG_HEADER, MAX_REQUEST_BODY, Route, etag_matches
from rpc_common.signing import VerificationFailure, verify_request

logger = logging.getLogger(__name__)

ALLOWED_METHODS = ("GET", "HEAD")

Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class AgentRequest:
    """What the routes read of a request; header values as the server decoded them."""

    method: str
    target: str  # path and query as sent, for the v2 signature
    query: str
    timestamp: str | None
    signature: str | None
    if_none_match: str | None = None
    body: bytes = b""
    client: str = "-"  # the peer's address and port, for the log


@dataclass(frozen=True)
class Reply:
    """A complete answer."""

    status: int
    headers: Headers
    body: bytes


@dataclass(frozen=True)
class HoldHealth:
    """Hold the request (a watch) up to `seconds` unless the state changes after
    `generation`, then send `AgentRoutes.health_reply()`."""

    seconds: float
    generation: int


@dataclass(frozen=True)
class OpenSse:
    """Send the SSE headers, then stream (see `SseStream`) to `client`."""

    headers: Headers
    client: str


SSE_HEADERS: Headers = [
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),
]


def json_reply(status: int, body: dict[str, str], headers: Headers | None = None) -> Reply:
    data = json.dumps(body).encode()
    return Reply(status, [*json_headers(data), *(headers or [])], data)


def json_headers(data: bytes) -> Headers:
    return [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]


def too_large_reply() -> Reply:
    return json_reply(
        413, {"error": "payload_too_large", "reason": f"over {MAX_REQUEST_BODY} bytes"}
    )


def wait_value(query: str) -> str | None:
    """The first `wait` of a query string, if any."""
    if not query:
        return None
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "wait":
            return value
    return None


class AgentRoutes:
    """Matches paths under the agent's prefix and answers them for one `AgentCore`."""

    def __init__(self, agent: AgentCore) -> None:
        self.agent = agent
        prefix = agent.settings.url_prefix
        self._paths = {prefix + route.path: route for route in Route}

    def match(self, path: str) -> Route | None:
        """The agent's route at `path`, or None for a path the wrapped app serves."""
        return self._paths.get(path)

    def refusal(self, request: AgentRequest) -> VerificationFailure | None:
        """Why the request's signature is refused (logged, rate-limited), or None."""
        settings = self.agent.settings
        failure = verify_request(
            request.timestamp,
            request.signature,
            method=request.method,
            target=request.target,
            body=request.body,
            secrets=self.agent.verification_secrets,
            allowed_clock_skew=settings.allowed_clock_skew,
            require_bound=settings.require_bound_signatures,
        )
        if failure is None:
            return None
        dropped = log_limit.ANONYMOUS_CLIENT_LINES.admit()
        if dropped is not None:
            logger.warning(
                "refused %s %s from %s: %s%s",
                clipped(request.method, 16),
                clipped(request.target.partition("?")[0], 200),
                request.client,
                failure,
                dropped_note(dropped),
            )
        return failure

    def handle(self, route: Route, request: AgentRequest) -> Reply | HoldHealth | OpenSse:
        """What to answer a request on one of the agent's routes (a held watch is reported to
        the request hooks when `held_reply` answers it)."""
        refused = self.refusal(request)
        if refused is not None:
            events.deliver(events.AgentRequestEvent(route.label, 401, refusal=str(refused)))
            return json_reply(401, {"error": "Unauthorized", "reason": str(refused)})
        outcome = self._answer(route, request)
        if not isinstance(outcome, HoldHealth):
            status = outcome.status if isinstance(outcome, Reply) else 200
            events.deliver(events.AgentRequestEvent(route.label, status))
        return outcome

    def too_large(self, route: Route) -> Reply:
        """The answer to a request whose body is over `MAX_REQUEST_BODY`."""
        events.deliver(events.AgentRequestEvent(route.label, 413))
        return too_large_reply()

    def held_reply(self) -> Reply:
        """The answer to a watch once its hold ended."""
        reply = self.health_reply()
        events.deliver(events.AgentRequestEvent(Route.HEALTH.label, reply.status))
        return reply

    def _answer(self, route: Route, request: AgentRequest) -> Reply | HoldHealth | OpenSse:
        if request.method not in ALLOWED_METHODS:
            return json_reply(
                405,
                {"error": "method_not_allowed", "reason": f"{route.path} answers GET only"},
                [("Allow", ", ".join(ALLOWED_METHODS))],
            )
        if route is Route.HEALTH:
            return self._health(request)
        if route is Route.SCHEMA:
            return self._schema(request)
        if request.method == "HEAD":
            return Reply(200, SSE_HEADERS, b"")
        return OpenSse(SSE_HEADERS, request.client)

    def _health(self, request: AgentRequest) -> Reply | HoldHealth:
        wait = wait_value(request.query)
        if wait is None:
            return self.health_reply()
        try:
            seconds = parse_wait(wait, self.agent.settings.health_max_wait)
        except BadWait as error:
            return json_reply(400, {"error": "bad_request", "reason": str(error)})
        generation = self.agent.held_requests.generation
        state = self.agent.health_answer()
        # The token the client last saw, compared as HTTP does (W/, lists); "*" names none.
        seen = request.if_none_match
        unchanged = seen is not None and seen.strip() != "*" and etag_matches(seen, state.etag)
        if seconds <= 0 or state.status_code != 200 or not unchanged:
            return self.health_reply(state)
        return HoldHealth(seconds, generation)

    def health_reply(self, state: HealthAnswer | None = None) -> Reply:
        """The plain health answer now: 200, or 503 once shutting down."""
        state = state or self.agent.health_answer()
        body = state.body(self.agent.uptime_s())
        headers = [
            *json_headers(body),
            ("Cache-Control", "no-store"),
            (ETAG_HEADER, state.etag),
        ]
        return Reply(state.status_code, headers, body)

    def _schema(self, request: AgentRequest) -> Reply:
        answer = self.agent.schema_answer()
        cache = [(ETAG_HEADER, answer.etag), ("Cache-Control", "no-cache")]
        if etag_matches(request.if_none_match, answer.etag):
            return Reply(304, cache, b"")
        return Reply(200, [*json_headers(answer.body), *cache], answer.body)

    def held_over_bound(self) -> None:
        logger.debug(
            "over %d held watches: answering at once", self.agent.held_requests.max_watchers
        )


App = TypeVar("App")


class AgentMiddlewareBase(Generic[App]):
    """What the WSGI and ASGI middlewares share: the wrapped app, the agent (made from the
    settings and provider, or given), and its routes."""

    def __init__(
        self,
        app: App,
        settings: AgentSettings | None = None,
        schema_provider: SchemaProvider | None = None,
        *,
        agent: AgentCore | None = None,
    ) -> None:
        self.app = app
        self.agent = agent or AgentCore(settings=settings, schema_provider=schema_provider)
        self.routes = AgentRoutes(self.agent)
