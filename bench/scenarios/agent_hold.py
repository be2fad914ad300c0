"""Agent hold: what N polling, watching or SSE masters hold on the agent they watch.

On each server the README recommends (the runner, gunicorn with the ASGI worker, gunicorn
gthread, waitress), the threads, sockets and RSS of the agent's server processes (the
master and its workers: `footprint_of(agent.pids())`), first with no master (the baseline),
then with N masters once they settled (`--settle` s): `--samples` readings `--sample-every`
s apart, their median and max. Each (server, design, N) gets a fresh agent, so every
increment is over a baseline of its own (`--reuse-agent`: one agent per server and design,
N ascending, for the smoke run).

Designs: `poll` (`HealthCheckClient`s every `--interval` s: shorter than the default 30 s,
so that each master's keep-alive connection stays open, the steady state); `watch` (held
requests, `watch_wait` 25 s, the agent's default bound of 8 held watches: the others are
answered at once and poll every `--interval` s); `watch-raised` (the bound raised to N with
`FOREST_HEALTH_MAX_WATCHERS`, for N over 8); `sse` (legacy `SseClient`s, against
`bench.scenarios._many_streams_agent`: the same warehouse whose agent keeps every stream,
where the product keeps one).

Each master talks to the agent through a `CountingRelay` port of its own: the clients of
one process share one aiohttp pool, keyed by host and port, so without it N polling
clients would share a few connections where N master processes hold N (`--shared-pool`
drops the relays). The agent sees one connection per relayed one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.harness.fleet import (
    KINDS,
    RECOMMENDED,
    AgentProcess,
    AgentStartError,
    ServerKind,
    run_secret,
    start_agent,
)
from bench.harness.processes import Footprint, footprint_of
from bench.harness.relay import CountingRelay
from bench.harness.report import Report, Spread, Table, Verdict
from rpc_datasource import HealthCheckClient
from rpc_datasource.health.events import ProbeEvent
from rpc_datasource.legacy.sse_client import SseClient
from rpc_datasource.legacy.sse_parser import SseEvent

SUMMARY = "threads, sockets and RSS an agent holds for N polling, watching or SSE masters"
SMOKE = [
    "--servers",
    "runner",
    "--masters",
    "1",
    "2",
    "--interval",
    "0.5",
    "--settle",
    "0.8",
    "--samples",
    "2",
    "--sample-every",
    "0.2",
    "--reuse-agent",
]

DESIGNS = ("poll", "watch", "watch-raised", "sse")
LAUNCHER = "bench.scenarios._many_streams_agent"
DEFAULT_BOUND = 8  # FOREST_HEALTH_MAX_WATCHERS's default
WATCH_WAIT_S = 25.0
HELD_S = 0.5  # an answer that took this long was held (the client's own "not held" limit)
BASELINE_SETTLE_S = 0.3
BASELINE_SAMPLES = 3
BASELINE_EVERY_S = 0.2
DRAIN_DEADLINE_S = 5.0
MIB = 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=sorted(KINDS),
        default=[kind.name for kind in RECOMMENDED],
        help="server kinds (default: the recommended ones)",
    )
    parser.add_argument("--designs", nargs="+", choices=DESIGNS, default=list(DESIGNS))
    parser.add_argument("--masters", nargs="+", type=int, default=[1, 10, 100], help="N")
    parser.add_argument("--interval", type=float, default=1.0, help="polling interval, s")
    parser.add_argument("--settle", type=float, default=3.0, help="s after start, unsampled")
    parser.add_argument("--samples", type=int, default=5, help="readings in the steady state")
    parser.add_argument("--sample-every", type=float, default=0.5, help="s between readings")
    parser.add_argument("--shared-pool", action="store_true", help="no relay per master")
    parser.add_argument("--reuse-agent", action="store_true", help="one agent for every N")
    parser.add_argument("--plot", type=Path, help="draw the increments at the largest N here")


def _pause(seconds: float) -> None:
    threading.Event().wait(seconds)


class Masters(Protocol):
    """N masters of one design, started and stopped together."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def status(self) -> dict[str, int]: ...


@dataclass
class ProbeSeen:
    """What one health client's last probe said (written by its hook on the engine loop)."""

    started: float
    last_end: float | None = None
    last_ok: bool = False
    last_held: bool = False
    probes: int = 0
    failures: int = 0

    def __call__(self, event: ProbeEvent) -> None:
        self.probes += 1
        self.last_end = time.monotonic()
        self.last_ok = event.result.succeeded
        self.last_held = (event.latency_s or 0.0) >= HELD_S
        self.failures += not event.result.succeeded


class HealthMasters:
    """N `HealthCheckClient`s, polling or watching, one per URL."""

    def __init__(self, urls: Sequence[str], secret: str, mode: str, interval: float) -> None:
        self.mode = mode
        self.interval = interval
        now = time.monotonic()
        self.seen = [ProbeSeen(now) for _ in urls]
        self.clients = [
            HealthCheckClient(
                url,
                secret,
                polling_interval=interval,
                mode=mode,  # type: ignore[arg-type]
                watch_wait=WATCH_WAIT_S,
                hooks=[seen],
                name=f"master-{index}",
            )
            for index, (url, seen) in enumerate(zip(urls, self.seen, strict=True))
        ]

    def start(self) -> None:
        now = time.monotonic()
        for seen, client in zip(self.seen, self.clients, strict=True):
            seen.started = now
            client.start()

    def stop(self) -> None:
        for client in self.clients:
            client.stop()

    def status(self) -> dict[str, int]:
        """Masters polling (answered within a polling interval), in a held request (the
        last answer a success, and none since for longer, or the last one held, or it was
        the first plain probe, which a watch follows at once), failing, or waiting (no
        answer yet, or none since a failure: queued or in a backlog). A request queued in
        the server after a success looks held from here."""
        now = time.monotonic()
        # A poll is due about one interval after the last; answered in milliseconds.
        quiet_limit = 1.5 * self.interval + 0.2
        counts = {"polling": 0, "held": 0, "failing": 0, "waiting": 0}
        for seen in self.seen:
            quiet = now - (seen.last_end if seen.last_end is not None else seen.started)
            watch_sent = seen.last_held or seen.probes == 1 or quiet > quiet_limit
            if seen.last_end is None or (quiet > quiet_limit and not seen.last_ok):
                counts["waiting"] += 1
            elif not seen.last_ok:
                counts["failing"] += 1
            elif self.mode == "watch" and watch_sent:
                counts["held"] += 1
            elif quiet > quiet_limit:
                counts["waiting"] += 1
            else:
                counts["polling"] += 1
        counts["failures"] = sum(seen.failures for seen in self.seen)
        return counts


@dataclass
class StreamSeen:
    """The events one SSE client got, and on which of its connections the last came."""

    client: SseClient | None = None
    events: int = 0
    attempt_of_last_event: int = -1

    def __call__(self, _event: SseEvent) -> None:
        self.events += 1
        if self.client is not None:
            self.attempt_of_last_event = self.client.connection_attempts


class SseMasters:
    """N legacy `SseClient`s on `/forest/sse`, one per URL."""

    def __init__(self, urls: Sequence[str], secret: str) -> None:
        self.seen = [StreamSeen() for _ in urls]
        self.clients = []
        for url, seen in zip(urls, self.seen, strict=True):
            seen.client = SseClient(f"{url}/forest/sse", secret, on_event=seen)
            self.clients.append(seen.client)

    def start(self) -> None:
        for client in self.clients:
            client.start()

    def stop(self) -> None:
        for client in self.clients:
            client.close()

    def status(self) -> dict[str, int]:
        """Masters streaming (an event came on their current connection), or waiting."""
        streaming = sum(
            seen.events > 0 and seen.attempt_of_last_event == client.connection_attempts
            for seen, client in zip(self.seen, self.clients, strict=True)
        )
        attempts = sum(client.connection_attempts for client in self.clients)
        return {
            "streaming": streaming,
            "waiting": len(self.clients) - streaming,
            "reconnects": max(0, attempts - len(self.clients)),
        }


@dataclass
class Cell:
    """One server, design and N: the readings and what the masters saw."""

    server: str
    design: str
    masters: int
    bound: int | None
    baseline: list[Footprint] = field(default_factory=list)
    steady: list[Footprint] = field(default_factory=list)
    statuses: list[dict[str, int]] = field(default_factory=list)
    error: str = ""

    def base(self, name: str) -> float:
        return float(statistics.median(getattr(reading, name) for reading in self.baseline))

    def median(self, name: str) -> float:
        return float(statistics.median(getattr(reading, name) for reading in self.steady))

    def most(self, name: str) -> float:
        return float(max(getattr(reading, name) for reading in self.steady))

    def increment(self, name: str) -> float:
        return self.median(name) - self.base(name)

    def all_served(self) -> bool:
        """Whether every master was served as its design means at the last reading: polling,
        held (or, over the default bound, polling instead), streaming."""
        if not self.statuses:
            return False
        last = self.statuses[-1]
        states = {
            "poll": ("polling",),
            "watch": ("held", "polling"),
            "watch-raised": ("held",),
            "sse": ("streaming",),
        }[self.design]
        return sum(last.get(state, 0) for state in states) == self.masters

    def served(self) -> str:
        """The masters' state at the last reading, in words."""
        if not self.statuses:
            return "n/a"
        last = self.statuses[-1]
        order = ("polling", "held", "streaming", "waiting", "failing")
        words = [f"{last[key]} {key}" for key in order if last.get(key)]
        if last.get("reconnects"):
            words.append(f"{last['reconnects']} reconnects")
        if last.get("failures"):
            words.append(f"{last['failures']} failed probes")
        return ", ".join(words) or "none"


def _kind_for(kind: ServerKind, design: str) -> ServerKind:
    """`kind` itself, or for SSE the same server on the launcher that keeps every stream."""
    if design != "sse":
        return kind
    if kind.is_gunicorn:
        return dataclasses.replace(kind, app_module=LAUNCHER)
    return dataclasses.replace(kind, module=LAUNCHER)


def _bound(design: str, masters: int) -> int | None:
    return masters if design == "watch-raised" else None


def _settings(bound: int | None) -> dict[str, str]:
    return {} if bound is None else {"FOREST_HEALTH_MAX_WATCHERS": str(bound)}


def _readings(agent: AgentProcess, count: int, every: float) -> list[Footprint]:
    readings = []
    for index in range(count):
        if index:
            _pause(every)
        readings.append(footprint_of(agent.pids()))
    return readings


@contextlib.contextmanager
def _master_urls(agent: AgentProcess, count: int, shared_pool: bool) -> Iterator[list[str]]:
    """One URL per master: a relay of its own, or the agent's own URL."""
    if shared_pool:
        yield [agent.url] * count
        return
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(CountingRelay(agent.port)).url for _ in range(count)]


def _make_masters(design: str, urls: list[str], secret: str, interval: float) -> Masters:
    if design == "sse":
        return SseMasters(urls, secret)
    return HealthMasters(urls, secret, "poll" if design == "poll" else "watch", interval)


def _measure(cell: Cell, agent: AgentProcess, args: argparse.Namespace) -> None:
    """Start the cell's masters, let them settle, take the readings, stop them."""
    with _master_urls(agent, cell.masters, args.shared_pool) as urls:
        masters = _make_masters(cell.design, urls, agent.secret, args.interval)
        try:
            masters.start()
            _pause(args.settle)
            for index in range(args.samples):
                if index:
                    _pause(args.sample_every)
                cell.steady.append(footprint_of(agent.pids()))
                cell.statuses.append(masters.status())
        finally:
            masters.stop()


def _drained(agent: AgentProcess, sockets: int) -> None:
    """Until the agent holds no more sockets than `sockets` (bounded: a queued request may
    keep its socket)."""
    deadline = time.monotonic() + DRAIN_DEADLINE_S
    while time.monotonic() < deadline and footprint_of(agent.pids()).sockets > sockets:
        _pause(0.1)


def _start(kind: ServerKind, workdir: Path, secret: str, bound: int | None) -> AgentProcess:
    agent = start_agent(kind, workdir, secret, settings=_settings(bound))
    _pause(BASELINE_SETTLE_S)
    return agent


def _run_cells(
    kind: ServerKind,
    design: str,
    masters: list[int],
    args: argparse.Namespace,
    workdir: Path,
    secret: str,
    progress: Callable[[Cell], None],
) -> list[Cell]:
    """Every N of one server and design: a fresh agent each, or one for all (`--reuse-agent`)."""
    counts = [n for n in masters if design != "watch-raised" or n > DEFAULT_BOUND]
    cells = [Cell(kind.name, design, n, _bound(design, n)) for n in counts]
    if not cells:
        return []
    served = _kind_for(kind, design)
    shared: AgentProcess | None = None
    try:
        for cell in cells:
            bound = cell.bound
            if args.reuse_agent and design == "watch-raised":
                bound = cell.bound = max(counts)
            try:
                if shared is None or not args.reuse_agent:
                    if shared is not None:
                        shared.end()
                    shared = _start(served, workdir, secret, bound)
                    baseline = _readings(shared, BASELINE_SAMPLES, BASELINE_EVERY_S)
                cell.baseline = baseline
                _measure(cell, shared, args)
                if args.reuse_agent:
                    _drained(shared, int(cell.base("sockets")))
            except (AgentStartError, OSError) as error:
                cell.error = str(error).splitlines()[0]
            progress(cell)
    finally:
        if shared is not None:
            shared.end()
    return cells


def _row_figures(cell: Cell, name: str, scale: float, digits: int) -> tuple[str, str]:
    median, most = cell.median(name) / scale, cell.most(name) / scale
    shown = f"{median:.{digits}f}"
    if round(most, digits) != round(median, digits):
        shown += f" ({most:.{digits}f})"
    return shown, f"{cell.increment(name) / scale:+.{digits}f}"


DESIGN_LABELS = {
    "poll": "poll",
    "watch": "watch, bound 8",
    "watch-raised": "watch, bound N",
    "sse": "SSE, every stream kept",
}


def _base_spread(starts: list[Cell], name: str, scale: float = 1.0) -> Spread:
    return Spread.of(cell.base(name) / scale for cell in starts)


def _tables(cells: list[Cell], args: argparse.Namespace) -> list[Table]:
    measured = [cell for cell in cells if cell.steady]
    baseline = Table(
        "The agent with no master: median [range] over the starts of each server",
        ["server", "starts", "processes", "threads", "sockets", "RSS MiB"],
    )
    for server in args.servers:
        own = [cell for cell in measured if cell.server == server]
        if not own:
            continue
        starts = list({id(cell.baseline): cell for cell in own}.values())
        baseline.add(
            server,
            len(starts),
            _base_spread(starts, "processes").render(0),
            _base_spread(starts, "threads").render(0),
            _base_spread(starts, "sockets").render(0),
            _base_spread(starts, "rss_bytes", MIB).render(1),
        )
    held = Table(
        "The agent with N masters: median over the readings (max in brackets), and the "
        "increment of the median over the agent's own baseline",
        [
            "server",
            "design",
            "N",
            "masters at the last reading",
            "threads",
            "sockets",
            "RSS MiB",
            "Δ threads",
            "Δ sockets",
            "Δ RSS MiB",
        ],
    )
    for cell in cells:
        label = DESIGN_LABELS[cell.design]
        if not cell.steady:
            held.add(cell.server, label, cell.masters, f"not measured: {cell.error}", *["-"] * 6)
            continue
        threads, sockets, rss = (
            _row_figures(cell, "threads", 1, 0),
            _row_figures(cell, "sockets", 1, 0),
            _row_figures(cell, "rss_bytes", MIB, 1),
        )
        held.add(
            cell.server,
            label,
            cell.masters,
            cell.served(),
            threads[0],
            sockets[0],
            rss[0],
            threads[1],
            sockets[1],
            rss[1],
        )
    largest = max(args.masters)
    per_master = Table(
        f"Per master at N = {largest}: the increment divided by N",
        ["server", "design", "threads", "sockets", "RSS KiB"],
    )
    for cell in measured:
        if cell.masters == largest:
            per_master.add(
                cell.server,
                DESIGN_LABELS[cell.design],
                f"{cell.increment('threads') / largest:.2f}",
                f"{cell.increment('sockets') / largest:.2f}",
                f"{cell.increment('rss_bytes') / 1024 / largest:.0f}",
            )
    return [baseline, held, per_master]


def _verdicts(cells: list[Cell], args: argparse.Namespace) -> list[Verdict]:
    measured = [cell for cell in cells if cell.steady]
    verdicts = [
        Verdict(
            "every cell measured",
            len(measured) == len(cells),
            f"{len(measured)}/{len(cells)}"
            + "".join(
                f"; {c.server} {c.design} N={c.masters}: {c.error}" for c in cells if c.error
            ),
        )
    ]
    polled = [c for c in measured if c.server == "runner" and c.design == "poll"]
    if polled:
        short = [c for c in polled if c.increment("sockets") < c.masters]
        verdicts.append(
            Verdict(
                "the runner sees one connection per polling master",
                not short,
                ", ".join(f"N={c.masters}: +{c.increment('sockets'):.0f}" for c in polled),
            )
        )
    watched = [c for c in measured if c.server == "runner" and c.design.startswith("watch")]
    if watched:
        threaded = [c for c in watched if c.increment("threads") > 0]
        verdicts.append(
            Verdict(
                "held watches take no thread on the runner",
                not threaded,
                ", ".join(f"N={c.masters}: {c.increment('threads'):+.0f}" for c in watched),
            )
        )
    largest = max(args.masters)
    for design, state in (("watch-raised", "held"), ("sse", "streaming")):
        top = [c for c in measured if c.design == design and c.masters == largest]
        if top:
            carried = [c.server for c in top if c.statuses[-1].get(state, 0) == largest]
            verdicts.append(
                Verdict(
                    f"servers carrying {largest} masters all {state} ({design})",
                    None,
                    ", ".join(carried) or "none",
                )
            )
    return verdicts


def _plot(cells: list[Cell], largest: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = [cell for cell in cells if cell.steady and cell.masters == largest]
    servers = list(dict.fromkeys(cell.server for cell in top))
    designs = [design for design in DESIGNS if any(cell.design == design for cell in top)]
    measures: list[tuple[str, float, str]] = [
        ("threads", 1.0, "Δ threads"),
        ("sockets", 1.0, "Δ sockets"),
        ("rss_bytes", MIB, "Δ RSS (MiB)"),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    width = 0.8 / max(1, len(designs))
    for axis, (name, scale, title) in zip(axes, measures, strict=True):
        for offset, design in enumerate(designs):
            values, hatches = [], []
            for server in servers:
                found = [c for c in top if c.server == server and c.design == design]
                values.append(found[0].increment(name) / scale if found else 0.0)
                hatches.append("" if found and found[0].all_served() else "//")
            positions = [index + offset * width for index in range(len(servers))]
            bars = axis.bar(positions, values, width, label=DESIGN_LABELS[design])
            for bar, hatch in zip(bars, hatches, strict=True):
                bar.set_hatch(hatch)
        axis.set_xticks([index + width * (len(designs) - 1) / 2 for index in range(len(servers))])
        axis.set_xticklabels(servers, rotation=15, fontsize=8)
        axis.set_title(f"{title} with {largest} masters", fontsize=10)
        axis.axhline(0, color="black", linewidth=0.5)
    axes[0].legend(fontsize=8)
    figure.suptitle("hatched: not every master served (queued, refused or polling instead)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _cell_data(cell: Cell) -> dict[str, Any]:
    return {
        "server": cell.server,
        "design": cell.design,
        "masters": cell.masters,
        "bound": cell.bound,
        "error": cell.error,
        "baseline": [dataclasses.asdict(reading) for reading in cell.baseline],
        "steady": [dataclasses.asdict(reading) for reading in cell.steady],
        "statuses": cell.statuses,
    }


def run(args: argparse.Namespace, command: str) -> Report:
    report = Report("agent_hold", command)
    masters = sorted(set(args.masters))
    args.masters = masters
    secret = run_secret()
    cells: list[Cell] = []

    def progress(cell: Cell) -> None:
        shown = cell.served() if cell.steady else cell.error
        print(f"  {cell.server} {cell.design} N={cell.masters}: {shown}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="bench-agent-hold-") as workdir:
        for kind in (KINDS[name] for name in args.servers):
            for design in args.designs:
                cells += _run_cells(kind, design, masters, args, Path(workdir), secret, progress)
    report.tables = _tables(cells, args)
    report.verdicts = _verdicts(cells, args)
    report.data = {
        "interval_s": args.interval,
        "watch_wait_s": WATCH_WAIT_S,
        "relay_per_master": not args.shared_pool,
        "fresh_agent_per_cell": not args.reuse_agent,
        "cells": [_cell_data(cell) for cell in cells],
    }
    if args.plot is not None:
        _plot(cells, max(masters), args.plot)
    return report
