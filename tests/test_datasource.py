"""RpcDatasource against a real agent: build, settings, outages, restarts and schema reloads."""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import requests

from rpc_datasource import (
    ConfigurationError,
    DatasourceSettings,
    HealthCheckClient,
    ProbeEvent,
    RpcDatasource,
    SchemaFetchError,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

from tests.support import (
    OTHER_SECRET,
    TEST_SECRET,
    Failure,
    LiveServer,
    agent_app,
    agent_health,
    before_agent,
    free_port,
    library_threads,
    signed,
    start_server,
    wait_until,
)

pytestmark = pytest.mark.slow

DEADLINE = 10.0
FAST_INTERVAL = 0.1
SLOW_INTERVAL = 0.5
TIMEOUT = 2.0  # generous: no test here is about a timeout, and the machine may be loaded
SCHEMA_ROUTE = "/forest/rpc-schema"
SHORT_SECRET = "short-secret-XYZZY-42"


def products_schema(*extra_fields: str) -> dict[str, Any]:
    """A fresh schema dict: one collection with id and name, plus `extra_fields`."""
    fields = [{"field": name, "type": "String"} for name in ("id", "name", *extra_fields)]
    return {"collections": [{"name": "products", "fields": fields}], "charts": []}


def migrated_schema() -> dict[str, Any]:
    """The same schema after a migration added a column."""
    return products_schema("price")


def wait_for_probes(datasource: RpcDatasource, count: int, timeout: float = DEADLINE) -> None:
    """Wait until the datasource's health client has made `count` more probes."""
    start = datasource.health.stats().probes
    assert wait_until(lambda: datasource.health.stats().probes >= start + count, timeout), (
        f"fewer than {count} probes after {start} within {timeout} s"
    )


class Recorder:
    """The datasource's callbacks: each call in order, and an Event per kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[str] = []
        self.schemas: list[dict[str, Any]] = []
        self.down = threading.Event()
        self.recovered = threading.Event()
        self.changed = threading.Event()

    def on_server_down(self) -> None:
        with self._lock:
            self.calls.append("down")
        self.down.set()

    def on_server_recovered(self) -> None:
        with self._lock:
            self.calls.append("recovered")
        self.recovered.set()

    def on_schema_change(self, schema: dict[str, Any]) -> None:
        with self._lock:
            self.calls.append("schema_change")
            self.schemas.append(schema)
        self.changed.set()

    def count(self, name: str) -> int:
        with self._lock:
            return self.calls.count(name)

    def history(self) -> list[str]:
        with self._lock:
            return list(self.calls)


class Agents:
    """One real agent at a time on a fixed port; `restart` replaces it like a redeploy."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.servers: list[LiveServer] = []
        self.port = 0
        self.start(schema)
        self.port = self.servers[-1].port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, schema: dict[str, Any]) -> None:
        """A new app and agent (a new instance_id) serving `schema` on the fixed port."""
        self.holder = {"schema": schema}
        self.schema_requests: list[str | None] = []
        self.fail_schema_requests = False
        holder, schema_requests = self.holder, self.schema_requests
        app, self.agent = agent_app(lambda: holder["schema"], sse_heartbeat_interval=0.1)

        def record_schema_requests(environ: WSGIEnvironment) -> Failure | None:
            if environ.get("PATH_INFO") == SCHEMA_ROUTE:
                schema_requests.append(environ.get("HTTP_IF_NONE_MATCH"))
                if self.fail_schema_requests:
                    return 500, "failing on purpose"
            return None

        before_agent(app, record_schema_requests)

        self.servers.append(start_server(app, self.port))

    def change_schema(self, schema: dict[str, Any]) -> None:
        """The running app's schema changes, and it tells its agent (`schema_changed()`)."""
        self.holder["schema"] = schema
        self.agent.schema_changed().result(timeout=10)

    def stop(self) -> None:
        self.servers[-1].stop()

    def restart(self, schema: dict[str, Any]) -> None:
        self.stop()
        self.start(schema)

    def etag(self) -> str:
        """The ETag the running agent gives its schema, read over HTTP."""
        reply = requests.get(self.url + SCHEMA_ROUTE, headers=signed(SCHEMA_ROUTE), timeout=5)
        assert reply.status_code == 200
        return reply.headers["ETag"]

    def close(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def agents() -> Iterator[Agents]:
    running = Agents(products_schema())
    try:
        yield running
    finally:
        running.close()


OpenDatasource = Callable[..., tuple[RpcDatasource, Recorder]]


@pytest.fixture
def open_datasource(agents: Agents) -> Iterator[OpenDatasource]:
    """Build datasources on the agent with recorded callbacks; all are closed at teardown."""
    opened: list[RpcDatasource] = []

    def build(**options: Any) -> tuple[RpcDatasource, Recorder]:
        recorder = Recorder()
        arguments: dict[str, Any] = {
            "uri": agents.url,
            "auth_secret": TEST_SECRET,
            "health_check_interval": FAST_INTERVAL,
            "health_check_failure_threshold": 2,
            "health_check_timeout": TIMEOUT,
            "on_schema_change": recorder.on_schema_change,
            "on_server_down": recorder.on_server_down,
            "on_server_recovered": recorder.on_server_recovered,
        }
        arguments.update(options)
        datasource = RpcDatasource.build(**arguments)
        opened.append(datasource)
        return datasource, recorder

    try:
        yield build
    finally:
        for datasource in opened:
            datasource.close()


# --- build ---------------------------------------------------------------------------------------


def test_build_reads_the_agents_schema_and_etag(
    agents: Agents, open_datasource: OpenDatasource
) -> None:
    datasource, _ = open_datasource()

    assert datasource.schema == products_schema()
    assert datasource.collections == products_schema()["collections"]
    assert isinstance(datasource.collections[0], dict)
    assert datasource.schema_etag == agents.etag()
    assert datasource.schema_etag == agent_health(agents.agent)["schema_etag"]
    assert not datasource.closed


def test_build_reaches_an_agent_under_another_prefix() -> None:
    schema = products_schema()
    server = start_server(agent_app(lambda: schema, url_prefix="/api/forest")[0])
    try:
        with RpcDatasource.build(
            uri=server.url,
            auth_secret=TEST_SECRET,
            health_check_interval=FAST_INTERVAL,
            url_prefix="/api/forest",
        ) as datasource:
            assert datasource.schema == schema
            assert datasource.health.url == f"{server.url}/api/forest/health"
            assert wait_until(lambda: datasource.health.stats().state == "up")
    finally:
        server.stop()


def test_a_bare_client_reaches_an_agent_under_another_prefix() -> None:
    server = start_server(agent_app(products_schema, url_prefix="/api/forest")[0])
    try:
        client = HealthCheckClient(server.url, TEST_SECRET, url_prefix="/api/forest")
        assert client.probe_now().succeeded
        unprefixed = HealthCheckClient(server.url, TEST_SECRET).probe_now()
        assert unprefixed.reason == "http_status"
        assert "no agent route at /forest/health" in (unprefixed.cause or "")
    finally:
        server.stop()


def test_build_against_a_closed_port_names_the_url_and_cause() -> None:
    port = free_port()

    with pytest.raises(SchemaFetchError) as caught:
        RpcDatasource.build(
            uri=f"http://127.0.0.1:{port}",
            auth_secret=TEST_SECRET,
            health_check_interval=FAST_INTERVAL,
            health_check_timeout=TIMEOUT,
        )

    message = str(caught.value)
    assert f"http://127.0.0.1:{port}{SCHEMA_ROUTE}" in message
    assert "refused" in message.lower()


def test_build_with_a_wrong_secret_names_the_refusal(agents: Agents) -> None:
    with pytest.raises(SchemaFetchError) as caught:
        RpcDatasource.build(
            uri=agents.url,
            auth_secret=OTHER_SECRET,
            health_check_interval=FAST_INTERVAL,
            health_check_timeout=TIMEOUT,
        )

    message = str(caught.value)
    assert agents.url + SCHEMA_ROUTE in message
    assert "401" in message
    assert "bad_signature" in message
    assert OTHER_SECRET not in message


# --- settings ------------------------------------------------------------------------------------


def test_build_reads_left_out_arguments_from_the_environment(
    agents: Agents, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOREST_RPC_URI", agents.url)
    monkeypatch.setenv("FOREST_AUTH_SECRET", TEST_SECRET)
    monkeypatch.setenv("FOREST_HEALTH_CHECK_INTERVAL", "0.15")
    monkeypatch.setenv("FOREST_HEALTH_CHECK_FAILURE_THRESHOLD", "4")
    monkeypatch.setenv("FOREST_HEALTH_CHECK_TIMEOUT", "0.75")

    with RpcDatasource.build() as datasource:
        assert datasource.settings.rpc_uri == agents.url
        assert datasource.settings.auth_secret.get_secret_value() == TEST_SECRET
        assert datasource.health.url == agents.url + "/forest/health"
        assert datasource.health.polling_interval == 0.15
        assert datasource.health.failure_threshold == 4
        assert datasource.health.timeout == 0.75
        assert datasource.schema == products_schema()
        wait_for_probes(datasource, 2)
        assert datasource.health.stats().failures == 0


def test_given_arguments_win_over_the_environment(
    agents: Agents, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOREST_RPC_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("FOREST_AUTH_SECRET", TEST_SECRET)
    monkeypatch.setenv("FOREST_HEALTH_CHECK_INTERVAL", "0.15")

    with RpcDatasource.build(uri=agents.url, health_check_interval=0.2) as datasource:
        assert datasource.settings.rpc_uri == agents.url
        assert datasource.health.polling_interval == 0.2
        assert datasource.schema == products_schema()


def test_missing_auth_secret_is_a_configuration_error(
    agents: Agents, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOREST_RPC_URI", agents.url)

    with pytest.raises(ConfigurationError) as caught:
        RpcDatasource.build()

    assert isinstance(caught.value, ValueError)
    assert "FOREST_AUTH_SECRET" in str(caught.value)


def test_missing_rpc_uri_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOREST_AUTH_SECRET", TEST_SECRET)

    with pytest.raises(ConfigurationError) as caught:
        RpcDatasource.build()

    assert isinstance(caught.value, ValueError)
    assert "FOREST_RPC_URI" in str(caught.value)
    assert TEST_SECRET not in str(caught.value)


@pytest.mark.parametrize("from_environment", [True, False], ids=["environment", "argument"])
def test_short_secret_is_refused_without_showing_it(
    agents: Agents, monkeypatch: pytest.MonkeyPatch, from_environment: bool
) -> None:
    monkeypatch.setenv("FOREST_RPC_URI", agents.url)
    if from_environment:
        monkeypatch.setenv("FOREST_AUTH_SECRET", SHORT_SECRET)

    with pytest.raises(ConfigurationError) as caught:
        if from_environment:
            RpcDatasource.build()
        else:
            RpcDatasource.build(auth_secret=SHORT_SECRET)

    message = str(caught.value)
    named = "FOREST_AUTH_SECRET (auth_secret)" if from_environment else "auth_secret (as given)"
    assert f"configuration error: {named} is too short" in message
    assert SHORT_SECRET not in message
    assert SHORT_SECRET not in "".join(traceback.format_exception(caught.value))


def test_out_of_range_interval_names_the_argument(agents: Agents) -> None:
    with pytest.raises(ValueError, match="health_check_interval"):
        RpcDatasource.build(uri=agents.url, auth_secret=TEST_SECRET, health_check_interval=0)


# --- outages and restarts ------------------------------------------------------------------------


def test_outage_then_recovery_with_a_migrated_schema_reloads_once(
    agents: Agents, open_datasource: OpenDatasource
) -> None:
    datasource, recorder = open_datasource()
    wait_for_probes(datasource, 1)

    agents.stop()
    assert recorder.down.wait(DEADLINE)
    wait_for_probes(datasource, 3)
    assert recorder.history() == ["down"]

    agents.start(migrated_schema())
    assert recorder.recovered.wait(DEADLINE)
    assert recorder.changed.wait(DEADLINE)
    wait_for_probes(datasource, 5)

    assert recorder.history() == ["down", "recovered", "schema_change"]
    assert recorder.schemas == [migrated_schema()]
    assert recorder.schemas[0] is datasource.schema
    assert datasource.collections == migrated_schema()["collections"]
    assert datasource.schema_etag == agents.etag()
    assert datasource.reloads == 1


def test_outage_then_recovery_without_a_change_does_not_reload(
    agents: Agents, open_datasource: OpenDatasource
) -> None:
    datasource, recorder = open_datasource()
    etag = datasource.schema_etag
    wait_for_probes(datasource, 1)

    agents.stop()
    assert recorder.down.wait(DEADLINE)
    agents.start(products_schema())
    assert recorder.recovered.wait(DEADLINE)
    wait_for_probes(datasource, 5)

    assert recorder.history() == ["down", "recovered"]
    assert datasource.reloads == 0
    assert datasource.schema == products_schema()
    assert datasource.schema_etag == etag
    # The recovery did check the schema, conditionally on the ETag it held.
    assert agents.schema_requests == [etag]


def test_restart_between_two_probes_with_a_changed_schema_reloads_once(
    agents: Agents, open_datasource: OpenDatasource
) -> None:
    datasource, recorder = open_datasource(
        health_check_interval=SLOW_INTERVAL, health_check_failure_threshold=3
    )
    wait_for_probes(datasource, 1)

    agents.restart(migrated_schema())
    assert recorder.changed.wait(DEADLINE)
    wait_for_probes(datasource, 4)

    # No outage was declared: the schema check came from the new instance_id / schema_etag.
    assert recorder.history() == ["schema_change"]
    assert recorder.schemas == [migrated_schema()]
    assert recorder.schemas[0] is datasource.schema
    assert datasource.reloads == 1


def test_restart_between_two_probes_without_a_change_costs_no_schema_request(
    agents: Agents, open_datasource: OpenDatasource, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rpc_datasource")
    datasource, recorder = open_datasource(
        health_check_interval=SLOW_INTERVAL, health_check_failure_threshold=3
    )
    wait_for_probes(datasource, 1)

    agents.restart(products_schema())
    # The new instance_id is noticed and logged once; its schema_etag is the loaded one, so
    # no schema request is needed (the contract).
    assert wait_until(lambda: "restarted" in caplog.text)
    wait_for_probes(datasource, 3)

    restarts = [r for r in caplog.records if "restarted" in r.getMessage()]
    assert len(restarts) == 1
    assert recorder.history() == []
    assert agents.schema_requests == []
    assert datasource.reloads == 0
    assert datasource.schema == products_schema()


def test_schema_change_on_a_running_agent_reloads_once(
    agents: Agents, open_datasource: OpenDatasource
) -> None:
    datasource, recorder = open_datasource()
    old_etag = datasource.schema_etag
    wait_for_probes(datasource, 1)

    agents.change_schema(migrated_schema())
    assert recorder.changed.wait(DEADLINE)
    wait_for_probes(datasource, 5)

    assert recorder.history() == ["schema_change"]
    assert recorder.schemas == [migrated_schema()]
    assert recorder.schemas[0] is datasource.schema
    assert datasource.reloads == 1
    assert datasource.schema_etag == agents.etag()
    assert datasource.schema_etag != old_etag


def test_one_reload_for_a_change_announced_by_several_signals(
    agents: Agents, open_datasource: OpenDatasource
) -> None:
    datasource, recorder = open_datasource()
    wait_for_probes(datasource, 1)

    # The running agent's schema_etag announces the migration first...
    agents.change_schema(migrated_schema())
    assert recorder.changed.wait(DEADLINE)
    # ...then an outage and a restart (recovery and a new instance_id) announce it again.
    agents.stop()
    assert recorder.down.wait(DEADLINE)
    agents.start(migrated_schema())
    assert recorder.recovered.wait(DEADLINE)
    assert wait_until(lambda: len(agents.schema_requests) >= 1)
    wait_for_probes(datasource, 5)

    assert recorder.count("schema_change") == 1
    assert recorder.history() == ["schema_change", "down", "recovered"]
    assert datasource.reloads == 1
    assert datasource.schema == migrated_schema()


def test_restart_with_a_changed_schema_and_new_etag_reloads_once(
    agents: Agents, open_datasource: OpenDatasource
) -> None:
    datasource, recorder = open_datasource()
    wait_for_probes(datasource, 1)

    # The outage, the new instance_id and the new schema_etag all arrive with one probe.
    agents.stop()
    assert recorder.down.wait(DEADLINE)
    agents.start(migrated_schema())
    assert recorder.changed.wait(DEADLINE)
    wait_for_probes(datasource, 5)

    assert recorder.count("schema_change") == 1
    assert datasource.reloads == 1


def test_raising_schema_callback_is_logged_and_polling_goes_on(
    agents: Agents, open_datasource: OpenDatasource, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[dict[str, Any]] = []
    called = threading.Event()

    def explode(schema: dict[str, Any]) -> None:
        calls.append(schema)
        called.set()
        raise RuntimeError("callback failure for the test")

    datasource, _ = open_datasource(on_schema_change=explode)
    wait_for_probes(datasource, 1)

    with caplog.at_level(logging.ERROR):
        agents.change_schema(migrated_schema())
        assert called.wait(DEADLINE)
        wait_for_probes(datasource, 3)

    assert datasource.schema == migrated_schema()
    assert datasource.reloads == 1
    raised = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    assert raised, "the callback's exception was not logged"
    assert "on_schema_change" in raised[0].getMessage()

    # Polling went on: the next change is still noticed and announced.
    called.clear()
    agents.change_schema(products_schema("price", "stock"))
    assert called.wait(DEADLINE)
    assert calls == [migrated_schema(), products_schema("price", "stock")]
    assert datasource.reloads == 2


# --- schema size and failing schema requests ----------------------------------------------------


def large_schema(tables: int, columns: int) -> dict[str, Any]:
    """A schema the size of a big warehouse: `tables` collections of `columns` fields."""
    fields = [{"field": f"column_{index:02d}", "type": "String"} for index in range(columns)]
    return {
        "collections": [
            {"name": f"table_{index:03d}", "fields": fields} for index in range(tables)
        ],
        "charts": [],
    }


def test_a_schema_of_a_1_4_mb_warehouse_is_read_with_the_default_cap(
    agents: Agents, open_datasource: OpenDatasource
) -> None:
    agents.change_schema(large_schema(700, 26))
    datasource, _ = open_datasource()
    assert len(datasource.collections) == 700
    assert datasource.schema == agents.holder["schema"]


def test_a_schema_over_its_cap_is_one_error_naming_the_cap_and_the_setting(
    agents: Agents,
) -> None:
    agents.change_schema(large_schema(20, 26))
    settings = DatasourceSettings(
        rpc_uri=agents.url, auth_secret=TEST_SECRET, schema_max_bytes=4096
    )
    with pytest.raises(SchemaFetchError) as raised:
        RpcDatasource.build(settings=settings)
    message = str(raised.value)
    assert "4096" in message
    assert "FOREST_SCHEMA_MAX_BYTES" in message
    assert agents.url in message
    assert wait_until(lambda: not library_threads(), 5.0), library_threads()


def test_a_failing_schema_request_is_one_warning_not_a_traceback_per_probe(
    agents: Agents, open_datasource: OpenDatasource, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rpc_datasource")
    datasource, recorder = open_datasource()
    wait_for_probes(datasource, 1)

    agents.fail_schema_requests = True
    agents.change_schema(migrated_schema())  # a new schema_etag: a fetch is due
    assert wait_until(lambda: len(agents.schema_requests) >= 4)
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "schema" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert "HTTP 500" in warnings[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info]
    assert recorder.history() == []

    agents.fail_schema_requests = False  # asked again at the next success, and applied
    assert recorder.changed.wait(DEADLINE)
    assert datasource.schema == migrated_schema()
    assert recorder.count("schema_change") == 1


# --- closing -------------------------------------------------------------------------------------


def test_close_is_idempotent_and_stops_the_poller(open_datasource: OpenDatasource) -> None:
    datasource, _ = open_datasource()
    wait_for_probes(datasource, 1)
    assert library_threads()

    datasource.close()
    datasource.close()

    assert datasource.closed
    assert datasource.health.closed
    assert wait_until(lambda: not library_threads(), 5.0), library_threads()


def test_context_manager_closes(agents: Agents) -> None:
    with RpcDatasource.build(
        uri=agents.url,
        auth_secret=TEST_SECRET,
        health_check_interval=FAST_INTERVAL,
        health_check_timeout=TIMEOUT,
    ) as datasource:
        assert not datasource.closed
        wait_for_probes(datasource, 1)

    assert datasource.closed
    assert datasource.health.closed
    assert wait_until(lambda: not library_threads(), 5.0), library_threads()


def test_build_takes_every_setting_as_an_argument(agents: Agents) -> None:
    seen: list[ProbeEvent] = []
    datasource = RpcDatasource.build(
        uri=agents.url + "/forest/health",  # a URI ending in the health route works too
        auth_secret=TEST_SECRET,
        health_check_interval=0.2,
        health_check_failure_threshold=4,
        timeout=1.5,
        recovery_threshold=2,
        mode="watch",
        watch_wait=3.0,
        signature_scheme="v1",
        url_prefix="/forest",
        schema_max_bytes=4096,
        hooks=[seen.append],
        name="warehouse",
    )
    try:
        policy = datasource.health.policy
        assert (policy.polling_interval, policy.failure_threshold) == (0.2, 4)
        assert (policy.timeout, policy.recovery_threshold) == (1.5, 2)
        assert (policy.mode, policy.watch_wait) == ("watch", 3.0)
        assert datasource.endpoint.scheme == "v1"
        assert datasource.endpoint.schema_max_bytes == 4096
        assert datasource.collections == products_schema()["collections"]
        assert wait_until(lambda: bool(seen), 10.0)
        assert seen[0].client == "warehouse"
    finally:
        datasource.close()
