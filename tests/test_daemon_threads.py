"""`DaemonThreadPool`: a blocked task holds its own thread only; nothing holds exit."""

from __future__ import annotations

import threading

import pytest

from rpc_datasource.runtime.daemon_threads import DaemonThreadPool
from tests.support import library_threads, wait_until


def test_a_blocked_task_never_delays_the_next_one() -> None:
    pool = DaemonThreadPool("rpc-callback-test")
    release = threading.Event()
    try:
        blocked = [pool.submit(release.wait, 10.0) for _ in range(8)]
        assert pool.submit(lambda: "ran").result(timeout=5.0) == "ran"
        assert not any(future.done() for future in blocked)
    finally:
        release.set()
        pool.shutdown()
    assert all(future.result(timeout=5.0) for future in blocked)


def test_threads_are_daemon_and_an_idle_one_is_reused() -> None:
    pool = DaemonThreadPool("rpc-callback-test")
    try:
        first = pool.submit(threading.current_thread).result(timeout=5.0)
        assert first.daemon
        # Once the first thread is back to idle, the next task runs on it, not on a new one.
        assert wait_until(lambda: pool.submit(threading.current_thread).result(5.0) is first)
    finally:
        pool.shutdown()


def test_an_exception_or_system_exit_reaches_the_future_and_the_thread_goes_on() -> None:
    pool = DaemonThreadPool("rpc-callback-test")

    def exit_now() -> None:
        raise SystemExit(3)

    try:
        with pytest.raises(SystemExit):
            pool.submit(exit_now).result(timeout=5.0)
        assert pool.submit(lambda: 42).result(timeout=5.0) == 42
    finally:
        pool.shutdown()


def test_idle_threads_end_at_shutdown_and_no_task_starts_after() -> None:
    pool = DaemonThreadPool("rpc-callback-test")
    pool.submit(lambda: None).result(timeout=5.0)
    pool.shutdown()
    assert wait_until(lambda: not library_threads("rpc-callback-test"), 5.0)
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


def test_idle_threads_end_after_their_idle_timeout() -> None:
    pool = DaemonThreadPool("rpc-callback-test", idle_timeout=0.05)
    pool.submit(lambda: None).result(timeout=5.0)
    assert wait_until(lambda: not library_threads("rpc-callback-test"), 5.0)
    assert pool.submit(lambda: "again").result(timeout=5.0) == "again"
    pool.shutdown()
