"""Detection latency per fault: polling (defaults, fast), watch mode and the legacy SSE client.

Each trial is one warehouse agent on the project's runner, watched by one client of every
design at once; each client starts on its own random offset before the fault (its first
probe or stream, one more second to be up, then a uniform wait over one of its cycles), so
the fault strikes at a random phase of each design's cycle. The faults: SIGTERM (graceful
stop), SIGKILL of the session (crash), SIGSTOP of the session (freeze), a black-holed
`CountingRelay` in front of the agent, and the database file moved away (the warehouse's
readiness check fails; `--check-interval` is its period). Latency runs from the fault to
`on_server_down`; for the legacy SSE client to `on_rpc_stop` (its only callback), and,
reported apart, to the moment it notices its stream is gone (it only logs that and
reconnects). No detection within a row's window (its bound, 20 % and 3 s more) is blind.
Trials run concurrently, started `--stagger` s apart and interleaved across faults.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import random
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness.fleet import RUNNER, AgentProcess, launch_agent, run_secret, wait_ready
from bench.harness.processes import cpu_seconds
from bench.harness.relay import CountingRelay
from bench.harness.report import Report, Summary, Table, Verdict, percentile
from bench.scenarios._detection_trials import (
    FAULT_LABELS,
    FAULTS,
    SSE_LOST,
    SSE_STOP,
    UP_MARGIN_S,
    Design,
    Seen,
    Trial,
    designs,
    row_label,
    run_trial,
)

SUMMARY = "time from a fault (stop, crash, freeze, black hole, failing check) to down, per design"
SMOKE = [
    "--designs",
    "poll-fast,watch-fast",
    "--faults",
    "stop,crash",
    "--trials",
    "2",
    "--stagger",
    "0.2",
    "--max-phase",
    "1",
]

DEFAULT_DESIGNS = "poll-default,poll-fast,watch,watch-fast,sse"
# A callback runs on the callback pool, a moment after the decision: allowed past a bound.
DELIVERY_S = 0.5
START_BATCH = 10
JOIN_SLACK_S = 30.0


def _names(known: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = sorted(set(names) - set(known))
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(known)}; not {unknown}")
        return names

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    known = tuple(designs(25.0, 10.0))
    parser.add_argument(
        "--designs", type=_names(known), default=DEFAULT_DESIGNS.split(","), help=", ".join(known)
    )
    parser.add_argument(
        "--faults", type=_names(FAULTS), default=list(FAULTS), help=", ".join(FAULTS)
    )
    parser.add_argument("--trials", type=int, default=20, help="trials per fault")
    parser.add_argument("--watch-wait", type=float, default=25.0, help="watch_wait of 'watch'")
    parser.add_argument(
        "--heartbeat", type=float, default=10.0, help="the agents' SSE heartbeat interval"
    )
    parser.add_argument(
        "--check-interval", type=float, default=1.0, help="the warehouse's --db-check-interval"
    )
    parser.add_argument("--stagger", type=float, default=0.5, help="seconds between trials")
    parser.add_argument(
        "--max-phase", type=float, default=None, help="cap on the random phase wait (smoke)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the phases")
    parser.add_argument("--plot", type=Path, help="draw the latencies to this PNG")


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """The clients' DOWN lines and reconnects, hundreds of them, stay off the report."""
    logger = logging.getLogger("rpc_datasource")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _start_agents(
    specs: list[tuple[str, int]],
    workdir: Path,
    secret: str,
    args: argparse.Namespace,
    cleanup: contextlib.ExitStack,
) -> dict[tuple[str, int], tuple[AgentProcess, Path]]:
    """An agent per trial, started `START_BATCH` at a time (each waits for its readiness)."""
    checked = dataclasses.replace(
        RUNNER, module_options=("--db-check-interval", f"{args.check_interval:g}")
    )
    settings = {"FOREST_SSE_HEARTBEAT_INTERVAL": f"{args.heartbeat:g}"}
    started: dict[tuple[str, int], tuple[AgentProcess, Path]] = {}
    for first in range(0, len(specs), START_BATCH):
        batch = []
        for fault, index in specs[first : first + START_BATCH]:
            name = f"{fault}-{index}"
            kind = checked if fault == "readiness" else RUNNER
            agent = launch_agent(kind, workdir, secret, settings=settings, name=name)
            cleanup.callback(agent.end)
            started[(fault, index)] = (agent, workdir / f"{name}.db")
            batch.append(agent)
        for agent in batch:
            wait_ready(agent)
    return started


@dataclass
class Cell:
    """One row (design) under one fault, over its trials."""

    fault: str
    row: str
    bound: float | None
    window: float
    latencies: list[float]
    blind: int
    late: list[float]  # detections after the window (counted blind)
    not_up: int
    false_downs: int
    errors: int

    @property
    def summary(self) -> Summary:
        return Summary.of(self.latencies)

    @property
    def trials(self) -> int:
        return len(self.latencies) + self.blind


def _cell(fault: str, row: str, design: Design, trials: list[Trial], check_s: float) -> Cell:
    window = design.window_s(row, fault, check_s)
    cell = Cell(fault, row, design.bound_s(row, fault, check_s), window, [], 0, [], 0, 0, 0)
    for trial in trials:
        seen: Seen = trial.seen[row]
        if trial.fault_at is None or trial.error is not None:
            cell.errors += 1
            continue
        cell.false_downs += sum(1 for at in seen.downs if at < trial.fault_at)
        if seen.up is None or seen.up >= trial.fault_at:
            cell.not_up += 1
            continue
        after = [at - trial.fault_at for at in seen.downs if at >= trial.fault_at]
        if after and after[0] <= window:
            cell.latencies.append(after[0])
        else:
            cell.blind += 1
            cell.late += after[:1]
    return cell


def _secs(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _bound_text(cell: Cell) -> str:
    if cell.bound is None:
        return "never"
    return "at once" if cell.bound == 0 else _secs(cell.bound)


def _short(cell: Cell) -> str:
    if not cell.latencies:
        return f"blind ({cell.blind}/{cell.trials})" if cell.trials else "n/a"
    text = f"{_secs(cell.summary.median)} [{_secs(cell.summary.p95)}, {_secs(cell.summary.max)}]"
    return text + (f", {cell.blind} blind" if cell.blind else "")


def _tables(cells: list[Cell], rows: list[str], known: dict[str, Design]) -> list[Table]:
    faults = list(dict.fromkeys(cell.fault for cell in cells))
    matrix = Table(
        "Detection latency, s: median [p95, max] over the trials",
        ["design", *(FAULT_LABELS[fault] for fault in faults)],
    )
    for row in rows:
        found = {cell.fault: cell for cell in cells if cell.row == row}
        matrix.add(row_label(row, known), *(_short(found[fault]) for fault in faults))
    full = Table(
        "Every cell: latency from the fault to the down (s), and the design's worst case",
        ["fault", "design", "n", "median", "p95", "max", "blind", "bound", "false downs"],
    )
    for cell in cells:
        summary = cell.summary
        full.add(
            cell.fault,
            cell.row,
            summary.n,
            _secs(summary.median),
            _secs(summary.p95),
            _secs(summary.max),
            f"{cell.blind}/{cell.trials}",
            _bound_text(cell),
            cell.false_downs,
        )
    return [matrix, full]


def _verdicts(cells: list[Cell], rows: list[str]) -> list[Verdict]:
    health = [cell for cell in cells if cell.row not in (SSE_STOP, SSE_LOST)]
    over = [
        f"{cell.fault}/{cell.row} {_secs(cell.summary.max)} > {_secs(cell.bound)}"
        for cell in cells
        if cell.latencies and cell.bound is not None and cell.summary.max > cell.bound + DELIVERY_S
    ]
    blind = [f"{cell.fault}/{cell.row} {cell.blind}" for cell in health if cell.blind]
    false_downs = sum(cell.false_downs for cell in cells)
    invalid = [
        f"{cell.fault}/{cell.row}: {cell.not_up} not up, {cell.errors} errors"
        for cell in cells
        if cell.not_up or cell.errors
    ]
    verdicts = [
        Verdict("no false down (a down before the fault)", false_downs == 0, f"{false_downs}"),
        Verdict(
            "every client up before its fault, no trial failed",
            not invalid,
            "; ".join(invalid) or "all",
        ),
        Verdict(
            "the HealthCheckClient designs detect every fault in every trial",
            not blind,
            ", ".join(blind) or "none blind",
        ),
        Verdict(
            f"every detection within its design's bound (+{DELIVERY_S:g} s delivery)",
            not over,
            "; ".join(over) or "all",
        ),
    ]
    if SSE_STOP in rows:
        stop_cells = [cell for cell in cells if cell.row == SSE_STOP]
        as_read = all(
            (cell.blind == 0) if cell.fault == "stop" else (not cell.latencies)
            for cell in stop_cells
        )
        verdicts.append(
            Verdict(
                "legacy SSE: on_rpc_stop fires on a graceful stop only (as its code reads)",
                as_read,
                ", ".join(
                    f"{cell.fault} {len(cell.latencies)}/{cell.trials}" for cell in stop_cells
                ),
            )
        )
    return verdicts


def _plot(cells: list[Cell], rows: list[str], known: dict[str, Design], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    faults = list(dict.fromkeys(cell.fault for cell in cells))
    colors = plt.get_cmap("tab10")
    width = 0.8 / len(rows)
    jitter = random.Random(0)
    figure, axis = plt.subplots(figsize=(13, 5.5))
    floor, top = 1e-3, 200.0
    for slot, row in enumerate(rows):
        color = colors(slot)
        for group, fault in enumerate(faults):
            cell = next(cell for cell in cells if cell.fault == fault and cell.row == row)
            x = group + (slot - (len(rows) - 1) / 2) * width
            points = [max(floor, value) for value in cell.latencies]
            xs = [x + jitter.uniform(-width / 4, width / 4) for _ in points]
            axis.scatter(xs, points, s=12, color=color, alpha=0.7, label=None)
            if cell.bound:
                axis.hlines(cell.bound, x - width / 2, x + width / 2, color=color, linewidth=2)
            if cell.blind:
                axis.scatter([x], [top * 0.7], marker="x", s=40, color=color)
        axis.scatter([], [], s=12, color=color, label=row_label(row, known))
    axis.set_yscale("log")
    axis.set_ylim(floor * 0.8, top)
    axis.set_xticks(range(len(faults)))
    axis.set_xticklabels([FAULT_LABELS[fault] for fault in faults])
    axis.set_ylabel("fault to down, s (log)")
    axis.set_title(
        "Detection latency per trial; bar: the design's worst-case bound; x at the top: blind"
    )
    axis.grid(axis="y", which="major", alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plan(
    trial: Trial, chosen: list[Design], seed: int, cap: float | None
) -> list[tuple[Design, random.Random]]:
    """Each design's random start offset before the fault, and its client's own rng."""
    rng = random.Random(f"{seed}-{trial.fault}-{trial.index}")
    plan = []
    for design in chosen:
        cycle = design.cycle_s if cap is None else min(cap, design.cycle_s)
        trial.offsets[design.name] = design.first_s + UP_MARGIN_S + rng.uniform(0.0, cycle)
        plan.append((design, random.Random(rng.random())))
    return plan


def run(args: argparse.Namespace, command: str) -> Report:
    known = designs(args.watch_wait, args.heartbeat)
    chosen = [known[name] for name in args.designs]
    rows = [row for design in chosen for row in design.rows]
    specs = [(fault, index) for fault in args.faults for index in range(args.trials)]
    random.Random(args.seed).shuffle(specs)  # the faults interleaved in time
    lateness: list[float] = []
    abort = threading.Event()
    trials: list[Trial] = []
    started_at = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="bench-detection-") as workdir,
        contextlib.ExitStack() as cleanup,
        _quiet_logs(),
    ):
        cleanup.callback(abort.set)
        agents = _start_agents(specs, Path(workdir), run_secret(), args, cleanup)
        agents_ready_s = time.monotonic() - started_at
        plans = {}
        for fault, index in specs:
            agent, db_path = agents[(fault, index)]
            relay = None
            if fault == "blackhole":
                relay = cleanup.enter_context(CountingRelay(agent.port))
            trial = Trial(fault, index, agent, db_path, relay, {}, {row: Seen() for row in rows})
            plans[id(trial)] = _plan(trial, chosen, args.seed, args.max_phase)
            trials.append(trial)
        lead = max(max(trial.offsets.values()) for trial in trials)
        windows = {
            fault: {
                row: design.window_s(row, fault, args.check_interval)
                for design in chosen
                for row in design.rows
            }
            for fault in args.faults
        }
        begin = time.monotonic() + 0.5
        cpu_before = cpu_seconds()
        threads = []
        for slot, trial in enumerate(trials):
            fault_due = begin + slot * args.stagger + lead
            thread = threading.Thread(
                target=run_trial,
                args=(trial, fault_due, plans[id(trial)], windows[trial.fault], lateness, abort),
                name=f"detection-{trial.fault}-{trial.index}",
                daemon=True,
            )
            thread.start()
            threads.append(thread)
        longest = max(max(window.values()) for window in windows.values())
        deadline = begin + len(trials) * args.stagger + lead + longest + JOIN_SLACK_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        abort.set()
        for thread in threads:
            thread.join(10.0)
        trials_wall_s = time.monotonic() - begin
        master_cpu_s = cpu_seconds() - cpu_before
        load = os.getloadavg()

    by_fault = {fault: [trial for trial in trials if trial.fault == fault] for fault in args.faults}
    cells = [
        _cell(fault, row, design, by_fault[fault], args.check_interval)
        for fault in args.faults
        for design in chosen
        for row in design.rows
    ]
    report = Report("detection", command)
    report.tables = _tables(cells, rows, known)
    conditions = Table("Conditions of the run", ["measure", "figure"])
    conditions.add(
        "trials (agents), concurrent", f"{len(trials)}, started {args.stagger:g} s apart"
    )
    conditions.add("clients", f"{len(trials) * len(chosen)} ({len(chosen)} per agent)")
    conditions.add("readiness check period of the agents", f"{args.check_interval:g} s")
    conditions.add("agents' start (all, before the trials)", f"{agents_ready_s:.1f} s")
    conditions.add("trials' wall time", f"{trials_wall_s:.0f} s")
    conditions.add(
        "this process's CPU during the trials",
        f"{100 * master_cpu_s / max(trials_wall_s, 1e-9):.1f} % of one core",
    )
    conditions.add(
        "probe lateness p50 / p99 / max (every probe)",
        " / ".join(
            f"{1000 * value:.1f} ms"
            for value in (
                percentile(lateness, 0.5),
                percentile(lateness, 0.99),
                max(lateness, default=math.nan),
            )
        ),
    )
    conditions.add("load average (1, 5 min) at the end", f"{load[0]:.2f}, {load[1]:.2f}")
    report.tables.append(conditions)
    report.verdicts = _verdicts(cells, rows)
    report.data = {
        "designs": {
            design.name: {
                "label": design.label,
                "policy": dataclasses.asdict(design.policy) if design.policy else None,
                "heartbeat_s": design.heartbeat_s if design.policy is None else None,
                "cycle_s": design.cycle_s,
            }
            for design in chosen
        },
        "check_interval_s": args.check_interval,
        "lead_s": lead,
        "cells": [dataclasses.asdict(cell) for cell in cells],
        "trials": [_trial_data(trial) for trial in trials],
    }
    if args.plot is not None:
        _plot(cells, rows, known, args.plot)
    return report


def _trial_data(trial: Trial) -> dict[str, Any]:
    fault_at = trial.fault_at

    def relative(at: float | None) -> float | None:
        return None if at is None or fault_at is None else at - fault_at

    return {
        "fault": trial.fault,
        "index": trial.index,
        "error": trial.error,
        "offsets_s": trial.offsets,
        "since_last_success_s": trial.since_ok,
        "rows": {
            row: {
                "started": relative(seen.started),
                "up": relative(seen.up),
                "downs": [relative(at) for at in seen.downs],
            }
            for row, seen in trial.seen.items()
        },
    }
