"""One constructor for both clients: the agent and the probe settings as objects
(`endpoint=`, `policy=`) or as the contract's loose arguments, normalised once; and
`RpcDatasource` hands its own endpoint and policy to its client, with no I/O when made."""

from __future__ import annotations

import threading

import pytest

from rpc_datasource import (
    AgentEndpoint,
    DatasourceSettings,
    HealthCheckClient,
    ProbePolicy,
    RpcDatasource,
)
from rpc_datasource.aio import AsyncHealthCheckClient
from rpc_datasource.schema.fetch import FetchedSchema
from tests.support import TEST_SECRET

BASE = "http://127.0.0.1:9"
CLIENTS = [HealthCheckClient, AsyncHealthCheckClient]


@pytest.mark.parametrize("client_class", CLIENTS)
def test_objects_given_are_the_objects_used(client_class: type[HealthCheckClient]) -> None:
    endpoint = AgentEndpoint.for_agent(BASE, TEST_SECRET, timeout=2.0)
    policy = ProbePolicy(polling_interval=7.0, failure_threshold=4, timeout=2.0)
    client = client_class(endpoint=endpoint, policy=policy)
    assert client.endpoint is endpoint
    assert client.policy is policy
    assert client.url == endpoint.health_url == f"{BASE}/forest/health"


@pytest.mark.parametrize("client_class", CLIENTS)
def test_loose_arguments_make_the_same_objects(client_class: type[HealthCheckClient]) -> None:
    client = client_class(
        BASE, TEST_SECRET, polling_interval=7.0, failure_threshold=4, timeout=2.0, jitter=0.0
    )
    assert client.policy == ProbePolicy(
        polling_interval=7.0, failure_threshold=4, timeout=2.0, jitter=0.0
    )
    assert client.endpoint == AgentEndpoint.for_agent(BASE, TEST_SECRET, timeout=2.0)


@pytest.mark.parametrize("client_class", CLIENTS)
@pytest.mark.parametrize(
    ("prefix", "health_url"),
    [("/api/forest", f"{BASE}/api/forest/health"), ("/", f"{BASE}/health")],
)
def test_a_url_prefix_argument_places_the_routes(
    client_class: type[HealthCheckClient], prefix: str, health_url: str
) -> None:
    client = client_class(BASE, TEST_SECRET, url_prefix=prefix)
    assert client.endpoint == AgentEndpoint.for_agent(BASE, TEST_SECRET, url_prefix=prefix)
    assert client.endpoint.health_url == health_url


@pytest.mark.parametrize("client_class", CLIENTS)
@pytest.mark.parametrize("prefix", ["api/forest/", "/api/forest/"])
def test_a_malformed_url_prefix_argument_is_refused_naming_it(
    client_class: type[HealthCheckClient], prefix: str
) -> None:
    with pytest.raises(ValueError, match="url_prefix must start with '/'"):
        client_class(BASE, TEST_SECRET, url_prefix=prefix)


@pytest.mark.parametrize("client_class", CLIENTS)
def test_an_endpoint_alone_gives_its_timeout_to_the_policy(
    client_class: type[HealthCheckClient],
) -> None:
    endpoint = AgentEndpoint.for_agent(BASE, TEST_SECRET, timeout=1.5)
    client = client_class(endpoint=endpoint, polling_interval=3.0)
    assert client.policy == ProbePolicy(polling_interval=3.0, timeout=1.5)


@pytest.mark.parametrize("client_class", CLIENTS)
def test_a_policy_alone_gives_its_timeout_to_the_endpoint(
    client_class: type[HealthCheckClient],
) -> None:
    client = client_class(BASE, TEST_SECRET, policy=ProbePolicy(timeout=0.75))
    assert client.endpoint.timeout == 0.75


@pytest.mark.parametrize("client_class", CLIENTS)
@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"policy": ProbePolicy(), "polling_interval": 5.0}, "polling_interval"),
        ({"policy": ProbePolicy(), "mode": "watch"}, "mode"),
        ({"endpoint": AgentEndpoint.for_agent(BASE, TEST_SECRET), "url": BASE}, "url"),
        (
            {"endpoint": AgentEndpoint.for_agent(BASE, TEST_SECRET), "signature_scheme": "v1"},
            "signature_scheme",
        ),
        (
            {"endpoint": AgentEndpoint.for_agent(BASE, TEST_SECRET), "url_prefix": "/api"},
            "url_prefix",
        ),
        ({}, "url and auth_secret"),
    ],
)
def test_an_object_and_its_loose_arguments_together_are_refused_by_name(
    client_class: type[HealthCheckClient], options: dict[str, object], named: str
) -> None:
    with pytest.raises(TypeError, match=named):
        client_class(**options)  # type: ignore[arg-type]


def test_two_timeouts_that_disagree_are_refused() -> None:
    endpoint = AgentEndpoint.for_agent(BASE, TEST_SECRET, timeout=5.0)
    with pytest.raises(ValueError, match="timeout must be one value"):
        HealthCheckClient(endpoint=endpoint, policy=ProbePolicy(timeout=2.0))


def test_the_datasource_hands_its_endpoint_and_policy_to_its_client_and_does_no_io() -> None:
    settings = DatasourceSettings(
        rpc_uri=BASE,
        auth_secret=TEST_SECRET,
        health_check_interval=4.0,
        health_check_timeout=1.0,
        health_check_mode="watch",
    )
    threads_before = set(threading.enumerate())
    datasource = RpcDatasource(settings, FetchedSchema({"collections": []}, '"e1"'))
    try:
        assert datasource.health.endpoint is datasource.endpoint
        assert datasource.endpoint == settings.endpoint()
        assert datasource.health.policy == settings.policy()
        assert datasource.health.policy.mode == "watch"
        assert datasource.schema_etag == '"e1"'
        assert datasource.health.stats().probes == 0
        assert set(threading.enumerate()) - threads_before == set()
    finally:
        datasource.close()
    assert datasource.closed
