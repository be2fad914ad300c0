"""`rpc_agent.asgi.RpcAgentMiddleware` driven over the ASGI protocol in-process, no server:
each request is a `scope`, a `receive` fed from a queue (the request body, then an
`http.disconnect` when the test says the client went away) and a `send` that records what the
middleware answers. The agent's routes, held watches and SSE streams are checked as the Flask
side checks them (test_agent_routes, test_agent_watch, test_agent_sse), and every other path,
and the lifespan, must reach the wrapped app: a FastAPI app, or a minimal raw ASGI callable.

Every wait is deadline-bound: a test waits on what the middleware sends (or on a count it
polls) with a timeout, never on a sleep that would make it pass.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI

from rpc_agent.asgi import RpcAgentMiddleware
from rpc_agent.core.sse import StreamEnd
from rpc_agent.process.stop_signal import STOP_SIGNALS, DrainingStopHandler
from rpc_common.protocol import HEARTBEAT_EVENT, MAX_REQUEST_BODY, STOP_EVENT
from rpc_common.signing import sign_original, signed_headers
from tests.support import OTHER_SECRET, TEST_SECRET, health_etag_of
from tests.support.asgi_calls import (
    DEADLINE_S,
    HEALTH,
    LONG_INTERVAL,
    LONG_WAIT,
    PRODUCTS,
    SCHEMA,
    SCHEMA_A,
    SSE,
    TEST_DEADLINE_S,
    ASGIApp,
    Exchange,
    Message,
    RawApp,
    asgi_test,
    call,
    current_etag,
    eventually,
    fastapi_app,
    request,
    watch,
    wrapped,
)

ROUTES = [HEALTH, SCHEMA, SSE]

# Longest a request that must be answered "at once" may take: far below any wait used here.
AT_ONCE_S = 2.0

SCHEMA_B: dict[str, Any] = {"collections": [{"name": "orders", "fields": []}], "charts": []}


# --- the wrapped apps ---------------------------------------------------------------------


# --- the ASGI driver ----------------------------------------------------------------------


def in_thread(action: Callable[[], None]) -> threading.Thread:
    """Run `action` on another thread, as a signal handler's drain thread would."""
    thread = threading.Thread(target=action, name="test-other-thread", daemon=True)
    thread.start()
    return thread


def assert_refused(exchange: Exchange, reason: str) -> None:
    assert exchange.status == 401, exchange.body[:300]
    assert exchange.headers["content-type"] == "application/json"
    assert exchange.json() == {"error": "Unauthorized", "reason": reason}


def assert_health(exchange: Exchange, middleware: RpcAgentMiddleware, status: int = 200) -> None:
    """A complete health answer with the given status whose ETag is the token of its body."""
    assert exchange.status == status, exchange.body[:300]
    body = exchange.json()
    assert body["status"] == ("ok" if status == 200 else "shutting_down")
    assert exchange.headers["etag"] == health_etag_of(body)
    assert exchange.headers["cache-control"] == "no-store"


async def held_watch(
    middleware: RpcAgentMiddleware, wait: object = LONG_WAIT, count: int = 1
) -> Exchange:
    """A watch with the current ETag, once the agent holds it (`count` held in all)."""
    exchange = request(middleware, watch(wait), etag=await current_etag(middleware))
    await eventually(lambda: middleware.agent.held_requests.held == count, "the watch held")
    assert exchange.start is None, "a held watch already answered"
    return exchange


@contextmanager
def stop_handlers_restored() -> Iterator[None]:
    """Put SIGTERM and SIGINT's handlers back as they were (the lifespan installs its own)."""
    saved = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


# --- health -------------------------------------------------------------------------------


@asgi_test
async def test_signed_health_answers_small_uncached_json() -> None:
    middleware = wrapped()
    exchange = await call(middleware, HEALTH)
    assert exchange.status == 200
    headers = exchange.headers
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert int(headers["content-length"]) == len(exchange.body) < 400
    body = exchange.json()
    assert set(body) == {"status", "version", "instance_id", "schema_etag", "uptime_s"}
    assert body["status"] == "ok"
    assert body["instance_id"] == middleware.agent.instance_id
    for key in ("version", "schema_etag"):
        assert isinstance(body[key], str) and body[key], key
    assert isinstance(body["uptime_s"], float) and body["uptime_s"] >= 0
    assert headers["etag"] == health_etag_of(body)
    assert headers["etag"].startswith('"') and headers["etag"].endswith('"')


@asgi_test
async def test_health_is_503_shutting_down_after_begin_shutdown() -> None:
    middleware = wrapped()
    before = (await call(middleware, HEALTH)).json()
    middleware.agent.begin_shutdown()
    exchange = await call(middleware, HEALTH)
    assert_health(exchange, middleware, status=503)
    assert exchange.json()["instance_id"] == before["instance_id"]
    assert exchange.headers["etag"] != health_etag_of(before)
    assert_refused(await call(middleware, HEALTH, sign=False), "missing_headers")


# --- authentication -----------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
@asgi_test
async def test_unsigned_request_is_refused(route: str) -> None:
    middleware = wrapped()
    assert_refused(await call(middleware, route, sign=False), "missing_headers")
    assert middleware.agent.sse_manager.current is None


@pytest.mark.parametrize("route", ROUTES)
@asgi_test
async def test_one_signature_header_alone_is_refused(route: str) -> None:
    middleware = wrapped()
    for name, value in signed_headers(TEST_SECRET, target=route).items():
        exchange = await call(middleware, route, sign=False, headers={name: value})
        assert_refused(exchange, "missing_headers")


@pytest.mark.parametrize("route", ROUTES)
@asgi_test
async def test_wrong_secret_is_refused(route: str) -> None:
    middleware = wrapped()
    assert_refused(await call(middleware, route, secret=OTHER_SECRET), "bad_signature")
    assert middleware.agent.sse_manager.current is None


@asgi_test
async def test_malformed_and_stale_timestamps_are_refused() -> None:
    middleware = wrapped()
    timestamp = "2026-11-21 09:30:00 UTC"
    malformed = {"X-Timestamp": timestamp, "X-Signature": sign_original(TEST_SECRET, timestamp)}
    assert_refused(
        await call(middleware, HEALTH, sign=False, headers=malformed), "malformed_timestamp"
    )
    stale = signed_headers(TEST_SECRET, target=HEALTH, now=datetime.now(UTC) - timedelta(hours=1))
    assert_refused(
        await call(middleware, HEALTH, sign=False, headers=stale), "timestamp_out_of_window"
    )


@asgi_test
async def test_original_scheme_is_accepted_unless_bound_signatures_are_required() -> None:
    v1 = signed_headers(TEST_SECRET, target=HEALTH, scheme="v1")
    assert (await call(wrapped(), HEALTH, sign=False, headers=v1)).status == 200
    strict = wrapped(require_bound_signatures=True)
    v1 = signed_headers(TEST_SECRET, target=HEALTH, scheme="v1")
    assert_refused(await call(strict, HEALTH, sign=False, headers=v1), "bad_signature")
    assert (await call(strict, HEALTH)).status == 200


@asgi_test
async def test_underscored_header_names_of_the_original_client_are_read_as_dashed() -> None:
    v1 = signed_headers(TEST_SECRET, target=HEALTH, scheme="v1")
    underscored = {name.replace("-", "_"): value for name, value in v1.items()}
    assert set(underscored) == {"X_Timestamp", "X_Signature"}
    assert (await call(wrapped(), HEALTH, sign=False, headers=underscored)).status == 200


@asgi_test
async def test_v2_signature_is_over_the_raw_path_as_sent() -> None:
    middleware = wrapped()
    raw_target = "/forest/%68ealth"
    # Signed over the target exactly as sent: accepted, and answered by the agent.
    exchange = await call(middleware, raw_target)
    assert exchange.scope["path"] == HEALTH
    assert exchange.scope["raw_path"] == b"/forest/%68ealth"
    assert_health(exchange, middleware)
    # Signed over the decoded path, which the client never sent: refused.
    refused = await call(middleware, raw_target, signed_target=HEALTH)
    assert_refused(refused, "bad_signature")


@asgi_test
async def test_without_raw_path_the_target_is_the_quoted_path() -> None:
    middleware = wrapped()
    exchange = await call(middleware, HEALTH, with_raw_path=False)
    assert "raw_path" not in exchange.scope
    assert exchange.status == 200
    query = await call(middleware, f"{HEALTH}?probe=1", with_raw_path=False)
    assert query.status == 200


@asgi_test
async def test_the_query_string_is_part_of_the_signed_target() -> None:
    middleware = wrapped()
    assert (await call(middleware, f"{HEALTH}?probe=1")).status == 200
    exchange = await call(middleware, f"{HEALTH}?probe=1", signed_target=HEALTH)
    assert_refused(exchange, "bad_signature")
    other = await call(middleware, f"{HEALTH}?probe=2", signed_target=f"{HEALTH}?probe=1")
    assert_refused(other, "bad_signature")
    # Raw path and query together, as sent.
    assert (await call(middleware, "/forest/%68ealth?probe=%31")).status == 200


@asgi_test
async def test_the_method_is_part_of_the_signed_target() -> None:
    middleware = wrapped()
    headers = signed_headers(TEST_SECRET, method="POST", target=HEALTH)
    assert_refused(await call(middleware, HEALTH, sign=False, headers=headers), "bad_signature")


@asgi_test
async def test_the_body_is_part_of_the_signature() -> None:
    middleware = wrapped()
    body = b'{"probe": 1}'
    # Signed over this body: accepted (then 405, the agent's routes answer GET and HEAD).
    accepted = await call(middleware, HEALTH, method="POST", body=body)
    assert accepted.status == 405
    # Signed over no body, sent with one: refused.
    headers = signed_headers(TEST_SECRET, method="POST", target=HEALTH)
    refused = await call(middleware, HEALTH, method="POST", sign=False, headers=headers, body=body)
    assert_refused(refused, "bad_signature")
    # A body in several messages is read whole before the signature is checked.
    chunked = await call(middleware, HEALTH, method="POST", chunks=[body[:5], body[5:]])
    assert chunked.status == 405


# --- schema -------------------------------------------------------------------------------


@asgi_test
async def test_schema_is_the_providers_json_with_a_strong_etag() -> None:
    middleware = wrapped()
    exchange = await call(middleware, SCHEMA)
    assert exchange.status == 200
    assert exchange.headers["content-type"] == "application/json"
    assert int(exchange.headers["content-length"]) == len(exchange.body)
    assert exchange.json() == SCHEMA_A
    etag = exchange.headers["etag"]
    assert not etag.startswith("W/")
    assert len(etag) > 2 and etag.startswith('"') and etag.endswith('"')
    assert (await call(middleware, HEALTH)).json()["schema_etag"] == etag


@asgi_test
async def test_if_none_match_gives_304_for_the_current_etag_in_any_form() -> None:
    middleware = wrapped()
    etag = (await call(middleware, SCHEMA)).headers["etag"]
    for value in (etag, f"W/{etag}", f'"other", {etag}', f'W/"other",W/{etag}', "*"):
        exchange = await call(middleware, SCHEMA, etag=value)
        assert exchange.status == 304, value
        assert exchange.body == b"", value
        assert exchange.headers["etag"] == etag, value
    for value in ('"other"', f'W/"other", "{etag}-x"'):
        exchange = await call(middleware, SCHEMA, etag=value)
        assert exchange.status == 200, value
        assert exchange.json() == SCHEMA_A
    assert_refused(await call(middleware, SCHEMA, sign=False, etag=etag), "missing_headers")


@asgi_test
async def test_schema_etag_moves_with_the_schema() -> None:
    schemas = [SCHEMA_A]
    middleware = wrapped(schema_provider=lambda: schemas[-1])
    first = await call(middleware, SCHEMA)
    schemas.append(SCHEMA_B)
    assert await asyncio.wrap_future(middleware.agent.schema_changed())
    second = await call(middleware, SCHEMA)
    assert second.json() == SCHEMA_B
    assert second.headers["etag"] != first.headers["etag"]
    stale = await call(middleware, SCHEMA, etag=first.headers["etag"])
    assert stale.status == 200


# --- methods and bodies -------------------------------------------------------------------


@pytest.mark.parametrize("route", [HEALTH, SCHEMA])
@asgi_test
async def test_head_gets_the_headers_without_a_body(route: str) -> None:
    middleware = wrapped()
    get = await call(middleware, route)
    head = await call(middleware, route, method="HEAD")
    assert head.status == 200
    assert head.body == b""
    assert head.complete
    assert head.headers["content-type"] == "application/json"
    assert head.headers["etag"] == get.headers["etag"]
    # The length the GET body would have.
    assert abs(int(head.headers["content-length"]) - len(get.body)) <= 2


@asgi_test
async def test_head_on_sse_gets_the_headers_and_registers_no_stream() -> None:
    middleware = wrapped(sse_heartbeat_interval=LONG_INTERVAL)
    manager = middleware.agent.sse_manager
    stream = request(middleware, SSE)
    await stream.first_events(1)
    active = manager.current
    assert active is not None

    head = await call(middleware, SSE, method="HEAD")
    assert head.status == 200
    assert head.headers["content-type"].startswith("text/event-stream")
    assert head.body == b""
    assert manager.current is active and active.active

    stream.disconnect()
    await stream.ended()
    head = await call(middleware, SSE, method="HEAD")
    assert head.status == 200
    assert manager.current is None


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
@asgi_test
async def test_other_methods_get_405_with_allow(route: str, method: str) -> None:
    middleware = wrapped()
    exchange = await call(middleware, route, method=method)
    assert exchange.status == 405
    assert exchange.headers["allow"] == "GET, HEAD"
    assert exchange.headers["content-type"] == "application/json"
    assert exchange.json()["error"] == "method_not_allowed"
    assert middleware.agent.sse_manager.current is None


@pytest.mark.parametrize("route", ROUTES)
@asgi_test
async def test_a_declared_body_over_64_kib_is_413(route: str) -> None:
    middleware = wrapped()
    body = b"x" * (MAX_REQUEST_BODY + 1)
    exchange = await call(middleware, route, method="POST", body=body)
    assert exchange.status == 413
    assert exchange.json()["error"] == "payload_too_large"
    assert middleware.agent.sse_manager.current is None


@asgi_test
async def test_a_declared_length_over_64_kib_is_413_before_the_body_is_read() -> None:
    # The client declares a large upload and sends none of it yet (as while it waits for a
    # `100 Continue`): the answer cannot wait for the body.
    middleware = wrapped()
    declared = {"Content-Length": str(10 * 1024 * 1024)}
    exchange = request(middleware, HEALTH, method="POST", headers=declared, chunks=[])
    await exchange.response(timeout=AT_ONCE_S)
    assert exchange.status == 413
    assert exchange.json()["error"] == "payload_too_large"


@asgi_test
async def test_a_streamed_body_growing_over_64_kib_is_413() -> None:
    middleware = wrapped()
    chunk = b"y" * (16 * 1024)
    exchange = await call(middleware, HEALTH, method="POST", chunks=[chunk] * 5)
    assert exchange.status == 413
    assert exchange.json()["error"] == "payload_too_large"


@asgi_test
async def test_a_body_of_exactly_64_kib_is_read() -> None:
    middleware = wrapped()
    body = b"z" * MAX_REQUEST_BODY
    exchange = await call(middleware, HEALTH, body=body)
    assert exchange.status == 200
    chunked = await call(middleware, HEALTH, chunks=[body[:1000], body[1000:]])
    assert chunked.status == 200


# --- paths the agent does not serve -------------------------------------------------------


@asgi_test
async def test_fastapi_routes_are_served_through_the_middleware() -> None:
    middleware = wrapped(fastapi_app())
    products = await call(middleware, "/products", sign=False)
    assert products.status == 200
    assert products.json() == PRODUCTS
    posted = await call(middleware, "/products", method="POST", sign=False, body=b"a new one")
    assert posted.status == 200
    assert posted.json() == {"received": "a new one", "length": 9}
    for path in ("/forest/unknown", "/forest", "/forest/health/", "/forest/healthz"):
        missing = await call(middleware, path, sign=False)
        assert missing.status == 404, path
        assert missing.json() == {"detail": "Not Found"}, path
    # The agent's own routes still answer inside the FastAPI app.
    assert_health(await call(middleware, HEALTH), middleware)


@pytest.mark.parametrize(
    "target",
    [
        "/products?page=2",
        "/forest/unknown",
        "/forest",
        "/forest/",
        "/forest/health/",
        "/FOREST/health",
        "/forest/health/extra",
        "/x/forest/health",
    ],
)
@asgi_test
async def test_other_paths_reach_the_raw_app_untouched(target: str) -> None:
    raw = RawApp()
    middleware = wrapped(raw)
    exchange = await call(middleware, target, sign=False)
    assert raw.scopes == [exchange.scope]
    assert raw.scopes[0] is exchange.scope
    assert exchange.status == 299
    assert exchange.headers["x-wrapped"] == "raw"
    path, _, query = target.partition("?")
    assert exchange.json()["path"] == path
    assert exchange.json()["query"] == query
    assert len(exchange.chunks) == 2  # the app's own chunks, as it sent them


@asgi_test
async def test_a_large_streamed_body_reaches_the_wrapped_app_whole() -> None:
    # The 64 KiB cap is the agent's, for its routes only.
    raw = RawApp()
    middleware = wrapped(raw)
    chunks = [bytes([n]) * (40 * 1024) for n in range(5)]
    exchange = await call(middleware, "/upload", method="POST", sign=False, chunks=chunks)
    assert exchange.status == 299
    echo = exchange.json()
    assert echo["body_length"] == 5 * 40 * 1024
    assert echo["body_sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert echo["method"] == "POST"


@asgi_test
async def test_a_websocket_scope_on_the_prefix_goes_to_the_wrapped_app() -> None:
    raw = RawApp()
    middleware = wrapped(raw)
    scope = {"type": "websocket", "path": SSE, "raw_path": SSE.encode(), "headers": []}

    async def receive() -> Message:
        return {"type": "websocket.disconnect"}

    async def send(message: Message) -> None:
        raise AssertionError(f"nothing to send for this scope: {message}")

    await asyncio.wait_for(middleware(scope, receive, send), DEADLINE_S)
    assert raw.scopes == [scope]


@asgi_test
async def test_a_custom_url_prefix_moves_the_routes() -> None:
    raw = RawApp()
    middleware = wrapped(raw, url_prefix="/agent/v1")
    for route in ("/agent/v1/health", "/agent/v1/rpc-schema"):
        assert (await call(middleware, route)).status == 200, route
    assert_refused(await call(middleware, "/agent/v1/health", sign=False), "missing_headers")
    stream = request(middleware, "/agent/v1/sse")
    assert (await stream.first_events(1)) == [(HEARTBEAT_EVENT, '""')]
    assert raw.scopes == []
    # The default prefix is now the wrapped app's.
    moved = await call(middleware, HEALTH)
    assert moved.status == 299
    assert len(raw.scopes) == 1
    middleware.agent.begin_shutdown()
    await stream.response()


@asgi_test
async def test_a_root_url_prefix_serves_the_routes_at_the_top() -> None:
    raw = RawApp()
    middleware = wrapped(raw, url_prefix="/")
    assert (await call(middleware, "/health")).status == 200
    assert (await call(middleware, "/rpc-schema")).json() == SCHEMA_A
    assert (await call(middleware, HEALTH, sign=False)).status == 299


@pytest.mark.parametrize("with_raw_path", [True, False])
@asgi_test
async def test_under_a_server_root_path_the_agent_still_answers(with_raw_path: bool) -> None:
    raw = RawApp()
    middleware = wrapped(raw)
    # As uvicorn --root-path /api builds it: path and raw_path both start with /api.
    exchange = await call(middleware, HEALTH, root_path="/api", with_raw_path=with_raw_path)
    assert exchange.scope["path"] == "/api/forest/health"
    assert raw.scopes == [], "the agent's route went to the wrapped app"
    assert_health(exchange, middleware)


@asgi_test
async def test_mounted_in_a_starlette_app_the_agent_still_answers() -> None:
    middleware = wrapped(fastapi_app())
    outer = FastAPI()
    outer.mount("/api", middleware)
    exchange = await call(outer, "/api/forest/health")
    assert_health(exchange, middleware)


# --- held watches -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wait", ["abc", "", "-1", "nan", "inf", "1e999", "1_0", "%201", "%D9%A1", "+1"]
)
@asgi_test
async def test_a_malformed_wait_is_a_400_json(wait: str) -> None:
    middleware = wrapped()
    exchange = await call(middleware, watch(wait), etag=await current_etag(middleware))
    assert exchange.status == 400, exchange.body[:300]
    assert exchange.headers["content-type"] == "application/json"
    body = exchange.json()
    assert body["error"] == "bad_request"
    assert isinstance(body["reason"], str) and body["reason"]
    assert middleware.agent.held_requests.held == 0


@asgi_test
async def test_a_held_watch_is_answered_503_at_once_by_a_shutdown_from_another_thread() -> None:
    middleware = wrapped()
    exchange = await held_watch(middleware)
    thread = in_thread(middleware.agent.begin_shutdown)
    await exchange.response(timeout=AT_ONCE_S)
    thread.join(DEADLINE_S)
    assert_health(exchange, middleware, status=503)
    await eventually(lambda: middleware.agent.held_requests.held == 0, "the slot freed")


@asgi_test
async def test_a_watch_after_shutdown_began_is_answered_at_once() -> None:
    middleware = wrapped()
    middleware.agent.begin_shutdown()
    etag = (await call(middleware, HEALTH)).headers["etag"]
    exchange = await call(middleware, watch(LONG_WAIT), etag=etag)
    assert_health(exchange, middleware, status=503)


@asgi_test
async def test_a_held_watch_is_answered_at_once_by_a_schema_change() -> None:
    schemas = [SCHEMA_A]
    middleware = wrapped(schema_provider=lambda: schemas[-1])
    before = await call(middleware, HEALTH)
    exchange = await held_watch(middleware)
    schemas.append(SCHEMA_B)
    middleware.agent.schema_changed()
    await exchange.response(timeout=AT_ONCE_S)
    assert_health(exchange, middleware)
    assert exchange.headers["etag"] != before.headers["etag"]
    assert exchange.json()["schema_etag"] != before.json()["schema_etag"]
    await eventually(lambda: middleware.agent.held_requests.held == 0, "the slot freed")


@asgi_test
async def test_schema_changed_without_a_change_keeps_the_watch_held() -> None:
    middleware = wrapped(health_max_watchers=1)
    exchange = await held_watch(middleware)
    middleware.agent.schema_changed()
    # Another request round trip through the loop: the watch is still held.
    assert (await call(middleware, SCHEMA)).status == 200
    assert exchange.start is None
    assert middleware.agent.held_requests.held == 1
    middleware.agent.begin_shutdown()
    await exchange.response(timeout=AT_ONCE_S)
    assert exchange.status == 503


@asgi_test
async def test_a_held_watch_is_answered_when_its_wait_runs_out() -> None:
    middleware = wrapped()
    etag = await current_etag(middleware)
    started = time.monotonic()
    exchange = request(middleware, watch(0.2), etag=etag)
    await eventually(lambda: middleware.agent.held_requests.held == 1, "the watch held")
    await exchange.response()
    took = time.monotonic() - started
    assert_health(exchange, middleware)
    assert exchange.headers["etag"] == etag
    assert 0.15 <= took < 0.2 + AT_ONCE_S, took
    assert middleware.agent.held_requests.held == 0


@asgi_test
async def test_a_wait_over_health_max_wait_is_capped() -> None:
    middleware = wrapped(health_max_wait=0.2)
    etag = await current_etag(middleware)
    started = time.monotonic()
    exchange = await call(middleware, watch(LONG_WAIT), etag=etag)
    took = time.monotonic() - started
    assert_health(exchange, middleware)
    assert exchange.headers["etag"] == etag
    assert 0.15 <= took < 0.2 + AT_ONCE_S, took


@pytest.mark.parametrize("etag", [None, '"not-the-current-one"', "*"])
@asgi_test
async def test_a_watch_without_the_current_etag_is_answered_at_once(etag: str | None) -> None:
    middleware = wrapped()
    exchange = await call(middleware, watch(LONG_WAIT), etag=etag)
    assert_health(exchange, middleware)
    assert exchange.headers["etag"] != etag
    assert middleware.agent.held_requests.held == 0


@asgi_test
async def test_a_zero_wait_is_answered_at_once() -> None:
    middleware = wrapped()
    etag = await current_etag(middleware)
    exchange = await call(middleware, watch(0), etag=etag)
    assert_health(exchange, middleware)
    assert exchange.headers["etag"] == etag


@asgi_test
async def test_a_watch_over_the_watcher_bound_is_answered_at_once() -> None:
    middleware = wrapped(health_max_watchers=1)
    first = await held_watch(middleware)
    etag = await current_etag(middleware)
    second = await call(middleware, watch(LONG_WAIT), etag=etag)
    assert_health(second, middleware)
    assert second.headers["etag"] == etag
    assert middleware.agent.held_requests.held == 1
    assert first.start is None
    in_thread(middleware.agent.begin_shutdown).join(DEADLINE_S)
    await first.response(timeout=AT_ONCE_S)
    assert first.status == 503


@asgi_test
async def test_with_no_watchers_allowed_every_watch_is_answered_at_once() -> None:
    middleware = wrapped(health_max_watchers=0)
    etag = await current_etag(middleware)
    for _ in range(3):
        exchange = await call(middleware, watch(LONG_WAIT), etag=etag)
        assert_health(exchange, middleware)
        assert exchange.headers["etag"] == etag


@asgi_test
async def test_several_watches_are_held_at_once_and_all_answered() -> None:
    middleware = wrapped(health_max_watchers=3)
    watches = [await held_watch(middleware, count=n) for n in (1, 2, 3)]
    in_thread(middleware.agent.begin_shutdown)
    for exchange in watches:
        await exchange.response(timeout=AT_ONCE_S)
        assert_health(exchange, middleware, status=503)
    await eventually(lambda: middleware.agent.held_requests.held == 0, "the slots freed")


@asgi_test
async def test_a_held_watch_whose_client_goes_away_frees_its_slot_and_sends_nothing() -> None:
    middleware = wrapped(health_max_watchers=1)
    exchange = await held_watch(middleware)
    exchange.disconnect()
    await exchange.ended(timeout=AT_ONCE_S)
    assert exchange.sent == []
    await eventually(lambda: middleware.agent.held_requests.held == 0, "the slot freed")
    # The one slot serves the next watch.
    again = await held_watch(middleware)
    middleware.agent.begin_shutdown()
    await again.response(timeout=AT_ONCE_S)
    assert again.status == 503


@asgi_test
async def test_an_unsigned_watch_is_refused_and_not_held() -> None:
    middleware = wrapped()
    etag = await current_etag(middleware)
    exchange = await call(middleware, watch(LONG_WAIT), sign=False, etag=etag)
    assert_refused(exchange, "missing_headers")
    unbound = await call(middleware, watch(LONG_WAIT), signed_target=HEALTH, etag=etag)
    assert_refused(unbound, "bad_signature")
    assert middleware.agent.held_requests.held == 0


# --- SSE ----------------------------------------------------------------------------------


@asgi_test
async def test_sse_sends_its_headers_and_a_heartbeat_at_once() -> None:
    # With a 30 s interval, only an immediate heartbeat can arrive before the deadline.
    middleware = wrapped(sse_heartbeat_interval=LONG_INTERVAL)
    stream = request(middleware, SSE)
    assert await stream.first_events(1, timeout=AT_ONCE_S) == [(HEARTBEAT_EVENT, '""')]
    assert stream.status == 200
    headers = stream.headers
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert "content-length" not in headers
    assert not stream.complete
    assert middleware.agent.sse_manager.current is not None
    middleware.agent.begin_shutdown()
    await stream.response()


@asgi_test
async def test_sse_heartbeats_are_spaced_by_the_interval() -> None:
    interval = 0.1
    middleware = wrapped(sse_heartbeat_interval=interval)
    stream = request(middleware, SSE)
    stamps: list[float] = []
    for count in range(1, 5):
        await stream.until(lambda n=count: len(stream.chunks) >= n, what=f"heartbeat {count}")
        stamps.append(time.monotonic())
    assert stream.events()[:4] == [(HEARTBEAT_EVENT, '""')] * 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    assert all(0.5 * interval <= gap < AT_ONCE_S for gap in gaps), gaps
    stream.disconnect()
    await stream.ended()


@asgi_test
async def test_sse_shutdown_from_another_thread_sends_stop_then_ends() -> None:
    middleware = wrapped(sse_heartbeat_interval=LONG_INTERVAL)
    stream = request(middleware, SSE)
    await stream.first_events(1)
    thread = in_thread(middleware.agent.begin_shutdown)
    await stream.response(timeout=AT_ONCE_S)
    thread.join(DEADLINE_S)
    events = stream.events()
    assert events[0] == (HEARTBEAT_EVENT, '""')
    assert events[1:] == [(STOP_EVENT, json.dumps({"event": STOP_EVENT}))]
    assert middleware.agent.sse_manager.current is None
    assert_health(await call(middleware, HEALTH), middleware, status=503)


@asgi_test
async def test_sse_opened_after_shutdown_gets_stop_at_once() -> None:
    middleware = wrapped(sse_heartbeat_interval=LONG_INTERVAL)
    middleware.agent.begin_shutdown()
    stream = await call(middleware, SSE)
    assert stream.status == 200
    assert [name for name, _ in stream.events()] == [STOP_EVENT]
    assert middleware.agent.sse_manager.current is None


@asgi_test
async def test_a_second_stream_ends_the_first_with_superseded_not_stop() -> None:
    middleware = wrapped(sse_heartbeat_interval=LONG_INTERVAL)
    manager = middleware.agent.sse_manager
    first = request(middleware, SSE)
    await first.first_events(1)
    first_connection = manager.current
    assert first_connection is not None

    second = request(middleware, SSE)
    await second.first_events(1)
    await first.response(timeout=AT_ONCE_S)
    assert first.events() == [(HEARTBEAT_EVENT, '""'), ("superseded", '{"event": "superseded"}')]
    assert first_connection.end_reason is StreamEnd.SUPERSEDED
    assert not second.complete
    second_connection = manager.current
    assert second_connection is not None and second_connection is not first_connection
    assert second_connection.active

    in_thread(middleware.agent.begin_shutdown).join(DEADLINE_S)
    await second.response(timeout=AT_ONCE_S)
    assert [name for name, _ in second.events()] == [HEARTBEAT_EVENT, STOP_EVENT]
    assert [name for name, _ in first.events()] == [HEARTBEAT_EVENT, "superseded"]
    assert manager.current is None


@asgi_test
async def test_a_refused_stream_does_not_end_the_active_one() -> None:
    middleware = wrapped(sse_heartbeat_interval=LONG_INTERVAL)
    manager = middleware.agent.sse_manager
    stream = request(middleware, SSE)
    await stream.first_events(1)
    active = manager.current
    assert_refused(await call(middleware, SSE, sign=False), "missing_headers")
    assert_refused(await call(middleware, SSE, signed_target=HEALTH), "bad_signature")
    assert manager.current is active and active is not None and active.active
    assert not stream.complete
    stream.disconnect()
    await stream.ended()


@asgi_test
async def test_an_sse_client_that_goes_away_frees_the_slot_promptly() -> None:
    # A 30 s interval: only the disconnect can end the stream within the deadline.
    middleware = wrapped(sse_heartbeat_interval=LONG_INTERVAL)
    manager = middleware.agent.sse_manager
    stream = request(middleware, SSE)
    await stream.first_events(1)
    connection = manager.current
    assert connection is not None
    stream.disconnect()
    await stream.ended(timeout=AT_ONCE_S)
    assert manager.current is None
    assert [name for name, _ in stream.events()] == [HEARTBEAT_EVENT]
    # A new stream is served afterwards.
    again = request(middleware, SSE)
    await again.first_events(1)
    assert manager.current is not None and manager.current is not connection
    middleware.agent.begin_shutdown()
    await again.response()


# --- lifespan -----------------------------------------------------------------------------


class Lifespan:
    """The lifespan protocol run against an app, as a server runs it."""

    def __init__(self, app: ASGIApp) -> None:
        self._incoming: asyncio.Queue[Message] = asyncio.Queue()
        self.sent: list[str] = []
        self._progress = asyncio.Event()
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self.task = asyncio.ensure_future(app(scope, self._incoming.get, self._send))
        self.task.add_done_callback(lambda _: self._progress.set())

    async def _send(self, message: Message) -> None:
        self.sent.append(message["type"])
        self._progress.set()

    async def _step(self, kind: str) -> None:
        self._incoming.put_nowait({"type": f"lifespan.{kind}"})
        wanted = f"lifespan.{kind}.complete"
        async with asyncio.timeout(DEADLINE_S):
            while wanted not in self.sent:
                assert not self.task.done() or self.task.exception() is None, self.task
                assert not self.task.done(), f"the app returned before {wanted}: {self.sent}"
                self._progress.clear()
                await self._progress.wait()

    async def startup(self) -> None:
        await self._step("startup")

    async def shutdown(self) -> None:
        await self._step("shutdown")
        await asyncio.wait_for(self.task, DEADLINE_S)


@pytest.mark.parametrize("kind", ["fastapi", "raw"])
def test_the_lifespan_reaches_the_app_and_its_shutdown_begins_the_agents(kind: str) -> None:
    @asgi_test
    async def scenario() -> None:
        if kind == "fastapi":
            events: list[str] = []
            app: ASGIApp = fastapi_app(events)
        else:
            raw = RawApp()
            app, events = raw, raw.events
        middleware = wrapped(app)
        lifespan = Lifespan(middleware)
        await lifespan.startup()
        assert events == ["startup"]
        assert lifespan.sent == ["lifespan.startup.complete"]
        # On the main thread, the agent put itself in front of the stop signals' handlers.
        for signum in STOP_SIGNALS:
            assert isinstance(signal.getsignal(signum), DrainingStopHandler), signum
        assert_health(await call(middleware, HEALTH), middleware)
        watch_held = await held_watch(middleware)

        await lifespan.shutdown()
        assert events == ["startup", "shutdown"]
        assert lifespan.sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        assert middleware.agent.shutting_down
        await watch_held.response(timeout=AT_ONCE_S)
        assert_health(watch_held, middleware, status=503)
        assert_health(await call(middleware, HEALTH), middleware, status=503)

    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    with stop_handlers_restored():
        scenario()
    assert {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} == before


def test_the_lifespan_off_the_main_thread_installs_no_handler() -> None:
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    failures: list[BaseException] = []

    @asgi_test
    async def scenario() -> None:
        raw = RawApp()
        middleware = wrapped(raw)
        lifespan = Lifespan(middleware)
        await lifespan.startup()
        await lifespan.shutdown()
        assert raw.events == ["startup", "shutdown"]
        assert middleware.agent.shutting_down

    def run() -> None:
        try:
            scenario()
        except BaseException as error:
            failures.append(error)

    with stop_handlers_restored():
        thread = threading.Thread(target=run, name="test-lifespan", daemon=True)
        thread.start()
        thread.join(TEST_DEADLINE_S)
        assert not thread.is_alive()
        if failures:
            raise failures[0]
        after = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        assert after == before
