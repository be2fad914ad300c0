"""`python -m bench.watch_fallback`: a watch-mode client against agents that do not hold.

An agent that answers a watch at once with nothing changed is not holding it: it is over
its watcher bound, or it ignores `wait`. The client must then ask every `polling_interval`,
never in a tight loop. For each agent kind this counts the client's requests over
`--seconds` (from its `start()`) and the gaps between them:

- the warehouse (`python -m examples.warehouse`, a child process) with
  `FOREST_HEALTH_MAX_WATCHERS=0`: over its bound for every watch;
- a tiny in-process HTTP server that answers the health JSON at once with a constant
  `ETag` and ignores `wait` (it counts the requests it gets; it checks no signature);
- (extra) the warehouse with `FOREST_HEALTH_MAX_WATCHERS=1` and two clients: one holds the
  only slot, the other is over the bound.

The judge checks each count against `seconds / polling_interval` (the first plain probe and
the watch right after it come back to back, then one request per jittered interval) and
that no gap after the second request is shorter than `polling_interval * (1 - jitter)`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import random
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench._support import (
    HEALTH_PATH,
    AgentFleet,
    conclude,
    percentile,
    render_verdicts,
    run_as_script,
    sigterm_as_interrupt,
    verdict,
)
from rpc_datasource import HealthCheckClient, ProbeEvent

# An answer this slow was held (rpc_datasource.health.watch_rules.EARLY_ANSWER_S).
HELD_ANSWER_S = 0.5
# Grid coalescing and the loop may move a probe a little; a tight loop would be ~0 s apart.
GAP_SLACK_S = 0.05


@dataclass
class Requests:
    """A probe hook: when each probe of one client ended, how long it took, and its result."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: list[tuple[float, float | None, bool]] = field(default_factory=list)

    def hook(self, event: ProbeEvent) -> None:
        with self.lock:
            self.seen.append((time.monotonic(), event.latency_s, event.result.succeeded))

    def within(self, start: float, end: float) -> list[tuple[float, float | None, bool]]:
        with self.lock:
            return [item for item in self.seen if start <= item[0] <= end]


class IgnoringServer(ThreadingHTTPServer):
    """Answers every GET with the health JSON at once, a constant ETag; counts requests."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), IgnoringHandler)
        self.lock = threading.Lock()
        self.requests: list[tuple[float, str, bool]] = []  # (time, target, If-None-Match sent)
        self.started = time.time()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class IgnoringHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as an agent would
    server: IgnoringServer

    def do_GET(self) -> None:
        server = self.server
        with server.lock:
            server.requests.append(
                (time.monotonic(), self.path, self.headers.get("If-None-Match") is not None)
            )
        body = json.dumps(
            {
                "status": "ok",
                "version": "ignores-wait",
                "instance_id": "ignores-wait-1",
                "schema_etag": '"constant"',
                "uptime_s": round(time.time() - server.started, 3),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("ETag", '"always-the-same"')
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def ignoring_server() -> Iterator[IgnoringServer]:
    server = IgnoringServer()
    thread = threading.Thread(target=server.serve_forever, name="bench-ignoring", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5.0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.watch_fallback", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="counting time per agent")
    parser.add_argument("--interval", type=float, default=1.0, help="polling_interval, s")
    parser.add_argument("--watch-wait", type=float, default=5.0, help="watch_wait, s")
    parser.add_argument("--timeout", type=float, default=1.0, help="probe timeout, s")
    parser.add_argument("--jitter", type=float, default=0.1)
    parser.add_argument("--no-extra", action="store_true", help="skip the bound-1 two-client case")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.interval <= 0 or args.watch_wait <= 0:
        parser.error("--seconds, --interval and --watch-wait must be > 0")
    return args


def client_for(
    args: argparse.Namespace, url: str, secret: str, seed: int
) -> tuple[HealthCheckClient, Requests]:
    requests = Requests()
    client = HealthCheckClient(
        url,
        secret,
        polling_interval=args.interval,
        timeout=args.timeout,
        jitter=args.jitter,
        mode="watch",
        watch_wait=args.watch_wait,
        hooks=[requests.hook],
        rng=random.Random(seed),
    )
    return client, requests


def figures(
    args: argparse.Namespace, times: list[float], held: int, failures: int
) -> dict[str, Any]:
    """Count and gaps of one client's requests over the window."""
    gaps = [b - a for a, b in itertools.pairwise(times)]
    steady = gaps[1:]  # the first plain probe and the watch after it come back to back
    return {
        "requests": len(times),
        "held": held,
        "failures": failures,
        "gap_min_s": round(min(steady), 3) if steady else None,
        "gap_p50_s": round(percentile(steady, 0.5), 3) if steady else None,
        "gap_max_s": round(max(steady), 3) if steady else None,
        "first_gap_s": round(gaps[0], 3) if gaps else None,
    }


def watch_for(
    args: argparse.Namespace, clients: list[tuple[HealthCheckClient, Requests]]
) -> list[dict[str, Any]]:
    """Start the clients, count for `--seconds`, stop them; figures per client."""
    start = time.monotonic()
    for client, _ in clients:
        client.start()
    try:
        time.sleep(args.seconds)
    finally:
        for client, _ in clients:
            client.stop()
    results = []
    for _, requests in clients:
        seen = requests.within(start, start + args.seconds)
        held = sum(1 for _, latency, ok in seen if ok and latency and latency >= HELD_ANSWER_S)
        failures = sum(1 for *_, ok in seen if not ok)
        results.append(figures(args, [at for at, _, _ in seen], held, failures))
    return results


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    secret = secrets.token_hex(32)
    cases: dict[str, Any] = {}
    # The warehouse over its bound for every watch.
    fleet = AgentFleet(workdir / "bound0", secret, extra_env={"FOREST_HEALTH_MAX_WATCHERS": "0"})
    fleet.workdir.mkdir()
    try:
        fleet.start(1)
        cases["warehouse_bound_0"] = watch_for(
            args, [client_for(args, fleet.agents[0].health_url, secret, 1)]
        )
        cases["warehouse_bound_0_exit"] = fleet.terminate()
    finally:
        fleet.kill_leftovers()
    # A server that ignores wait.
    with ignoring_server() as server:
        url = f"http://127.0.0.1:{server.port}{HEALTH_PATH}"
        start = time.monotonic()
        result = watch_for(args, [client_for(args, url, secret, 2)])
        with server.lock:
            got = [r for r in server.requests if start <= r[0] <= start + args.seconds]
        result[0]["server_requests"] = len(got)
        result[0]["server_requests_with_wait"] = sum(1 for _, target, _ in got if "wait=" in target)
        result[0]["server_requests_with_if_none_match"] = sum(1 for *_, inm in got if inm)
        cases["ignores_wait"] = result
    if not args.no_extra:
        fleet = AgentFleet(
            workdir / "bound1", secret, extra_env={"FOREST_HEALTH_MAX_WATCHERS": "1"}
        )
        fleet.workdir.mkdir()
        try:
            fleet.start(1)
            url = fleet.agents[0].health_url
            cases["warehouse_bound_1_two_clients"] = watch_for(
                args, [client_for(args, url, secret, 3), client_for(args, url, secret, 4)]
            )
            cases["warehouse_bound_1_exit"] = fleet.terminate()
        finally:
            fleet.kill_leftovers()
    return {
        "config": {
            **{k: v for k, v in vars(args).items() if k != "json"},
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "cases": cases,
    }


def judge_client(args: argparse.Namespace, name: str, result: dict[str, Any]) -> dict[str, Any]:
    """About seconds/interval requests (+1: the first two come back to back); no short gap."""
    expected = args.seconds / args.interval
    low = args.seconds / (args.interval * (1 + args.jitter)) - 1
    high = args.seconds / (args.interval * (1 - args.jitter)) + 2
    floor = args.interval * (1 - args.jitter) - GAP_SLACK_S
    gap = result["gap_min_s"]
    ok = low <= result["requests"] <= high and gap is not None and gap >= floor
    return verdict(
        f"{name}: about {expected:g} requests in {args.seconds:g} s, none closer than "
        f"{floor:.2f} s",
        ok,
        f"{result['requests']} requests (allowed {low:.1f} to {high:.1f}), gaps min {gap} / "
        f"p50 {result['gap_p50_s']} / max {result['gap_max_s']} s",
    )


def summarize(
    args: argparse.Namespace, report: dict[str, Any]
) -> tuple[list[str], list[dict[str, Any]]]:
    c, cases = report["config"], report["cases"]
    lines = [
        f"bench.watch_fallback: polling_interval {c['interval']:g} s, watch_wait "
        f"{c['watch_wait']:g} s, timeout {c['timeout']:g} s, jitter {c['jitter']:g}, counted "
        f"over {c['seconds']:g} s from start(); {c['cpus']} CPUs, Python {c['python']}"
    ]

    def describe(result: dict[str, Any]) -> str:
        return (
            f"{result['requests']} requests (held {result['held']}, failures "
            f"{result['failures']}); first two {result['first_gap_s']} s apart, then gaps min "
            f"{result['gap_min_s']} / p50 {result['gap_p50_s']} / max {result['gap_max_s']} s"
        )

    verdicts = []
    bound0 = cases["warehouse_bound_0"][0]
    lines.append(f"  warehouse, FOREST_HEALTH_MAX_WATCHERS=0: {describe(bound0)}")
    verdicts.append(judge_client(args, "warehouse over its watcher bound (0)", bound0))
    ignoring = cases["ignores_wait"][0]
    lines.append(
        f"  server ignoring wait (constant ETag): {describe(ignoring)}; the server counted "
        f"{ignoring['server_requests']} ({ignoring['server_requests_with_wait']} with wait=, "
        f"{ignoring['server_requests_with_if_none_match']} with If-None-Match)"
    )
    verdicts.append(judge_client(args, "server that ignores wait", ignoring))
    verdicts.append(
        verdict(
            "server that ignores wait: the client asked with wait= after the first answer",
            ignoring["server_requests_with_wait"] >= ignoring["server_requests"] - 1,
            f"{ignoring['server_requests_with_wait']}/{ignoring['server_requests']}",
        )
    )
    if "warehouse_bound_1_two_clients" in cases:
        first, second = cases["warehouse_bound_1_two_clients"]
        lines.append(
            f"  warehouse, FOREST_HEALTH_MAX_WATCHERS=1, two clients: A {describe(first)}; "
            f"B {describe(second)}"
        )
        limit = args.seconds / (args.interval * (1 - args.jitter)) + 2
        most = max(first["requests"], second["requests"])
        # A held answer comes back only after watch_wait: count it only if the window allows.
        held_ok = first["held"] + second["held"] >= 1 or args.seconds <= args.watch_wait + 1
        verdicts.append(
            verdict(
                f"bound 1, two clients: neither client over {limit:.1f} requests, one held",
                most <= limit and held_ok,
                f"A {first['requests']} (held {first['held']}), B {second['requests']} "
                f"(held {second['held']})",
            )
        )
    exits = {key: value for key, value in cases.items() if key.endswith("_exit")}
    verdicts.append(
        verdict(
            "warehouses exited 0 after SIGTERM",
            all(code == 0 for codes in exits.values() for code in codes.values()),
            f"{exits}",
        )
    )
    return lines, verdicts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="bench-fallback-") as workdir:
        report = run(args, Path(workdir))
    lines, verdicts = summarize(args, report)
    report["verdicts"] = verdicts
    report["ok"] = all(v["passed"] is not False for v in verdicts)
    print("\n".join([*lines, "judge:", *render_verdicts(verdicts)]))
    return conclude(report, args.json)


if __name__ == "__main__":
    run_as_script(main, "clients stopped, child processes terminated")
