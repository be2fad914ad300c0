"""`python -m bench.scale`: many HealthCheckClients in one process, some watching hung agents.

Healthy clients watch real warehouse agents; a `--hung` share watches the servers of
`bench.hung_servers` (one that accepts and never answers, one whose accept queue is full).
Every client reports each probe to a hook (on the engine's loop) that only appends to
lists; the main thread samples the process every 0.5 s. At the end all clients are stopped
one after another and a judge prints PASS/FAIL per acceptance line.

With `--mode watch` the clients keep a held health request open (`wait=--watch-wait`), and
the report adds, per agent, its threads, RSS and sockets with no client (before start-all)
and at the end, the clients holding a request at the end (the watchers), the difference per
watcher, and the client process's CPU seconds per watched agent per hour.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import platform
import random
import secrets
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench._support import (
    CLEANUP_DEADLINE_S,
    PROBING_THREAD_LIMIT,
    STOP_ALL_DEADLINE_S,
    AgentFleet,
    HungServers,
    conclude,
    engine_threads,
    health_threads,
    open_fds,
    os_thread_count,
    parse_env_assignment,
    percentile,
    raise_fd_limit,
    render_verdicts,
    run_as_script,
    run_bounded,
    sigterm_as_interrupt,
    stop_all,
    thread_stacks,
    verdict,
    wait_until,
)
from rpc_datasource import HealthCheckClient, ProbeEvent
from rpc_datasource.runtime.engine import shared_engine

SAMPLE_EVERY_S = 0.5
FD_HEADROOM = 256
HUNG_KINDS = {
    "never-answers": ("never_answers",),
    "full-backlog": ("full_backlog",),
    "both": ("never_answers", "full_backlog"),
}
# Acceptance figures (see bench/README.md).
LATENESS_P99_LIMIT_MS = 100.0
RATE_FLOOR_PCT = 97.0
STOP_ALL_LIMIT_S = 1.0
IDLE_CPU_LIMIT_PCT = 2.0
IDLE_INTERVAL_S = 30.0
# Watch mode: the agents' default bound (rpc_agent.core.settings), and how long an answer must
# take to count as held (rpc_datasource.health.watch_rules.EARLY_ANSWER_S: earlier = not held).
DEFAULT_MAX_WATCHERS = 8
HELD_ANSWER_S = 0.5


@dataclass
class Recorder:
    """Where the hooks write. Only the engine's loop thread writes; the main thread reads."""

    lateness: list[float] = field(default_factory=list)  # healthy clients only
    healthy_failures: Counter[str] = field(default_factory=Counter)
    false_downs: int = 0
    hung_probes: int = 0
    down_at: list[float | None] = field(default_factory=list)
    down_callbacks: list[int] = field(default_factory=list)  # appended on rpc-callback threads
    held_last: list[bool] = field(default_factory=list)  # watch mode, per healthy client
    held_agent: list[int] = field(default_factory=list)  # its agent's index
    last_at: list[float] = field(default_factory=list)  # when its last probe ended

    def healthy_hook(self, event: ProbeEvent) -> None:
        """Lateness of every healthy probe; a failure or a down is a surprise worth keeping."""
        self.lateness.append(event.lateness_s)
        if event.actions:
            self.false_downs += event.went_down
        if not event.result.succeeded:
            self.healthy_failures[str(event.reason)] += 1

    def watch_hook(self, agent_index: int) -> Callable[[ProbeEvent], None]:
        """Watch mode, one per healthy client: whether its last answer was held (a watcher)."""
        index = len(self.held_last)
        self.held_last.append(False)
        self.held_agent.append(agent_index)
        self.last_at.append(time.monotonic())

        def hook(event: ProbeEvent) -> None:
            latency = event.latency_s
            self.last_at[index] = time.monotonic()
            self.held_last[index] = (
                event.result.succeeded and latency is not None and latency >= HELD_ANSWER_S
            )

        return hook

    def hung_hook(self) -> Callable[[ProbeEvent], None]:
        """The hook of one more hung client: counts its probes, notes when it went down."""
        index = len(self.down_at)
        self.down_at.append(None)

        def hook(event: ProbeEvent) -> None:
            self.hung_probes += 1
            if event.actions and event.went_down and self.down_at[index] is None:
                self.down_at[index] = time.monotonic()

        return hook


class ConnectCounter:
    """Counts the TCP connections this process's aiohttp connector opens to the agents.

    It wraps `_create_connection` of the engine session's connector (an aiohttp internal,
    called only when no pooled connection is free), so it costs nothing per reused
    connection and misses none, however short-lived.
    """

    def __init__(self, ports: set[int]) -> None:
        self.ports = ports
        self.count = 0
        self.installed = False

    def install(self) -> None:
        """Wrap the running engine's connector (call after the first client started)."""
        engine = shared_engine.current()
        connector = engine.session.connector if engine is not None else None
        original = getattr(connector, "_create_connection", None)
        if original is None:
            return

        async def counting(request: Any, *args: Any, **kwargs: Any) -> Any:
            protocol = await original(request, *args, **kwargs)
            if request.url.port in self.ports:
                self.count += 1
            return protocol

        connector._create_connection = counting  # type: ignore[union-attr]
        self.installed = True


@dataclass(frozen=True)
class Sample:
    """One look at the process, taken every `SAMPLE_EVERY_S` seconds."""

    t_s: float
    cpu_user_s: float
    cpu_sys_s: float
    healthy_probes: int
    probes: int
    connects: int
    rpc_health_threads: int
    threads: int
    os_threads: int
    fds: int
    # time.process_time(): the same CPU as user + sys, at a finer grain than os.times()'s
    # 10 ms ticks (used for watch mode's small CPU figures).
    cpu_fine_s: float = 0.0
    sampling_cpu_s: float = 0.0  # CPU spent taking the samples before this one (cumulative)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--interval", type=float, default=1.0, help="polling interval, s")
    parser.add_argument("--timeout", type=float, default=2.0, help="probe timeout, s")
    parser.add_argument("--failure-threshold", type=int, default=3)
    parser.add_argument("--duration", type=float, default=20.0, help="measuring time, s")
    parser.add_argument("--hung", type=float, default=0.0, help="share of hung clients, 0-1")
    parser.add_argument("--hung-kind", choices=sorted(HUNG_KINDS), default="both")
    parser.add_argument(
        "--mode", choices=("poll", "watch"), default="poll", help="the clients' health mode"
    )
    parser.add_argument(
        "--watch-wait", type=float, default=25.0, help="watch mode: the held request's wait, s"
    )
    parser.add_argument(
        "--agent-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an agent setting passed in the agents' environment (repeatable), "
        "e.g. FOREST_HEALTH_MAX_WATCHERS=12",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.agents < 1 or args.interval <= 0 or args.duration <= 0:
        parser.error("--clients and --agents must be >= 1, --interval and --duration > 0")
    if not 0 <= args.hung < 1:
        parser.error("--hung must be in [0, 1)")
    if args.watch_wait <= 0:
        parser.error("--watch-wait must be > 0")
    try:
        args.agent_env = dict(parse_env_assignment(item) for item in args.agent_env)
    except ValueError as error:
        parser.error(f"--agent-env: {error}")
    return args


def plan_targets(args: argparse.Namespace) -> list[str]:
    """What each client watches, shuffled: "agent" or a hung server kind."""
    hung = round(args.clients * args.hung)
    kinds = HUNG_KINDS[args.hung_kind]
    targets = [kinds[i % len(kinds)] for i in range(hung)] + ["agent"] * (args.clients - hung)
    random.Random(0).shuffle(targets)
    return targets


def make_clients(
    args: argparse.Namespace,
    fleet: AgentFleet,
    hung_servers: HungServers | None,
    recorder: Recorder,
    clients: list[HealthCheckClient],
) -> tuple[list[HealthCheckClient], list[HealthCheckClient]]:
    """Fill `clients` (the start and stop order); the healthy ones and the hung ones.

    Healthy clients go round-robin over the agents.
    """
    healthy: list[HealthCheckClient] = []
    hung: list[HealthCheckClient] = []
    options: dict[str, Any] = {
        "polling_interval": args.interval,
        "failure_threshold": args.failure_threshold,
        "timeout": args.timeout,
    }
    if args.mode == "watch":
        options.update(mode="watch", watch_wait=args.watch_wait)
    for target in plan_targets(args):
        if target == "agent":
            agent_index = len(healthy) % len(fleet.agents)
            url = fleet.agents[agent_index].health_url
            hooks: tuple[Callable[[ProbeEvent], None], ...] = (recorder.healthy_hook,)
            if args.mode == "watch":
                hooks += (recorder.watch_hook(agent_index),)
            client = HealthCheckClient(url, fleet.secret, **options, hooks=hooks)
            healthy.append(client)
        else:
            assert hung_servers is not None
            client = HealthCheckClient(
                hung_servers.url(target),
                fleet.secret,
                **options,
                on_server_down=lambda: recorder.down_callbacks.append(1),
                hooks=(recorder.hung_hook(),),
            )
            hung.append(client)
        clients.append(client)
    return healthy, hung


def take_sample(
    t0: float, recorder: Recorder, connects: ConnectCounter, sampling_cpu_s: float = 0.0
) -> Sample:
    """The process right now."""
    healthy = len(recorder.lateness)
    cpu = os.times()
    return Sample(
        t_s=round(time.monotonic() - t0, 3),
        cpu_user_s=cpu.user,
        cpu_sys_s=cpu.system,
        healthy_probes=healthy,
        probes=healthy + recorder.hung_probes,
        connects=connects.count,
        rpc_health_threads=len(health_threads()),
        threads=threading.active_count(),
        os_threads=os_thread_count(),
        fds=open_fds(),
        cpu_fine_s=time.process_time(),
        sampling_cpu_s=sampling_cpu_s,
    )


def sample_loop(
    t0: float, duration: float, recorder: Recorder, connects: ConnectCounter
) -> list[Sample]:
    """A sample at t0 and then every `SAMPLE_EVERY_S` until `duration` (bounded)."""
    spent = 0.0  # CPU of the sampling itself, so that watch mode's small figure can omit it

    def sample() -> Sample:
        nonlocal spent
        before = time.process_time()
        taken = take_sample(t0, recorder, connects, spent)
        spent += time.process_time() - before
        return taken

    samples = [sample()]
    for tick in range(1, int(duration / SAMPLE_EVERY_S + 1e-9) + 1):
        time.sleep(max(0.0, t0 + tick * SAMPLE_EVERY_S - time.monotonic()))
        samples.append(sample())
    return samples


def steady_window(samples: list[Sample], interval: float) -> tuple[Sample, Sample]:
    """First and last sample of the steady part: from one interval in, if that leaves as much."""
    last = samples[-1]
    warm_up = interval if last.t_s >= 2 * interval else 0.0
    first = next(s for s in samples if s.t_s >= warm_up - 1e-9)
    return first, last


def start_all(clients: list[HealthCheckClient], on_first: Callable[[], None]) -> dict[int, float]:
    """Start the clients in order; when each was started (monotonic), by `id(client)`."""
    started: dict[int, float] = {}
    for client in clients:
        started[id(client)] = time.monotonic()
        client.start()
        if len(started) == 1:
            on_first()
    return started


def run_mix(
    args: argparse.Namespace,
    fleet: AgentFleet,
    hung_servers: HungServers | None,
    clients: list[HealthCheckClient],
) -> dict[str, Any]:
    """Start every client, sample for `--duration`, stop them all; the raw report."""
    recorder = Recorder()
    healthy, hung = make_clients(args, fleet, hung_servers, recorder, clients)
    connects = ConnectCounter({agent.port for agent in fleet.agents})
    threads_before, fds_before = threading.active_count(), open_fds()
    watching = args.mode == "watch"
    pids = [agent.process.pid for agent in fleet.agents] if watching else []
    agents_before = [process_figures(pid) for pid in pids]

    t0 = time.monotonic()
    started_at = start_all(clients, connects.install)
    start_all_s = time.monotonic() - t0
    samples = sample_loop(t0, args.duration, recorder, connects)
    agents_end = [process_figures(pid) for pid in pids]
    held_at_end = holding_now(recorder, args.interval * (1 + healthy[0].jitter) if healthy else 0)

    stopped, stop_all_s = run_bounded(lambda: stop_all(clients), STOP_ALL_DEADLINE_S, "stop-all")
    stacks = "" if stopped else thread_stacks()
    clean_s = wait_until(lambda: not engine_threads(), CLEANUP_DEADLINE_S)
    gc.collect()
    hung_started = [started_at[id(client)] for client in hung]
    report = summarize(args, recorder, samples, healthy, hung, hung_started, connects)
    report["stop"] = {
        "start_all_s": round(start_all_s, 3),
        "stop_all_s": round(stop_all_s, 3),
        "stop_finished": stopped,
        "engine_threads_gone_after_s": round(clean_s, 3),
        "threads_left": engine_threads(),
        "threads_before": threads_before,
        "threads_after": threading.active_count(),
        "fds_before": fds_before,
        "fds_after": open_fds(),
    }
    if stacks:
        report["stop"]["stacks"] = stacks
    if watching:
        report["watch"] = watch_figures(
            args, fleet, agents_before, agents_end, held_at_end, recorder, samples
        )
    return report


def holding_now(recorder: Recorder, poll_gap_s: float) -> list[bool]:
    """Watch mode: which healthy clients have a held request open now.

    Either its last answer was held (the next watch went out at once and has not come back),
    or it has been quiet for longer than a poll (`poll_gap_s`, the longest jittered interval)
    plus `HELD_ANSWER_S`: a client polling after early answers would have been answered by
    then, so its open request is being held (it took a slot freed by another client).
    """
    now = time.monotonic()
    return [
        held or now - at > poll_gap_s + HELD_ANSWER_S
        for held, at in zip(list(recorder.held_last), list(recorder.last_at), strict=True)
    ]


def process_figures(pid: int) -> dict[str, int]:
    """Threads, RSS (KiB), open fds and sockets of a process, from /proc (-1 when gone)."""
    figures = {"threads": -1, "rss_kib": -1, "fds": -1, "sockets": -1}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "Threads":
                figures["threads"] = int(value.split()[0])
            elif key == "VmRSS":
                figures["rss_kib"] = int(value.split()[0])
        links = []
        for name in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):  # closed meanwhile
                links.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        figures["fds"] = len(links)
        figures["sockets"] = sum(link.startswith("socket:") for link in links)
    except OSError:
        pass
    return figures


def watch_figures(
    args: argparse.Namespace,
    fleet: AgentFleet,
    before: list[dict[str, int]],
    end: list[dict[str, int]],
    held_at_end: list[bool],
    recorder: Recorder,
    samples: list[Sample],
) -> dict[str, Any]:
    """Watch mode: each agent with no client and at the end, per watcher; client CPU per
    watched agent-hour."""
    max_watchers = int(args.agent_env.get("FOREST_HEALTH_MAX_WATCHERS", DEFAULT_MAX_WATCHERS))
    agents = []
    for index, agent in enumerate(fleet.agents):
        clients = sum(1 for a in recorder.held_agent if a == index)
        pairs = zip(recorder.held_agent, held_at_end, strict=True)
        watchers = sum(1 for a, held in pairs if held and a == index)
        diff = {key: end[index][key] - before[index][key] for key in before[index]}
        per_watcher = {
            key: round(value / watchers, 2) if watchers else None for key, value in diff.items()
        }
        agents.append(
            {
                "agent": f"agent-{agent.index}",
                "clients": clients,
                "watchers_at_end": watchers,
                "no_client": before[index],
                "at_end": end[index],
                "difference": diff,
                "per_watcher": per_watcher,
            }
        )
    first, last = steady_window(samples, args.interval)
    window_s = max(1e-9, last.t_s - first.t_s)
    cpu_s = last.cpu_fine_s - first.cpu_fine_s
    sampling_s = last.sampling_cpu_s - first.sampling_cpu_s
    net_s = max(0.0, cpu_s - sampling_s)
    watched = max(1, args.clients)
    return {
        "watch_wait_s": args.watch_wait,
        "max_watchers_per_agent": max_watchers,
        "watchers_at_end": sum(held_at_end),
        "healthy_clients": len(held_at_end),
        "agents": agents,
        "window_s": round(window_s, 3),
        "client_cpu_s_in_window": round(cpu_s, 4),
        "sampling_cpu_s_in_window": round(sampling_s, 4),
        "client_cpu_s_per_agent_hour": round(net_s / window_s * 3600 / watched, 3),
    }


def summarize(
    args: argparse.Namespace,
    recorder: Recorder,
    samples: list[Sample],
    healthy: list[HealthCheckClient],
    hung: list[HealthCheckClient],
    hung_started: list[float],
    connects: ConnectCounter,
) -> dict[str, Any]:
    """The figures of one mix, from the samples and what the hooks recorded."""
    first, last = steady_window(samples, args.interval)
    window_s = max(1e-9, last.t_s - first.t_s)
    window_probes = last.probes - first.probes
    window_healthy = last.healthy_probes - first.healthy_probes
    user_s, sys_s = last.cpu_user_s - first.cpu_user_s, last.cpu_sys_s - first.cpu_sys_s
    cpu_s = user_s + sys_s
    per_probe = 1e6 / max(1, window_probes)
    expected = len(healthy) * window_s / args.interval
    lateness = list(recorder.lateness)
    detections = [
        down - start
        for down, start in zip(recorder.down_at, hung_started, strict=True)
        if down is not None
    ]
    return {
        "config": {
            **{k: v for k, v in vars(args).items() if k != "json"},
            "healthy_clients": len(healthy),
            "hung_clients": len(hung),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "window": {"from_s": first.t_s, "to_s": last.t_s},
        "healthy": {
            "lateness_p50_ms": round(1000 * percentile(lateness, 0.5), 2),
            "lateness_p99_ms": round(1000 * percentile(lateness, 0.99), 2),
            "lateness_max_ms": round(1000 * max(lateness, default=0.0), 2),
            "lateness_samples": len(lateness),
            "probes_in_window": window_healthy,
            "expected_in_window": round(expected, 1),
            "rate_vs_expected_pct": round(100 * window_healthy / max(1e-9, expected), 1),
            "failures": dict(recorder.healthy_failures),
            "false_downs": recorder.false_downs,
        },
        "hung": {
            "clients": len(hung),
            "down": len(detections),
            "down_callbacks_run": len(recorder.down_callbacks),
            "detection_p50_s": round(percentile(detections, 0.5), 3),
            "detection_max_s": round(max(detections, default=0.0), 3),
            "detection_bound_s": round(hung[0].detection_bound_s, 3) if hung else None,
            "probes": recorder.hung_probes,
            "last_reasons": dict(Counter(str(c.stats().last_reason) for c in hung)),
        },
        "cpu": {
            "process_cpu_s": round(cpu_s, 3),
            "pct_of_one_core": round(100 * cpu_s / window_s, 2),
            "probes": window_probes,
            "probes_per_s": round(window_probes / window_s, 1),
            "us_per_probe": round(cpu_s * per_probe, 1),
            "user_us_per_probe": round(user_s * per_probe, 1),
            "sys_us_per_probe": round(sys_s * per_probe, 1),
        },
        "tcp": {
            "counted": connects.installed,
            "agent_connects_total": last.connects,
            "agent_connects_in_window": last.connects - first.connects,
            "reconnects_per_probe": round(
                (last.connects - first.connects) / max(1, window_healthy), 3
            ),
        },
        "threads": {
            "max_rpc_health": max(s.rpc_health_threads for s in samples),
            "max_total": max(s.threads for s in samples),
            "max_os": max(s.os_threads for s in samples),
            "max_fds": max(s.fds for s in samples),
        },
        "samples": [asdict(s) for s in samples],
    }


def judge(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One PASS/FAIL (or n/a) line per acceptance figure."""
    config, healthy, hung = report["config"], report["healthy"], report["hung"]
    stop, threads, cpu = report["stop"], report["threads"], report["cpu"]
    has_hung = hung["clients"] > 0
    idle = config["interval"] >= IDLE_INTERVAL_S
    watch = report.get("watch")
    return [
        verdict(
            "healthy start lateness p99 <= 100 ms",
            healthy["lateness_p99_ms"] <= LATENESS_P99_LIMIT_MS,
            f"{healthy['lateness_p99_ms']} ms",
        ),
        verdict(
            "healthy probe rate >= 97 % of expected",
            healthy["rate_vs_expected_pct"] >= RATE_FLOOR_PCT if watch is None else None,
            f"{healthy['rate_vs_expected_pct']} %"
            + ("" if watch is None else " (watch mode: held requests are not due per interval)"),
        ),
        verdict("no false downs", healthy["false_downs"] == 0, f"{healthy['false_downs']}"),
        verdict(
            "every hung client down within detection_bound_s",
            (
                hung["down"] == hung["clients"]
                and hung["detection_max_s"] <= hung["detection_bound_s"]
            )
            if has_hung
            else None,
            f"{hung['down']}/{hung['clients']} down, max {hung['detection_max_s']} s "
            f"vs bound {hung['detection_bound_s']} s",
        ),
        verdict(
            "stop-all <= 1 s",
            stop["stop_finished"] and stop["stop_all_s"] <= STOP_ALL_LIMIT_S,
            f"{stop['stop_all_s']} s",
        ),
        verdict(
            f"rpc-health* threads <= {PROBING_THREAD_LIMIT}",
            threads["max_rpc_health"] <= PROBING_THREAD_LIMIT,
            f"max {threads['max_rpc_health']}",
        ),
        verdict(
            "engine threads gone after stop",
            not stop["threads_left"],
            f"left: {stop['threads_left'] or 'none'}",
        ),
        verdict(
            f"CPU < {IDLE_CPU_LIMIT_PCT:g} % of one core at a {IDLE_INTERVAL_S:g} s interval",
            cpu["pct_of_one_core"] < IDLE_CPU_LIMIT_PCT if idle else None,
            f"{cpu['pct_of_one_core']} %",
        ),
        verdict(
            "agents exited 0 after SIGTERM",
            all(code == 0 for code in report["agent_exit_codes"].values()),
            f"{report['agent_exit_codes']}",
        ),
        *([] if watch is None else watch_verdicts(watch)),
    ]


def watch_verdicts(watch: dict[str, Any]) -> list[dict[str, Any]]:
    """Watch mode: no agent held more watches than its bound (as the clients saw it)."""
    bound = watch["max_watchers_per_agent"]
    most = max((a["watchers_at_end"] for a in watch["agents"]), default=0)
    return [
        verdict(
            "watchers held at the end <= FOREST_HEALTH_MAX_WATCHERS per agent",
            most <= bound,
            f"max {most} per agent, bound {bound}",
        )
    ]


def render(report: dict[str, Any]) -> str:
    """The report as readable text."""
    c, h, g, cpu = report["config"], report["healthy"], report["hung"], report["cpu"]
    tcp, t, s, w = report["tcp"], report["threads"], report["stop"], report["window"]
    hung_kind = f": {c['hung_kind']}" if c["hung_clients"] else ""
    lines = [
        f"bench.scale: {c['clients']} clients ({c['healthy_clients']} healthy over "
        f"{c['agents']} agents, {c['hung_clients']} hung{hung_kind}), interval "
        f"{c['interval']:g} s, timeout {c['timeout']:g} s, threshold {c['failure_threshold']}, "
        f"{c['duration']:g} s, {c['cpus']} CPUs, Python {c['python']}",
        f"  window        {w['from_s']} s to {w['to_s']} s after start-all",
        f"  healthy       lateness p50 {h['lateness_p50_ms']} / p99 {h['lateness_p99_ms']} / max "
        f"{h['lateness_max_ms']} ms ({h['lateness_samples']} probes); rate "
        f"{h['rate_vs_expected_pct']} % of expected ({h['probes_in_window']} / "
        f"{h['expected_in_window']}); failures {h['failures'] or 0}; false downs "
        f"{h['false_downs']}",
        f"  hung          {g['down']}/{g['clients']} down; from start to down p50 "
        f"{g['detection_p50_s']} s, max {g['detection_max_s']} s vs detection_bound_s "
        f"{g['detection_bound_s']}; down callbacks run {g['down_callbacks_run']}; reasons "
        f"{g['last_reasons'] or '-'}",
        f"  CPU           {cpu['us_per_probe']} us per probe (user {cpu['user_us_per_probe']} + "
        f"sys {cpu['sys_us_per_probe']}; {cpu['process_cpu_s']} s for "
        f"{cpu['probes']} probes, {cpu['probes_per_s']}/s), {cpu['pct_of_one_core']} % of one core",
        f"  TCP           {tcp['agent_connects_in_window']} new connections to the agents in the "
        f"window = {tcp['reconnects_per_probe']} per healthy probe "
        f"({tcp['agent_connects_total']} in all{'' if tcp['counted'] else ', NOT COUNTED'})",
        f"  threads       max rpc-health* {t['max_rpc_health']}, max total {t['max_total']} "
        f"(kernel {t['max_os']}), max fds {t['max_fds']}",
        f"  stop          start-all {s['start_all_s']} s, stop-all {s['stop_all_s']} s; engine "
        f"threads gone after {s['engine_threads_gone_after_s']} s; threads {s['threads_before']}"
        f" -> {s['threads_after']}, fds {s['fds_before']} -> {s['fds_after']}",
        f"  agents exit   {report['agent_exit_codes']}",
    ]
    if c["mode"] != "poll" or c["agent_env"]:  # poll mode's report stays as it was
        mode = f"{c['mode']}" + (
            f", watch_wait {c['watch_wait']:g} s" if c["mode"] == "watch" else ""
        )
        lines.insert(1, f"  mode          {mode}; agent env {c['agent_env'] or '-'}")
    if "watch" in report:
        lines += render_watch(report["watch"])
    if report["warnings"]:
        lines += [f"  warning       {warning}" for warning in report["warnings"]]
    lines.append("judge:")
    lines += render_verdicts(report["verdicts"])
    if "stacks" in s:
        lines.append(s["stacks"])
    return "\n".join(lines)


def render_watch(watch: dict[str, Any]) -> list[str]:
    """The watch-mode lines: per agent with no client / at the end / per watcher."""
    lines = [
        f"  watch         wait {watch['watch_wait_s']:g} s, bound "
        f"{watch['max_watchers_per_agent']} per agent; watchers at the end (holding a request) "
        f"{watch['watchers_at_end']}/{watch['healthy_clients']}; client CPU "
        f"{watch['client_cpu_s_per_agent_hour']} s per watched agent-hour "
        f"({watch['client_cpu_s_in_window']} s in the {watch['window_s']:g} s window, less "
        f"{watch['sampling_cpu_s_in_window']} s of the bench's own sampling)",
    ]
    for agent in watch["agents"]:
        before, end, per = agent["no_client"], agent["at_end"], agent["per_watcher"]
        lines.append(
            f"  {agent['agent']:<13} {agent['clients']} clients, {agent['watchers_at_end']} "
            f"watching; threads {before['threads']} -> {end['threads']}, RSS "
            f"{before['rss_kib']} -> {end['rss_kib']} KiB, sockets {before['sockets']} -> "
            f"{end['sockets']} (fds {before['fds']} -> {end['fds']}); per watcher: threads "
            f"{per['threads']}, RSS {per['rss_kib']} KiB, sockets {per['sockets']}"
            + (
                " (mixed: includes the polling clients' connections)"
                if agent["clients"] > agent["watchers_at_end"]
                else ""
            )
        )
    return lines


def warnings_for(args: argparse.Namespace, report: dict[str, Any]) -> list[str]:
    """Things that make a figure meaningless rather than failed."""
    warnings = []
    bound = report["hung"]["detection_bound_s"]
    if bound is not None and args.duration < bound:
        warnings.append(f"--duration {args.duration:g} s is shorter than the bound {bound} s")
    if not report["tcp"]["counted"]:
        warnings.append("aiohttp connector has no _create_connection: connections not counted")
    if args.mode == "watch" and args.duration < args.watch_wait + 2:
        warnings.append(
            f"--duration {args.duration:g} s is shorter than --watch-wait + 2 s: no held answer "
            "came back, so only the CPU of sending the watches is in the window, and watchers "
            "are counted only as clients quiet for longer than a poll"
        )
    return warnings


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start the agents and hung servers, run the mix, stop everything (always)."""
    fleet = AgentFleet(workdir, secrets.token_hex(32), extra_env=args.agent_env)
    hung_servers: HungServers | None = None
    clients: list[HealthCheckClient] = []
    try:
        fleet.start(args.agents)
        if args.hung > 0:
            hung_servers = HungServers.start(lifetime_s=args.duration + 300.0)
        report = run_mix(args, fleet, hung_servers, clients)
        report["agent_exit_codes"] = fleet.terminate()
        return report
    finally:
        run_bounded(lambda: stop_all(clients), STOP_ALL_DEADLINE_S, "cleanup")
        if hung_servers is not None:
            hung_servers.close()
        fleet.kill_leftovers()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every acceptance line that applies passed."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    raise_fd_limit(args.clients + FD_HEADROOM)
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="bench-scale-") as workdir:
        report = run(args, Path(workdir))
    report["warnings"] = warnings_for(args, report)
    report["verdicts"] = judge(report)
    report["ok"] = all(v["passed"] is not False for v in report["verdicts"])
    print(render(report))
    return conclude(report, args.json)


if __name__ == "__main__":
    run_as_script(main, "clients stopped, child processes terminated")
