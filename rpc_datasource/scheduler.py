"""One process-wide scheduler for every health client: a heap of due times and a worker pool."""

from __future__ import annotations

import heapq
import itertools
import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DEFAULT_MAX_WORKERS = 16
SCHEDULER_THREAD_NAME = "rpc-health-scheduler"
WORKER_THREAD_PREFIX = "rpc-health-worker"
LATENESS_SAMPLES = 10_000


class ScheduledJob:
    """Something the scheduler runs when due; `cancel()` drops it from the schedule."""

    def __init__(self, run: Callable[[], None], name: str) -> None:
        self.run = run
        self.name = name
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(frozen=True)
class LatenessStats:
    """How late jobs started against their due time, over the recent samples."""

    samples: int
    p50_s: float
    p99_s: float
    max_s: float


class ProbeScheduler:
    """Runs jobs at their due time on a bounded pool; the pool grows only while jobs wait."""

    def __init__(self, max_workers: int = DEFAULT_MAX_WORKERS) -> None:
        self._condition = threading.Condition()
        self._heap: list[tuple[float, int, ScheduledJob]] = []
        self._sequence = itertools.count()
        self._stopping = False
        self._lateness: deque[float] = deque(maxlen=LATENESS_SAMPLES)
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix=WORKER_THREAD_PREFIX)
        self._thread = threading.Thread(target=self._loop, name=SCHEDULER_THREAD_NAME, daemon=True)
        self._thread.start()

    def schedule(self, job: ScheduledJob, delay: float) -> None:
        """Run `job` once, `delay` seconds from now (monotonic clock)."""
        due = time.monotonic() + max(0.0, delay)
        with self._condition:
            if self._stopping:
                return
            heapq.heappush(self._heap, (due, next(self._sequence), job))
            if self._heap[0][2] is job:
                self._condition.notify()

    def lateness(self) -> LatenessStats:
        """Start lateness of recent jobs: how long after their due time a worker began them."""
        with self._condition:
            samples = sorted(self._lateness)
        if not samples:
            return LatenessStats(0, 0.0, 0.0, 0.0)
        p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
        return LatenessStats(len(samples), statistics.median(samples), p99, samples[-1])

    def stop(self) -> None:
        """Stop dispatching and join the scheduler thread and the workers."""
        with self._condition:
            self._stopping = True
            self._heap.clear()
            self._condition.notify()
        self._thread.join()
        in_worker = threading.current_thread().name.startswith(WORKER_THREAD_PREFIX)
        # A worker cannot join itself: when the last client stops from inside a callback,
        # the other workers are still joined and this one ends when its callback returns.
        self._pool.shutdown(wait=not in_worker, cancel_futures=True)

    def _loop(self) -> None:
        while True:
            with self._condition:
                due_jobs = self._pop_due_jobs()
                while not due_jobs and not self._stopping:
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._condition.wait(timeout)
                    due_jobs = self._pop_due_jobs()
                if self._stopping:
                    return
            for due, job in due_jobs:
                try:
                    self._pool.submit(self._run, job, due)
                except RuntimeError:
                    # The interpreter is exiting with clients still running: nothing to run on.
                    return

    def _pop_due_jobs(self) -> list[tuple[float, ScheduledJob]]:
        now = time.monotonic()
        due_jobs = []
        while self._heap and self._heap[0][0] <= now:
            due, _, job = heapq.heappop(self._heap)
            if not job.cancelled:
                due_jobs.append((due, job))
        return due_jobs

    def _run(self, job: ScheduledJob, due: float) -> None:
        lateness = time.monotonic() - due
        with self._condition:
            self._lateness.append(lateness)
        if job.cancelled:
            return
        try:
            job.run()
        except Exception:
            logger.exception("health job %s raised", job.name)


class SharedScheduler:
    """Counts users of the process's `ProbeScheduler`: the first starts it, the last stops it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scheduler: ProbeScheduler | None = None
        self._users = 0
        self.max_workers = DEFAULT_MAX_WORKERS

    def acquire(self) -> ProbeScheduler:
        """The running scheduler, started if this is its first user."""
        with self._lock:
            if self._scheduler is None:
                self._scheduler = ProbeScheduler(self.max_workers)
            self._users += 1
            return self._scheduler

    def release(self) -> None:
        """One user fewer; the last one out stops the scheduler (outside the lock)."""
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._scheduler is None:
                return
            scheduler, self._scheduler = self._scheduler, None
        scheduler.stop()

    def current(self) -> ProbeScheduler | None:
        """The running scheduler, if any client is running."""
        with self._lock:
            return self._scheduler


shared_scheduler = SharedScheduler()


def configure_shared_scheduler(max_workers: int) -> None:
    """Set the worker pool's bound for the next time the shared scheduler starts."""
    if max_workers < 1:
        raise ValueError("max_workers must be at least 1")
    shared_scheduler.max_workers = max_workers
