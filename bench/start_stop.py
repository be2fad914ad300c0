"""`python -m bench.start_stop`: start and stop many HealthCheckClients, round after round."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench._support import (
    AgentFleet,
    health_threads,
    open_fds,
    run_bounded,
    sigterm_as_interrupt,
    thread_bound,
    thread_stacks,
    wait_until,
    write_json,
)
from rpc_datasource import HealthCheckClient

CLEANUP_DEADLINE_S = 10.0
FD_SLACK = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.start_stop", description=__doc__)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval", type=float, default=1.0, help="polling interval, s")
    parser.add_argument("--timeout", type=float, default=2.0, help="probe timeout, s")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.rounds < 1 or args.interval <= 0 or args.timeout <= 0:
        parser.error("--clients and --rounds must be >= 1, --interval and --timeout > 0")
    return args


def stop_all(clients: list[HealthCheckClient]) -> None:
    """Stop every client, one after another."""
    for client in clients:
        client.stop()


def run_round(
    number: int,
    fleet: AgentFleet,
    clients: list[HealthCheckClient],
    args: argparse.Namespace,
    baseline_threads: int,
    baseline_fds: int,
) -> dict[str, Any]:
    """Create, start, await a probe from each, stop; timings and what was left behind."""
    url = fleet.agents[0].health_url
    clients[:] = [
        HealthCheckClient(url, fleet.secret, polling_interval=args.interval, timeout=args.timeout)
        for _ in range(args.clients)
    ]
    peak = [0]

    def all_probed() -> bool:
        peak[0] = max(peak[0], len(health_threads()))
        return all(client.stats().probes >= 1 for client in clients)

    started = time.monotonic()
    for client in clients:
        client.start()
    start_s = time.monotonic() - started
    probed_s = wait_until(all_probed, args.interval * 1.2 + args.timeout + 10.0)
    probes = sum(client.stats().probes for client in clients)
    failures = sum(client.stats().failures for client in clients)
    errors = Counter(
        stats.last_error or "?" for stats in (c.stats() for c in clients) if stats.failures
    )

    stop_deadline = 60.0 + thread_bound() * (args.timeout + 1.0)
    stopped, stop_s = run_bounded(lambda: stop_all(clients), stop_deadline, "stop-all")
    stacks = "" if stopped else thread_stacks()
    clean_s = wait_until(
        lambda: not health_threads() and threading.active_count() == baseline_threads,
        CLEANUP_DEADLINE_S,
    )

    def fds_back() -> bool:
        gc.collect()
        return open_fds() <= baseline_fds + FD_SLACK

    fds_s = wait_until(fds_back, CLEANUP_DEADLINE_S, step_s=0.2)
    result: dict[str, Any] = {
        "round": number,
        "start_all_s": round(start_s, 4),
        "all_probed_after_s": round(probed_s, 3),
        "probes": probes,
        "failures": failures,
        "last_errors": dict(errors.most_common(3)),
        "max_rpc_health_threads": peak[0],
        "stop_all_s": round(stop_s, 4),
        "stop_finished": stopped,
        "threads_clean_after_s": round(clean_s, 3),
        "leftover_rpc_health": health_threads(),
        "threads_after": threading.active_count(),
        "fds_after": open_fds(),
        "fds_back_after_s": round(fds_s, 3),
    }
    if stacks:
        result["stacks"] = stacks
    clients.clear()
    return result


def summarize(rounds: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Mean and max of one timing over the rounds."""
    values = [r[key] for r in rounds]
    return {"mean": round(statistics.fmean(values), 4), "max": round(max(values), 4)}


def judge(report: dict[str, Any]) -> list[str]:
    """Problems that make the run fail: hangs, leaked threads or fds, missing probes, bad exits."""
    problems = []
    for r in report["rounds"]:
        label = f"round {r['round']}:"
        if r["all_probed_after_s"] < 0:
            problems.append(f"{label} not every client probed within the deadline")
        if not r["stop_finished"]:
            problems.append(f"{label} stopping all clients did not finish ({r['stop_all_s']} s)")
        if r["threads_clean_after_s"] < 0:
            problems.append(
                f"{label} threads not back to baseline {report['baseline_threads']}: "
                f"{r['threads_after']} alive, rpc-health left {r['leftover_rpc_health']}"
            )
        if r["fds_back_after_s"] < 0:
            problems.append(
                f"{label} open fds {r['fds_after']} not back to baseline {report['baseline_fds']}"
            )
        if r["max_rpc_health_threads"] > report["thread_bound"]:
            problems.append(
                f"{label} {r['max_rpc_health_threads']} rpc-health threads > bound "
                f"{report['thread_bound']}"
            )
    if not all(code == 0 for code in report["agent_exit_codes"].values()):
        problems.append(f"agent exit codes after SIGTERM: {report['agent_exit_codes']}")
    return problems


def render(report: dict[str, Any]) -> str:
    """The report as readable text."""
    c = report["config"]
    lines = [
        f"bench.start_stop: {c['clients']} clients x {c['rounds']} rounds against 1 agent, "
        f"interval {c['interval_s']:g} s, timeout {c['timeout_s']:g} s, "
        f"{report['machine']['cpus']} CPUs, Python {report['machine']['python']}",
        f"  baseline      {report['baseline_threads']} threads, {report['baseline_fds']} fds, "
        f"rpc-health bound {report['thread_bound']}",
        "  round  start-all  all-probed  stop-all  clean-after  max-rpc-health  probes  "
        "failures  threads  fds",
    ]
    for r in report["rounds"]:
        lines.append(
            f"  {r['round']:>5}  {r['start_all_s']:>8.4f}s  {r['all_probed_after_s']:>9.3f}s  "
            f"{r['stop_all_s']:>7.4f}s  {r['threads_clean_after_s']:>10.3f}s  "
            f"{r['max_rpc_health_threads']:>14}  {r['probes']:>6}  {r['failures']:>8}  "
            f"{r['threads_after']:>7}  {r['fds_after']:>3}"
        )
    s, p = report["start_all_s"], report["stop_all_s"]
    lines.append(
        f"  start-all     mean {s['mean']} s, max {s['max']} s; stop-all mean {p['mean']} s, "
        f"max {p['max']} s"
    )
    for r in report["rounds"]:
        if r["last_errors"]:
            lines.append(f"  round {r['round']} errors {r['last_errors']}")
    lines.append(f"  agent exit    {report['agent_exit_codes']}")
    for problem in report["problems"]:
        lines.append(f"  PROBLEM       {problem}")
    lines.append(f"  result        {'OK' if report['ok'] else 'FAILED'}")
    lines.extend(r["stacks"] for r in report["rounds"] if "stacks" in r)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the rounds; 0 when every round started, probed, stopped and left nothing behind."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.ERROR, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    secret = secrets.token_hex(32)
    clients: list[HealthCheckClient] = []
    rounds: list[dict[str, Any]] = []
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="bench-start-stop-") as tmp:
        fleet = AgentFleet(Path(tmp), secret)
        try:
            fleet.start(1)
            gc.collect()
            baseline_threads, baseline_fds = threading.active_count(), open_fds()
            for number in range(1, args.rounds + 1):
                result = run_round(number, fleet, clients, args, baseline_threads, baseline_fds)
                rounds.append(result)
                if not result["stop_finished"]:
                    break  # A hung stop would make the next rounds meaningless.
            exit_codes = fleet.terminate()
        finally:
            run_bounded(lambda: stop_all(clients), 60.0, "cleanup")
            fleet.kill_leftovers()
    report: dict[str, Any] = {
        "config": {
            "clients": args.clients,
            "rounds": args.rounds,
            "interval_s": args.interval,
            "timeout_s": args.timeout,
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "baseline_threads": baseline_threads,
        "baseline_fds": baseline_fds,
        "thread_bound": thread_bound(),
        "rounds": rounds,
        "start_all_s": summarize(rounds, "start_all_s"),
        "stop_all_s": summarize(rounds, "stop_all_s"),
        "agent_exit_codes": exit_codes,
    }
    report["problems"] = judge(report)
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
