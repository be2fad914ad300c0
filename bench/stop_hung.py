"""`python -m bench.stop_hung`: stop() of clients whose agent hangs, one after another.

Clients watch a `bench.hung_servers` port with a long timeout, so that once each has
started its first probe, every probe stays in flight. The program waits until the kernel
shows one connection (or connect attempt) per client to that port, then calls `stop()` on
each client in turn and times every call and the whole. The engine's threads must be gone
right after.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import time
from pathlib import Path
from typing import Any

from bench._support import (
    CLEANUP_DEADLINE_S,
    HungServers,
    conclude,
    engine_threads,
    render_verdicts,
    run_as_script,
    sigterm_as_interrupt,
    stop_all,
    verdict,
    wait_until,
)
from rpc_datasource import HealthCheckClient

STOP_ALL_LIMIT_S = 1.0
IN_FLIGHT_STATES = {"01", "02"}  # ESTABLISHED (never answers), SYN_SENT (full backlog)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.stop_hung", description=__doc__)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument(
        "--kind", choices=("never_answers", "full_backlog"), default="never_answers"
    )
    parser.add_argument("--interval", type=float, default=1.0, help="polling interval, s")
    parser.add_argument("--timeout", type=float, default=10.0, help="probe timeout, s")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.interval <= 0 or args.timeout <= args.interval + 1:
        parser.error("--clients >= 1, --interval > 0, --timeout > --interval + 1")
    return args


def connections_to(port: int) -> int:
    """This namespace's client-side TCP sockets to 127.0.0.1:`port` that are open or opening."""
    count = 0
    with open("/proc/net/tcp") as table:
        next(table, None)
        for line in table:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            count += remote_port == port and fields[3] in IN_FLIGHT_STATES
    return count


def stop_one_by_one(clients: list[HealthCheckClient]) -> list[float]:
    """Stop each client in turn; how long each stop() took."""
    durations = []
    for client in clients:
        started = time.monotonic()
        client.stop()
        durations.append(time.monotonic() - started)
    return durations


def measure(
    args: argparse.Namespace, servers: HungServers, clients: list[HealthCheckClient]
) -> dict[str, Any]:
    """Start the clients, wait until every one has a probe in flight, stop them; the report."""
    port = servers.ports[args.kind]
    secret = secrets.token_hex(32)
    clients += [
        HealthCheckClient(
            servers.url(args.kind), secret, polling_interval=args.interval, timeout=args.timeout
        )
        for _ in range(args.clients)
    ]
    before = connections_to(port)
    for client in clients:
        client.start()
    in_flight_after_s = wait_until(
        lambda: connections_to(port) - before >= args.clients, args.interval + 5.0
    )
    in_flight = connections_to(port) - before
    probes_done = sum(client.stats().probes for client in clients)
    started = time.monotonic()
    durations = stop_one_by_one(clients)
    total_s = time.monotonic() - started
    gone_s = wait_until(lambda: not engine_threads(), CLEANUP_DEADLINE_S)
    return {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "in_flight": in_flight,
        "in_flight_after_s": round(in_flight_after_s, 3),
        "probes_finished_before_stop": probes_done,
        "stop_each_max_s": round(max(durations), 4),
        "stop_each_s": [round(d, 4) for d in durations],
        "stop_all_s": round(total_s, 4),
        "engine_threads_gone_after_s": round(gone_s, 3),
        "threads_left": engine_threads(),
    }


def judge(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The acceptance line, and the conditions that make it meaningful."""
    clients = report["config"]["clients"]
    return [
        verdict(
            "every client had a probe in flight when stopped",
            report["in_flight"] >= clients and report["probes_finished_before_stop"] == 0,
            f"{report['in_flight']}/{clients} connections open, "
            f"{report['probes_finished_before_stop']} probes finished",
        ),
        verdict(
            f"stop() of {clients} hung clients one after another < 1 s",
            report["stop_all_s"] < STOP_ALL_LIMIT_S,
            f"{report['stop_all_s']} s in all, slowest stop() {report['stop_each_max_s']} s",
        ),
        verdict(
            "engine threads gone after the last stop()",
            not report["threads_left"],
            f"after {report['engine_threads_gone_after_s']} s, left: "
            f"{report['threads_left'] or 'none'}",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run once; 0 when every line passed."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    clients: list[HealthCheckClient] = []
    with sigterm_as_interrupt():
        servers = HungServers.start(lifetime_s=args.interval + args.timeout + 120.0)
        try:
            report = measure(args, servers, clients)
        finally:
            stop_all(clients)
            servers.close()
    report["verdicts"] = judge(report)
    report["ok"] = all(v["passed"] for v in report["verdicts"])
    print(
        f"bench.stop_hung: {args.clients} clients on a {args.kind} server, interval "
        f"{args.interval:g} s, timeout {args.timeout:g} s"
    )
    print("\n".join(render_verdicts(report["verdicts"])))
    return conclude(report, args.json)


if __name__ == "__main__":
    run_as_script(main, "clients stopped, hung servers terminated")
