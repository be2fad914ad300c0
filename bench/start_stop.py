"""`python -m bench.start_stop`: leak check over rounds of starting and stopping many clients.

Each round creates `--clients` clients against one agent, starts them, waits until each has
probed once, and stops them all. After every round the engine's threads must be gone and
the process's thread and fd counts must be back to the baseline taken before round 1.
"""

from __future__ import annotations

import argparse
import gc
import logging
import secrets
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench._support import (
    CLEANUP_DEADLINE_S,
    PROBING_THREAD_LIMIT,
    STOP_ALL_DEADLINE_S,
    AgentFleet,
    conclude,
    engine_threads,
    health_threads,
    open_fds,
    render_verdicts,
    run_as_script,
    run_bounded,
    sigterm_as_interrupt,
    stop_all,
    verdict,
    wait_until,
)
from rpc_datasource import HealthCheckClient

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


def back_to(threads: int, fds: int) -> bool:
    """No engine thread left, and the thread and fd counts at the baseline."""
    gc.collect()
    return (
        not engine_threads()
        and threading.active_count() == threads
        and open_fds() <= fds + FD_SLACK
    )


def run_round(
    url: str,
    secret: str,
    args: argparse.Namespace,
    clients: list[HealthCheckClient],
    baseline: tuple[int, int],
) -> dict[str, Any]:
    """Create, start, await a probe from each, stop; timings and what was left behind."""
    clients[:] = [
        HealthCheckClient(url, secret, polling_interval=args.interval, timeout=args.timeout)
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
    probed_s = wait_until(all_probed, args.interval + args.timeout + 10.0)
    failures = sum(client.stats().failures for client in clients)
    stopped, stop_s = run_bounded(lambda: stop_all(clients), STOP_ALL_DEADLINE_S, "stop-all")
    clean_s = wait_until(lambda: back_to(*baseline), CLEANUP_DEADLINE_S, step_s=0.1)
    clients.clear()
    return {
        "start_all_s": round(start_s, 4),
        "all_probed_after_s": round(probed_s, 3),
        "failures": failures,
        "max_rpc_health_threads": peak[0],
        "stop_all_s": round(stop_s, 4),
        "stop_finished": stopped,
        "clean_after_s": round(clean_s, 3),
        "threads_left": engine_threads(),
        "threads_after": threading.active_count(),
        "fds_after": open_fds(),
    }


def judge(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per check, over all rounds."""
    rounds, (threads, fds) = report["rounds"], report["baseline"]
    late = [i + 1 for i, r in enumerate(rounds) if r["all_probed_after_s"] < 0]
    leaks = [i + 1 for i, r in enumerate(rounds) if r["clean_after_s"] < 0]
    peak = max(r["max_rpc_health_threads"] for r in rounds)
    return [
        verdict("every client probed in every round", not late, f"rounds failing: {late or '-'}"),
        verdict(
            "every stop-all finished",
            all(r["stop_finished"] for r in rounds),
            f"max {max(r['stop_all_s'] for r in rounds)} s",
        ),
        verdict(
            f"threads ({threads}) and fds ({fds}, +{FD_SLACK}) back to baseline after each round",
            not leaks,
            f"rounds leaking: {leaks or '-'}",
        ),
        verdict(
            f"rpc-health* threads <= {PROBING_THREAD_LIMIT}",
            peak <= PROBING_THREAD_LIMIT,
            f"max {peak}",
        ),
        verdict(
            "agent exited 0 after SIGTERM",
            all(code == 0 for code in report["agent_exit_codes"].values()),
            str(report["agent_exit_codes"]),
        ),
    ]


def render(report: dict[str, Any]) -> str:
    """The report as readable text."""
    c = report["config"]
    lines = [
        f"bench.start_stop: {c['clients']} clients x {c['rounds']} rounds against 1 agent, "
        f"interval {c['interval']:g} s, timeout {c['timeout']:g} s",
        "  round  start-all  all-probed  stop-all  clean-after  rpc-health  failures  threads  fds",
    ]
    for number, r in enumerate(report["rounds"], 1):
        lines.append(
            f"  {number:>5}  {r['start_all_s']:>8.4f}s  {r['all_probed_after_s']:>9.3f}s  "
            f"{r['stop_all_s']:>7.4f}s  {r['clean_after_s']:>10.3f}s  "
            f"{r['max_rpc_health_threads']:>10}  {r['failures']:>8}  {r['threads_after']:>7}  "
            f"{r['fds_after']:>3}"
        )
    lines.append("judge:")
    lines += render_verdicts(report["verdicts"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the rounds; 0 when every check passed."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    clients: list[HealthCheckClient] = []
    rounds: list[dict[str, Any]] = []
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="bench-start-stop-") as tmp:
        fleet = AgentFleet(Path(tmp), secrets.token_hex(32))
        try:
            fleet.start(1)
            gc.collect()
            baseline = (threading.active_count(), open_fds())
            for _ in range(args.rounds):
                rounds.append(
                    run_round(fleet.agents[0].health_url, fleet.secret, args, clients, baseline)
                )
                if not rounds[-1]["stop_finished"]:
                    break  # A hung stop would make the next rounds meaningless.
            exit_codes = fleet.terminate()
        finally:
            run_bounded(lambda: stop_all(clients), STOP_ALL_DEADLINE_S, "cleanup")
            fleet.kill_leftovers()
    report: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "baseline": baseline,
        "rounds": rounds,
        "agent_exit_codes": exit_codes,
    }
    report["verdicts"] = judge(report)
    report["ok"] = all(v["passed"] for v in report["verdicts"])
    print(render(report))
    return conclude(report, args.json)


if __name__ == "__main__":
    run_as_script(main, "clients stopped, agent terminated")
