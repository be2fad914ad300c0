"""One `instance_id` per server: the id a server's master announces before it forks."""

from __future__ import annotations

import os

import pytest

from rpc_agent import AgentSettings
from rpc_agent.core.agent import AgentCore
from rpc_agent.process import state as server_process
from tests.support import TEST_SECRET, agent_health


@pytest.fixture(autouse=True)
def _announcements_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    """An announcement writes the environment: undo it after each test."""
    monkeypatch.setenv(server_process.INSTANCE_ID_ENV, "")


def new_agent() -> AgentCore:
    return AgentCore(settings=AgentSettings(auth_secret=TEST_SECRET))


def test_without_an_announced_id_each_agent_makes_its_own() -> None:
    assert new_agent().instance_id != new_agent().instance_id


def test_agents_made_after_an_announcement_share_the_servers_id() -> None:
    announced = server_process.announce_instance_id()
    assert os.environ[server_process.INSTANCE_ID_ENV] == announced
    assert {new_agent().instance_id for _ in range(3)} == {announced}


def test_each_announcement_is_a_new_id() -> None:
    assert server_process.announce_instance_id() != server_process.announce_instance_id()


@pytest.mark.parametrize("value", ["", "short", "Z" * 32, "0" * 31, "0" * 33, " " + "0" * 31])
def test_a_malformed_announced_id_is_not_used(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(server_process.INSTANCE_ID_ENV, value)
    instance_id = new_agent().instance_id
    assert instance_id != value
    assert len(instance_id) == 32


def test_live_agents_are_the_ones_still_referenced() -> None:
    kept = new_agent()
    assert kept in server_process.live_agents()


def test_the_worker_heartbeat_is_called_only_once_set() -> None:
    beats: list[int] = []
    server_process.worker_heartbeat()
    server_process.set_worker_heartbeat(lambda: beats.append(1))
    try:
        server_process.worker_heartbeat()
        server_process.worker_heartbeat()
    finally:
        server_process.set_worker_heartbeat(None)
    assert beats == [1, 1]


def test_an_agent_is_replaced_once_the_server_announced_a_newer_id() -> None:
    server_process.announce_instance_id()
    agent = new_agent()
    assert not server_process.replaced_by_a_newer_start(agent)
    server_process.announce_instance_id()
    assert server_process.replaced_by_a_newer_start(agent)
    assert not server_process.replaced_by_a_newer_start(new_agent())


def test_an_agent_made_before_the_announcement_adopts_the_servers_id() -> None:
    agent = new_agent()
    before = agent_health(agent)["instance_id"]
    announced = server_process.announce_instance_id()
    agent.adopt_instance_id(announced)
    assert before != announced
    assert agent_health(agent)["instance_id"] == announced
    assert not server_process.replaced_by_a_newer_start(agent)


def test_stepping_aside_ends_the_stream_without_a_shutdown() -> None:
    agent = new_agent()
    stream = agent.sse_manager.open_stream(heartbeat_interval=30)
    assert "heartbeat" in next(stream)
    generation = agent.held_requests.generation
    agent.step_aside()
    assert list(stream) == []  # ended without RpcServerStop, as a newer stream would
    assert agent.held_requests.generation > generation
    assert not agent.shutting_down
    assert agent_health(agent)["status"] == "ok"


def test_the_watcher_bound_can_only_be_lowered() -> None:
    agent = AgentCore(settings=AgentSettings(auth_secret=TEST_SECRET, health_max_watchers=8))
    agent.held_requests.cap(2)
    assert agent.held_requests.max_watchers == 2
    agent.held_requests.cap(5)
    assert agent.held_requests.max_watchers == 2
