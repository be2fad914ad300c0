"""Agent cost: a signed `GET /forest/health` against the host app's own route, on each server.

(a) Every server kind serves the warehouse with its agent (all started at once, idle but for
the cell under load). Each cell is one server and one route under closed-loop load from a
process of its own (`_load`: wrk, or the asyncio generator where wrk is absent),
`--connections` keep-alive connections, `--warmup` s unmeasured then `--duration` s
measured: the signed `/forest/health` (fresh headers each cell) or the app's
`/manufacturers`, the cheapest unauthenticated route the warehouse has (one SELECT of 3 rows
and a JSON list; its FastAPI twin has the same). Cells are interleaved: every repeat runs
every server, signed then bare, so drift hits all alike. Per cell: requests/s, p99 latency,
and the CPU (user + sys) of every server process per request. (b) One signature check as
the agent makes it (`verify_request` with the agent's settings, v2 scheme), and the client's
signing, in µs, by `python -m pyperf timeit` in processes of its own, before any server
starts. (c) The app's own route on each server against the runner (from the cells of a).
"""

from __future__ import annotations

import argparse
import http.client
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from bench.harness.fleet import KINDS, REPO_ROOT, AgentProcess, fleet
from bench.harness.report import Report, Spread, Table, Verdict
from bench.harness.signed import signed_get
from bench.scenarios._load import LoadResult, run_load, wrk_path

SUMMARY = "signed /forest/health against the app's own route on each server; one signature in µs"
SMOKE = [
    "--servers",
    "runner",
    "--repeats",
    "1",
    "--duration",
    "1",
    "--warmup",
    "0.3",
    "--load",
    "python",
    "--pyperf-processes",
    "2",
    "--pyperf-values",
    "2",
    "--pyperf-min-time",
    "0.02",
]

HEALTH = "/forest/health"
APP_ROUTE = "/manufacturers"
ROUTES = (HEALTH, APP_ROUTE)
LIMIT = 1.10  # the old issue's goal: health costs at most 1.10 times the bare route
PAUSE_S = 0.3  # between cells, so one cell's closing connections do not overlap the next
PYPERF_DEADLINE_S = 300.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVES_APP = {
    "runner": "uvicorn, 1 process: agent on the event loop, Flask on a2wsgi's 16 threads",
    "waitress": "waitress, 1 process, 4 threads: agent as WSGI middleware in front of Flask",
    "uvicorn-fastapi": "uvicorn, FastAPI twin: agent as ASGI middleware; sync route on threads",
    "gunicorn-gthread": "gunicorn, 2 gthread workers of 4 threads, WSGI middleware",
    "gunicorn-sync": "gunicorn, 2 sync workers: one request at a time, no keep-alive",
    "gunicorn-uvicorn": "gunicorn, 2 ASGI workers of the runner's app (a2wsgi threads)",
}
SETUP = """
import secrets
from pydantic import SecretStr
from rpc_agent.core.settings import AgentSettings
from rpc_common.signing import sign_bound, signed_headers, verify_request
settings = AgentSettings(auth_secret=SecretStr(secrets.token_urlsafe(32)))
secret_values = tuple(settings.verification_secrets())
headers = signed_headers(secret_values[0], method="GET", target="/forest/health")
timestamp, signature = headers["X-Timestamp"], headers["X-Signature"]
""".strip()
VERIFY = (
    'verify_request(timestamp, signature, method="GET", target="/forest/health", body=b"", '
    "secrets=secret_values, allowed_clock_skew=settings.allowed_clock_skew, "
    "require_bound=settings.require_bound_signatures)"
)
# The setup fails (and the run with it) unless the measured verification accepts.
CHECK = f"\nassert {VERIFY} is None"
MICRO = {
    "verify (agent, v2)": VERIFY,
    "sign (client, v2)": 'signed_headers(secret_values[0], method="GET", target="/forest/health")',
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--servers", nargs="+", choices=sorted(KINDS), default=list(KINDS))
    parser.add_argument("--repeats", type=int, default=3, help="cells of each server and route")
    parser.add_argument("--duration", type=float, default=5.0, help="s measured per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="s of load before each cell")
    parser.add_argument("--connections", type=int, default=4, help="closed-loop connections")
    parser.add_argument(
        "--load",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator (auto: wrk when installed, else the asyncio one)",
    )
    parser.add_argument("--pyperf-processes", type=int, default=20, help="pyperf timeit -p")
    parser.add_argument("--pyperf-values", type=int, default=3, help="pyperf timeit -n")
    parser.add_argument("--pyperf-min-time", type=float, default=0.1, help="s per pyperf value")
    parser.add_argument("--plot", type=Path, help="draw requests/s and p99 per server here")


@dataclass(frozen=True)
class Cell:
    """One server, route and repeat under load."""

    server: str
    route: str
    repeat: int
    load: LoadResult
    server_cpu_s: float

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu_s / self.load.requests * 1e6 if self.load.requests else math.nan


@dataclass(frozen=True)
class Micro:
    """One pyperf timeit benchmark: its values in µs."""

    name: str
    values_us: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values_us)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.values_us) if len(self.values_us) > 1 else 0.0


def _process_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of `pids` (all their threads), from /proc."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def _pyperf(name: str, statement: str, args: argparse.Namespace, workdir: Path) -> Micro:
    """`python -m pyperf timeit` of `statement` in worker processes; its values in µs."""
    import pyperf  # type: ignore[import-untyped]

    output = workdir / f"pyperf-{len(list(workdir.glob('pyperf-*')))}.json"
    command = [
        sys.executable,
        "-m",
        "pyperf",
        "timeit",
        "--quiet",
        "--processes",
        str(args.pyperf_processes),
        "--values",
        str(args.pyperf_values),
        "--min-time",
        str(args.pyperf_min_time),
        "--name",
        name,
        "--output",
        str(output),
        "--setup",
        SETUP + CHECK,
        statement,
    ]
    env = {key: value for key, value in os.environ.items() if not key.startswith("FOREST_")}
    done = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=PYPERF_DEADLINE_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pyperf failed ({done.returncode}): {done.stdout}{done.stderr}")
    benchmark = pyperf.Benchmark.load(str(output))
    return Micro(name, [value * 1e6 for value in benchmark.get_values()])


def _plain_get(agent: AgentProcess, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=5.0)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _body_sizes(agent: AgentProcess) -> dict[str, int]:
    """Both routes' body bytes; raises unless both answer 200."""
    health = signed_get(agent.url, HEALTH, agent.secret)
    status, body = _plain_get(agent, APP_ROUTE)
    if (health.status, status) != (200, 200):
        raise RuntimeError(f"{agent.kind.name}: health {health.status}, {APP_ROUTE} {status}")
    return {HEALTH: len(health.body), APP_ROUTE: len(body)}


def _measure(agent: AgentProcess, route: str, repeat: int, args: argparse.Namespace) -> Cell:
    """One cell: warm-up, then the measured load with the server's CPU read around it."""
    secret = agent.secret if route == HEALTH else None
    if args.warmup > 0:
        run_load(
            args.generator,
            agent.port,
            route,
            secret=secret,
            connections=args.connections,
            duration=args.warmup,
        )
    pids = agent.pids()
    before = _process_cpu_s(pids)
    load = run_load(
        args.generator,
        agent.port,
        route,
        secret=secret,
        connections=args.connections,
        duration=args.duration,
    )
    return Cell(agent.kind.name, route, repeat, load, _process_cpu_s(pids) - before)


def _choose_generator(requested: str) -> str:
    if requested == "python":
        return "python"
    if wrk_path() is not None:
        return "wrk"
    if requested == "wrk":
        raise RuntimeError("wrk is not installed (Debian package wrk); try --load python")
    return "python"


class Cells:
    """Every cell of the run, and the figures over its repeats."""

    def __init__(self, cells: list[Cell]) -> None:
        self.cells = cells

    def of(self, server: str, route: str) -> list[Cell]:
        return [cell for cell in self.cells if cell.server == server and cell.route == route]

    def spread(self, server: str, route: str, figure: str) -> Spread:
        cells = self.of(server, route)
        if figure == "rate":
            return Spread.of(cell.load.rate for cell in cells)
        if figure == "p99":
            return Spread.of(cell.load.p99_ms for cell in cells)
        if figure == "cpu":
            return Spread.of(cell.cpu_us_per_request for cell in cells)
        return Spread.of(cell.load.generator_cpu_s / cell.load.seconds for cell in cells)

    def pair_ratios(self, server: str, figure: str) -> Spread:
        """Signed over bare within each repeat (rate or CPU per request)."""
        signed = {cell.repeat: cell for cell in self.of(server, HEALTH)}
        bare = {cell.repeat: cell for cell in self.of(server, APP_ROUTE)}
        ratios = []
        for repeat in sorted(signed.keys() & bare.keys()):
            if figure == "rate":
                ratios.append(signed[repeat].load.rate / bare[repeat].load.rate)
            else:
                ratios.append(signed[repeat].cpu_us_per_request / bare[repeat].cpu_us_per_request)
        return Spread.of(ratios)

    def faults(self) -> int:
        return sum(cell.load.errors + cell.load.bad_status for cell in self.cells)


def _throughput_table(cells: Cells, servers: list[str], repeats: int) -> Table:
    table = Table(
        f"(a) Signed {HEALTH} against the app's {APP_ROUTE}: requests/s and p99 "
        f"(median [range] over {repeats} repeats)",
        [
            "Server",
            "signed req/s",
            f"{APP_ROUTE} req/s",
            "signed / bare req/s",
            "signed p99 ms",
            "bare p99 ms",
        ],
    )
    for server in servers:
        table.add(
            server,
            cells.spread(server, HEALTH, "rate").render(0),
            cells.spread(server, APP_ROUTE, "rate").render(0),
            cells.pair_ratios(server, "rate").render(2, "x"),
            cells.spread(server, HEALTH, "p99").render(2),
            cells.spread(server, APP_ROUTE, "p99").render(2),
        )
    return table


def _cpu_table(cells: Cells, servers: list[str], generator: str) -> Table:
    table = Table(
        "(a) Server CPU (user + sys of every server process) per request, µs, and the load "
        f"generator's ({generator}) CPU in cores",
        ["Server", "signed µs", "bare µs", "signed / bare", "generator, signed", "generator, bare"],
    )
    for server in servers:
        table.add(
            server,
            cells.spread(server, HEALTH, "cpu").render(0),
            cells.spread(server, APP_ROUTE, "cpu").render(0),
            cells.pair_ratios(server, "cpu").render(2, "x"),
            cells.spread(server, HEALTH, "generator").render(2),
            cells.spread(server, APP_ROUTE, "generator").render(2),
        )
    return table


def _micro_table(micros: list[Micro], cells: Cells, servers: list[str]) -> Table:
    reference = "runner" if "runner" in servers else servers[0]
    signed_cpu = cells.spread(reference, HEALTH, "cpu").median
    table = Table(
        "(b) One signature, in-process (pyperf timeit)",
        [
            "Measure",
            "median µs",
            "mean ± stdev µs",
            "values",
            f"share of a signed request's server CPU ({reference})",
        ],
    )
    for micro in micros:
        table.add(
            micro.name,
            f"{micro.median:.2f}",
            f"{statistics.fmean(micro.values_us):.2f} ± {micro.stdev:.2f}",
            len(micro.values_us),
            f"{micro.median / signed_cpu:.1%}" if "verify" in micro.name else "(client side)",
        )
    return table


def _app_table(cells: Cells, servers: list[str]) -> Table:
    runner = cells.spread("runner", APP_ROUTE, "rate").median if "runner" in servers else math.nan
    table = Table(
        f"(c) The app's own route ({APP_ROUTE}) on each server, against the runner",
        ["Server", "req/s", "x runner", "p99 ms", "CPU µs/request", "serving the app"],
    )
    for server in servers:
        rate = cells.spread(server, APP_ROUTE, "rate")
        table.add(
            server,
            rate.render(0),
            f"{rate.median / runner:.2f}x",
            cells.spread(server, APP_ROUTE, "p99").render(2),
            cells.spread(server, APP_ROUTE, "cpu").render(0),
            SERVES_APP.get(server, ""),
        )
    return table


def _verdicts(cells: Cells, servers: list[str], repeats: int) -> list[Verdict]:
    faults = cells.faults()
    verdicts = [
        Verdict(
            "every answer under load was 2xx, no socket error",
            faults == 0,
            f"{faults} errors or non-2xx answers in {len(cells.cells)} cells",
        )
    ]
    costs = {
        server: cells.spread(server, APP_ROUTE, "rate").median
        / cells.spread(server, HEALTH, "rate").median
        for server in servers
    }
    worst = max(costs, key=lambda server: costs[server])
    detail = ", ".join(f"{server} {cost:.2f}" for server, cost in costs.items())
    verdicts.append(
        Verdict(
            f"signed {HEALTH} costs at most {LIMIT:.2f}x the app's {APP_ROUTE} "
            "(bare req/s ÷ signed req/s) on every server",
            costs[worst] <= LIMIT if repeats >= 3 else None,
            f"{detail}" + ("" if repeats >= 3 else " (fewer than 3 repeats: not judged)"),
        )
    )
    if "runner" in servers and len(servers) > 1:
        runner = cells.spread("runner", APP_ROUTE, "rate").median
        others = {
            server: cells.spread(server, APP_ROUTE, "rate").median
            for server in servers
            if server != "runner"
        }
        best = max(others, key=lambda server: others[server])
        verdicts.append(
            Verdict(
                f"the runner's price on the app's own route ({APP_ROUTE})",
                None,
                f"runner {runner:.0f} req/s, {best} {others[best]:.0f} req/s "
                f"({runner / others[best]:.2f}x the fastest other server)",
            )
        )
    return verdicts


def _plot(path: Path, cells: Cells, servers: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rates, latencies) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.38
    positions = range(len(servers))
    for offset, route, label, color in (
        (-width / 2, HEALTH, f"signed {HEALTH}", "#4c72b0"),
        (width / 2, APP_ROUTE, f"app's {APP_ROUTE}", "#dd8452"),
    ):
        for axes, figure_name in ((rates, "rate"), (latencies, "p99")):
            spreads = [cells.spread(server, route, figure_name) for server in servers]
            axes.bar(
                [x + offset for x in positions],
                [spread.median for spread in spreads],
                width,
                yerr=[
                    [spread.median - spread.low for spread in spreads],
                    [spread.high - spread.median for spread in spreads],
                ],
                capsize=3,
                label=label,
                color=color,
            )
    for axes, title in ((rates, "requests/s (median, range)"), (latencies, "p99 latency, ms")):
        axes.set_xticks(list(positions), servers, rotation=25, ha="right", fontsize=8)
        axes.set_title(title, fontsize=10)
        axes.grid(axis="y", alpha=0.3)
    rates.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(args: argparse.Namespace, command: str) -> Report:
    """Measure (b) first, on an idle machine, then the interleaved cells of (a) and (c)."""
    if args.repeats < 1 or args.duration <= 0 or args.connections < 1:
        raise SystemExit("need --repeats ≥ 1, --duration > 0, --connections ≥ 1")
    args.generator = _choose_generator(args.load)
    servers = list(dict.fromkeys(args.servers))
    pause = threading.Event()
    with tempfile.TemporaryDirectory(prefix="agent-cost-") as directory:
        workdir = Path(directory)
        micros = [_pyperf(name, statement, args, workdir) for name, statement in MICRO.items()]
        cells: list[Cell] = []
        sizes: dict[str, dict[str, int]] = {}
        with fleet(workdir) as agents:
            started = {server: agents.start(KINDS[server], 1)[0] for server in servers}
            for server, agent in started.items():
                sizes[server] = _body_sizes(agent)
            for repeat in range(1, args.repeats + 1):
                for server, agent in started.items():
                    for route in ROUTES:
                        pause.wait(PAUSE_S)
                        cell = _measure(agent, route, repeat, args)
                        cells.append(cell)
                        print(
                            f"repeat {repeat} {server:16} {route:15} {cell.load.rate:7.0f} req/s "
                            f"p99 {cell.load.p99_ms:6.2f} ms {cell.cpu_us_per_request:5.0f} µs CPU",
                            file=sys.stderr,
                        )
    found = Cells(cells)
    if args.plot is not None:
        _plot(args.plot, found, servers)
    report = Report("agent_cost", command)
    report.tables = [
        _throughput_table(found, servers, args.repeats),
        _cpu_table(found, servers, args.generator),
        _micro_table(micros, found, servers),
        _app_table(found, servers),
    ]
    report.verdicts = _verdicts(found, servers, args.repeats)
    report.data = {
        "generator": args.generator,
        "connections": args.connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repeats": args.repeats,
        "app_route": APP_ROUTE,
        "body_bytes": sizes,
        "cells": [
            {
                "server": cell.server,
                "route": cell.route,
                "repeat": cell.repeat,
                "server_cpu_s": cell.server_cpu_s,
                "cpu_us_per_request": cell.cpu_us_per_request,
                **cell.load.as_dict(),
            }
            for cell in cells
        ],
        "pyperf": {micro.name: micro.values_us for micro in micros},
        "pyperf_setup": SETUP,
        "pyperf_statements": MICRO,
    }
    return report
