"""`AgentEndpoint`: one URL convention, the agent's base URI, for every client (pure)."""

from __future__ import annotations

import pytest

from rpc_datasource.transport.endpoint import AgentEndpoint

SECRET = "test-secret-0123456789abcdef0123456789"  # a test value, not a real secret


@pytest.mark.parametrize(
    ("uri", "health_url"),
    [
        ("http://127.0.0.1:5001", "http://127.0.0.1:5001/forest/health"),
        ("http://127.0.0.1:5001/", "http://127.0.0.1:5001/forest/health"),
        ("http://127.0.0.1:5001/forest/health", "http://127.0.0.1:5001/forest/health"),
        ("http://127.0.0.1:5001/api/forest/health", "http://127.0.0.1:5001/api/forest/health"),
        ("https://agent.example/forest/health/", "https://agent.example/forest/health/"),
    ],
)
def test_a_base_uri_or_a_health_url_both_reach_the_health_route(uri: str, health_url: str) -> None:
    endpoint = AgentEndpoint.for_agent(uri, SECRET)
    assert endpoint.health_url == health_url


def test_the_schema_route_sits_beside_the_health_route() -> None:
    given_base = AgentEndpoint.for_agent("http://127.0.0.1:5001", SECRET)
    given_health = AgentEndpoint.for_agent("http://127.0.0.1:5001/forest/health", SECRET)
    assert given_base.schema_url == given_health.schema_url
    assert given_base.schema_url == "http://127.0.0.1:5001/forest/rpc-schema"


@pytest.mark.parametrize(
    ("prefix", "health_url"),
    [
        ("/api/forest", "http://127.0.0.1:5001/api/forest/health"),
        ("/", "http://127.0.0.1:5001/health"),
    ],
)
def test_a_prefix_is_added_to_the_base_uri(prefix: str, health_url: str) -> None:
    endpoint = AgentEndpoint.for_agent("http://127.0.0.1:5001", SECRET, url_prefix=prefix)
    assert endpoint.health_url == health_url


@pytest.mark.parametrize("prefix", ["api/forest/", "/api/forest/", "forest", "/for est", "/a?b"])
def test_a_malformed_prefix_is_refused_naming_the_setting(prefix: str) -> None:
    with pytest.raises(ValueError, match="url_prefix"):
        AgentEndpoint.for_agent("http://127.0.0.1:5001", SECRET, url_prefix=prefix)


def test_a_uri_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        AgentEndpoint.for_agent("127.0.0.1:5001", SECRET)
