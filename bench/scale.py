"""`python -m bench.scale`: many HealthCheckClients in one process against N real agents."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench._support import (
    AgentFleet,
    counter_deltas,
    counting_connections,
    health_threads,
    net_counters,
    open_fds,
    os_thread_count,
    percentile,
    raise_fd_limit,
    run_bounded,
    sigterm_as_interrupt,
    thread_bound,
    thread_stacks,
    time_wait_sockets,
    wait_until,
    write_json,
)
from rpc_datasource import HealthCheckClient
from rpc_datasource.scheduler import shared_scheduler

SAMPLE_EVERY_S = 0.5
FD_HEADROOM = 256
THREADS_GONE_DEADLINE_S = 10.0


@dataclass(frozen=True)
class Sample:
    """One look at the process, taken every `SAMPLE_EVERY_S` seconds."""

    t_s: float
    threads: int
    health_threads: int
    os_threads: int
    fds: int
    cpu_pct: float
    probes: int
    failures: int


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--interval", type=float, default=1.0, help="polling interval, s")
    parser.add_argument("--duration", type=float, default=20.0, help="measuring time, s")
    parser.add_argument("--timeout", type=float, default=2.0, help="probe timeout, s")
    parser.add_argument("--failure-threshold", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.agents < 1 or args.interval <= 0 or args.duration <= 0:
        parser.error("--clients and --agents must be >= 1, --interval and --duration > 0")
    return args


def totals(clients: list[HealthCheckClient], latencies: list[float]) -> tuple[int, int]:
    """Probes and failures summed over all clients; appends each last probe latency seen."""
    probes = failures = 0
    for client in clients:
        stats = client.stats()
        probes += stats.probes
        failures += stats.failures
        if stats.last_latency_s is not None:
            latencies.append(stats.last_latency_s)
    return probes, failures


def sample_loop(
    clients: list[HealthCheckClient], duration: float
) -> tuple[list[Sample], float, list[float]]:
    """Sample every `SAMPLE_EVERY_S` for `duration`: samples, mean sampling cost, latencies."""
    samples: list[Sample] = []
    latencies: list[float] = []
    started = time.monotonic()
    cpu_before = time.process_time()
    wall_before = started
    cost = 0.0
    tick = 1
    while tick * SAMPLE_EVERY_S <= duration + 1e-9:
        time.sleep(max(0.0, started + tick * SAMPLE_EVERY_S - time.monotonic()))
        now, cpu_now = time.monotonic(), time.process_time()
        cpu_pct = 100.0 * (cpu_now - cpu_before) / max(1e-9, now - wall_before)
        cpu_before, wall_before = cpu_now, now
        probes, failures = totals(clients, latencies)
        samples.append(
            Sample(
                t_s=round(now - started, 3),
                threads=threading.active_count(),
                health_threads=len(health_threads()),
                os_threads=os_thread_count(),
                fds=open_fds(),
                cpu_pct=round(cpu_pct, 1),
                probes=probes,
                failures=failures,
            )
        )
        cost += time.monotonic() - now
        tick += 1
    return samples, cost / max(1, len(samples)), latencies


def probe_rates(samples: list[Sample], interval: float) -> tuple[float, float]:
    """Overall probes/s over the run, and steady-state probes/s after the first interval."""
    last = samples[-1]
    overall = last.probes / last.t_s
    steady = [s for s in samples if s.t_s >= interval]
    if len(steady) < 2:
        return overall, overall
    first = steady[0]
    return overall, (last.probes - first.probes) / (last.t_s - first.t_s)


def error_summary(clients: list[HealthCheckClient], top: int = 5) -> dict[str, int]:
    """The most common last errors among clients that failed at least once."""
    errors: Counter[str] = Counter()
    for client in clients:
        stats = client.stats()
        if stats.failures:
            errors[stats.last_error or "?"] += 1
    return dict(errors.most_common(top))


def stop_all(clients: list[HealthCheckClient]) -> None:
    """Stop every client, one after another, as an application shutting down would."""
    for client in clients:
        client.stop()


def measure(
    fleet: AgentFleet, clients: list[HealthCheckClient], args: argparse.Namespace
) -> dict[str, Any]:
    """Start the clients, sample, stop them, stop the agents; the report."""
    bound = thread_bound()
    baseline_threads, baseline_fds = threading.active_count(), open_fds()
    for index in range(args.clients):
        agent = fleet.agents[index % len(fleet.agents)]
        clients.append(
            HealthCheckClient(
                agent.health_url,
                fleet.secret,
                polling_interval=args.interval,
                failure_threshold=args.failure_threshold,
                timeout=args.timeout,
            )
        )
    agent_cpu_before, net_before = fleet.cpu_seconds(), net_counters()
    with counting_connections() as connections:
        started = time.monotonic()
        for client in clients:
            client.start()
        start_all_s = time.monotonic() - started
        samples, sampling_cost_s, latencies = sample_loop(clients, args.duration)
    wall_s = time.monotonic() - started
    agent_cpu_pct = 100.0 * (fleet.cpu_seconds() - agent_cpu_before) / wall_s
    net = counter_deltas(net_before, net_counters())
    time_wait = time_wait_sockets()
    scheduler = shared_scheduler.current()
    lateness = scheduler.lateness() if scheduler is not None else None
    errors = error_summary(clients)
    fds_at_end = open_fds()

    stop_deadline = 60.0 + bound * (args.timeout + 1.0)
    stopped, stop_all_s = run_bounded(lambda: stop_all(clients), stop_deadline, "stop-all")
    stacks = "" if stopped else thread_stacks()
    gone_s = wait_until(lambda: not health_threads(), THREADS_GONE_DEADLINE_S)
    leftover = health_threads()
    gc.collect()
    threads_after, fds_after = threading.active_count(), open_fds()
    exit_codes = fleet.terminate()

    overall_rate, steady_rate = probe_rates(samples, args.interval)
    expected_rate = args.clients / args.interval
    steady_cpu = [s.cpu_pct for s in samples if s.t_s >= args.interval] or [0.0]
    max_health = max(s.health_threads for s in samples)
    max_total = max(s.threads for s in samples)
    report: dict[str, Any] = {
        "config": {
            "clients": args.clients,
            "agents": args.agents,
            "clients_per_agent": round(args.clients / args.agents, 1),
            "interval_s": args.interval,
            "duration_s": args.duration,
            "timeout_s": args.timeout,
            "failure_threshold": args.failure_threshold,
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "threads": {
            "baseline": baseline_threads,
            "max_total": max_total,
            "max_rpc_health": max_health,
            "max_os_threads": max(s.os_threads for s in samples),
            "bound_rpc_health": bound,
            "bound_total": baseline_threads + bound,
            "within_bound": max_health <= bound and max_total <= baseline_threads + bound,
        },
        "cpu": {
            "client_process_mean_pct": round(sum(steady_cpu) / len(steady_cpu), 1),
            "client_process_max_pct": max(steady_cpu),
            "agents_total_mean_pct": round(agent_cpu_pct, 1),
            "sampling_cost_ms": round(1000 * sampling_cost_s, 1),
        },
        "probes": {
            "total": samples[-1].probes,
            "overall_per_s": round(overall_rate, 1),
            "steady_per_s": round(steady_rate, 1),
            "expected_per_s": round(expected_rate, 1),
            "steady_vs_expected_pct": round(100 * steady_rate / expected_rate, 1),
        },
        "lateness": {
            "samples": lateness.samples if lateness else 0,
            "p50_ms": round(1000 * lateness.p50_s, 2) if lateness else None,
            "p99_ms": round(1000 * lateness.p99_s, 2) if lateness else None,
            "max_ms": round(1000 * lateness.max_s, 2) if lateness else None,
        },
        "latency": {
            "sampled": len(latencies),
            "p50_ms": round(1000 * percentile(latencies, 0.5), 2),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
            "max_ms": round(1000 * max(latencies, default=0.0), 2),
            "over_1s": sum(1 for latency in latencies if latency >= 1.0),
            "note": "each client's last probe latency, read at every sample",
        },
        "tcp": {
            "connects": connections.connects,
            "reconnects_of_dropped": connections.reset,
            "connects_per_probe": round(connections.connects / max(1, samples[-1].probes), 3),
            "reconnects_per_later_probe": round(
                max(0, connections.connects - args.clients)
                / max(1, samples[-1].probes - args.clients),
                3,
            ),
            "listen_overflows": net.get("ListenOverflows"),
            "listen_drops": net.get("ListenDrops"),
            "syn_retransmits": net.get("TCPSynRetrans"),
            "time_wait_at_end": time_wait,
            "note": "connects: this process (urllib3); the rest: whole network namespace",
        },
        "failures": {"count": samples[-1].failures, "last_errors": errors},
        "fds": {
            "baseline": baseline_fds,
            "max": max(s.fds for s in samples),
            "at_end": fds_at_end,
            "after_stop": fds_after,
        },
        "stop": {
            "start_all_s": round(start_all_s, 3),
            "stop_all_s": round(stop_all_s, 3),
            "stop_finished": stopped,
            "threads_gone_after_s": round(gone_s, 3),
            "leftover_rpc_health": leftover,
            "threads_after_stop": threads_after,
        },
        "agents": {
            "exit_codes": exit_codes,
            "all_exit_zero": all(code == 0 for code in exit_codes.values()),
        },
        "samples": [asdict(sample) for sample in samples],
    }
    if stacks:
        report["stop"]["stacks"] = stacks
    return report


def judge(report: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Problems (make the run fail) and warnings (worth a look) found in the report."""
    problems, warnings = [], []
    threads, stop = report["threads"], report["stop"]
    if threads["max_rpc_health"] > threads["bound_rpc_health"]:
        problems.append(
            f"rpc-health threads peaked at {threads['max_rpc_health']} "
            f"> bound {threads['bound_rpc_health']}"
        )
    if threads["max_total"] > threads["bound_total"]:
        problems.append(
            f"process threads peaked at {threads['max_total']} > baseline + bound "
            f"{threads['bound_total']}"
        )
    if not stop["stop_finished"]:
        problems.append(f"stopping all clients did not finish in {stop['stop_all_s']:.0f} s")
    if stop["leftover_rpc_health"]:
        problems.append(f"threads left after stop: {stop['leftover_rpc_health']}")
    if not report["agents"]["all_exit_zero"]:
        problems.append(f"agent exit codes after SIGTERM: {report['agents']['exit_codes']}")
    if report["failures"]["count"]:
        warnings.append(
            f"{report['failures']['count']} failed probes: {report['failures']['last_errors']}"
        )
    if report["probes"]["steady_vs_expected_pct"] < 90:
        warnings.append(
            f"probe rate {report['probes']['steady_per_s']}/s is under 90 % of the "
            f"expected {report['probes']['expected_per_s']}/s"
        )
    tcp = report["tcp"]
    if tcp["reconnects_per_later_probe"] > 0.1:
        warnings.append(
            f"keep-alive connections not reused: {tcp['connects']} TCP connects for "
            f"{report['probes']['total']} probes of {report['config']['clients']} clients "
            f"({tcp['reconnects_per_later_probe']} new connections per probe after each "
            "client's first)"
        )
    if tcp["listen_overflows"] or tcp["listen_drops"]:
        warnings.append(
            f"listen queue overflowed {tcp['listen_overflows']} times "
            f"({tcp['listen_drops']} drops, {tcp['syn_retransmits']} SYN retransmits)"
        )
    if (report["lateness"]["p99_ms"] or 0) > 100:
        warnings.append(f"start lateness p99 {report['lateness']['p99_ms']} ms > 100 ms")
    return problems, warnings


def render(report: dict[str, Any]) -> str:
    """The report as readable text."""
    c, t, cpu, p = report["config"], report["threads"], report["cpu"], report["probes"]
    late, fds, stop, lim = report["lateness"], report["fds"], report["stop"], report["fd_limit"]
    lines = [
        f"bench.scale: {c['clients']} clients over {c['agents']} agents "
        f"({c['clients_per_agent']} each), interval {c['interval_s']:g} s, "
        f"timeout {c['timeout_s']:g} s, threshold {c['failure_threshold']}, "
        f"{c['duration_s']:g} s measured, {report['machine']['cpus']} CPUs, "
        f"Python {report['machine']['python']}",
        f"  fd limit      soft {lim['soft_before']} -> {lim['soft_after']} (hard {lim['hard']}, "
        f"needed ~{lim['needed']}, raised: {lim['raised']})",
        f"  agents ready  {report['agents_ready_s']:.2f} s",
        f"  threads       max total {t['max_total']} (baseline {t['baseline']}, bound "
        f"{t['bound_total']}), max rpc-health {t['max_rpc_health']} (bound "
        f"{t['bound_rpc_health']}), max OS threads {t['max_os_threads']} -> "
        f"{'OK' if t['within_bound'] else 'EXCEEDED'}",
        f"  CPU           client process mean {cpu['client_process_mean_pct']} % / max "
        f"{cpu['client_process_max_pct']} % of one core; agents together "
        f"{cpu['agents_total_mean_pct']} % (sampling cost {cpu['sampling_cost_ms']} ms / 0.5 s)",
        f"  probes        {p['total']} total, steady {p['steady_per_s']}/s vs expected "
        f"{p['expected_per_s']}/s ({p['steady_vs_expected_pct']} %), overall "
        f"{p['overall_per_s']}/s incl. the first-interval ramp-up",
        f"  lateness      p50 {late['p50_ms']} ms, p99 {late['p99_ms']} ms, max "
        f"{late['max_ms']} ms ({late['samples']} samples)",
        f"  latency       p50 {report['latency']['p50_ms']} ms, p99 "
        f"{report['latency']['p99_ms']} ms, max {report['latency']['max_ms']} ms, "
        f"{report['latency']['over_1s']} >= 1 s ({report['latency']['sampled']} sampled)",
        f"  TCP           {report['tcp']['connects']} connects "
        f"({report['tcp']['reconnects_per_later_probe']} per probe after each client's first), "
        f"listen overflows "
        f"{report['tcp']['listen_overflows']}, SYN retransmits {report['tcp']['syn_retransmits']}, "
        f"TIME-WAIT sockets at end {report['tcp']['time_wait_at_end']}",
        f"  failures      {report['failures']['count']} {report['failures']['last_errors'] or ''}",
        f"  open fds      baseline {fds['baseline']}, max {fds['max']}, at end {fds['at_end']}, "
        f"after stop {fds['after_stop']}",
        f"  start/stop    start-all {stop['start_all_s']} s, stop-all {stop['stop_all_s']} s "
        f"(finished: {stop['stop_finished']}), rpc-health threads gone after "
        f"{stop['threads_gone_after_s']} s, left: {stop['leftover_rpc_health'] or 'none'}, "
        f"threads after stop {stop['threads_after_stop']}",
        f"  agents exit   {report['agents']['exit_codes']}",
    ]
    for problem in report["problems"]:
        lines.append(f"  PROBLEM       {problem}")
    for warning in report["warnings"]:
        lines.append(f"  warning       {warning}")
    lines.append(f"  result        {'OK' if report['ok'] else 'FAILED'}")
    if "stacks" in stop:
        lines.append(stop["stacks"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when the thread bound held and nothing was left behind."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.ERROR, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    fd_limit = raise_fd_limit(args.clients + FD_HEADROOM)
    secret = secrets.token_hex(32)
    clients: list[HealthCheckClient] = []
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="bench-scale-") as workdir:
        fleet = AgentFleet(Path(workdir), secret)
        try:
            ready_s = fleet.start(args.agents)
            report = measure(fleet, clients, args)
        finally:
            run_bounded(lambda: stop_all(clients), 60.0, "cleanup")
            fleet.kill_leftovers()
    report["fd_limit"] = fd_limit
    report["agents_ready_s"] = round(ready_s, 3)
    report["problems"], report["warnings"] = judge(report)
    report["ok"] = not report["problems"]
    print(render(report))
    write_json(args.json, report)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: clients stopped, agents terminated", file=sys.stderr)
        sys.exit(130)
