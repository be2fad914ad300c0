"""`DaemonThreadPool`: an executor for the user's code that never holds the process.

`concurrent.futures.ThreadPoolExecutor` joins its threads at interpreter exit and has a fixed
size: four blocked callbacks held every other client's callbacks and the process's exit. Here
each task gets an idle thread or a new one, threads are daemon, and an idle thread ends after
`idle_timeout` seconds, so a blocked task holds its own thread and nothing else.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

IDLE_TIMEOUT_S = 2.0

_Task = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class _Worker:
    """One daemon thread and the slot its next task is handed through."""

    def __init__(self, pool: DaemonThreadPool, first: _Task, name: str) -> None:
        self.slot: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._pool = pool
        self._thread = threading.Thread(target=self._run, args=(first,), name=name, daemon=True)
        self._thread.start()

    def _run(self, first: _Task) -> None:
        task: _Task | None = first
        while task is not None:
            _run_task(task)
            task = self._pool._next_task(self)


def _run_task(task: _Task) -> None:
    future, function, args, kwargs = task
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = function(*args, **kwargs)
    except BaseException as error:  # on a worker thread even SystemExit is only this task's
        future.set_exception(error)
    else:
        future.set_result(result)


class DaemonThreadPool(Executor):
    """Runs each task at once on an idle daemon thread, or on a new one when none is idle."""

    def __init__(self, thread_name_prefix: str, idle_timeout: float = IDLE_TIMEOUT_S) -> None:
        self._prefix = thread_name_prefix
        self._idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._numbers = itertools.count(1)
        self._shut_down = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Start `fn(*args, **kwargs)` now; `RuntimeError` once the pool was shut down."""
        future: Future[T] = Future()
        task: _Task = (future, fn, args, kwargs)
        with self._lock:
            if self._shut_down:
                raise RuntimeError("cannot schedule new tasks after shutdown")
            if self._idle:
                self._idle.pop().slot.put(task)
                return future
            name = f"{self._prefix}-{next(self._numbers)}"
        _Worker(self, task, name)
        return future

    def shutdown(self, wait: bool = False, *, cancel_futures: bool = False) -> None:
        """Idle threads end now, busy ones when their task returns; never waits on a task
        (`wait` is accepted for the `Executor` interface and ignored)."""
        with self._lock:
            self._shut_down = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.slot.put(None)

    def _next_task(self, worker: _Worker) -> _Task | None:
        """The worker's next task, or None when it should end (idle too long, shut down)."""
        with self._lock:
            if self._shut_down:
                return None
            self._idle.append(worker)
        try:
            return worker.slot.get(timeout=self._idle_timeout)
        except queue.Empty:
            with self._lock:
                if worker in self._idle:
                    self._idle.remove(worker)
                    return None
        # A task (or the shutdown's None) was handed over just as the wait ran out.
        return worker.slot.get()
