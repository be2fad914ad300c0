"""The master's scale: one process watching 10 to 5,000 distinct agents.

Every agent has an address of its own: one port each on 127.0.0.1, all served by one stub
process (`_stub_agents`: the health JSON with its ETag, held watches, idle close after
15 s; signatures are not verified, only required; hung agents accept and never answer).
Each cell is one master in a fresh process (`_scale_master`): the current engine, polling or
watching, with 0 % or `--hung-share` hung agents; beside it, polling only and with no hung
agent, a bare aiohttp loop (`_bare_loop`) and the previous engine, requests and 16 worker
threads, unpacked from git (`_previous_engine`). Measured in the master: threads, CPU
(user + sys) as a share of one core and per probe, RSS, start lateness of the healthy
agents' probes (`ProbeEvent.lateness_s`; the others' own equivalent); and by the stub:
probes (requests received) and new TCP connections (reconnects per probe).

At a 1 s interval each repeat is a fresh master, measured for `--window` s after
`--warmup` s. At 30 s the master first runs one whole interval (every client past its
first probe, so the grid, keep-alive and reconnects are in their steady state), then
`--slow-parts` consecutive windows of `--slow-window` s: their spread is within one run.
Watch cells are measured for one held-wait cycle (`--watch-window`), once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.harness.fleet import REPO_ROOT, die_with_parent, run_secret
from bench.harness.report import Report, Spread, Table, Verdict
from bench.scenarios._previous_engine import previous_commit, unpack_previous

SUMMARY = (
    "one master watching 10 to 5,000 distinct agents: CPU, threads, RSS, reconnects and "
    "lateness, beside a bare aiohttp loop and the previous engine"
)
SMOKE = [
    "--sizes=10",
    "--fast-hung-sizes=",
    "--slow-sizes=",
    "--slow-hung-sizes=",
    "--watch-sizes=",
    "--watch-hung-sizes=",
    "--engines=current",
    "--repeats=1",
    "--warmup=1",
    "--window=4",
    "--grid-check=no",
    "--profile-agents=0",
]

STUB_READY_S = 120.0
CHILD_SLACK_S = 120.0
MiB = 1024 * 1024
# Goals judged: lateness p99, CPU per probe against the bare loop and at the slow interval
# (the earlier `bench.scale`'s line), saturation.
LATENESS_P99_LIMIT_MS = 100.0
FLOOR_RATIO_LIMIT = 1.2
IDLE_CPU_LIMIT_PCT = 2.0
SATURATED_PCT = 90.0
ENGINE_LABELS = {
    "current": "engine",
    "bare": "bare aiohttp loop",
    "previous": "previous engine",
}


def sizes(text: str) -> list[int]:
    """`10,100` -> [10, 100]; "" -> []."""
    return [int(part) for part in text.split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=sizes, default=[10, 100, 1000, 5000], help="at 1 s")
    parser.add_argument("--fast-hung-sizes", type=sizes, default=[10, 100, 1000])
    parser.add_argument("--slow-sizes", type=sizes, default=[1000, 5000], help="at 30 s")
    parser.add_argument("--slow-hung-sizes", type=sizes, default=[5000])
    parser.add_argument("--watch-sizes", type=sizes, default=[100, 1000, 5000])
    parser.add_argument("--watch-hung-sizes", type=sizes, default=[1000])
    parser.add_argument("--engines", default="current,bare,previous")
    parser.add_argument(
        "--once-above", type=int, default=1000, help="at 1 s, larger sizes run once"
    )
    parser.add_argument("--hung-share", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fast-interval", type=float, default=1.0)
    parser.add_argument("--slow-interval", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--slow-window", type=float, default=5.0)
    parser.add_argument("--slow-parts", type=int, default=3)
    parser.add_argument("--watch-wait", type=float, default=25.0)
    parser.add_argument("--watch-window", type=float, default=25.0)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--threshold", type=int, default=3)
    parser.add_argument("--grid-check", choices=("yes", "no"), default="yes")
    parser.add_argument("--old-fast-grid", type=float, default=0.05, help="the old rule at 1 s")
    parser.add_argument("--old-slow-grid", type=float, default=1.0, help="the old rule at 30 s")
    parser.add_argument("--profile-agents", type=int, default=1000, help="0: no profile")
    parser.add_argument("--plot", type=Path, help="draw CPU per probe and lateness p99 here")


@dataclass(frozen=True)
class CellSpec:
    """One master configuration, run `runs` times."""

    engine: str
    mode: str
    interval: float
    agents: int
    hung: int
    runs: int
    warmup: float
    window: float
    parts: int = 1
    grid: float | None = None
    profile: bool = False

    @property
    def key(self) -> str:
        grid = "" if self.grid is None else f" grid {self.grid:g}"
        hung = f" {self.hung} hung" if self.hung else ""
        profiled = " profiled" if self.profile else ""
        return f"{self.engine} {self.mode} {self.interval:g}s {self.agents}{hung}{grid}{profiled}"


@dataclass
class CellResult:
    spec: CellSpec
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def windows(self) -> list[dict[str, Any]]:
        return [window for run in self.runs for window in run["windows"]]


def plan(args: argparse.Namespace) -> list[CellSpec]:
    """Every cell of this run, in the order they are run (repeats interleaved later)."""
    engines = args.engines.split(",")
    fast, slow = args.fast_interval, args.slow_interval
    warm_slow = slow + 1.0

    def hung(agents: int) -> int:
        return max(1, round(agents * float(args.hung_share)))

    cells: list[CellSpec] = []
    for agents in args.sizes:
        runs = 1 if agents > args.once_above else args.repeats
        for engine in engines:
            cells.append(CellSpec(engine, "poll", fast, agents, 0, runs, args.warmup, args.window))
        if "current" in engines and agents in args.fast_hung_sizes:
            cells.append(
                CellSpec(
                    "current",
                    "poll",
                    fast,
                    agents,
                    hung(agents),
                    runs,
                    args.warmup,
                    args.window,
                )
            )
    if args.grid_check == "yes" and 1000 in args.sizes:
        cells.append(
            CellSpec(
                "current",
                "poll",
                fast,
                1000,
                0,
                args.repeats,
                args.warmup,
                args.window,
                grid=args.old_fast_grid,
            )
        )
    for agents in args.slow_sizes:
        for engine in engines:
            cells.append(
                CellSpec(
                    engine, "poll", slow, agents, 0, 1, warm_slow, args.slow_window, args.slow_parts
                )
            )
    for agents in args.slow_hung_sizes:
        cells.append(
            CellSpec(
                "current",
                "poll",
                slow,
                agents,
                hung(agents),
                1,
                warm_slow,
                args.slow_window,
                args.slow_parts,
            )
        )
    if args.grid_check == "yes" and args.slow_sizes:
        agents = max(args.slow_sizes)
        cells.append(
            CellSpec(
                "current",
                "poll",
                slow,
                agents,
                0,
                1,
                warm_slow,
                args.slow_window,
                args.slow_parts,
                grid=args.old_slow_grid,
            )
        )
    for agents in args.watch_sizes:
        cells.append(
            CellSpec("current", "watch", slow, agents, 0, 1, args.warmup, args.watch_window)
        )
    for agents in args.watch_hung_sizes:
        cells.append(
            CellSpec(
                "current", "watch", slow, agents, hung(agents), 1, args.warmup, args.watch_window
            )
        )
    if args.profile_agents:
        cells.append(
            CellSpec(
                "current",
                "poll",
                fast,
                args.profile_agents,
                0,
                1,
                args.warmup,
                args.window,
                profile=True,
            )
        )
    return cells


@dataclass
class Stub:
    """The stub agents' process and its ports."""

    process: subprocess.Popen[bytes]
    ports_file: Path


@contextmanager
def stub_agents(healthy: int, hung: int, workdir: Path) -> Iterator[Stub]:
    """One process serving `healthy` agents and `hung` hung ones, ended on the way out."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.scenarios._stub_agents",
            f"--healthy={healthy}",
            f"--hung={hung}",
        ],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        preexec_fn=die_with_parent,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], STUB_READY_S)
        line = process.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError(f"the stub agents did not start within {STUB_READY_S:g} s")
        ports_file = workdir / "ports.json"
        ports_file.write_bytes(line)
        yield Stub(process, ports_file)
    finally:
        process.kill()
        process.wait()


def child_environment(secret: str, python_path: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FOREST_")}
    env["BENCH_SECRET"] = secret
    if python_path is not None:
        env["PYTHONPATH"] = python_path
    return env


@dataclass(frozen=True)
class ProbeSettings:
    """What every cell's clients share."""

    timeout: float
    threshold: int
    watch_wait: float


def run_cell(
    spec: CellSpec,
    stub: Stub,
    settings: ProbeSettings,
    secret: str,
    previous_tree: Path | None,
    workdir: Path,
) -> dict[str, Any]:
    """One master process for `spec`; its figures (or the reason it failed)."""
    command = [
        sys.executable,
        "-m",
        "bench.scenarios._scale_master",
        f"--engine={spec.engine}",
        f"--ports-file={stub.ports_file}",
        f"--agents={spec.agents}",
        f"--hung={spec.hung}",
        f"--interval={spec.interval}",
        f"--mode={spec.mode}",
        f"--warmup={spec.warmup}",
        f"--window={spec.window}",
        f"--parts={spec.parts}",
    ]
    command += [
        f"--timeout={settings.timeout}",
        f"--threshold={settings.threshold}",
        f"--watch-wait={settings.watch_wait}",
    ]
    if spec.grid is not None:
        command.append(f"--grid={spec.grid}")
    if spec.profile:
        command.append(f"--profile={workdir / 'loop.prof'}")
    python_path, cwd = None, REPO_ROOT
    if spec.engine == "previous":
        assert previous_tree is not None
        # `-m` puts the working directory first on sys.path: run from elsewhere, so that the
        # old tree's packages come before this tree's.
        python_path, cwd = f"{previous_tree}{os.pathsep}{REPO_ROOT}", workdir
    deadline = spec.warmup + spec.parts * spec.window + CHILD_SLACK_S
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            env=child_environment(secret, python_path),
            capture_output=True,
            text=True,
            timeout=deadline,
            preexec_fn=die_with_parent,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {deadline:g} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": f"exit {done.returncode}: {done.stderr[-1500:]}"}
    found: dict[str, Any] = json.loads(lines[-1])
    return found


def derived(spec: CellSpec, window: dict[str, Any]) -> dict[str, float]:
    """The figures of one window."""
    stub, seconds = window["stub"], window["window_s"]
    healthy = spec.agents - spec.hung
    probes = stub["healthy_requests"] + stub["hung_requests"]
    cpu = window["cpu_user_s"] + window["cpu_sys_s"]
    late = window["lateness"]
    return {
        "cpu_pct": 100 * cpu / seconds,
        "us_per_probe": 1e6 * cpu / probes if probes else math.nan,
        "probes_per_s": probes / seconds,
        "rate_pct": 100 * stub["healthy_requests"] / (healthy * seconds / spec.interval),
        "reconnects": (
            stub["healthy_accepts"] / stub["healthy_requests"]
            if stub["healthy_requests"]
            else math.nan
        ),
        "rss_mib": window["rss_bytes"] / MiB,
        "threads": window["threads_max"],
        "p50_ms": late["p50_ms"] if late["p50_ms"] is not None else math.nan,
        "p99_ms": late["p99_ms"] if late["p99_ms"] is not None else math.nan,
        "cpu_s_per_agent_hour": cpu / seconds * 3600 / spec.agents,
        "held": window["held_at_end"],
        "stub_us_per_request": 1e6 * stub["cpu_s"] / probes if probes else math.nan,
        "gc_young_per_1k_probes": (
            1000 * (window["gc"]["runs"][0] + window["gc"]["runs"][1]) / probes
            if probes
            else math.nan
        ),
        "gc_full_per_min": 60 * window["gc"]["runs"][2] / seconds,
        "gc_pct": 100 * sum(window["gc"]["total_ms"]) / 1000 / seconds,
    }


def spread(result: CellResult, name: str) -> Spread:
    return Spread.of(derived(result.spec, window)[name] for window in result.windows)


def runs_label(result: CellResult) -> str:
    spec = result.spec
    if spec.parts > 1:
        return f"1 run, {len(result.windows)} x {spec.window:g} s"
    return f"{len(result.runs)} x {spec.window:g} s"


def lateness_cell(result: CellResult) -> str:
    p50 = spread(result, "p50_ms")
    return f"{p50.median:.1f} / {spread(result, 'p99_ms').render(1)}" if p50.repeats else "n/a"


def saturated_loop(result: CellResult) -> bool:
    """Whether the master used (nearly) all of the one core its loop can use."""
    return spread(result, "cpu_pct").median >= SATURATED_PCT


def failures_of(result: CellResult) -> int:
    return sum(run.get("healthy_failures", 0) + run.get("false_downs", 0) for run in result.runs)


POLL_COLUMNS = [
    "agents",
    "master",
    "threads",
    "CPU % of one core",
    "CPU µs per probe",
    "healthy probes, % of expected",
    "reconnects per probe",
    "RSS MiB",
    "lateness p50 / p99 ms",
    "measured",
]


def poll_table(title: str, results: list[CellResult]) -> Table:
    """One row per polling master: the engine (0 % and some hung), the two baselines."""
    table = Table(title, POLL_COLUMNS)
    for result in results:
        spec = result.spec
        if not result.windows:
            table.add(spec.agents, label(spec), *["failed"] * 7, runs_label(result))
            continue
        table.add(
            f"{spec.agents:,}",
            label(spec),
            f"{spread(result, 'threads').high:.0f}",
            spread(result, "cpu_pct").render(2),
            spread(result, "us_per_probe").render(0),
            spread(result, "rate_pct").render(1),
            spread(result, "reconnects").render(3),
            f"{spread(result, 'rss_mib').median:.0f}",
            lateness_cell(result),
            runs_label(result),
        )
    return table


def gc_table(results: list[CellResult]) -> Table:
    """How often Python's cyclic garbage collector ran in the window, and how long it held
    the GIL (the loop waits meanwhile)."""
    table = Table(
        "Cyclic garbage collection in the master, polling (1,000 agents and more)",
        [
            "agents",
            "interval",
            "master",
            "young collections per 1,000 probes",
            "full collections per minute",
            "longest full collection in the run, ms",
            "GC time, % of the window",
        ],
    )
    for result in results:
        spec = result.spec
        if spec.agents < 1000 or not result.windows or saturated_loop(result):
            continue
        longest = max(run["gc_longest_ms"][2] for run in result.runs)
        table.add(
            f"{spec.agents:,}",
            f"{spec.interval:g} s",
            label(spec),
            spread(result, "gc_young_per_1k_probes").render(0),
            spread(result, "gc_full_per_min").render(0),
            f"{longest:.0f}",
            spread(result, "gc_pct").render(1),
        )
    return table


def label(spec: CellSpec) -> str:
    text = ENGINE_LABELS[spec.engine]
    if spec.hung:
        text += f", {spec.hung:,} hung"
    if spec.grid is not None:
        text += f", grid {spec.grid * 1000:g} ms"
    return text


def watch_table(results: list[CellResult], watch_wait: float) -> Table:
    table = Table(
        f"Watch mode (watch_wait {watch_wait:g} s, polling interval 30 s, one held-wait cycle)",
        [
            "agents",
            "master",
            "threads",
            "CPU % of one core",
            "CPU s per agent-hour",
            "requests/s",
            "held at the end",
            "reconnects per request",
            "RSS MiB",
            "lateness p50 / p99 ms",
        ],
    )
    for result in results:
        spec = result.spec
        if not result.windows:
            table.add(spec.agents, label(spec), *["failed"] * 8)
            continue
        table.add(
            f"{spec.agents:,}",
            label(spec),
            f"{spread(result, 'threads').high:.0f}",
            spread(result, "cpu_pct").render(2),
            spread(result, "cpu_s_per_agent_hour").render(3),
            spread(result, "probes_per_s").render(1),
            f"{spread(result, 'held').median:,.0f} of {spec.agents - spec.hung:,}",
            spread(result, "reconnects").render(3),
            f"{spread(result, 'rss_mib').median:.0f}",
            lateness_cell(result),
        )
    return table


def profile_table(result: CellResult) -> Table:
    """The loop thread's top functions by cumulative share of its CPU time."""
    spec = result.spec
    table = Table(
        f"Where the loop's CPU goes: cProfile (thread CPU time) of the engine, "
        f"{spec.agents:,} agents, {spec.interval:g} s, {spec.window:g} s",
        ["function", "calls", "cumulative share", "own share"],
    )
    rows = result.runs[0].get("profile", []) if result.runs else []
    for row in rows:
        table.add(
            row["function"],
            f"{row['calls']:,}",
            f"{100 * row['cum_share']:.1f} %",
            f"{100 * row['own_share']:.1f} %",
        )
    return table


def find(results: list[CellResult], **wanted: Any) -> CellResult | None:
    for result in results:
        spec = asdict(result.spec)
        if all(spec[key] == value for key, value in wanted.items()) and result.windows:
            return result
    return None


def verdicts(results: list[CellResult], args: argparse.Namespace) -> list[Verdict]:
    """The goals this run can judge (n/a for the cells it did not run)."""
    engine_runs = [r for r in results if r.spec.engine == "current" and not r.spec.profile]
    failed = [r.spec.key for r in results if len(r.runs) < r.spec.runs or not r.windows]
    saturated = [r for r in engine_runs if r.windows and saturated_loop(r)]
    surprises = sum(failures_of(r) for r in engine_runs if r not in saturated)
    found: list[Verdict] = [
        Verdict(
            "every master ran and reported",
            not failed,
            "all cells" if not failed else f"failed: {', '.join(failed)}",
        ),
        Verdict(
            "no healthy agent's probe failed, no false down (engine, loop under one core)",
            surprises == 0,
            f"{surprises} failures or downs",
        ),
    ]
    for result in saturated:
        found.append(
            Verdict(
                f"{label(result.spec)}, {result.spec.agents:,} agents at "
                f"{result.spec.interval:g} s: more than one loop can do",
                None,
                f"{spread(result, 'cpu_pct').median:.0f} % of one core, "
                f"{spread(result, 'rate_pct').median:.0f} % of the expected probes, "
                f"{failures_of(result):,} healthy probes failed or downs",
            )
        )
    threads = [spread(r, "threads").high for r in engine_runs if r.windows]
    found.append(
        Verdict(
            "the engine's threads do not grow with the agents",
            (max(threads) <= min(threads) + 1) if threads else None,
            f"{min(threads, default=0):.0f} to {max(threads, default=0):.0f} threads",
        )
    )
    fast = args.fast_interval
    for hung in (0, max(1, round(1000 * args.hung_share))):
        cell = find(
            results,
            engine="current",
            mode="poll",
            interval=fast,
            agents=1000,
            hung=hung,
            grid=None,
            profile=False,
        )
        p99 = spread(cell, "p99_ms") if cell else None
        found.append(
            Verdict(
                f"lateness p99 ≤ {LATENESS_P99_LIMIT_MS:g} ms, 1,000 agents at {fast:g} s, "
                f"{hung} hung",
                p99.high <= LATENESS_P99_LIMIT_MS if p99 else None,
                f"{p99.render(1)} ms" if p99 else "not run",
            )
        )
    for interval in (fast, args.slow_interval):
        engine = find(
            results,
            engine="current",
            mode="poll",
            interval=interval,
            agents=1000,
            hung=0,
            grid=None,
            profile=False,
        )
        bare = find(results, engine="bare", mode="poll", interval=interval, agents=1000, hung=0)
        ratio = None
        if engine and bare:
            ratio = spread(engine, "us_per_probe").median / spread(bare, "us_per_probe").median
        cpu = spread(engine, "cpu_pct") if engine else None
        share = f", {cpu.render(2)} % of one core" if cpu else ""
        found.append(
            Verdict(
                f"CPU per probe ≤ {FLOOR_RATIO_LIMIT:g}x the bare aiohttp loop's, 1,000 agents "
                f"at {interval:g} s",
                ratio <= FLOOR_RATIO_LIMIT if ratio is not None else None,
                f"{ratio:.2f}x{share}" if ratio is not None else "not run",
            )
        )
        if interval == args.slow_interval:
            found.append(
                Verdict(
                    f"1,000 agents at {interval:g} s: under {IDLE_CPU_LIMIT_PCT:g} % of one core",
                    cpu.median < IDLE_CPU_LIMIT_PCT if cpu else None,
                    f"{cpu.render(2)} %" if cpu else "not run",
                )
            )
    return found


def draw(path: Path, results: list[CellResult], args: argparse.Namespace) -> None:
    """CPU per probe and lateness p99 against the number of agents (log x), per master."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (cpu_axis, late_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = {"current": "tab:blue", "bare": "tab:orange", "previous": "tab:green"}
    markers = {"current": "o", "bare": "s", "previous": "^"}
    for interval, line in ((args.fast_interval, "-"), (args.slow_interval, "--")):
        for engine in ("current", "bare", "previous"):
            cells = sorted(
                (
                    r
                    for r in results
                    if (r.spec.engine, r.spec.mode, r.spec.interval) == (engine, "poll", interval)
                    and (r.spec.hung, r.spec.grid, r.spec.profile) == (0, None, False)
                    and r.windows
                ),
                key=lambda r: r.spec.agents,
            )
            if not cells:
                continue
            agents = [r.spec.agents for r in cells]
            options = {
                "color": colours[engine],
                "marker": markers[engine],
                "linestyle": line,
                "fillstyle": "full" if interval == args.fast_interval else "none",
                "label": f"{ENGINE_LABELS[engine]}, {interval:g} s",
            }
            for axis, name in ((cpu_axis, "us_per_probe"), (late_axis, "p99_ms")):
                values = [spread(r, name).median for r in cells]
                axis.plot(agents, values, **options)
                busy = [
                    (a, v)
                    for a, v, r in zip(agents, values, cells, strict=True)
                    if saturated_loop(r)
                ]
                if busy:
                    axis.scatter(
                        *zip(*busy, strict=True), s=220, facecolors="none", edgecolors="grey"
                    )
    late_axis.scatter([], [], s=220, facecolors="none", edgecolors="grey", label="loop saturated")
    for axis, title in (
        (cpu_axis, "CPU per probe (µs, user + sys)"),
        (late_axis, "start lateness p99 (ms)"),
    ):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("distinct agents")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    cpu_axis.legend(fontsize=8)
    late_axis.legend(fontsize=8, handles=late_axis.get_legend_handles_labels()[0][-1:])
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def execute(
    cells: list[CellSpec],
    stub: Stub,
    settings: ProbeSettings,
    previous_tree: Path | None,
    workdir: Path,
) -> list[CellResult]:
    """Run every cell; the repeats of the 1 s cells interleaved, round after round."""
    secret = run_secret()
    results = [CellResult(spec) for spec in cells]
    rounds = max((spec.runs for spec in cells), default=0)
    for round_index in range(rounds):
        for result in results:
            if round_index >= result.spec.runs:
                continue
            began = time.monotonic()
            found = run_cell(result.spec, stub, settings, secret, previous_tree, workdir)
            took = time.monotonic() - began
            status = found.get("error", "ok")
            print(
                f"[{result.spec.key}] run {round_index + 1}: {status} ({took:.0f} s)",
                file=sys.stderr,
            )
            if "error" not in found:
                result.runs.append(found)
    return results


def run(args: argparse.Namespace, command: str) -> Report:
    """Start the stub agents, run every master, report."""
    cells = plan(args)
    healthy = max((spec.agents - spec.hung for spec in cells), default=1)
    hung = max((spec.hung for spec in cells), default=0)
    settings = ProbeSettings(args.timeout, args.threshold, args.watch_wait)
    workdir = Path(tempfile.mkdtemp(prefix="bench-master-scale-"))
    previous = None
    try:
        previous_tree = None
        if any(spec.engine == "previous" for spec in cells):
            previous = previous_commit()
            previous_tree = unpack_previous(previous, workdir)
        with stub_agents(healthy, hung, workdir) as stub:
            results = execute(cells, stub, settings, previous_tree, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report(args, command, results, previous)


def report(
    args: argparse.Namespace, command: str, results: list[CellResult], previous: str | None
) -> Report:
    """Tables, verdicts and the raw figures of every cell."""
    polls = [r for r in results if r.spec.mode == "poll" and not r.spec.profile]
    ordered = sorted(polls, key=lambda r: (r.spec.agents, r.spec.grid is not None))
    tables = []
    for interval in (args.fast_interval, args.slow_interval):
        rows = [r for r in ordered if r.spec.interval == interval]
        if rows:
            tables.append(
                poll_table(
                    f"Polling every {interval:g} s (timeout {args.timeout:g} s, threshold "
                    f"{args.threshold})",
                    rows,
                )
            )
    collected = gc_table(ordered)
    if collected.rows:
        tables.append(collected)
    watches = [r for r in results if r.spec.mode == "watch"]
    if watches:
        tables.append(watch_table(watches, args.watch_wait))
    profiled = [r for r in results if r.spec.profile and r.runs]
    if profiled:
        tables.append(profile_table(profiled[0]))
    if args.plot is not None:
        draw(args.plot, results, args)
    return Report(
        "master_scale",
        command,
        tables=tables,
        verdicts=verdicts(results, args),
        data={
            "previous_engine_commit": previous,
            "cells": [
                {
                    "spec": asdict(r.spec),
                    "figures": [derived(r.spec, window) for window in r.windows],
                    "runs": r.runs,
                }
                for r in results
            ],
        },
    )
