"""A real nginx on 127.0.0.1 in front of the real warehouse (`python -m examples.warehouse`),
configured with the snippets docs/protocol.md documents.

a. `location /forest/ { proxy_pass ...; proxy_http_version 1.1; proxy_set_header Connection "";
   proxy_read_timeout 60s; }` with `proxy_buffering on;`: signed health, a health client, SSE
   heartbeats on time, a held watch. Beside it, the same with nginx's default upstream
   HTTP/1.0, where nginx does hold small chunks: heartbeats still arrive on time because the
   agent sends `X-Accel-Buffering: no`, and are held when nginx is told to ignore that header.
b. A path-rewriting proxy: `FOREST_URL_PREFIX=/api/forest` on both sides and the path passed
   unchanged works; rewriting `/api/` to `/forest/` breaks v2 signatures (the signed target is
   not the one the agent sees) but not the original scheme.
c. The original Ruby client's `X_TIMESTAMP` / `X_SIGNATURE`: dropped by a default nginx,
   passed with `underscores_in_headers on;`.

One nginx (a server block per case, each on its own port) and two warehouses serve the whole
module.
"""

from __future__ import annotations

import http.client
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from pydantic import SecretStr

from rpc_common.signing import SignatureScheme, format_timestamp, sign_original
from rpc_datasource import DatasourceSettings, HealthCheckClient, RpcDatasource
from tests.support import TEST_SECRET, signed, wait_until
from tests.support.nginx_proxy import Nginx, running_nginx
from tests.support.server_processes import HeldWatch, SseEvent, SseStream
from tests.support.warehouse import (
    HEALTH,
    Warehouse,
    collection,
    running_warehouse,
)

pytestmark = pytest.mark.slow

HEARTBEAT_S = 0.5
# Generous on a noisy 2-core machine; a buffering proxy holds these ~26-byte events until a
# buffer fills or the stream ends, far longer (see the control test).
HEARTBEAT_SLACK_S = 0.5
HEARTBEATS = 4
WATCH_WAIT_S = 2.0
DEADLINE_S = 10.0
REQUEST_TIMEOUT_S = 5.0
API_PREFIX = "/api/forest"
SETTINGS = {
    "FOREST_SSE_HEARTBEAT_INTERVAL": str(HEARTBEAT_S),
    # Nothing to drain for: the module's end need not wait the default second per warehouse.
    "FOREST_SHUTDOWN_DRAIN_SECONDS": "0",
}


def documented_location(port: int) -> str:
    """docs/protocol.md's location for the agent behind nginx, verbatim."""
    return (
        f"location /forest/ {{ proxy_pass http://127.0.0.1:{port}; proxy_http_version 1.1; "
        f'proxy_set_header Connection ""; proxy_read_timeout 60s; }}'
    )


def http10_location(port: int) -> str:
    """The same without `proxy_http_version 1.1`: nginx's default HTTP/1.0 to the upstream
    (no chunked encoding), where a buffering nginx does hold small chunks."""
    return f"location /forest/ {{ proxy_pass http://127.0.0.1:{port}; proxy_read_timeout 60s; }}"


def server_blocks(port: int, prefixed_port: int) -> dict[str, str]:
    # Each block listens on its own port, so each is the default server of its port: what
    # `underscores_in_headers` needs (nginx reads it from the port's default server).
    documented = documented_location(port)
    return {
        "documented": f"proxy_buffering on;\n{documented}",
        "underscores": f"proxy_buffering on;\nunderscores_in_headers on;\n{documented}",
        "http10": f"proxy_buffering on;\n{http10_location(port)}",
        "header_ignored": (
            f"proxy_buffering on;\nproxy_ignore_headers X-Accel-Buffering;\n{http10_location(port)}"
        ),
        "rewriting": f"location /api/ {{ proxy_pass http://127.0.0.1:{port}/forest/; }}",
        "prefixed": f"location {API_PREFIX}/ {{ proxy_pass http://127.0.0.1:{prefixed_port}; }}",
    }


@dataclass
class Setup:
    warehouse: Warehouse  # default prefix /forest
    prefixed: Warehouse  # FOREST_URL_PREFIX=/api/forest
    nginx: Nginx


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("nginx")
    with (
        running_warehouse(tmp / "warehouse.db", tmp / "logs", settings=SETTINGS) as warehouse,
        running_warehouse(
            tmp / "prefixed.db",
            tmp / "logs",
            settings={**SETTINGS, "FOREST_URL_PREFIX": API_PREFIX},
        ) as prefixed,
        running_nginx(server_blocks(warehouse.port, prefixed.port)) as nginx,
    ):
        yield Setup(warehouse, prefixed, nginx)


def through(
    setup: Setup, server: str, target: str, *, scheme: SignatureScheme = "v2"
) -> requests.Response:
    """A GET of `target` through one of nginx's servers, signed over `target` (what the
    client sends) with `scheme`."""
    headers = signed(target, scheme=scheme)
    response = requests.get(
        setup.nginx.url(server) + target, headers=headers, timeout=REQUEST_TIMEOUT_S
    )
    assert response.headers.get("Server", "").startswith("nginx"), "not answered through nginx"
    return response


def explain(setup: Setup, response: requests.Response) -> str:
    return (
        f"HTTP {response.status_code} {response.text[:300]!r}\nnginx error log:\n"
        f"{setup.nginx.error_log()[-3000:]}"
    )


def assert_health_body(body: dict[str, Any], warehouse: Warehouse) -> None:
    """The warehouse's own health JSON: ok, and the same instance as asked directly."""
    assert body["status"] == "ok"
    assert body["instance_id"] == warehouse.get(HEALTH).json()["instance_id"]
    assert isinstance(body["schema_etag"], str) and body["schema_etag"]


# --- a. the documented location, with proxy_buffering on ------------------------------------


def test_signed_health_passes_through_a_buffering_nginx(setup: Setup) -> None:
    response = through(setup, "documented", HEALTH)

    assert response.status_code == 200, explain(setup, response)
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    assert_health_body(response.json(), setup.warehouse)


def test_a_health_client_through_nginx_sees_the_agent_up(setup: Setup) -> None:
    client = HealthCheckClient(
        setup.nginx.url("documented") + HEALTH,
        TEST_SECRET,
        polling_interval=0.1,
        failure_threshold=1,
        timeout=REQUEST_TIMEOUT_S,
    )
    try:
        client.start()
        assert wait_until(lambda: client.stats().probes >= 3, DEADLINE_S), client.stats()
        stats = client.stats()
        assert stats.state == "up", stats
        assert stats.failures == 0, stats
    finally:
        client.stop()


def heartbeat_gaps(started: float, events: list[SseEvent]) -> list[float]:
    """Seconds from the request to the first heartbeat, then between heartbeats."""
    times = [started, *(event.at for event in events)]
    return [round(later - earlier, 3) for earlier, later in itertools.pairwise(times)]


@pytest.mark.parametrize("server", ["documented", "http10", "header_ignored"])
def test_sse_heartbeats_arrive_on_time_through_a_buffering_nginx(setup: Setup, server: str) -> None:
    """`http10`: nginx speaks HTTP/1.0 to the agent. `header_ignored`: the same, told to
    ignore `X-Accel-Buffering`. The runner (uvicorn on httptools) frames the stream in chunks
    even for an HTTP/1.0 request, and nginx passes each chunk on: heartbeats arrive on time
    even where the header is ignored (an upstream that delimits the stream by closing it,
    as uvicorn on h11 does, is held there until it ends)."""
    started = time.monotonic()
    stream = SseStream(setup.nginx.port(server)).start()
    try:
        arrived = wait_until(
            lambda: len(stream.recorded()) >= HEARTBEATS or stream.ended.is_set(),
            HEARTBEATS * (HEARTBEAT_S + HEARTBEAT_SLACK_S) + 1.0,
        )
        events = stream.recorded()[:HEARTBEATS]
    finally:
        stream.close()

    assert arrived and len(events) == HEARTBEATS, (
        f"{len(events)} events, error {stream.error!r}; nginx:\n{setup.nginx.error_log()[-3000:]}"
    )
    assert stream.status == 200
    assert stream.content_type.startswith("text/event-stream")
    assert [event.name for event in events] == ["heartbeat"] * HEARTBEATS
    gaps = heartbeat_gaps(started, events)
    assert max(gaps) <= HEARTBEAT_S + HEARTBEAT_SLACK_S, f"gaps {gaps} s"


def test_a_held_watch_passes_through_nginx(setup: Setup) -> None:
    etag = through(setup, "documented", HEALTH).headers["ETag"]
    watch = HeldWatch(setup.nginx.port("documented"), etag, WATCH_WAIT_S).start()
    try:
        assert watch.answered.wait(WATCH_WAIT_S + DEADLINE_S), "the watch was never answered"
    finally:
        watch.close()

    assert watch.error is None, repr(watch.error)
    assert watch.status == 200
    assert watch.body is not None and watch.body["status"] == "ok"
    assert watch.sent_at is not None and watch.answered_at is not None
    held_s = watch.answered_at - watch.sent_at
    assert WATCH_WAIT_S - 0.3 <= held_s <= WATCH_WAIT_S + 2.0, f"held {held_s:.2f} s"


# --- b. a path-rewriting proxy ---------------------------------------------------------------


def test_the_same_prefix_on_both_sides_works_behind_a_path_prefix(setup: Setup) -> None:
    settings = DatasourceSettings(
        rpc_uri=setup.nginx.url("prefixed"),
        auth_secret=SecretStr(TEST_SECRET),
        url_prefix=API_PREFIX,
        health_check_interval=0.1,
        health_check_failure_threshold=1,
    )
    datasource = RpcDatasource.build(settings=settings)
    try:
        assert {"manufacturers", "products"} <= {item["name"] for item in datasource.collections}
        direct = setup.prefixed.get(f"{API_PREFIX}/rpc-schema").json()
        assert collection(datasource.schema, "products") == collection(direct, "products")
        assert wait_until(lambda: datasource.health.stats().probes >= 3, DEADLINE_S)
        stats = datasource.health.stats()
        assert stats.state == "up", stats
        assert stats.failures == 0, stats
    finally:
        datasource.close()


def test_rewriting_the_path_breaks_v2_signatures_but_not_the_original_scheme(
    setup: Setup,
) -> None:
    """`location /api/ { proxy_pass http://.../forest/; }`: the client signs `/api/health`,
    the agent sees `/forest/health`."""
    bound = through(setup, "rewriting", "/api/health")
    original = through(setup, "rewriting", "/api/health", scheme="v1")

    assert bound.status_code == 401, explain(setup, bound)
    assert bound.json() == {"error": "Unauthorized", "reason": "bad_signature"}
    assert original.status_code == 200, explain(setup, original)
    assert_health_body(original.json(), setup.warehouse)


# --- c. the original client's underscored header names ---------------------------------------


# The Ruby client's spelling (docs/protocol.md) and a mixed-case one: names are
# case-insensitive, the underscore is what matters.
UNDERSCORED_NAMES = [("X_TIMESTAMP", "X_SIGNATURE"), ("X_Timestamp", "X_Signature")]


def underscored_get(port: int, names: tuple[str, str]) -> tuple[int, dict[str, Any]]:
    """GET the health route with the underscored `names` (original scheme), as the Ruby
    client sends them; `http.client` keeps the names exactly as written."""
    timestamp = format_timestamp(datetime.now(UTC))
    timestamp_name, signature_name = names
    headers = {timestamp_name: timestamp, signature_name: sign_original(TEST_SECRET, timestamp)}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request("GET", HEALTH, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("names", UNDERSCORED_NAMES, ids=["upper", "mixed"])
def test_a_default_nginx_drops_underscored_headers(setup: Setup, names: tuple[str, str]) -> None:
    direct = underscored_get(setup.warehouse.port, names)
    proxied = underscored_get(setup.nginx.port("documented"), names)
    dashed = through(setup, "documented", HEALTH, scheme="v1")

    assert direct[0] == 200, direct  # the agent itself reads them as the dashed names
    assert proxied == (401, {"error": "Unauthorized", "reason": "missing_headers"})
    assert dashed.status_code == 200, explain(setup, dashed)


@pytest.mark.parametrize("names", UNDERSCORED_NAMES, ids=["upper", "mixed"])
def test_underscores_in_headers_passes_the_original_clients_headers(
    setup: Setup, names: tuple[str, str]
) -> None:
    status, body = underscored_get(setup.nginx.port("underscores"), names)

    assert status == 200, body
    assert_health_body(body, setup.warehouse)
