"""`rpc_common.hooks.Hooks`: the one hooks mechanism of both packages and their metrics."""

from __future__ import annotations

import logging
import threading

import pytest

from rpc_common.hooks import Hooks


def make_hooks() -> Hooks[str]:
    return Hooks("test", "delayed the test")


def test_local_hooks_run_first_then_the_registered_ones_in_order() -> None:
    hooks = make_hooks()
    seen: list[str] = []
    hooks.register(lambda event: seen.append(f"first {event}"))
    hooks.register(lambda event: seen.append(f"second {event}"))
    hooks.deliver("e", "agent", [lambda event: seen.append(f"local {event}")])
    assert seen == ["local e", "first e", "second e"]


def test_remove_and_replace() -> None:
    hooks = make_hooks()
    seen: list[str] = []
    kept, dropped = seen.append, lambda event: seen.append("dropped")
    hooks.register(kept)
    hooks.register(dropped)
    hooks.remove(dropped)
    hooks.remove(dropped)  # a second time: nothing to do
    hooks.deliver("e", "agent")
    assert seen == ["e"]
    hooks.replace([])
    hooks.deliver("f", "agent")
    assert seen == ["e"]
    assert hooks.registered == ()


@pytest.mark.parametrize("error", [RuntimeError("boom"), SystemExit(3), KeyboardInterrupt()])
def test_a_hook_that_raises_anything_is_logged_and_the_others_still_run(
    error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    hooks = make_hooks()
    seen: list[str] = []

    def raising(event: str) -> None:
        raise error

    hooks.register(raising)
    hooks.register(seen.append)
    with caplog.at_level(logging.ERROR, logger="rpc_common.hooks"):
        hooks.deliver("e", "agent-1")
    assert seen == ["e"]
    [record] = caplog.records
    assert "test hook" in record.getMessage()
    assert "agent-1" in record.getMessage()


def test_registering_from_many_threads_at_once_loses_no_hook() -> None:
    hooks = make_hooks()
    start = threading.Barrier(8)

    def register_many(thread: int) -> None:
        start.wait()
        for index in range(200):
            hooks.register(lambda event, name=f"{thread}-{index}": None)

    threads = [threading.Thread(target=register_many, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(hooks.registered) == 8 * 200
