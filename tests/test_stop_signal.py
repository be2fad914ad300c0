"""The stop-signal handler that begins the agents' shutdown before the server's handler,
driven by real signals sent to this process (SIGUSR1/SIGUSR2, so pytest is not disturbed)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from rpc_agent import AgentSettings
from rpc_agent.core.agent import AgentCore
from rpc_agent.process import stop_signal
from tests.support import TEST_SECRET, wait_until

DEADLINE_S = 5.0


class Server:
    """Stands for the server's own signal handler: records each call."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.called = threading.Event()

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        self.calls.append(signum)
        self.called.set()


class Shutdown:
    """A `begin` that records when it ran and asks for `drain` seconds."""

    def __init__(self, drain: float) -> None:
        self.drain = drain
        self.begun = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> float:
        self.begun.set()
        self.release.wait(DEADLINE_S)
        return self.drain


@pytest.fixture
def server() -> Iterator[Server]:
    original = signal.getsignal(signal.SIGUSR1)
    server = Server()
    signal.signal(signal.SIGUSR1, server.handle)
    try:
        yield server
    finally:
        signal.signal(signal.SIGUSR1, original)


def test_the_first_signal_begins_the_shutdown_and_reaches_the_server_after_it(
    server: Server,
) -> None:
    shutdown = Shutdown(drain=0.05)
    assert stop_signal.install((signal.SIGUSR1,), shutdown)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert shutdown.begun.wait(DEADLINE_S)
    assert not server.called.is_set(), "the server stopped before the agent's shutdown ran"
    shutdown.release.set()
    assert server.called.wait(DEADLINE_S)
    assert server.calls == [signal.SIGUSR1]


def test_a_second_signal_during_the_drain_goes_to_the_server_at_once(server: Server) -> None:
    shutdown = Shutdown(drain=0.2)
    assert stop_signal.install((signal.SIGUSR1,), shutdown)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert shutdown.begun.wait(DEADLINE_S)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert server.called.wait(DEADLINE_S)
    assert server.calls == [signal.SIGUSR1]
    # The drain's own signal still reaches the server: wait for it, so that it can't come
    # after the fixture has put the default handler (which ends the process) back.
    shutdown.release.set()
    assert wait_until(lambda: len(server.calls) == 2, DEADLINE_S)


def test_a_default_action_is_put_back_and_taken() -> None:
    original = signal.getsignal(signal.SIGUSR2)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        shutdown = Shutdown(drain=0.0)
        shutdown.release.set()
        assert stop_signal.install((signal.SIGUSR2,), shutdown)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert shutdown.begun.wait(DEADLINE_S)
        # The drain thread re-sends the signal; the handler then puts SIG_IGN back.
        assert wait_until(lambda: signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN, DEADLINE_S)
    finally:
        signal.signal(signal.SIGUSR2, original)


def test_off_the_main_thread_nothing_is_installed() -> None:
    results: list[bool] = []
    before = signal.getsignal(signal.SIGUSR1)
    thread = threading.Thread(target=lambda: results.append(stop_signal.install((signal.SIGUSR1,))))
    thread.start()
    thread.join()
    assert results == [False]
    assert signal.getsignal(signal.SIGUSR1) is before


def test_shutdown_of_one_agent_begins_it_and_gives_its_drain() -> None:
    agent = AgentCore(settings=AgentSettings(auth_secret=TEST_SECRET, shutdown_drain_seconds=2.5))
    assert stop_signal.shutdown_of(agent)() == 2.5
    assert agent.shutting_down


def test_begin_all_shutdowns_stops_every_live_agent_and_gives_the_longest_drain() -> None:
    agents = [
        AgentCore(settings=AgentSettings(auth_secret=TEST_SECRET, shutdown_drain_seconds=drain))
        for drain in (0.5, 1.5)
    ]
    assert stop_signal.begin_all_shutdowns() >= 1.5
    assert all(agent.shutting_down for agent in agents)
