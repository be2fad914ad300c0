"""One cell of `master_scale`, in a process of its own: a master watching stub agents.

`python -m bench.scenarios._scale_master --engine current|bare|previous ...` starts one
client per agent (the engine under test), waits `--warmup` s after the last `start()`,
measures a window of `--window` s, stops every client and prints one JSON line: this
process's CPU (user + sys) and peak threads and RSS, the stub's request and connection
counts in the window (read from its control port), and the start lateness of the healthy
agents' probes (in the window, and over the whole run). The secret comes in
`BENCH_SECRET`. It imports only the engine it runs, so the previous engine's tree can be
first on `PYTHONPATH`.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import gc
import json
import math
import os
import pstats
import random
import resource
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from bench.scenarios._stub_agents import read_counters

HOST = "127.0.0.1"
HEALTH_PATH = "/forest/health"
SAMPLE_EVERY_S = 0.5
STOP_DEADLINE_S = 20.0


@dataclass(frozen=True)
class Cell:
    """What one master runs: the engine, its agents, and the probe settings."""

    healthy_urls: list[str]
    hung_urls: list[str]
    secret: str
    interval: float
    timeout: float
    threshold: int
    mode: str
    watch_wait: float


class Driver(Protocol):
    """An engine under test: starts and stops the clients, records lateness."""

    lateness: list[float]

    def start(self, cell: Cell) -> None: ...

    def stop(self) -> None: ...

    def extra(self) -> dict[str, Any]: ...

    def profile_on_loop(self, action: str) -> None: ...


class CurrentEngine:
    """This tree's `HealthCheckClient`s on the shared engine, a hook recording lateness."""

    def __init__(self) -> None:
        self.lateness: list[float] = []
        self.failure_reasons: collections.Counter[str] = collections.Counter()
        self.false_downs = 0
        self.clients: list[Any] = []
        # CPU time of the loop's thread, not wall time: waiting in epoll is not work.
        self.profiler = cProfile.Profile(time.thread_time)

    def hook(self, event: Any) -> None:
        """Healthy agents only: how late each probe started; failures and downs are surprises."""
        self.lateness.append(event.lateness_s)
        if event.actions or event.result.reason is not None:
            self.false_downs += event.went_down
            if event.result.reason is not None:
                self.failure_reasons[str(event.result.reason.value)] += 1

    def start(self, cell: Cell) -> None:
        from rpc_datasource import HealthCheckClient

        options: dict[str, Any] = {
            "polling_interval": cell.interval,
            "failure_threshold": cell.threshold,
            "timeout": cell.timeout,
            "mode": cell.mode,
            "watch_wait": cell.watch_wait,
        }
        targets = [(url, True) for url in cell.healthy_urls] + [
            (url, False) for url in cell.hung_urls
        ]
        random.Random(0).shuffle(targets)
        for url, healthy in targets:
            hooks = (self.hook,) if healthy else ()
            self.clients.append(HealthCheckClient(url, cell.secret, **options, hooks=hooks))
        for client in self.clients:
            client.start()

    def stop(self) -> None:
        for client in self.clients:
            client.stop()

    def extra(self) -> dict[str, Any]:
        return {
            "healthy_failures": sum(self.failure_reasons.values()),
            "failure_reasons": dict(self.failure_reasons),
            "false_downs": self.false_downs,
        }

    def profile_on_loop(self, action: str) -> None:
        """Enable or disable the profiler on the engine's loop thread (cProfile is per thread)."""
        from rpc_datasource.runtime.engine import shared_engine

        engine = shared_engine.current()
        assert engine is not None
        method = self.profiler.enable if action == "enable" else self.profiler.disable
        done = threading.Event()

        def call() -> None:
            method()
            done.set()

        engine.loop.call_soon_threadsafe(call)
        done.wait(5.0)


def use_grid(fixed_grid: float) -> None:
    """Snap the current engine's probe times to a fixed grid (to compare grid rules)."""
    from rpc_datasource.health import policy, timing

    def fixed(target: float, low: float, high: float, grid: float) -> float:
        return timing.coalesced(target, low, high, fixed_grid)

    policy.coalesced = fixed  # type: ignore[attr-defined]


def make_driver(engine: str) -> Driver:
    """The driver of `engine` (imported only when asked for)."""
    if engine == "current":
        return CurrentEngine()
    if engine == "bare":
        from bench.scenarios._bare_loop import BareLoop

        return BareLoop()
    from bench.scenarios._previous_engine import PreviousEngine

    return PreviousEngine()


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


class GcPauses:
    """The cyclic garbage collector's runs by generation: how many, the longest, the total."""

    def __init__(self) -> None:
        self.started = 0.0
        self.runs = [0, 0, 0]
        self.longest_s = [0.0, 0.0, 0.0]
        self.total_s = [0.0, 0.0, 0.0]
        gc.callbacks.append(self.observe)

    def observe(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        took, generation = time.perf_counter() - self.started, info["generation"]
        self.runs[generation] += 1
        self.longest_s[generation] = max(self.longest_s[generation], took)
        self.total_s[generation] += took

    def since(self, before: dict[str, list[float]]) -> dict[str, list[float]]:
        """Runs and total time since `before` (a `snapshot`); the longest over the whole run."""
        return {
            "runs": [now - then for now, then in zip(self.runs, before["runs"], strict=True)],
            "total_ms": [
                1000 * (now - then)
                for now, then in zip(self.total_s, before["total_s"], strict=True)
            ],
        }

    def snapshot(self) -> dict[str, list[float]]:
        return {"runs": list(self.runs), "total_s": list(self.total_s)}


GC_PAUSES = GcPauses()


def status_figures() -> tuple[int, int]:
    """This process's kernel threads and RSS bytes, from /proc."""
    threads = rss = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return threads, rss


def thread_names() -> list[str]:
    """The names of this process's Python threads (the kernel may count more)."""
    return sorted(thread.name for thread in threading.enumerate())


def cpu_split() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def lateness_summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": None if not values else 1000 * (percentile(values, 0.5) or 0.0),
        "p99_ms": None if not values else 1000 * (percentile(values, 0.99) or 0.0),
        "max_ms": None if not values else 1000 * max(values),
    }


def window_figures(
    driver: Driver, args: argparse.Namespace, seconds: float, threads_max: int
) -> dict[str, Any]:
    """One measuring window of `seconds`: CPU, the stub's counts, lateness, threads, RSS."""
    pause = threading.Event()
    first_lateness = len(driver.lateness)
    gc_before = GC_PAUSES.snapshot()
    counters_before = read_counters(args.control)
    cpu_before, began = cpu_split(), time.monotonic()
    end = began + seconds
    while (left := end - time.monotonic()) > 0:
        pause.wait(min(SAMPLE_EVERY_S, left))
        threads_max = max(threads_max, status_figures()[0])
    cpu_after, ended = cpu_split(), time.monotonic()
    counters_after = read_counters(args.control)
    threads_end, rss_end = status_figures()
    counts = {key: counters_after[key] - counters_before[key] for key in counters_after}
    return {
        "window_s": ended - began,
        "cpu_user_s": cpu_after[0] - cpu_before[0],
        "cpu_sys_s": cpu_after[1] - cpu_before[1],
        "threads_max": max(threads_max, threads_end),
        "rss_bytes": rss_end,
        "thread_names": thread_names(),
        "stub": counts,
        "held_at_end": counters_after["held"],
        "lateness": lateness_summary(driver.lateness[first_lateness:]),
        "gc": GC_PAUSES.since(gc_before),
    }


def measure(driver: Driver, cell: Cell, args: argparse.Namespace) -> dict[str, Any]:
    """Start, warm up, measure `--parts` windows one after another, stop; the figures."""
    t0 = time.monotonic()
    driver.start(cell)
    start_all_s = time.monotonic() - t0
    threading.Event().wait(args.warmup)
    threads_max = status_figures()[0]
    if args.profile:
        driver.profile_on_loop("enable")
    windows = []
    for _ in range(args.parts):
        windows.append(window_figures(driver, args, args.window, threads_max))
    if args.profile:
        driver.profile_on_loop("disable")
    t_stop = time.monotonic()
    # An overloaded loop takes its time to cancel thousands of clients: bounded here.
    stopping = threading.Thread(target=driver.stop, name="stop-all", daemon=True)
    stopping.start()
    stopping.join(STOP_DEADLINE_S)
    stop_all_s = None if stopping.is_alive() else time.monotonic() - t_stop
    if args.profile:
        driver.profiler.dump_stats(args.profile)  # type: ignore[attr-defined]
    return {
        "start_all_s": start_all_s,
        "stop_all_s": stop_all_s,
        "windows": windows,
        "lateness_run": lateness_summary(driver.lateness),
        "gc_longest_ms": [1000 * longest for longest in GC_PAUSES.longest_s],
        **driver.extra(),
    }


# The loop's own scaffolding, above every callback: its share says nothing.
SCAFFOLDING = ("(_run_once)", "(run_forever)", "(_run)", "<method 'run' of '_contextvars")


def top_functions(path: str, count: int = 16) -> list[dict[str, Any]]:
    """The profile's functions by cumulative time, as shares of the loop thread's CPU."""
    stats = pstats.Stats(path)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tottime for (_cc, _nc, tottime, _cum, _callers) in entries.values())
    rows = []
    for (filename, line, name), (_cc, calls, tottime, cumtime, _callers) in entries.items():
        function = f"{os.path.basename(filename)}:{line}({name})"
        if any(part in function for part in SCAFFOLDING):
            continue
        rows.append(
            {
                "function": function,
                "calls": calls,
                "cum_share": cumtime / total if total else 0.0,
                "own_share": tottime / total if total else 0.0,
            }
        )
    rows.sort(key=lambda row: row["cum_share"], reverse=True)
    return rows[:count]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", choices=("current", "bare", "previous"), required=True)
    parser.add_argument("--ports-file", required=True, help="the stub's ports, as JSON")
    parser.add_argument("--agents", type=int, required=True)
    parser.add_argument("--hung", type=int, default=0, help="how many of them are hung")
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--threshold", type=int, default=3)
    parser.add_argument("--mode", choices=("poll", "watch"), default="poll")
    parser.add_argument("--watch-wait", type=float, default=25.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=float, required=True)
    parser.add_argument("--parts", type=int, default=1, help="windows one after another")
    parser.add_argument("--grid", type=float, default=None, help="current engine: this grid")
    parser.add_argument("--profile", default=None, help="cProfile the loop thread to this file")
    args = parser.parse_args(argv)
    with open(args.ports_file) as ports_file:
        ports = json.load(ports_file)
    args.control = ports["control"]
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cell = Cell(
        healthy_urls=[
            f"http://{HOST}:{port}" for port in ports["healthy"][: args.agents - args.hung]
        ],
        hung_urls=[f"http://{HOST}:{port}" for port in ports["hung"][: args.hung]],
        secret=os.environ["BENCH_SECRET"],
        interval=args.interval,
        timeout=args.timeout,
        threshold=args.threshold,
        mode=args.mode,
        watch_wait=args.watch_wait,
    )
    if args.grid is not None:
        use_grid(args.grid)
    driver = make_driver(args.engine)
    result = measure(driver, cell, args)
    if args.profile:
        result["profile"] = top_functions(args.profile)
    print(json.dumps(result), flush=True)
    # Leave at once: clients that did not stop in time must not hold the exit.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
