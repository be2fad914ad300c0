"""Endurance: start/stop cycles leave nothing behind, and a long soak grows no memory.

One real warehouse agent (the runner). First `--cycles` cycles of one `HealthCheckClient`
(start, first probe, stop: each also starts and stops the shared engine), then a soak:
`--clients` clients polling every `--interval` with `tracemalloc` on. After `--warmup` s the
traced memory (the floor of 25 readings, so probes in flight count little), RSS, sockets
and probes are sampled every `--sample` s for `--soak` s. Growth is judged per 10,000
probes, over the samples in which the connection pool kept its size (each new pooled
connection holds about 7 KiB). After everything stops, threads, fds and sockets must be
back to the baseline.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import tempfile
import threading
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

from bench.harness.fleet import RUNNER, AgentProcess, run_secret, running_agent
from bench.harness.processes import Footprint, footprint
from bench.harness.report import Report, Table, Verdict
from rpc_datasource import HealthCheckClient

SUMMARY = "start/stop cycles leave no thread, fd or socket; a soak grows no memory"
SMOKE = ["--cycles", "5", "--clients", "10", "--warmup", "2", "--soak", "4", "--sample", "1"]

TRACED_LIMIT_PER_10K = 64 * 1024  # a probe that kept one pointer shows about 100 KiB
RSS_LIMIT_PER_10K = 256 * 1024  # RSS moves in pages and arenas: judged more loosely
# Growth over fewer probes is dominated by steps of the pool and the allocator: not judged.
MIN_JUDGED_PROBES = 20_000
CLEANUP_DEADLINE_S = 10.0
PROBE_DEADLINE_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cycles", type=int, default=300, help="start/stop cycles")
    parser.add_argument("--clients", type=int, default=50, help="clients in the soak")
    parser.add_argument("--interval", type=float, default=0.1, help="their polling interval")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before sampling")
    parser.add_argument("--soak", type=float, default=150.0, help="seconds sampled")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")


@dataclass(frozen=True)
class Sample:
    probes: int
    failures: int
    traced: int
    rss: int
    sockets: int


def _traced_floor() -> int:
    readings = []
    for _ in range(25):
        readings.append(tracemalloc.get_traced_memory()[0])
        threading.Event().wait(0.01)
    return min(readings)


def _settled(baseline: Footprint) -> Footprint:
    """This process's footprint once it is back to `baseline` (or the deadline passed)."""
    deadline = time.monotonic() + CLEANUP_DEADLINE_S
    now = footprint(os.getpid())
    while time.monotonic() < deadline and (now.threads, now.sockets) > (
        baseline.threads,
        baseline.sockets,
    ):
        threading.Event().wait(0.05)
        now = footprint(os.getpid())
    return now


def _one_cycle(agent: AgentProcess) -> bool:
    client = HealthCheckClient(agent.url, agent.secret, polling_interval=0.05, timeout=2.0)
    client.start()
    deadline = time.monotonic() + PROBE_DEADLINE_S
    while client.stats().probes < 1 and time.monotonic() < deadline:
        threading.Event().wait(0.005)
    probed = client.stats().probes >= 1 and client.stats().failures == 0
    client.stop()
    return probed


def _soak(agent: AgentProcess, args: argparse.Namespace) -> list[Sample]:
    tracemalloc.start()
    clients = [
        HealthCheckClient(agent.url, agent.secret, polling_interval=args.interval, timeout=2.0)
        for _ in range(args.clients)
    ]
    samples: list[Sample] = []
    try:
        for client in clients:
            client.start()
        threading.Event().wait(args.warmup)
        end = time.monotonic() + args.soak
        while True:
            gc.collect()
            own = footprint(os.getpid())
            samples.append(
                Sample(
                    sum(client.stats().probes for client in clients),
                    sum(client.stats().failures for client in clients),
                    _traced_floor(),
                    own.rss_bytes,
                    own.sockets,
                )
            )
            if time.monotonic() >= end:
                return samples
            threading.Event().wait(args.sample)
    finally:
        for client in clients:
            client.stop()
        tracemalloc.stop()


def _growth_per_10k(samples: list[Sample], field: str, steady_pool_only: bool) -> float:
    grown, probes = 0, 0
    for before, after in itertools.pairwise(samples):
        if steady_pool_only and before.sockets != after.sockets:
            continue
        grown += getattr(after, field) - getattr(before, field)
        probes += after.probes - before.probes
    return grown / probes * 10_000 if probes else 0.0


def run(args: argparse.Namespace, command: str) -> Report:
    report = Report("endurance", command)
    with tempfile.TemporaryDirectory() as workdir:
        secret = run_secret()
        with running_agent(RUNNER, Path(workdir), secret) as agent:
            _one_cycle(agent)
            gc.collect()
            baseline = footprint(os.getpid())
            probed = sum(_one_cycle(agent) for _ in range(args.cycles))
            after_cycles = _settled(baseline)
            samples = _soak(agent, args)
            after_soak = _settled(baseline)
    probes = samples[-1].probes - samples[0].probes
    failures = samples[-1].failures
    traced = _growth_per_10k(samples, "traced", steady_pool_only=True)
    rss = _growth_per_10k(samples, "rss", steady_pool_only=False)
    most_sockets = max(sample.sockets for sample in samples)

    table = Table(
        "Leaks and growth (this process: the master side)",
        ["measure", "figure", "goal"],
    )
    table.add("start/stop cycles probed", f"{probed}/{args.cycles}", "all")
    table.add(
        "threads, sockets after the cycles (baseline)",
        f"{after_cycles.threads}, {after_cycles.sockets} ({baseline.threads}, {baseline.sockets})",
        "the baseline",
    )
    table.add(
        "threads, sockets after the soak",
        f"{after_soak.threads}, {after_soak.sockets}",
        "the baseline",
    )
    table.add("soak probes after the warm-up, failures", f"{probes}, {failures}", "0 failures")
    table.add("traced memory growth per 10k probes", f"{traced / 1024:.1f} KiB", "< 64 KiB")
    table.add("RSS growth per 10k probes", f"{rss / 1024:.1f} KiB", "< 256 KiB")
    table.add("most sockets at a sample", most_sockets, f"<= {2 + 2 * args.clients}")
    report.tables.append(table)
    back = (after_cycles.threads, after_cycles.sockets) <= (baseline.threads, baseline.sockets)
    back_after_soak = (after_soak.threads, after_soak.sockets) <= (
        baseline.threads,
        baseline.sockets,
    )
    judged = probes >= MIN_JUDGED_PROBES
    report.verdicts += [
        Verdict("every cycle probed", probed == args.cycles, f"{probed}/{args.cycles}"),
        Verdict("nothing left after the cycles and the soak", back and back_after_soak, ""),
        Verdict("no failure in the soak", failures == 0, f"{failures} of {probes}"),
        Verdict(
            "traced growth under 64 KiB per 10k probes",
            traced < TRACED_LIMIT_PER_10K if judged else None,
            f"{traced / 1024:.1f} KiB over {probes} probes",
        ),
        Verdict(
            "RSS growth under 256 KiB per 10k probes",
            rss < RSS_LIMIT_PER_10K if judged else None,
            f"{rss / 1024:.1f} KiB over {probes} probes",
        ),
        Verdict(
            "at most 2 sockets per client",
            most_sockets <= 2 + 2 * args.clients,
            f"{most_sockets}",
        ),
    ]
    report.data = {"samples": [sample.__dict__ for sample in samples], "probes": probes}
    return report
