"""`python -m bench.endurance`: start/stop cycles and a soak against one warehouse agent.

The agent is a real `python -m examples.warehouse` (a child process on a free port of
127.0.0.1), so none of its sockets is in this process and every fd counted here is the
client side's. Four phases, one after another:

1. `--cycles` (1,000) cycles of one `HealthCheckClient`: `start()`, wait for its first
   probe, `stop()`. The client is the engine's only user, so each cycle also starts and
   stops the shared engine (loop thread, aiohttp session, executors).
2. `--cycles` cycles of `RpcDatasource.build(...)` (which reads the schema), wait for its
   client's first probe, `close()`.
3. `--batch-rounds` (20) rounds of `--batch-clients` (50) clients started together, each
   probed once, then all stopped one after another.
4. A soak: `--soak-clients` (50) clients and `--soak-datasources` (2) datasources polling
   the agent every `--soak-interval` (0.1 s), with `tracemalloc` on. After
   `--warmup-seconds` (20) it takes a snapshot and the start figures, then samples RSS
   (`VmRSS`) and traced memory every `--sample-seconds` for `--soak-seconds` (150); at the
   end it compares a second snapshot with the first (the top allocation sites by growth).

A census is taken after one warm-up cycle of each kind and a `gc.collect()` (the baseline),
and after each phase, once it matches the baseline or `CLEANUP_DEADLINE_S` has passed. It
is polled without calling the collector: a socket that only `gc.collect()` would close is a
leak too (the report then also shows the counts after one). It counts live Python threads
by name and in total, the kernel's thread count, open fds of this process
(`/proc/self/fd`), the fds that are sockets (`os.readlink` gives `socket:[…]`), the agent's
sockets (`/proc/PID/fd`), and the TCP connections to or from the agent's port that are not
in TIME_WAIT (`/proc/net/tcp`). Each cycle also counts this process's threads, fds and
sockets right after `stop()` / `close()` returned, with no wait.

The judge wants every phase back to the baseline (leaks 0), every cycle probed, at least
`--min-probes` (20,000) probes in the soak after its warm-up with no failure, growth after
the warm-up under `RSS_GROWTH_LIMIT_KIB` of RSS and (while the pool keeps its size)
`TRACED_GROWTH_LIMIT_KIB` of traced memory per 10,000 probes, and at most two sockets per
watcher (plus the loop's pair) at every sample.

    .venv/bin/python -m bench.endurance [--json endurance.json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import logging
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench._support import (
    CLEANUP_DEADLINE_S,
    STOP_ALL_DEADLINE_S,
    AgentFleet,
    conclude,
    os_thread_count,
    percentile,
    render_verdicts,
    run_as_script,
    run_bounded,
    sigterm_as_interrupt,
    stop_all,
    verdict,
    wait_until,
)
from bench.scale import process_figures
from rpc_datasource import HealthCheckClient, RpcDatasource

# Judged per 10,000 probes after the warm-up, so that the bound means the same for any soak
# length (meant for soaks of at least 20,000 probes: shorter ones are dominated by steps).
# RSS: 256 KiB per 10k is 26 bytes a probe; a probe that kept one small object (a 32-byte
# int, a 64-byte tuple) would show 320-640 KiB. It moves in steps of pages and arenas, and a
# pool that grows a few connections adds some, so a tighter bound would catch noise.
RSS_GROWTH_LIMIT_KIB = 256.0
# Traced memory is exact but includes what is in flight (tens of probes at any moment), so
# each sample is the floor of several reads. The connection pool grows in steps (about 7 KiB
# traced a connection) when more probes than ever before happen to be in flight at once; it
# is bounded by the number of watchers (judged on its own: sockets), not by the probes. So
# traced growth is judged over the sampling intervals in which the socket count did not
# change: 64 KiB per 10k is 6.5 bytes a probe.
TRACED_GROWTH_LIMIT_KIB = 64.0
SELF_PIPE = 2  # the event loop's own socket pair
FIRST_PROBE_EXTRA_S = 5.0
FLOOR_READS = 25
FLOOR_STEP_S = 0.01
TOP_DIFFS = 10
# /proc/net/tcp states: 06 TIME_WAIT holds no fd; 0A LISTEN is the agent's own socket.
TIME_WAIT, LISTEN = "06", "0A"
IGNORED_IN_DIFFS = (tracemalloc.__file__, __file__, "<frozen importlib._bootstrap")


@dataclass(frozen=True)
class Census:
    """What this process and the agent hold at one moment."""

    threads: tuple[str, ...]
    kernel_threads: int
    fds: int
    sockets: int
    agent_sockets: int
    tcp_open: int
    tcp_time_wait: int

    def leaks(self, baseline: Census) -> dict[str, Any]:
        """Everything above the baseline (0 or [] when back to it); TIME_WAIT is not a leak."""
        extra = Counter(self.threads) - Counter(baseline.threads)
        return {
            "threads": sorted(extra.elements()),
            "thread_total": len(self.threads) - len(baseline.threads),
            "kernel_threads": self.kernel_threads - baseline.kernel_threads,
            "fds": self.fds - baseline.fds,
            "sockets": self.sockets - baseline.sockets,
            "agent_sockets": self.agent_sockets - baseline.agent_sockets,
            "tcp_open": self.tcp_open - baseline.tcp_open,
        }

    def matches(self, baseline: Census) -> bool:
        return not any(self.leaks(baseline).values())


def own_fds() -> tuple[int, int]:
    """Open fds of this process and how many of them are sockets."""
    links = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own fd, closed meanwhile
            links.append(os.readlink(f"/proc/self/fd/{name}"))
    return len(links), sum(link.startswith("socket:") for link in links)


def tcp_states(port: int) -> Counter[str]:
    """States of the TCP sockets of this namespace with `port` at either end (IPv4)."""
    states: Counter[str] = Counter()
    with open("/proc/net/tcp") as table:
        next(table, None)
        for line in table:
            fields = line.split()
            ends = (int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16))
            if port in ends:
                states[fields[3]] += 1
    return states


def live_threads() -> tuple[str, ...]:
    return tuple(sorted(t.name for t in threading.enumerate() if t.is_alive()))


def census(agent_pid: int, port: int) -> Census:
    fds, sockets = own_fds()
    states = tcp_states(port)
    return Census(
        threads=live_threads(),
        kernel_threads=os_thread_count(),
        fds=fds,
        sockets=sockets,
        agent_sockets=process_figures(agent_pid)["sockets"],
        tcp_open=sum(n for state, n in states.items() if state not in (TIME_WAIT, LISTEN)),
        tcp_time_wait=states[TIME_WAIT],
    )


def rss_kib() -> int:
    """This process's resident set (`VmRSS` of /proc/self/status), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def traced_floor() -> int:
    """The least traced memory (bytes) of `FLOOR_READS` reads 10 ms apart: what stays, with
    little of what the probes in flight hold for a moment."""
    least = tracemalloc.get_traced_memory()[0]
    for _ in range(FLOOR_READS - 1):
        time.sleep(FLOOR_STEP_S)
        least = min(least, tracemalloc.get_traced_memory()[0])
    return least


@dataclass
class Where:
    """The agent under test."""

    pid: int
    port: int
    health_url: str
    base_url: str
    secret: str

    def census(self) -> Census:
        return census(self.pid, self.port)


def settle(where: Where, baseline: Census) -> tuple[float, Census, Census | None]:
    """Wait (bounded) until the census matches the baseline, without calling the collector:
    what only `gc.collect()` would close is a leak too (the library must close its sockets
    itself). Seconds waited (-1: never), the census, and the census after a `gc.collect()`
    when the wait failed (None otherwise), to tell the two kinds of leak apart."""
    waited = wait_until(lambda: where.census().matches(baseline), CLEANUP_DEADLINE_S, 0.05)
    after = where.census()
    if waited >= 0:
        return waited, after, None
    gc.collect()
    return waited, after, where.census()


@dataclass
class Open:
    """What is running right now, for the `finally` clean-up."""

    clients: list[HealthCheckClient]
    datasources: list[RpcDatasource]

    def close_all(self) -> None:
        stop_all(self.clients)
        for datasource in self.datasources:
            datasource.close()
        self.clients.clear()
        self.datasources.clear()


def wait_probed(clients: list[HealthCheckClient], deadline_s: float) -> bool:
    """Until every client has made at least one probe (bounded)."""
    return wait_until(lambda: all(c.stats().probes >= 1 for c in clients), deadline_s, 0.001) >= 0


def one_client(where: Where, args: argparse.Namespace, running: Open) -> tuple[bool, bool]:
    """Start a client, wait for its first probe, stop it: (probed, succeeded)."""
    client = HealthCheckClient(
        where.health_url, where.secret, polling_interval=args.interval, timeout=args.timeout
    )
    running.clients.append(client)
    client.start()
    probed = wait_probed([client], args.interval + args.timeout + FIRST_PROBE_EXTRA_S)
    stats = client.stats()
    client.stop()
    running.clients.clear()
    return probed, probed and stats.failures == 0


def one_datasource(where: Where, args: argparse.Namespace, running: Open) -> tuple[bool, bool]:
    """Build a datasource (reads the schema), wait for its first probe, close it."""
    datasource = RpcDatasource.build(
        uri=where.base_url,
        auth_secret=where.secret,
        health_check_interval=args.interval,
        health_check_timeout=args.timeout,
    )
    running.datasources.append(datasource)
    probed = wait_probed([datasource.health], args.interval + args.timeout + FIRST_PROBE_EXTRA_S)
    stats = datasource.health.stats()
    ok = probed and stats.failures == 0 and bool(datasource.collections)
    datasource.close()
    running.datasources.clear()
    return probed, ok


def one_batch(where: Where, args: argparse.Namespace, running: Open) -> tuple[bool, bool]:
    """Start `--batch-clients` clients, wait until each probed, stop them all."""
    running.clients[:] = [
        HealthCheckClient(
            where.health_url, where.secret, polling_interval=args.interval, timeout=args.timeout
        )
        for _ in range(args.batch_clients)
    ]
    for client in running.clients:
        client.start()
    probed = wait_probed(running.clients, args.interval + args.timeout + FIRST_PROBE_EXTRA_S)
    failures = sum(client.stats().failures for client in running.clients)
    stopped, _ = run_bounded(lambda: stop_all(running.clients), STOP_ALL_DEADLINE_S, "stop-all")
    if not stopped:
        raise RuntimeError("a stop-all of the batch did not finish")
    running.clients.clear()
    return probed, probed and failures == 0


def run_cycles(
    name: str,
    count: int,
    cycle: Callable[[], tuple[bool, bool]],
    where: Where,
    baseline: Census,
) -> dict[str, Any]:
    """`count` cycles; after each, what this process holds at once; then the settled census."""
    gc.collect()
    rss_before, objects_before = rss_kib(), len(gc.get_objects())
    durations, probed, succeeded, left = [], 0, 0, 0
    worst = {"threads": 0, "fds": 0, "sockets": 0}
    started = time.monotonic()
    for _ in range(count):
        begun = time.monotonic()
        was_probed, ok = cycle()
        durations.append(time.monotonic() - begun)
        probed += was_probed
        succeeded += ok
        fds, sockets = own_fds()
        now = {
            "threads": len(live_threads()) - len(baseline.threads),
            "fds": fds - baseline.fds,
            "sockets": sockets - baseline.sockets,
        }
        left += any(value > 0 for value in now.values())
        worst = {key: max(worst[key], now[key]) for key in worst}
    elapsed = time.monotonic() - started
    settled_s, after, after_gc = settle(where, baseline)
    gc.collect()  # the memory figures count what is alive, not what waits for the collector
    rss_after, objects_after = rss_kib(), len(gc.get_objects())
    return {
        "phase": name,
        "cycles": count,
        "probed": probed,
        "succeeded": succeeded,
        "seconds": round(elapsed, 2),
        "cycle_ms": {
            "p50": round(percentile(durations, 0.5) * 1000, 1),
            "p99": round(percentile(durations, 0.99) * 1000, 1),
            "max": round(max(durations, default=0.0) * 1000, 1),
        },
        "cycles_leaving_something_at_once": left,
        "worst_at_once": worst,
        "settled_after_s": round(settled_s, 3),
        "after": asdict(after),
        "leaks": after.leaks(baseline),
        "leaks_after_gc": None if after_gc is None else after_gc.leaks(baseline),
        "rss_kib": [rss_before, rss_after],
        "gc_objects": [objects_before, objects_after],
    }


def soak_sample(started: float, watchers: list[HealthCheckClient]) -> dict[str, Any]:
    stats = [watcher.stats() for watcher in watchers]
    fds, sockets = own_fds()
    return {
        "t_s": round(time.monotonic() - started, 1),
        "probes": sum(s.probes for s in stats),
        "failures": sum(s.failures for s in stats),
        "rss_kib": rss_kib(),
        "traced_kib": round(traced_floor() / 1024, 1),
        "fds": fds,
        "sockets": sockets,
        "threads": threading.active_count(),
    }


def trend_per_10k(samples: list[dict[str, Any]], key: str) -> float:
    """Least-squares slope of `key` against probes, per 10,000 probes (0 if flat or few)."""
    xs = [float(s["probes"]) for s in samples]
    ys = [float(s[key]) for s in samples]
    if len(xs) < 2:
        return 0.0
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
    return slope * 10_000


def steady_per_10k(samples: list[dict[str, Any]], key: str) -> tuple[float, int]:
    """Growth of `key` per 10,000 probes over the intervals between samples in which the
    socket count (the pool's size) did not change, and the probes of those intervals."""
    grown, probes = 0.0, 0
    for before, after in itertools.pairwise(samples):
        if before["sockets"] == after["sockets"]:
            grown += after[key] - before[key]
            probes += after["probes"] - before["probes"]
    return (grown * 10_000 / probes if probes else 0.0), probes


def top_diffs(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> list[str]:
    """The allocation sites that grew most between the two snapshots (the bench's own and
    tracemalloc's left out)."""
    keep = [tracemalloc.Filter(False, pattern) for pattern in IGNORED_IN_DIFFS]
    diffs = after.filter_traces(keep).compare_to(before.filter_traces(keep), "lineno")
    return [str(diff) for diff in diffs[:TOP_DIFFS]]


def run_soak(
    where: Where, args: argparse.Namespace, running: Open, baseline: Census
) -> dict[str, Any]:
    """The soak: start everything, warm up, sample, compare, stop, settle."""
    tracing_before = tracemalloc.is_tracing()
    if not tracing_before:
        tracemalloc.start(args.trace_frames)
    try:
        running.clients[:] = [
            HealthCheckClient(
                where.health_url,
                where.secret,
                polling_interval=args.soak_interval,
                timeout=args.timeout,
            )
            for _ in range(args.soak_clients)
        ]
        for _ in range(args.soak_datasources):
            running.datasources.append(
                RpcDatasource.build(
                    uri=where.base_url,
                    auth_secret=where.secret,
                    health_check_interval=args.soak_interval,
                    health_check_timeout=args.timeout,
                )
            )
        for client in running.clients:
            client.start()
        watchers = running.clients + [d.health for d in running.datasources]
        started = time.monotonic()
        time.sleep(args.warmup_seconds)
        gc.collect()
        first = tracemalloc.take_snapshot()
        samples = [soak_sample(started, watchers)]
        warm = samples[0]
        end_at = time.monotonic() + args.soak_seconds
        while (left := end_at - time.monotonic()) > 0:
            time.sleep(min(args.sample_seconds, left))
            samples.append(soak_sample(started, watchers))
        gc.collect()
        samples.append(soak_sample(started, watchers))
        last_snapshot = tracemalloc.take_snapshot()
        diffs = top_diffs(first, last_snapshot)
        del first, last_snapshot
        stopped, stop_s = run_bounded(running.close_all, STOP_ALL_DEADLINE_S, "soak-stop")
    finally:
        if not tracing_before:
            tracemalloc.stop()
    settled_s, after, after_gc = settle(where, baseline)
    end = samples[-1]
    probes = end["probes"] - warm["probes"]
    per_10k = 10_000 / probes if probes else 0.0
    rss_steady, _ = steady_per_10k(samples, "rss_kib")
    traced_steady, steady_probes = steady_per_10k(samples, "traced_kib")
    return {
        "watchers": len(watchers),
        "probes_in_warmup": warm["probes"],
        "probes_after_warmup": probes,
        "seconds_after_warmup": round(end["t_s"] - warm["t_s"], 1),
        "failures": end["failures"],
        "samples": samples,
        "rss_kib": {
            "start": warm["rss_kib"],
            "end": end["rss_kib"],
            "max": max(s["rss_kib"] for s in samples),
            "growth": end["rss_kib"] - warm["rss_kib"],
            "growth_per_10k": round((end["rss_kib"] - warm["rss_kib"]) * per_10k, 1),
            "trend_per_10k": round(trend_per_10k(samples, "rss_kib"), 1),
            "steady_per_10k": round(rss_steady, 1),
        },
        "traced_kib": {
            "start": warm["traced_kib"],
            "end": end["traced_kib"],
            "max": max(s["traced_kib"] for s in samples),
            "growth": round(end["traced_kib"] - warm["traced_kib"], 1),
            "growth_per_10k": round((end["traced_kib"] - warm["traced_kib"]) * per_10k, 1),
            "trend_per_10k": round(trend_per_10k(samples, "traced_kib"), 1),
            "steady_per_10k": round(traced_steady, 1),
        },
        "steady_probes": steady_probes,
        "fds": [min(s["fds"] for s in samples), max(s["fds"] for s in samples)],
        "sockets": [min(s["sockets"] for s in samples), max(s["sockets"] for s in samples)],
        "top_diffs": diffs,
        "stop_finished": stopped,
        "stop_s": round(stop_s, 4),
        "settled_after_s": round(settled_s, 3),
        "after": asdict(after),
        "leaks": after.leaks(baseline),
        "leaks_after_gc": None if after_gc is None else after_gc.leaks(baseline),
    }


def leak_detail(part: dict[str, Any]) -> str:
    """`threads +0, fds +0, ...` for one phase (and the same after `gc.collect()` when the
    counts did not come back by themselves)."""

    def figures(leaks: dict[str, Any]) -> str:
        return (
            f"threads {leaks['thread_total']:+d}{' ' if leaks['threads'] else ''}"
            f"{leaks['threads'] or ''}, kernel threads {leaks['kernel_threads']:+d}, "
            f"fds {leaks['fds']:+d}, sockets {leaks['sockets']:+d}, "
            f"agent sockets {leaks['agent_sockets']:+d}, tcp {leaks['tcp_open']:+d}"
        )

    text = figures(part["leaks"])
    if part["leaks_after_gc"] is not None:
        text += f"; after gc.collect(): {figures(part['leaks_after_gc'])}"
    return text


def settled(part: dict[str, Any]) -> str:
    waited = part["settled_after_s"]
    return f"settled after {waited} s" if waited >= 0 else "NOT settled"


def judge(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per check."""
    lines = []
    for phase in report["phases"]:
        lines.append(
            verdict(
                f"{phase['phase']}: every cycle probed, first probe succeeded",
                phase["succeeded"] == phase["cycles"],
                f"{phase['succeeded']}/{phase['cycles']} ({phase['probed']} probed)",
            )
        )
        lines.append(
            verdict(
                f"{phase['phase']}: leaks 0 (back to the baseline)",
                not any(phase["leaks"].values()),
                leak_detail(phase),
            )
        )
    soak = report.get("soak")
    if soak is not None:
        c = report["config"]
        lines += [
            verdict(
                f"soak: >= {c['min_probes']:,} probes after the warm-up, 0 failures",
                soak["probes_after_warmup"] >= c["min_probes"] and soak["failures"] == 0,
                f"{soak['probes_after_warmup']:,} probes, {soak['failures']} failures",
            ),
            verdict(
                f"soak: RSS growth after the warm-up <= {RSS_GROWTH_LIMIT_KIB:g} KiB per 10k "
                "probes",
                soak["rss_kib"]["growth_per_10k"] <= RSS_GROWTH_LIMIT_KIB,
                f"{soak['rss_kib']['growth']:+d} KiB, "
                f"{soak['rss_kib']['growth_per_10k']:+.1f} KiB per 10k",
            ),
            verdict(
                f"soak: traced growth at a steady pool size <= {TRACED_GROWTH_LIMIT_KIB:g} KiB "
                "per 10k probes",
                soak["traced_kib"]["steady_per_10k"] <= TRACED_GROWTH_LIMIT_KIB,
                f"{soak['traced_kib']['steady_per_10k']:+.1f} KiB per 10k over "
                f"{soak['steady_probes']:,} probes (all: {soak['traced_kib']['growth']:+.1f} "
                f"KiB, {soak['traced_kib']['growth_per_10k']:+.1f} per 10k)",
            ),
            verdict(
                f"soak: sockets <= {SELF_PIPE} + 2 per watcher at every sample",
                soak["sockets"][1] <= SELF_PIPE + 2 * soak["watchers"],
                f"{soak['sockets'][0]}-{soak['sockets'][1]} for {soak['watchers']} watchers",
            ),
            verdict(
                "soak: leaks 0 after stopping everything",
                soak["stop_finished"] and not any(soak["leaks"].values()),
                leak_detail(soak),
            ),
        ]
    lines.append(
        verdict(
            "agent exited 0 after SIGTERM",
            all(code == 0 for code in report["agent_exit_codes"].values()),
            str(report["agent_exit_codes"]),
        )
    )
    return lines


def render_census(label: str, c: dict[str, Any]) -> str:
    names = Counter(name.rstrip("0123456789").rstrip("_") for name in c["threads"])
    return (
        f"  {label}: threads {len(c['threads'])} {dict(names)}, kernel threads "
        f"{c['kernel_threads']}, fds {c['fds']}, sockets {c['sockets']}, agent sockets "
        f"{c['agent_sockets']}, tcp to/from the agent {c['tcp_open']} "
        f"(TIME_WAIT {c['tcp_time_wait']})"
    )


def render_phase(p: dict[str, Any]) -> list[str]:
    ms, worst = p["cycle_ms"], p["worst_at_once"]
    rss, objects = p["rss_kib"], p["gc_objects"]
    return [
        f"{p['phase']}: {p['cycles']} cycles in {p['seconds']:.1f} s, "
        f"{p['succeeded']}/{p['cycles']} first probes succeeded; "
        f"cycle p50 {ms['p50']} ms, p99 {ms['p99']} ms, max {ms['max']} ms",
        f"  right after stop()/close(): {p['cycles_leaving_something_at_once']} cycles left "
        f"something (max threads +{worst['threads']}, fds +{worst['fds']}, "
        f"sockets +{worst['sockets']})",
        f"  {settled(p)} (no gc.collect()): {leak_detail(p)}",
        render_census("after", p["after"]),
        f"  memory (not judged): RSS {rss[0]:,} -> {rss[1]:,} KiB ({rss[1] - rss[0]:+,}), "
        f"gc objects {objects[0]:,} -> {objects[1]:,} ({objects[1] - objects[0]:+,})",
    ]


def render_soak(s: dict[str, Any], c: dict[str, Any]) -> list[str]:
    rss, traced = s["rss_kib"], s["traced_kib"]
    lines = [
        f"soak: {c['soak_clients']} clients + {c['soak_datasources']} datasources every "
        f"{c['soak_interval']:g} s, warm-up {c['warmup_seconds']:g} s "
        f"({s['probes_in_warmup']:,} probes), then {s['seconds_after_warmup']:g} s; "
        f"tracemalloc {c['trace_frames']} frame(s)",
        "      t s     probes  failures   RSS KiB  traced KiB  fds  sockets  threads",
    ]
    for x in s["samples"]:
        lines.append(
            f"  {x['t_s']:>7.1f}  {x['probes']:>9,}  {x['failures']:>8}  {x['rss_kib']:>8,}  "
            f"{x['traced_kib']:>10,.1f}  {x['fds']:>3}  {x['sockets']:>7}  {x['threads']:>7}"
        )
    seconds = s["seconds_after_warmup"] or 1.0
    lines += [
        f"  after the warm-up: {s['probes_after_warmup']:,} probes in {s['seconds_after_warmup']:g}"
        f" s ({s['probes_after_warmup'] / seconds:.0f}/s), {s['failures']} failures; "
        f"fds {s['fds'][0]}-{s['fds'][1]}, sockets {s['sockets'][0]}-{s['sockets'][1]}",
        f"  RSS KiB: start {rss['start']:,}, end {rss['end']:,}, max {rss['max']:,}; growth "
        f"{rss['growth']:+,} ({rss['growth_per_10k']:+.1f} per 10k probes, trend "
        f"{rss['trend_per_10k']:+.1f}; at a steady pool size {rss['steady_per_10k']:+.1f})",
        f"  traced KiB (floor of {FLOOR_READS} reads): start {traced['start']:,.1f}, end "
        f"{traced['end']:,.1f}, max {traced['max']:,.1f}; growth {traced['growth']:+,.1f} "
        f"({traced['growth_per_10k']:+.1f} per 10k probes, trend {traced['trend_per_10k']:+.1f}; "
        f"at a steady pool size {traced['steady_per_10k']:+.1f} over {s['steady_probes']:,} "
        "probes)",
        "  top tracemalloc diffs, end against the end of the warm-up:",
        *[f"    {line}" for line in s["top_diffs"]],
        f"  stop everything: {s['stop_s']} s; {settled(s)} (no gc.collect()): {leak_detail(s)}",
    ]
    return lines


def render(report: dict[str, Any]) -> str:
    """The report as readable text."""
    c = report["config"]
    lines = [
        f"bench.endurance: one warehouse agent (pid {report['agent_pid']}, 127.0.0.1:"
        f"{report['agent_port']}); cycles at interval {c['interval']:g} s, timeout "
        f"{c['timeout']:g} s; Python {report['python']}",
        render_census("baseline", report["baseline"]),
    ]
    for phase in report["phases"]:
        lines += render_phase(phase)
    if report.get("soak") is not None:
        lines += render_soak(report["soak"], c)
    lines.append("judge:")
    lines += render_verdicts(report["verdicts"])
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.endurance", description=__doc__)
    parser.add_argument("--cycles", type=int, default=1000, help="start/stop and build/close")
    parser.add_argument("--batch-clients", type=int, default=50)
    parser.add_argument("--batch-rounds", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.05, help="cycles' interval, s")
    parser.add_argument("--timeout", type=float, default=2.0, help="probe timeout, s")
    parser.add_argument("--soak-clients", type=int, default=50)
    parser.add_argument("--soak-datasources", type=int, default=2)
    parser.add_argument("--soak-interval", type=float, default=0.1, help="s")
    parser.add_argument("--warmup-seconds", type=float, default=20.0)
    parser.add_argument("--soak-seconds", type=float, default=150.0, help="after the warm-up")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--trace-frames", type=int, default=1, help="tracemalloc frames")
    parser.add_argument("--min-probes", type=int, default=20_000, help="judged in the soak")
    parser.add_argument("--no-soak", action="store_true", help="the cycles only")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    counts = (args.cycles, args.batch_clients, args.batch_rounds, args.trace_frames)
    times = (args.interval, args.timeout, args.soak_interval, args.sample_seconds)
    if min(counts) < 1 or min(times) <= 0 or args.warmup_seconds < 0 or args.soak_seconds <= 0:
        parser.error("counts must be >= 1, times > 0 (the warm-up >= 0)")
    if args.soak_clients + args.soak_datasources < 1:
        parser.error("the soak needs at least one client or datasource")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the phases and the soak; 0 when every check passed."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    running = Open([], [])
    phases: list[dict[str, Any]] = []
    soak: dict[str, Any] | None = None
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="bench-endurance-") as tmp:
        fleet = AgentFleet(Path(tmp), secrets.token_hex(32))
        try:
            fleet.start(1)
            agent = fleet.agents[0]
            base_url = f"http://127.0.0.1:{agent.port}"
            where = Where(agent.process.pid, agent.port, agent.health_url, base_url, fleet.secret)
            # One cycle of each kind first: imports, caches and the first connections of the
            # agent's pool belong to the baseline, not to the count.
            one_client(where, args, running)
            one_datasource(where, args, running)
            gc.collect()
            wait_until(lambda: where.census().tcp_open == 0, CLEANUP_DEADLINE_S)
            baseline = where.census()
            plan: list[tuple[str, int, Callable[[], tuple[bool, bool]]]] = [
                ("client start/stop", args.cycles, lambda: one_client(where, args, running)),
                (
                    "datasource build/close",
                    args.cycles,
                    lambda: one_datasource(where, args, running),
                ),
                (
                    f"{args.batch_clients} clients at once",
                    args.batch_rounds,
                    lambda: one_batch(where, args, running),
                ),
            ]
            for name, count, cycle in plan:
                phases.append(run_cycles(name, count, cycle, where, baseline))
                print(f"{name}: done in {phases[-1]['seconds']:.1f} s", file=sys.stderr)
            if not args.no_soak:
                soak = run_soak(where, args, running, baseline)
            exit_codes = fleet.terminate()
        finally:
            run_bounded(running.close_all, STOP_ALL_DEADLINE_S, "cleanup")
            fleet.kill_leftovers()
    report: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "python": platform.python_version(),
        "agent_pid": where.pid,
        "agent_port": where.port,
        "baseline": asdict(baseline),
        "phases": phases,
        "soak": soak,
        "agent_exit_codes": exit_codes,
    }
    report["verdicts"] = judge(report)
    report["ok"] = all(v["passed"] for v in report["verdicts"])
    print(render(report))
    return conclude(report, args.json)


if __name__ == "__main__":
    run_as_script(main, "clients and datasources stopped, agent terminated")
