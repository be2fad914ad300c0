"""The agent embedded in real servers, each a subprocess on 127.0.0.1: gunicorn with the
`rpc_agent.servers.gunicorn` hooks and 2 gthread or 2 sync workers around the Flask warehouse, and
uvicorn around the FastAPI warehouse with the ASGI middleware.

The servers that only answer requests are started once per module (`server`, parametrised
indirectly); the tests that stop a server, or need one set up differently, start their own.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from rpc_datasource import HealthCheckClient, RpcDatasource
from tests.support import TEST_SECRET, signed, wait_until
from tests.support.server_processes import (
    ALL_KINDS,
    GUNICORN_KINDS,
    HEALTH,
    PID_LOGGING_GUNICORN_KINDS,
    SCHEMA,
    SSE,
    UVICORN,
    HeldWatch,
    LoggedRequest,
    RunningServer,
    ServerKind,
    SseStream,
    running_server,
    wait_for_logged,
)

pytestmark = pytest.mark.slow

DEADLINE_S = 10.0
# Servers no test stops on purpose: no drain, so that teardown is quick.
NO_DRAIN = {"FOREST_SHUTDOWN_DRAIN_SECONDS": "0"}
# A drain long enough for a probe sent after the signal to be answered, even on a slow CI.
SIGTERM_DRAIN = {"FOREST_SHUTDOWN_DRAIN_SECONDS": "1.5"}
STOP_EVENT = ("RpcServerStop", '{"event": "RpcServerStop"}')
HEARTBEAT = ("heartbeat", '""')
DURING_STREAM = "probe-during-stream"
# More answers than this without hearing from every gunicorn worker is a failure.
MAX_ANSWERS_FOR_EVERY_WORKER = 400


def kind_id(kind: ServerKind) -> str:
    return kind.name


def on_servers(*kinds: ServerKind) -> pytest.MarkDecorator:
    """Run the test against the module's `server` of each of `kinds`."""
    return pytest.mark.parametrize("server", kinds, ids=kind_id, indirect=True)


def each_kind(*kinds: ServerKind) -> pytest.MarkDecorator:
    """Run the test once for each of `kinds` (it starts its own server)."""
    return pytest.mark.parametrize("kind", kinds, ids=kind_id)


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """One running server of the kind given by the test's parametrisation."""
    kind: ServerKind = request.param
    base = tmp_path_factory.mktemp(kind.name)
    with running_server(kind, base / "warehouse.db", base / "logs", settings=NO_DRAIN) as running:
        yield running


Identity = tuple[str, str]  # a health answer's instance_id and schema_etag


def health_identity(server: RunningServer, user_agent: str) -> Identity:
    """The instance_id and schema_etag of a signed health answer, asked on a new connection."""
    response = server.get(HEALTH, {"User-Agent": user_agent})
    assert response.status_code == 200, response.text
    body = response.json()
    return body["instance_id"], body["schema_etag"]


def answers_from_every_worker(server: RunningServer, count: int) -> tuple[list[Identity], set[str]]:
    """The identities in `count` health answers, and in more (a few at a time, so that a
    busy worker leaves some to the others) until every gunicorn worker has answered some, as
    its access log tells; the identities and the workers that answered."""
    user_agent = f"instance-id-check/{uuid.uuid4().hex}"
    ids = [health_identity(server, user_agent) for _ in range(count)]
    with ThreadPoolExecutor(4, thread_name_prefix="test-health") as pool:
        while True:
            logged = wait_for_logged(server, len(ids), lambda line: line.agent == user_agent)
            workers = {line.pid for line in logged if line.pid}
            if len(workers) >= server.kind.workers or len(ids) >= MAX_ANSWERS_FOR_EVERY_WORKER:
                return ids, workers
            ids += pool.map(lambda _: health_identity(server, user_agent), range(8))


# --- one instance_id per server ------------------------------------------------------------


@on_servers(*PID_LOGGING_GUNICORN_KINDS)
def test_every_worker_answers_the_instance_id_the_master_announced(server: RunningServer) -> None:
    ids, workers = answers_from_every_worker(server, 20)

    assert len(ids) >= 20
    assert len(workers) == server.kind.workers == 2, f"answered by {workers}"
    assert workers <= server.booted_workers()
    assert len(set(ids)) == 1, f"{set(ids)} from {len(workers)} workers"
    (instance_id, schema_etag), *_ = ids
    assert server.announced_instance_ids() == [instance_id], server.log()
    assert schema_etag == server.get(SCHEMA).headers["ETag"]


@each_kind(*PID_LOGGING_GUNICORN_KINDS)
def test_a_restarted_server_answers_a_new_instance_id(kind: ServerKind, tmp_path: Path) -> None:
    db_path, logs = tmp_path / "warehouse.db", tmp_path / "logs"
    with running_server(kind, db_path, logs, settings=NO_DRAIN) as first:
        first_ids, _ = answers_from_every_worker(first, 20)
        assert first.stop() == 0, first.log()
    with running_server(kind, db_path, logs, port=first.port, settings=NO_DRAIN) as second:
        second_ids, _ = answers_from_every_worker(second, 20)
        assert second.stop() == 0, second.log()

    assert len(set(first_ids)) == 1
    assert len(set(second_ids)) == 1
    (first_id, first_schema), (second_id, second_schema) = first_ids[0], second_ids[0]
    assert first_id != second_id
    assert second.announced_instance_ids() == [second_id]
    assert first_schema == second_schema  # the same database: a restart alone


# --- a polling datasource ------------------------------------------------------------------

POLL_INTERVAL_S = 0.2
POLL_FOR_S = 5.0


def by_aiohttp(line: LoggedRequest) -> bool:
    """A request of the datasource (aiohttp's default User-Agent); the tests use others."""
    return "aiohttp" in (line.agent or "")


@on_servers(*PID_LOGGING_GUNICORN_KINDS)
def test_a_polling_datasource_asks_for_the_schema_only_once(server: RunningServer) -> None:
    assert not [line for line in server.access_log() if by_aiohttp(line)], "used before"
    probes_wanted = 1 + round(POLL_FOR_S / POLL_INTERVAL_S)
    downs: list[None] = []
    recoveries: list[None] = []
    changes: list[dict[str, Any]] = []

    with RpcDatasource.build(
        uri=server.url,
        auth_secret=TEST_SECRET,
        health_check_interval=POLL_INTERVAL_S,
        health_check_timeout=2.0,
        on_schema_change=changes.append,
        on_server_down=lambda: downs.append(None),
        on_server_recovered=lambda: recoveries.append(None),
    ) as datasource:
        assert wait_until(
            lambda: datasource.health.stats().probes >= probes_wanted,
            POLL_FOR_S * 3 + DEADLINE_S,
        ), f"only {datasource.health.stats().probes} probes"
        stats = datasource.health.stats()
        reloads = datasource.reloads

    # Every probe counted is in the log before the schema requests are counted.
    wait_for_logged(server, stats.probes, lambda line: line.path == HEALTH and by_aiohttp(line))
    schema_requests = [
        line for line in server.access_log() if line.path == SCHEMA and by_aiohttp(line)
    ]
    assert [(line.method, line.status) for line in schema_requests] == [("GET", 200)]
    assert stats.failures == 0
    assert stats.state == "up"
    assert (downs, recoveries, changes, reloads) == ([], [], [], 0)


# --- the routes ----------------------------------------------------------------------------


@on_servers(*ALL_KINDS)
def test_health_answers_ok_with_its_state_token(server: RunningServer) -> None:
    response = server.get(HEALTH)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) == {"status", "version", "instance_id", "schema_etag", "uptime_s", "checks"}
    assert body["status"] == "ok"
    # The warehouse's readiness check of its database, in every worker.
    assert body["checks"]["database"]["status"] == "ok"
    assert response.headers["ETag"].startswith('"')
    assert server.get(HEALTH).headers["ETag"] == response.headers["ETag"]


@on_servers(*ALL_KINDS)
def test_schema_has_a_strong_etag_and_answers_304_to_it(server: RunningServer) -> None:
    response = server.get(SCHEMA)
    etag = response.headers["ETag"]
    unchanged = server.get(SCHEMA, {"If-None-Match": etag})
    other = server.get(SCHEMA, {"If-None-Match": '"not-the-schema"'})

    assert response.status_code == 200
    assert {"manufacturers", "products"} <= {c["name"] for c in response.json()["collections"]}
    assert not etag.startswith("W/")
    assert etag == server.get(HEALTH).json()["schema_etag"]
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["ETag"] == etag
    assert other.status_code == 200
    assert other.json() == response.json()


@on_servers(*ALL_KINDS)
def test_the_signature_covers_the_raw_path_as_sent(server: RunningServer) -> None:
    raw = "/forest/%68ealth"  # the server decodes it to /forest/health

    signed_as_sent = server.raw_get(raw, signed(raw))
    signed_decoded = server.raw_get(raw, signed(HEALTH))

    assert signed_as_sent.status == 200, signed_as_sent.body
    assert signed_as_sent.json()["status"] == "ok"
    assert signed_decoded.status == 401
    assert signed_decoded.json() == {"error": "Unauthorized", "reason": "bad_signature"}


@on_servers(*ALL_KINDS)
def test_unsigned_agent_requests_get_401_json(server: RunningServer) -> None:
    for target in (HEALTH, SCHEMA, SSE, f"{HEALTH}?wait=5"):
        response = server.get_unsigned(target)

        assert response.status_code == 401, target
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json() == {"error": "Unauthorized", "reason": "missing_headers"}


@on_servers(*ALL_KINDS)
def test_other_paths_reach_the_app(server: RunningServer) -> None:
    response = server.get_unsigned("/products")

    assert response.status_code == 200
    rows = response.json()
    assert rows
    assert {"id", "name", "price_cents"} <= set(rows[0])


@on_servers(UVICORN)
def test_under_uvicorn_the_app_is_fastapi(server: RunningServer) -> None:
    missing = server.get_unsigned("/no-such-path")
    openapi = server.get_unsigned("/openapi.json")

    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not Found"}
    assert openapi.status_code == 200
    assert "/products" in openapi.json()["paths"]
    assert not any(path.startswith("/forest") for path in openapi.json()["paths"])


@on_servers(*ALL_KINDS)
def test_sse_streams_heartbeats(server: RunningServer) -> None:
    stream = SseStream(server.port).start()
    try:
        assert wait_until(lambda: len(stream.recorded()) >= 3 or stream.ended.is_set(), DEADLINE_S)
    finally:
        stream.close()

    assert stream.status == 200
    assert stream.content_type.startswith("text/event-stream")
    events = stream.recorded()
    assert len(events) >= 3, (events, stream.error)
    assert all((event.name, event.data) == HEARTBEAT for event in events)


@on_servers(*ALL_KINDS)
def test_a_watch_with_nothing_changing(server: RunningServer) -> None:
    """Held for its whole wait where a thread or coroutine can hold it; else answered at once."""
    current = server.get(HEALTH)
    wait_s = 0.5 if server.kind.holds_watches else 30.0
    watch = HeldWatch(server.port, current.headers["ETag"], wait_s).start()
    try:
        # Not held: answered long before its wait (a held one would be 200 after it too).
        assert watch.answered.wait(wait_s + DEADLINE_S if server.kind.holds_watches else DEADLINE_S)
    finally:
        watch.close()

    assert watch.error is None, repr(watch.error)
    assert watch.status == 200
    assert watch.body is not None
    assert watch.body["status"] == "ok"
    assert watch.body["instance_id"] == current.json()["instance_id"]
    assert watch.sent_at is not None and watch.answered_at is not None
    if server.kind.holds_watches:
        assert watch.answered_at - watch.sent_at >= wait_s - 0.05, "the watch was not held"


# --- SIGTERM -------------------------------------------------------------------------------


@each_kind(*ALL_KINDS)
def test_sigterm_stops_the_stream_answers_the_watch_and_exits_0(
    kind: ServerKind, tmp_path: Path
) -> None:
    """With an SSE stream open (under sync workers it holds one of the two) and a watch
    (held where the server can hold it): SIGTERM sends `RpcServerStop`, answers the held
    watch 503 `shutting_down`, probes get 503 during the drain, and the server exits 0."""
    probes_after: list[tuple[int, str]] = []
    with running_server(
        kind, tmp_path / "warehouse.db", tmp_path / "logs", settings=SIGTERM_DRAIN
    ) as server:
        current = server.get(HEALTH)
        instance_id = current.json()["instance_id"]
        stream = SseStream(server.port).start()
        watch = HeldWatch(server.port, current.headers["ETag"], wait_s=30.0)
        try:
            assert stream.first_event.wait(DEADLINE_S), "no SSE event"
            assert stream.error is None, repr(stream.error)
            watch.start()
            assert watch.sent.wait(DEADLINE_S)
            # Plain probes sent after the watch are answered meanwhile (under sync workers by
            # the one the stream does not hold).
            for _ in range(3):
                probe = server.get(HEALTH, {"User-Agent": DURING_STREAM})
                assert probe.status_code == 200
            if kind.holds_watches:
                assert not watch.answered.is_set(), "the watch was not held"
            else:
                assert watch.answered.wait(DEADLINE_S), "a sync worker held the watch"
                assert (watch.status, watch.body and watch.body["status"]) == (200, "ok")
            assert not stream.ended.is_set()

            server.send_signal(signal.SIGTERM)

            assert stream.ended.wait(DEADLINE_S), "the SSE stream did not end"
            assert watch.answered.wait(DEADLINE_S), "the watch was not answered"

            def probe_is_503() -> bool:
                response = server.get(HEALTH)
                probes_after.append((response.status_code, response.json()["status"]))
                return response.status_code == 503

            assert wait_until(probe_is_503, DEADLINE_S), probes_after
            code = server.wait_exit()
        finally:
            stream.close()
            watch.close()
        log = server.log()

    assert code == 0, log
    assert "Traceback" not in log
    assert stream.error is None, repr(stream.error)
    events = [(event.name, event.data) for event in stream.recorded()]
    assert events[-1] == STOP_EVENT, events
    assert set(events[:-1]) == {HEARTBEAT}, events
    if kind.holds_watches:
        assert watch.status == 503
        assert watch.body is not None
        assert watch.body["status"] == "shutting_down"
        assert watch.body["instance_id"] == instance_id
    # 200 from a worker that has not yet handled its signal, then 503; never refused.
    assert probes_after[-1] == (503, "shutting_down")
    assert set(probes_after[:-1]) <= {(200, "ok")}
    if kind.workers == 1:
        assert probes_after == [(503, "shutting_down")]  # its shutdown had begun
    if not kind.holds_watches:
        # One sync worker served the stream all along, the other the probes and the watch.
        streamed_by = {line.pid for line in server.access_log() if line.path == SSE}
        probed_by = {line.pid for line in server.access_log() if line.agent == DURING_STREAM}
        assert len(streamed_by) == 1
        assert probed_by
        assert not streamed_by & probed_by, log


# --- held watches and worker threads; reloads --------------------------------------------

ONE_GTHREAD_WORKER_2_THREADS = ServerKind(
    "gunicorn-gthread-1x2", workers=1, holds_watches=True, worker_class="gthread", threads=2
)


def test_held_watches_leave_a_gthread_worker_a_thread_for_plain_requests(tmp_path: Path) -> None:
    kind = ONE_GTHREAD_WORKER_2_THREADS
    wait_s = 2.0
    with running_server(kind, tmp_path / "w.db", tmp_path / "logs", settings=NO_DRAIN) as server:
        etag = server.get(HEALTH).headers["ETag"]
        watches = [HeldWatch(server.port, etag, wait_s).start() for _ in range(kind.threads)]
        try:
            assert all(watch.sent.wait(DEADLINE_S) for watch in watches)
            started = time.monotonic()
            response = server.get_unsigned("/products", timeout=wait_s + DEADLINE_S)
            elapsed = time.monotonic() - started
        finally:
            for watch in watches:
                watch.close()

    assert response.status_code == 200
    assert elapsed < wait_s, f"/products waited {elapsed:.2f} s for a held watch to end"


def answered_instance_id(server: RunningServer) -> str | None:
    """The `instance_id` one request is answered with; None when a worker on its way out
    dropped the request (a single failed probe, which no threshold counts as an outage)."""
    try:
        return str(server.get(HEALTH).json()["instance_id"])
    except requests.RequestException:  # reset, or left unanswered by a worker on its way out
        return None


@each_kind(*GUNICORN_KINDS)
def test_a_reload_replaces_the_workers_without_an_outage(kind: ServerKind, tmp_path: Path) -> None:
    downs: list[float] = []
    with running_server(
        kind, tmp_path / "w.db", tmp_path / "logs", settings=SIGTERM_DRAIN
    ) as server:
        first = server.get(HEALTH).json()["instance_id"]
        client = HealthCheckClient(
            server.url + HEALTH,
            TEST_SECRET,
            polling_interval=0.1,
            failure_threshold=3,
            # The default: while new workers boot (seconds, on a loaded machine) requests wait
            # in the listen queue; a reload is no outage to a master with the usual settings.
            timeout=5.0,
            on_server_down=lambda: downs.append(time.monotonic()),
        )
        client.start()
        try:
            assert wait_until(lambda: client.stats().probes >= 5, DEADLINE_S)
            server.send_signal(signal.SIGHUP)
            assert wait_until(lambda: len(server.announced_instance_ids()) == 2, DEADLINE_S)
            second = server.announced_instance_ids()[-1]
            assert wait_until(lambda: answered_instance_id(server) == second, DEADLINE_S), (
                server.log()
            )
            probes = client.stats().probes
            assert wait_until(lambda: client.stats().probes >= probes + 10, DEADLINE_S)
        finally:
            client.stop()
    assert second != first
    assert downs == [], f"a reload was taken for an outage: {client.stats()}"


def test_with_preload_every_worker_runs_the_readiness_checks(tmp_path: Path) -> None:
    """Checks added in the master (the app loaded before the fork) run in each worker: a
    database gone is reported by every worker, and so is its return."""
    kind = ServerKind(
        "gunicorn-gthread-preload",
        workers=2,
        holds_watches=True,
        worker_class="gthread",
        preload=True,
        factory_options=", db_check_interval=0.1",
    )
    db = tmp_path / "w.db"
    with running_server(kind, db, tmp_path / "logs", settings=NO_DRAIN) as server:

        def every_worker_says(status: str) -> bool:
            answers = [server.get(HEALTH).json() for _ in range(10)]
            return all(answer["status"] == status for answer in answers)

        assert wait_until(lambda: every_worker_says("ok"), DEADLINE_S)
        db.rename(db.with_name("w.db.away"))
        assert wait_until(lambda: every_worker_says("unavailable"), DEADLINE_S)
        db.with_name("w.db.away").rename(db)
        assert wait_until(lambda: every_worker_says("ok"), DEADLINE_S)


def test_with_preload_the_workers_answer_the_announced_id(tmp_path: Path) -> None:
    kind = ServerKind(
        "gunicorn-gthread-preload",
        workers=2,
        holds_watches=True,
        worker_class="gthread",
        preload=True,
    )
    with running_server(kind, tmp_path / "w.db", tmp_path / "logs", settings=NO_DRAIN) as server:
        ids, workers = answers_from_every_worker(server, 10)
        assert len(workers) == 2
        assert {instance_id for instance_id, _ in ids} == set(server.announced_instance_ids())
