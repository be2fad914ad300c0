"""Property tests of the agent's routes through its three adapters: the Flask extension
(`RpcAgent`, through `app.test_client()`), the WSGI middleware around a plain callable
(through werkzeug's `Client`) and the ASGI middleware (driven in-process with the `Exchange`
of test_agent_asgi).

Every request is described once, as a server receives it: a method, the raw request target
(ASCII, as a client percent-encodes it) and header values as raw bytes (any byte but CR and
LF, which a server refuses). Each adapter gets it as its server would hand it over: the WSGI
ones an environ whose header values and PATH_INFO are those bytes decoded as latin-1 (PEP
3333, as gunicorn builds it), with REQUEST_URI and RAW_URI the target as sent; the ASGI one a
scope with the headers as bytes, the raw path, and the path percent-decoded (as uvicorn
builds it).

The contract checked for every generated request: never a 5xx; on the agent's routes a JSON
answer (401 `{"error": "Unauthorized", "reason": R}`, 400 `bad_request`, 405
`method_not_allowed`, 413 `payload_too_large`, or the route's own answer), except the 200 SSE
stream, whose status and headers only are checked before the client goes away; every other
path under the prefix reaches the wrapped app untouched.

Values that depend on the moment (timestamps, signatures, the health ETag) are drawn as
recipes and made when the request is sent, so an example replayed from hypothesis's database
means the same thing on a later day.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from io import BytesIO
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, quote_plus, unquote, unquote_plus, unquote_to_bytes

import pytest
from flask import Flask, Response
from flask import request as flask_request
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client

from rpc_agent import AgentCore, AgentSettings, RpcAgent
from rpc_agent import asgi as agent_asgi
from rpc_agent import wsgi as agent_wsgi
from rpc_agent.core.schema import schema_etag
from rpc_common.protocol import MAX_REQUEST_BODY
from rpc_common.signing import (
    VerificationFailure,
    format_timestamp,
    sign_bound,
    sign_original,
    verify_request,
)
from tests.support import OTHER_SECRET, TEST_SECRET
from tests.support.asgi_calls import Exchange, RawApp
from tests.support.odd_headers import HAND_PICKED

pytestmark = pytest.mark.slow

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

HEALTH = "/forest/health"
SCHEMA_ROUTE = "/forest/rpc-schema"
SSE = "/forest/sse"
ROUTES = (HEALTH, SCHEMA_ROUTE, SSE)
ALLOWED = ("GET", "HEAD")
REASONS = {failure.value for failure in VerificationFailure}
SCHEMA: dict[str, Any] = {
    "collections": [{"name": "products", "fields": [{"field": "id", "type": "Number"}]}],
    "charts": [],
}
SCHEMA_ETAG = schema_etag(SCHEMA)
HEALTH_KEYS = {"status", "version", "instance_id", "schema_etag", "uptime_s"}
# A matching watch is held this long at most: long enough to be held, short for the runtime.
MAX_WAIT = 0.05
# Bound on one request's answer (a held watch included).
ANSWER_S = 5.0
# The wrapped apps answer with this status and an X-Wrapped header.
WRAPPED_STATUS = 299

Headers = Sequence[tuple[str, bytes]]


def fuzz(max_examples: int) -> Callable[[Any], Any]:
    """Hypothesis settings for one property, run once per adapter (a fixture)."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# --- the adapters, behind one "send a request" --------------------------------------------


@dataclass
class Answer:
    """What came back; `streamed` when an SSE stream was opened (and left at once)."""

    status: int
    headers: dict[str, str]  # names lowercased
    body: bytes
    streamed: bool = False

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.headers}, {self.body[:300]!r}, {self.streamed})"


def is_stream(method: str, headers: dict[str, str]) -> bool:
    return method == "GET" and headers.get("content-type", "").startswith("text/event-stream")


class Adapter(Protocol):
    name: str
    agent: AgentCore

    def send(self, method: str, target: str, headers: Headers = (), body: bytes = b"") -> Answer:
        """One request: the raw target as sent, header values as the raw bytes sent."""
        ...

    def decoded_path(self, raw_path: str) -> str:
        """The path the server hands the app for `raw_path` (percent-decoded)."""
        ...


def agent_settings() -> AgentSettings:
    return AgentSettings(auth_secret=TEST_SECRET, health_max_wait=MAX_WAIT)


def echo(method: str, path: str, raw_path: str, query: str, body: bytes) -> bytes:
    """The wrapped apps' answer: what they were handed (the keys of test_agent_asgi's RawApp)."""
    fields = {
        "method": method,
        "path": path,
        "raw_path": raw_path,
        "query": query,
        "body_length": len(body),
    }
    return json.dumps(fields).encode()


def wsgi_echo(environ: WSGIEnvironment, body: bytes) -> bytes:
    raw_path = str(environ.get("RAW_URI", "")).partition("?")[0]
    return echo(
        environ["REQUEST_METHOD"],
        environ["PATH_INFO"],
        raw_path,
        environ.get("QUERY_STRING", ""),
        body,
    )


def plain_app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    start_response(
        f"{WRAPPED_STATUS} Wrapped",
        [("Content-Type", "application/json"), ("X-Wrapped", "wsgi")],
    )
    return [wsgi_echo(environ, body)]


def flask_app() -> Flask:
    """A Flask app whose every request is answered by a `before_request` hook (so Flask's
    routing, redirects and 404/405s never decide): the echo, with WRAPPED_STATUS."""
    app = Flask(__name__)

    @app.before_request
    def wrapped_app() -> Response:
        body = wsgi_echo(flask_request.environ, flask_request.get_data())
        return Response(
            body, WRAPPED_STATUS, {"X-Wrapped": "flask"}, content_type="application/json"
        )

    return app


class WsgiAdapter:
    """A WSGI app (the Flask app or the middleware) through werkzeug's test client, every
    field of the environ that carries the request set as a server would."""

    def __init__(self, name: str, client: Client, agent: AgentCore, multithread: bool) -> None:
        self.name = name
        self.client = client
        self.agent = agent
        # werkzeug's client says single-threaded (a watch is answered at once); the plain
        # WSGI adapter says threaded, so a matching watch is really held (MAX_WAIT).
        self.multithread = multithread

    def decoded_path(self, raw_path: str) -> str:
        return unquote_to_bytes(raw_path).decode("latin-1")

    def send(self, method: str, target: str, headers: Headers = (), body: bytes = b"") -> Answer:
        raw_path, _, query = target.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": self.decoded_path(raw_path),
            "QUERY_STRING": query,
            "REQUEST_URI": target,
            "RAW_URI": target,
            "wsgi.input": BytesIO(body),
            "wsgi.multithread": self.multithread,
        }
        if body:
            environ["CONTENT_LENGTH"] = str(len(body))
        for name, value in headers:
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_LENGTH", "CONTENT_TYPE"):
                key = "HTTP_" + key
            environ[key] = value.decode("latin-1")
        response = self.client.open("/", method=method, environ_overrides=environ)
        try:
            answer_headers = {name.lower(): value for name, value in response.headers.items()}
            streamed = is_stream(method, answer_headers)
            # An open stream never ends: take the first block alone (werkzeug's client
            # already pulled it from the app), then close it as a client that goes away.
            data = bytes(next(iter(response.response), b"")) if streamed else response.get_data()
        finally:
            response.close()
        return Answer(response.status_code, answer_headers, data, streamed)


class AsgiAdapter:
    """The ASGI middleware around test_agent_asgi's RawApp, one event loop per test."""

    name = "asgi"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.wrapped = RawApp()
        self.middleware = agent_asgi.RpcAgentMiddleware(
            self.wrapped, settings=agent_settings(), schema_provider=lambda: SCHEMA
        )
        self.agent = self.middleware.agent

    def decoded_path(self, raw_path: str) -> str:
        return unquote(raw_path)

    def send(self, method: str, target: str, headers: Headers = (), body: bytes = b"") -> Answer:
        raw_path, _, query = target.partition("?")
        sent = [(b"host", b"127.0.0.1:8000")]
        sent += [(name.lower().encode("latin-1"), value) for name, value in headers]
        if body and not any(name == b"content-length" for name, _ in sent):
            sent.append((b"content-length", str(len(body)).encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": self.decoded_path(raw_path),
            "raw_path": raw_path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": "",
            "headers": sent,
            "client": ("127.0.0.1", 50123),
            "server": ("127.0.0.1", 8000),
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        return self.loop.run_until_complete(self._exchange(method, scope, messages))

    async def _exchange(self, method: str, scope: dict[str, Any], messages: Any) -> Answer:
        exchange = Exchange(self.middleware, scope, messages)
        await exchange.until(lambda: exchange.start is not None, ANSWER_S, "the response start")
        headers = exchange.headers
        if is_stream(method, headers) and not exchange.complete:
            await exchange.until(lambda: bool(exchange.chunks), ANSWER_S, "the first block")
            exchange.disconnect()
            await exchange.ended()
            return Answer(exchange.status, headers, exchange.body, streamed=True)
        await exchange.response(ANSWER_S)
        return Answer(exchange.status, exchange.headers, exchange.body)


@pytest.fixture(params=["flask", "wsgi", "asgi"])
def adapter(request: pytest.FixtureRequest) -> Iterator[Adapter]:
    if request.param == "flask":
        app = flask_app()
        agent = RpcAgent(app, settings=agent_settings(), schema_provider=lambda: SCHEMA)
        yield WsgiAdapter("flask", app.test_client(), agent, multithread=False)
    elif request.param == "wsgi":
        middleware = agent_wsgi.RpcAgentMiddleware(
            plain_app, settings=agent_settings(), schema_provider=lambda: SCHEMA
        )
        yield WsgiAdapter("wsgi", Client(middleware), middleware.agent, multithread=True)
    else:
        loop = asyncio.new_event_loop()
        try:
            yield AsgiAdapter(loop)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


# --- what the agent must answer -----------------------------------------------------------


def no_server_error(answer: Answer) -> None:
    assert answer.status < 500, answer


def expect_json(answer: Answer, method: str) -> Any:
    """The JSON body (None for HEAD, which gets the headers alone)."""
    assert answer.headers.get("content-type") == "application/json", answer
    if method == "HEAD":
        assert answer.body == b"", answer
        return None
    assert int(answer.headers["content-length"]) == len(answer.body), answer
    return answer.json()


def expect_error(answer: Answer, method: str, status: int, error: str) -> None:
    assert answer.status == status, answer
    body = expect_json(answer, method)
    if body is not None:
        assert set(body) == {"error", "reason"}, body
        assert body["error"] == error, body
        assert isinstance(body["reason"], str) and body["reason"], body


def expect_health(answer: Answer, method: str, adapter: Adapter) -> None:
    assert answer.status == 200, answer
    assert answer.headers["cache-control"] == "no-store", answer
    assert answer.headers["etag"] == adapter.agent.health_answer().etag, answer
    body = expect_json(answer, method)
    if body is not None:
        assert set(body) == HEALTH_KEYS, body
        assert body["status"] == "ok", body
        assert body["instance_id"] == adapter.agent.instance_id, body


# A well-formed wait, read independently of the agent's own parser: ASCII, no sign, no
# spaces or `_`, a decimal `float` reads, finite.
WAIT_CHARACTERS = re.compile(r"[0-9.eE+-]+")


def wait_is_well_formed(value: str) -> bool:
    if not WAIT_CHARACTERS.fullmatch(value) or value[0] in "+-":
        return False
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def first_wait(query: str) -> str | None:
    """The first `wait` of a query as a form decoder reads it (`+` is a space), or None."""
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if unquote_plus(name) == "wait":
            return unquote_plus(value)
    return None


def expect_agent_answer(
    answer: Answer,
    adapter: Adapter,
    *,
    route: str,
    method: str,
    query: str,
    refusal: str | None,
    oversized: bool = False,
) -> None:
    """The whole answer of one of the agent's routes."""
    no_server_error(answer)
    if oversized:
        expect_error(answer, method, 413, "payload_too_large")
    elif refusal is not None:
        assert answer.status == 401, answer
        body = expect_json(answer, method)
        if body is not None:
            assert body == {"error": "Unauthorized", "reason": refusal}, body
    elif method not in ALLOWED:
        expect_error(answer, method, 405, "method_not_allowed")
        assert answer.headers["allow"] == "GET, HEAD", answer
    elif route == SSE:
        assert answer.status == 200, answer
        assert answer.headers["content-type"].startswith("text/event-stream"), answer
        assert answer.streamed == (method == "GET"), answer
        # A stream's first block is a heartbeat, at once; a HEAD gets the headers alone.
        assert answer.body.startswith(b"event: ") == (method == "GET"), answer
    elif route == SCHEMA_ROUTE:
        assert answer.status == 200, answer
        assert answer.headers["etag"] == SCHEMA_ETAG, answer
        body = expect_json(answer, method)
        assert body is None or body == SCHEMA, body
    else:
        wait = first_wait(query)
        if wait is None or wait_is_well_formed(wait):
            expect_health(answer, method, adapter)
        else:
            expect_error(answer, method, 400, "bad_request")
    assert not answer.streamed or route == SSE, answer


# --- 1. generated X-Timestamp / X-Signature ----------------------------------------------


def no_crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r", b"").replace(b"\n", b"")


def repeated(unit: bytes, size: int) -> bytes:
    return (unit * (size // len(unit) + 1))[:size]


def odd_values() -> st.SearchStrategy[bytes]:
    """Header values as raw bytes: any text as UTF-8, any bytes, very long ones, and
    test_agent_routes' hand-picked odd values."""
    units = st.sampled_from([b"x", b"0", b"f", b"v2=", b"\xff", "é".encode(), b"\x00", b" "])
    return st.one_of(
        st.sampled_from([no_crlf(value.encode()) for value in HAND_PICKED]),
        st.binary(max_size=300).map(no_crlf),
        st.text(max_size=300).map(lambda text: no_crlf(text.encode())),
        st.text(max_size=100).map(lambda text: no_crlf(("v2=" + text).encode())),
        st.builds(repeated, units, st.integers(min_value=65, max_value=200_000)),
    )


# Edits of a real value: near misses (and, now and then, the value itself).
EDIT_CHARACTERS = [*"09afgGZzT:.-+=,/ \t\x00\x7f\x85\xa0é\xff", "\uff10", "\u0663", "\u202e"]
Edit = tuple[Any, ...]
CHANGES: st.SearchStrategy[Edit] = st.one_of(
    st.tuples(st.just("cut"), st.integers(0, 80)),
    st.tuples(st.just("drop"), st.integers(0, 80)),
    st.tuples(st.just("put"), st.integers(0, 80), st.sampled_from(EDIT_CHARACTERS)),
    st.tuples(
        st.just("insert"),
        st.integers(0, 80),
        st.text(alphabet=EDIT_CHARACTERS, min_size=1, max_size=4),
    ),
    st.just(("swapcase",)),
    st.just(("fullwidth",)),
    st.tuples(
        st.just("pad"), st.sampled_from(["", " ", "\t", "\x00"]), st.sampled_from(["", " ", "\t"])
    ),
    st.tuples(
        st.just("append"), st.sampled_from(["0", "x", "é", "\x00", " "]), st.integers(1, 100_000)
    ),
)


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each drawn in proportion to its weight (`st.one_of` flattens
    nested choices into equal branches, which would lose the weights)."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


# Half the values are kept as made, so a fair share of requests is accepted.
EDITS = weighted((1, st.just(("keep",))), (1, CHANGES))
FULLWIDTH = {ord("0") + n: 0xFF10 + n for n in range(10)}


def edited(value: str, edit: Edit) -> str:
    kind, *args = edit
    at = args[0] % (len(value) + 1) if args and isinstance(args[0], int) else 0
    if kind == "cut":
        return value[:at]
    if kind == "drop":
        return value[:at] + value[at + 1 :]
    if kind == "put":
        return value[:at] + args[1] + value[at + 1 :]
    if kind == "insert":
        return value[:at] + args[1] + value[at:]
    if kind == "swapcase":
        return value.swapcase()
    if kind == "fullwidth":
        return value.translate(FULLWIDTH)
    if kind == "pad":
        return args[0] + value + args[1]
    if kind == "append":
        return value + args[0] * args[1]
    return value


# A timestamp recipe: None (no header), ("odd", bytes) or ("moment", shift_s, style,
# offset_minutes, edit): now + shift in one style, edited. Shifts keep clear of the 300 s
# window's edge (a style may drop up to a minute).
SHIFTS = st.one_of(
    st.integers(-200, 200),
    st.integers(-200, 200),
    st.integers(420, 10**10),
    st.integers(-(10**10), -420),
)
STYLES = ["ms", "iso", "offset", "lower", "comma", "space", "minutes", "naive", "epoch", "compact"]


def styled(moment: datetime, style: str, minutes: int) -> str:
    utc = moment.astimezone(UTC)
    if style == "iso":
        return utc.isoformat()
    if style == "offset":
        return moment.astimezone(timezone(timedelta(minutes=minutes))).isoformat("T", "seconds")
    if style == "lower":
        return format_timestamp(moment).replace("T", "t").replace("Z", "z")
    if style == "comma":
        return format_timestamp(moment).replace(".", ",")
    if style == "space":
        return format_timestamp(moment).replace("T", " ")
    if style == "minutes":
        return utc.strftime("%Y-%m-%dT%H:%MZ")
    if style == "naive":
        return utc.replace(tzinfo=None).isoformat()
    if style == "epoch":
        return str(utc.timestamp())
    if style == "compact":
        return utc.strftime("%Y-%m-%dT%H:%M:%S+0000")
    return format_timestamp(moment)


MOMENTS = st.tuples(
    st.just("moment"),
    SHIFTS,
    st.sampled_from(STYLES),
    st.integers(-(24 * 60 - 1), 24 * 60 - 1),
    EDITS,
)
TIMESTAMPS = weighted((1, st.none()), (2, st.tuples(st.just("odd"), odd_values())), (5, MOMENTS))

# A signature recipe: None, ("odd", bytes) or ("sign", scheme, slip, edit): signed over the
# timestamp sent, rightly or with one slip, then edited.
UNKNOWN_SECRET = "a-secret-this-agent-was-never-given-0123456789"
SLIPS = ["other secret", "unknown secret", "other method", "other target", "query", "upper"]
SIGNINGS = st.tuples(
    st.just("sign"),
    st.sampled_from(["v1", "v2", "v2"]),
    st.sampled_from(["none"] * len(SLIPS) + SLIPS),
    EDITS,
)
SIGNATURES = weighted((1, st.none()), (2, st.tuples(st.just("odd"), odd_values())), (5, SIGNINGS))


def make_timestamp(recipe: Any) -> bytes | None:
    if recipe is None:
        return None
    if recipe[0] == "odd":
        return bytes(recipe[1])
    _, shift, style, minutes, edit = recipe
    moment = datetime.now(UTC) + timedelta(seconds=shift)
    return no_crlf(edited(styled(moment, style, minutes), edit).encode())


def make_signature(recipe: Any, timestamp: str | None, method: str, target: str) -> bytes | None:
    if recipe is None:
        return None
    if recipe[0] == "odd":
        return bytes(recipe[1])
    _, scheme, slip, edit = recipe
    over = timestamp if timestamp is not None else format_timestamp(datetime.now(UTC))
    secret = {"other secret": OTHER_SECRET, "unknown secret": UNKNOWN_SECRET}.get(slip, TEST_SECRET)
    if slip == "other method":
        method = "POST" if method != "POST" else "GET"
    elif slip == "other target":
        target = SCHEMA_ROUTE if target != SCHEMA_ROUTE else HEALTH
    elif slip == "query":
        target += "?probe=1"
    elif slip == "upper":
        target = target.upper()
    if scheme == "v1":
        value = sign_original(secret, over)
    else:
        value = sign_bound(secret, over, method, target)
    return no_crlf(edited(value, edit).encode())


# A Content-Length now and then (no body is sent): over the cap it is a 413 before anything.
CONTENT_LENGTHS = st.one_of(
    st.none(),
    st.none(),
    st.sampled_from(
        [b"0", b"65536", b"65537", b"-1", b" 70000 ", b"1_000_000", b"9" * 5000, b"abc", b""]
    ),
    odd_values(),
)


def declared_length(value: bytes | None) -> int:
    try:
        return int(value.decode("latin-1")) if value is not None else 0
    except ValueError:
        return 0


@fuzz(max_examples=200)
@given(
    route=st.sampled_from(ROUTES),
    method=st.sampled_from(["GET", "GET", "HEAD", "POST"]),
    timestamp_recipe=TIMESTAMPS,
    signature_recipe=SIGNATURES,
    content_length=CONTENT_LENGTHS,
)
def test_generated_auth_headers_never_give_a_server_error(
    adapter: Adapter,
    route: str,
    method: str,
    timestamp_recipe: Any,
    signature_recipe: Any,
    content_length: bytes | None,
) -> None:
    timestamp = make_timestamp(timestamp_recipe)
    timestamp_seen = None if timestamp is None else timestamp.decode("latin-1")
    signature = make_signature(signature_recipe, timestamp_seen, method, route)
    headers: list[tuple[str, bytes]] = []
    if timestamp is not None:
        headers.append(("X-Timestamp", timestamp))
    if signature is not None:
        headers.append(("X-Signature", signature))
    if content_length is not None:
        headers.append(("Content-Length", content_length))
    # What the agent must make of the pair, as the adapters hand it over (latin-1 text).
    config = adapter.agent.settings
    failure = verify_request(
        timestamp_seen,
        None if signature is None else signature.decode("latin-1"),
        method=method,
        target=route,
        body=b"",
        secrets=adapter.agent.verification_secrets,
        allowed_clock_skew=config.allowed_clock_skew,
        require_bound=config.require_bound_signatures,
    )
    answer = adapter.send(method, route, headers)
    event(f"{answer.status} {failure or 'accepted'}")
    expect_agent_answer(
        answer,
        adapter,
        route=route,
        method=method,
        query="",
        refusal=None if failure is None else str(failure),
        oversized=declared_length(content_length) > MAX_REQUEST_BODY,
    )
    if answer.status == 401 and method != "HEAD":
        assert answer.json()["reason"] in REASONS


# --- 2. generated paths under the prefix and methods --------------------------------------

UNRESERVED = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~"
PCHAR = UNRESERVED + "!$&'()*+,;=:@"
TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

SEGMENTS = st.one_of(
    st.sampled_from(
        [
            "health",
            "rpc-schema",
            "sse",
            "",
            ".",
            "..",
            "%2e",
            "%2E%2e",
            "%2F",
            "%2fhealth",
            "%3F",
            "%23",
            "%00",
            "%ff",
            "%C3%A9",
            "HEALTH",
            "Health",
            "health;x=1",
            "health%3Bx",
            "%68ealth",
            "%68%65%61%6C%74%68",
            "rpc%2Dschema",
            "rpc%2dschema",
            "%73se",
            "sse%00",
            "health%20",
            "%20health",
            "health.",
            "sse.json",
            "health%2F",
        ]
    ),
    st.text(max_size=12).map(lambda text: quote(text, safe="")),
    st.binary(min_size=1, max_size=6).map(lambda raw: "".join(f"%{b:02X}" for b in raw)),
    st.text(alphabet=PCHAR, max_size=10),
)
# "/forest" then a separator: "/forest%2Fhealth" decodes to the route too.
GENERATED_PATHS = st.builds(
    lambda separator, segments: "/forest" + separator + "/".join(segments),
    st.sampled_from(["/", "/", "/", "/", "%2F", "%2f", "//", ""]),
    st.lists(SEGMENTS, min_size=1, max_size=4),
)


def spelled(route: str, escaped: list[bool], lower: bool) -> str:
    """`route` with the characters after "/forest" picked by `escaped` percent-encoded: a
    target that decodes to the route."""
    head, tail = route[: len("/forest")], route[len("/forest") :]
    spelling = "".join(
        (f"%{ord(char):02x}" if lower else f"%{ord(char):02X}") if escape else char
        for char, escape in zip(tail, [*escaped, *[False] * len(tail)], strict=False)
    )
    return head + spelling


ROUTE_SPELLINGS = st.builds(
    spelled, st.sampled_from(ROUTES), st.lists(st.booleans(), max_size=12), st.booleans()
)
PATHS = st.one_of(st.sampled_from(ROUTES), ROUTE_SPELLINGS, GENERATED_PATHS)
# A query, never empty: a bare "?" is lost in an ASGI scope (the v2 target is then signed
# over what the ASGI adapter cannot rebuild), and the datasource never signs one.
QUERIES = st.one_of(
    st.just(""),
    st.text(alphabet=PCHAR + "/?%", min_size=1, max_size=30),
    st.sampled_from(["wait=0", "wait=abc", "wait=-1", "wait=%D9%A1", "a=1&wait=0.01", "wait"]),
)
METHODS = st.one_of(
    st.sampled_from(["GET", "GET", "HEAD"]),
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]),
    st.sampled_from(["get", "Head", "TRACE", "CONNECT", "PROPFIND", "M-SEARCH"]),
    st.text(alphabet=TCHAR, min_size=1, max_size=12),
)
BODIES = st.one_of(
    st.just(b""),
    st.just(b""),
    st.binary(min_size=1, max_size=64),
    st.sampled_from([MAX_REQUEST_BODY, MAX_REQUEST_BODY + 1]).map(lambda size: b"b" * size),
)
ROUTE_PATHS = {route.encode(): route for route in ROUTES}


def signed_headers_for(method: str, target: str, body: bytes) -> list[tuple[str, bytes]]:
    timestamp = format_timestamp(datetime.now(UTC))
    signature = sign_bound(TEST_SECRET, timestamp, method, target, body)
    return [("X-Timestamp", timestamp.encode()), ("X-Signature", signature.encode())]


@fuzz(max_examples=200)
@given(path=PATHS, query=QUERIES, method=METHODS, body=BODIES, sign=st.booleans())
def test_generated_paths_and_methods_never_give_a_server_error(
    adapter: Adapter, path: str, query: str, method: str, body: bytes, sign: bool
) -> None:
    target = f"{path}?{query}" if query else path
    headers = signed_headers_for(method, target, body) if sign else []
    answer = adapter.send(method, target, headers, body)
    no_server_error(answer)
    route = ROUTE_PATHS.get(unquote_to_bytes(path))
    event(f"{answer.status} {'agent' if route else 'wrapped'}")
    if route is not None:
        assert adapter.decoded_path(path) == route
        expect_agent_answer(
            answer,
            adapter,
            route=route,
            method=method,
            query=query,
            refusal=None if sign else "missing_headers",
            oversized=len(body) > MAX_REQUEST_BODY,
        )
        return
    # Not the agent's: the wrapped app got the request as sent.
    assert answer.status == WRAPPED_STATUS, answer
    assert "x-wrapped" in answer.headers, answer
    if method != "HEAD":  # Flask (werkzeug) sends no body to a HEAD
        expected = {
            "method": method,
            "path": adapter.decoded_path(path),
            "raw_path": path,
            "query": query,
            "body_length": len(body),
        }
        handed = answer.json()
        assert {key: handed[key] for key in expected} == expected


# --- 3. generated wait values on a signed /forest/health?wait= ----------------------------

WAITS = st.one_of(
    st.sampled_from(
        [
            "",
            "0",
            "0.0",
            ".5",
            "5.",
            "1e-3",
            "1E3",
            "1e+2",
            "1e999",
            "1e-999",
            "nan",
            "inf",
            "-0",
            "+1",
            "1_0",
            " 1",
            "1 ",
            "0x10",
            "1e",
            "e1",
            ".",
            "..5",
            "1.2.3",
            "9" * 400,
            "9" * 5000,
            "0." + "0" * 5000 + "1",
            "\u0663",
            "\uff13",
            "\u00bd",
            "\u00b2",
            "\U0001d7d9",
        ]
    ),
    st.from_regex(r"[+-]?[0-9]{0,5}(\.[0-9]{0,4})?([eE][+-]?[0-9]{0,4})?", fullmatch=True),
    st.from_regex(r"([0-9]{1,3}(\.[0-9]{0,3})?|\.[0-9]{1,3})([eE]-?[0-9])?", fullmatch=True),
    st.floats(min_value=0, max_value=1e6).map(str),
    st.floats().map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.text(alphabet="0123456789.eE+-_ ", max_size=10),
    st.text(alphabet=st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=4),
    st.text(max_size=12),
)
RAW_QUERY_VALUE = re.compile(r"[!$'()*+,\-./0-9:;=?@A-Z_a-z~%]*")


def encoded_wait(value: str, encoding: str) -> str:
    """The value as put in the query: percent-encoded whole, every byte, as a form, or raw
    (when its characters may stand in a target; `+` and `%XX` then decode)."""
    if encoding == "raw" and RAW_QUERY_VALUE.fullmatch(value):
        return value
    if encoding == "every-byte":
        return "".join(f"%{b:02X}" for b in value.encode())
    if encoding == "form":
        return quote_plus(value, safe="")
    return quote(value, safe="")


NOISE = ["a=1", "probe", "", "wait", "wait=", "%77ait=1", "WAIT=1", "waits=1", "wait%3D1", "w=2"]


@fuzz(max_examples=120)
@given(
    value=WAITS,
    encoding=st.sampled_from(["quote", "raw", "every-byte", "form"]),
    before=st.lists(st.sampled_from(NOISE), max_size=2),
    after=st.lists(st.sampled_from(NOISE), max_size=2),
    etag=st.sampled_from(["match", "match", "none", "other", "weak"]),
)
def test_generated_wait_values_give_health_or_400(
    adapter: Adapter, value: str, encoding: str, before: list[str], after: list[str], etag: str
) -> None:
    query = "&".join([*before, "wait=" + encoded_wait(value, encoding), *after])
    target = f"{HEALTH}?{query}"
    headers = signed_headers_for("GET", target, b"")
    current = adapter.agent.health_answer().etag
    if_none_match = {"match": current, "other": '"0"', "weak": "W/" + current}.get(etag)
    if if_none_match is not None:
        headers.append(("If-None-Match", if_none_match.encode()))
    started = time.monotonic()
    answer = adapter.send("GET", target, headers)
    took = time.monotonic() - started
    no_server_error(answer)
    seen = first_wait(query)
    assert seen is not None
    event(f"{answer.status} {etag} {'held' if took > MAX_WAIT / 2 else 'at once'}")
    if wait_is_well_formed(seen):
        expect_health(answer, "GET", adapter)
        assert answer.headers["etag"] == current
    else:
        expect_error(answer, "GET", 400, "bad_request")
    assert took < MAX_WAIT + 2.0, took
    assert adapter.agent.held_requests.held == 0


# --- 4. generated If-None-Match on /forest/rpc-schema -------------------------------------

ETAG_ITEMS = st.sampled_from(
    [
        SCHEMA_ETAG,
        "W/" + SCHEMA_ETAG,
        "w/" + SCHEMA_ETAG,
        SCHEMA_ETAG.strip('"'),
        SCHEMA_ETAG.upper(),
        SCHEMA_ETAG[:-2] + '"',
        SCHEMA_ETAG + SCHEMA_ETAG,
        '"' + SCHEMA_ETAG + '"',
        '"0"',
        'W/"0"',
        "*",
        "W/*",
        "",
        "\x00",
        "é",
    ]
)
ETAG_LISTS = st.builds(
    lambda items, separator, left, right: left + separator.join(items) + right,
    st.lists(ETAG_ITEMS, min_size=1, max_size=4),
    st.sampled_from([",", ", ", " ,", "\t,\t", ",,", ";", " "]),
    st.sampled_from(["", "", " ", "\t"]),
    st.sampled_from(["", "", " ", "\t", "\x00"]),
)
IF_NONE_MATCH = st.one_of(
    ETAG_LISTS.map(lambda text: text.encode()),
    ETAG_LISTS.map(lambda text: text.encode()),
    odd_values(),
)


def names_the_schema(value: str) -> bool:
    """Whether an If-None-Match value names the schema's ETag: `*`, or a list one of whose
    members is the ETag, weak or strong (weak comparison, RFC 9110 13.1.2). Members are
    trimmed with `str.strip`, as the agent does: a little more than RFC 9110's OWS."""
    if value.strip() == "*":
        return True
    return any(tag.strip() in (SCHEMA_ETAG, "W/" + SCHEMA_ETAG) for tag in value.split(","))


@fuzz(max_examples=120)
@given(value=IF_NONE_MATCH, method=st.sampled_from(["GET", "GET", "HEAD"]))
def test_generated_if_none_match_gives_200_or_304(
    adapter: Adapter, value: bytes, method: str
) -> None:
    headers = [*signed_headers_for(method, SCHEMA_ROUTE, b""), ("If-None-Match", value)]
    answer = adapter.send(method, SCHEMA_ROUTE, headers)
    no_server_error(answer)
    assert answer.headers["etag"] == SCHEMA_ETAG, answer
    assert answer.headers["cache-control"] == "no-cache", answer
    event(str(answer.status))
    if names_the_schema(value.decode("latin-1")):
        assert answer.status == 304, answer
        assert answer.body == b"", answer
    else:
        assert answer.status == 200, answer
        body = expect_json(answer, method)
        assert body is None or body == SCHEMA, body


# --- the harness itself -------------------------------------------------------------------


def test_each_adapter_answers_a_signed_health_and_passes_other_paths_on(
    adapter: Adapter,
) -> None:
    """The harness reaches the agent and the wrapped app as the properties assume."""
    health = adapter.send("GET", HEALTH, signed_headers_for("GET", HEALTH, b""))
    expect_health(health, "GET", adapter)
    other = adapter.send("POST", "/forest/x%2Fy?q=1", [], b"data")
    assert other.status == WRAPPED_STATUS
    assert other.json()["path"] == "/forest/x/y"
    stream = adapter.send("GET", SSE, signed_headers_for("GET", SSE, b""))
    assert stream.status == 200 and stream.streamed
    assert stream.body.startswith(b"event: heartbeat\n")
