"""`python -m bench.watch_detection`: how fast watch mode sees each kind of outage.

A real warehouse agent (`python -m examples.warehouse`, a child process on a free port of
127.0.0.1, its SQLite file in a temporary directory) is watched by one watch-mode client per
trial, whose probe hook notes the monotonic time of every probe event and whose callbacks
note when they ran. Each trial injects one fault and times what the client saw:

- SIGTERM: the held request is answered 503 at once; then a restart must be one recovery.
- kill -9: the held connection is cut (the first failure), then the N-1 re-probes declare
  it down; then a restart must be one recovery.
- SIGSTOP: the held request times out after `watch_wait + timeout`, then the re-probes;
  SIGCONT must be one recovery.
- a new column: an `RpcDatasource` in watch mode, SIGTERM, a column added to the database,
  restart: one recovery and one reload (`on_schema_change` once).
- polling mode: a poller at 0.5 s sees SIGTERM as a 503 `shutting_down` during the drain.

Each line is judged against its bound; the exit status is 1 if any judged line failed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import random
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bench._support import (
    EXIT_DEADLINE_S,
    READY_DEADLINE_S,
    Agent,
    agent_env,
    conclude,
    free_port,
    percentile,
    render_verdicts,
    run_as_script,
    sigterm_as_interrupt,
    spawn_warehouse,
    stop_processes,
    verdict,
    wait_healthy,
    wait_until,
)
from examples.warehouse.database import add_column
from rpc_datasource import (
    DatasourceSettings,
    HealthCheckClient,
    ProbeEvent,
    RpcDatasource,
    set_probe_hooks,
)

# Every wait of a trial is bounded by this (plus the fault's own bound where it is longer).
EVENT_DEADLINE_S = 20.0
# After the last expected event, how long a trial keeps watching for a second, unwanted one.
SETTLE_S = 1.5
# The bound on "at once": SIGTERM to on_server_down, kill -9 to the first failure.
AT_ONCE_S = 0.100
POLL_INTERVAL_D_S = 0.5
POLL_PASS_SHARE = 0.9
START_ATTEMPTS = 3


@dataclass
class Timeline:
    """What one client saw, with monotonic times: probe events (hook) and callbacks."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    events: list[tuple[float, ProbeEvent]] = field(default_factory=list)
    downs: list[float] = field(default_factory=list)
    recoveries: list[float] = field(default_factory=list)
    reloads: list[float] = field(default_factory=list)

    def hook(self, event: ProbeEvent) -> None:
        """The probe hook (on the engine's loop): keep the event and when it came."""
        with self.lock:
            self.events.append((time.monotonic(), event))

    def on_down(self) -> None:
        with self.lock:
            self.downs.append(time.monotonic())

    def on_recovered(self) -> None:
        with self.lock:
            self.recoveries.append(time.monotonic())

    def on_schema_change(self, _schema: dict[str, Any]) -> None:
        with self.lock:
            self.reloads.append(time.monotonic())

    def snapshot(self) -> list[tuple[float, ProbeEvent]]:
        with self.lock:
            return list(self.events)

    def successes(self) -> int:
        return sum(1 for _, event in self.snapshot() if event.result.succeeded)

    def first(self, predicate: Callable[[ProbeEvent], bool], after: float) -> float | None:
        """Time of the first event after `after` that matches, or None."""
        return next((at for at, e in self.snapshot() if at >= after and predicate(e)), None)

    def went_down(self) -> list[ProbeEvent]:
        return [event for _, event in self.snapshot() if event.went_down]

    def recovered(self) -> list[ProbeEvent]:
        return [event for _, event in self.snapshot() if event.recovered]


class Warehouse:
    """The warehouse command on one port and one database, started again in place."""

    def __init__(self, workdir: Path, secret: str, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.secret = secret
        self.env = env or {}
        self.port = free_port()
        self.db = workdir / "warehouse.db"
        self.spawned: list[subprocess.Popen[bytes]] = []
        self.agent: Agent | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def health_url(self) -> str:
        return f"{self.url}/forest/health"

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self.agent is not None, "the warehouse was never started"
        return self.agent.process

    def running(self) -> bool:
        return self.agent is not None and self.agent.process.poll() is None

    def _spawn(self) -> Agent:
        self.starts += 1
        agent = spawn_warehouse(
            0,
            self.port,
            self.db,
            self.workdir / f"warehouse-{self.starts}.log",
            agent_env(self.secret, self.env),
        )
        self.spawned.append(agent.process)
        return agent

    def start(self) -> float:
        """Start it and wait until it answers a signed probe; the monotonic time it did.

        Only the very first start may move to another port (one taken meanwhile); later
        starts keep the port, as a restarted server would.
        """
        first = self.starts == 0
        for _ in range(START_ATTEMPTS):
            self.agent = self._spawn()
            if wait_healthy(self.agent, self.secret, time.monotonic() + READY_DEADLINE_S):
                return time.monotonic()
            if not first or self.agent.process.poll() is None:
                break
            self.port = free_port()  # exited at once: most likely its port was taken
        raise RuntimeError(
            f"warehouse on port {self.port} not healthy within {READY_DEADLINE_S:g} s "
            f"(exit code {self.process.poll()}):\n{self.agent.log_tail() if self.agent else ''}"
        )

    def ensure_running(self) -> None:
        if not self.running():
            self.start()

    def wait_exit(self, deadline_s: float = EXIT_DEADLINE_S) -> int | None:
        try:
            return self.process.wait(deadline_s)
        except subprocess.TimeoutExpired:
            return None

    def kill_leftovers(self) -> None:
        """For `finally`: resume a stopped one, then SIGTERM / SIGKILL whatever still runs."""
        for process in self.spawned:
            if process.poll() is None:
                with contextlib.suppress(OSError):
                    os.kill(process.pid, signal.SIGCONT)
        stop_processes(self.spawned)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.watch_detection", description=__doc__)
    parser.add_argument("--trials", type=int, default=5, help="trials per watch-mode fault")
    parser.add_argument("--poll-trials", type=int, default=10, help="polling-mode SIGTERM trials")
    parser.add_argument("--interval", type=float, default=1.0, help="polling_interval, s")
    parser.add_argument("--retry", type=float, default=0.5, help="failure_retry_interval, s")
    parser.add_argument("--threshold", type=int, default=3, help="failure_threshold")
    parser.add_argument("--timeout", type=float, default=1.0, help="probe timeout, s")
    parser.add_argument("--watch-wait", type=float, default=5.0, help="watch_wait, s")
    parser.add_argument("--jitter", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault times")
    parser.add_argument(
        "--faults",
        default="sigterm,kill,sigstop,column,poll",
        help="comma-separated subset of sigterm,kill,sigstop,column,poll",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    args.faults = [name.strip() for name in args.faults.split(",") if name.strip()]
    unknown = set(args.faults) - {"sigterm", "kill", "sigstop", "column", "poll"}
    if unknown or args.trials < 1 or args.poll_trials < 1:
        parser.error(f"unknown faults {sorted(unknown)} or trials < 1")
    return args


def watch_client(
    args: argparse.Namespace, url: str, secret: str, tl: Timeline, seed: int
) -> HealthCheckClient:
    """A watch-mode client with the run's settings, timed by `tl`."""
    return HealthCheckClient(
        url,
        secret,
        polling_interval=args.interval,
        failure_threshold=args.threshold,
        timeout=args.timeout,
        on_server_down=tl.on_down,
        on_server_recovered=tl.on_recovered,
        failure_retry_interval=args.retry,
        jitter=args.jitter,
        mode="watch",
        watch_wait=args.watch_wait,
        hooks=[tl.hook],
        rng=random.Random(seed),
    )


@contextmanager
def started(client: HealthCheckClient) -> Iterator[HealthCheckClient]:
    client.start()
    try:
        yield client
    finally:
        client.stop()


def wait_for(predicate: Callable[[], bool], deadline_s: float = EVENT_DEADLINE_S) -> bool:
    return wait_until(predicate, deadline_s, step_s=0.01) >= 0


def ms(value: float | None) -> float | None:
    return None if value is None else round(1000 * value, 1)


def since(at: float | None, origin: float) -> float | None:
    return None if at is None else at - origin


def up_and_watching(tl: Timeline, phase_s: float) -> None:
    """Past the first success (so a held request is open), then `phase_s` more."""
    if not wait_for(lambda: tl.successes() >= 1):
        raise RuntimeError("the client never saw the warehouse up")
    time.sleep(phase_s)


def trial_sigterm(args: argparse.Namespace, wh: Warehouse, rng: random.Random) -> dict[str, Any]:
    """SIGTERM under a held request, then a restart."""
    wh.ensure_running()
    tl = Timeline()
    with started(watch_client(args, wh.health_url, wh.secret, tl, rng.randrange(1 << 30))):
        up_and_watching(tl, rng.uniform(0.5, 1.5))
        signalled = time.monotonic()
        wh.process.send_signal(signal.SIGTERM)
        wait_for(lambda: bool(tl.downs))
        exit_code = wh.wait_exit()
        ready = wh.start()
        wait_for(lambda: bool(tl.recoveries))
        time.sleep(SETTLE_S)
    downs = tl.went_down()
    return {
        "down_callback_ms": ms(since(tl.downs[0] if tl.downs else None, signalled)),
        "down_hook_ms": ms(since(tl.first(lambda e: e.went_down, signalled), signalled)),
        "down_reason": str(downs[0].reason) if downs else None,
        "downs": len(tl.downs),
        "recoveries": len(tl.recoveries),
        "recovered_after_ready_ms": ms(since(tl.recoveries[0] if tl.recoveries else None, ready)),
        "exit_code": exit_code,
    }


def trial_kill(args: argparse.Namespace, wh: Warehouse, rng: random.Random) -> dict[str, Any]:
    """SIGKILL under a held request, then a restart."""
    wh.ensure_running()
    tl = Timeline()
    with started(watch_client(args, wh.health_url, wh.secret, tl, rng.randrange(1 << 30))):
        up_and_watching(tl, rng.uniform(0.5, 1.5))
        killed = time.monotonic()
        wh.process.kill()
        wh.wait_exit()
        wait_for(lambda: bool(tl.downs))
        ready = wh.start()
        wait_for(lambda: bool(tl.recoveries))
        time.sleep(SETTLE_S)
    failures = [(at, e) for at, e in tl.snapshot() if at >= killed and not e.result.succeeded]
    first_failure = failures[0] if failures else None
    down_at = tl.first(lambda e: e.went_down, killed)
    return {
        "first_failure_ms": ms(since(first_failure[0] if first_failure else None, killed)),
        "first_failure_reason": str(first_failure[1].reason) if first_failure else None,
        "down_hook_ms": ms(since(down_at, killed)),
        "down_callback_ms": ms(since(tl.downs[0] if tl.downs else None, killed)),
        "failure_to_down_ms": ms(
            down_at - first_failure[0] if down_at is not None and first_failure else None
        ),
        "failures_to_down": sum(1 for at, _ in failures if down_at is not None and at <= down_at),
        "downs": len(tl.downs),
        "recoveries": len(tl.recoveries),
        "recovered_after_ready_ms": ms(since(tl.recoveries[0] if tl.recoveries else None, ready)),
    }


def trial_sigstop(
    args: argparse.Namespace, wh: Warehouse, rng: random.Random, bound_s: float
) -> dict[str, Any]:
    """SIGSTOP at a random point of a held request, SIGCONT once it is declared down."""
    wh.ensure_running()
    tl = Timeline()
    with started(watch_client(args, wh.health_url, wh.secret, tl, rng.randrange(1 << 30))):
        up_and_watching(tl, rng.uniform(0.3, args.watch_wait))
        os.kill(wh.process.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            wait_for(lambda: bool(tl.downs), bound_s + EVENT_DEADLINE_S)
        finally:
            os.kill(wh.process.pid, signal.SIGCONT)
            resumed = time.monotonic()
        wait_for(lambda: bool(tl.recoveries))
        time.sleep(SETTLE_S)
    downs = tl.went_down()
    first_failure = tl.first(lambda e: not e.result.succeeded, stopped)
    return {
        "first_failure_s": since(first_failure, stopped),
        "down_hook_s": since(tl.first(lambda e: e.went_down, stopped), stopped),
        "down_callback_s": since(tl.downs[0] if tl.downs else None, stopped),
        "down_reason": str(downs[0].reason) if downs else None,
        "downs": len(tl.downs),
        "recoveries": len(tl.recoveries),
        "recovered_after_sigcont_ms": ms(
            since(tl.recoveries[0] if tl.recoveries else None, resumed)
        ),
    }


def trial_column(
    args: argparse.Namespace, wh: Warehouse, rng: random.Random, trial: int
) -> dict[str, Any]:
    """A datasource in watch mode; SIGTERM, a new column, restart: one reload."""
    wh.ensure_running()
    tl = Timeline()
    column = f"bench_col_{trial}_{rng.randrange(1 << 20)}"
    settings = DatasourceSettings(
        rpc_uri=wh.url,
        auth_secret=SecretStr(wh.secret),
        health_check_interval=args.interval,
        health_check_failure_threshold=args.threshold,
        health_check_timeout=args.timeout,
        health_check_mode="watch",
        health_check_watch_wait=args.watch_wait,
    )
    set_probe_hooks([tl.hook])
    datasource = RpcDatasource.connect(
        settings,
        on_schema_change=tl.on_schema_change,
        on_server_down=tl.on_down,
        on_server_recovered=tl.on_recovered,
    )
    try:
        up_and_watching(tl, rng.uniform(0.5, 1.5))
        signalled = time.monotonic()
        wh.process.send_signal(signal.SIGTERM)
        wait_for(lambda: bool(tl.downs))
        exit_code = wh.wait_exit()
        add_column(wh.db, "products", column, "TEXT")
        ready = wh.start()
        wait_for(lambda: bool(tl.reloads))
        time.sleep(SETTLE_S)
        fields = {
            f["name"]
            for collection in datasource.collections
            if collection["name"] == "products"
            for f in collection["fields"]
        }
    finally:
        datasource.close()
        set_probe_hooks(())
    return {
        "down_callback_ms": ms(since(tl.downs[0] if tl.downs else None, signalled)),
        "downs": len(tl.downs),
        "recoveries": len(tl.recoveries),
        "reload_callbacks": len(tl.reloads),
        "datasource_reloads": datasource.reloads,
        "column_seen": column in fields,
        "reload_after_ready_ms": ms(since(tl.reloads[0] if tl.reloads else None, ready)),
        "exit_code": exit_code,
    }


def trial_poll(args: argparse.Namespace, wh: Warehouse, rng: random.Random) -> dict[str, Any]:
    """A poller at 0.5 s; SIGTERM: down at once with shutting_down (seen during the drain)."""
    wh.ensure_running()
    tl = Timeline()
    client = HealthCheckClient(
        wh.health_url,
        wh.secret,
        polling_interval=POLL_INTERVAL_D_S,
        failure_threshold=args.threshold,
        timeout=args.timeout,
        on_server_down=tl.on_down,
        jitter=args.jitter,
        hooks=[tl.hook],
        rng=random.Random(rng.randrange(1 << 30)),
    )
    with started(client):
        up_and_watching(tl, rng.uniform(0.0, POLL_INTERVAL_D_S))
        signalled = time.monotonic()
        wh.process.send_signal(signal.SIGTERM)
        wait_for(lambda: bool(tl.downs))
        exit_code = wh.wait_exit()
        time.sleep(0.2)
    downs = tl.went_down()
    failures = [e for at, e in tl.snapshot() if at >= signalled and not e.result.succeeded]
    return {
        "down_reason": str(downs[0].reason) if downs else None,
        "down_callback_ms": ms(since(tl.downs[0] if tl.downs else None, signalled)),
        "failures_to_down": failures_until_down(failures),
        "downs": len(tl.downs),
        "exit_code": exit_code,
    }


def failures_until_down(failures: list[ProbeEvent]) -> int:
    """How many failures it took: up to and including the one that went down."""
    for count, event in enumerate(failures, start=1):
        if event.went_down:
            return count
    return len(failures)


def bounds(args: argparse.Namespace) -> dict[str, float]:
    """The bounds of the acceptance items, nominal and with jitter (seconds)."""
    n, f, t, w, j = args.threshold, args.retry, args.timeout, args.watch_wait, args.jitter
    return {
        "at_once_s": AT_ONCE_S,
        "kill_down_s": (n - 1) * f + AT_ONCE_S,
        "kill_down_jitter_s": (n - 1) * f * (1 + j) + AT_ONCE_S,
        "sigstop_down_s": w + t + (n - 1) * (f + t),
        "sigstop_down_jitter_s": w + t + (n - 1) * (f * (1 + j) + t),
    }


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every fault's trials against one warehouse (restarted in place); always cleaned up."""
    rng = random.Random(args.seed)
    wh = Warehouse(workdir, secrets.token_hex(32))
    limits = bounds(args)
    detection_bound = watch_client(args, wh.health_url, wh.secret, Timeline(), 0).detection_bound_s
    trials: dict[str, list[dict[str, Any]]] = {}
    started_at = time.monotonic()
    try:
        wh.start()
        for fault in args.faults:
            count = args.poll_trials if fault == "poll" else args.trials
            trials[fault] = []
            for trial in range(count):
                if fault == "sigterm":
                    result = trial_sigterm(args, wh, rng)
                elif fault == "kill":
                    result = trial_kill(args, wh, rng)
                elif fault == "sigstop":
                    result = trial_sigstop(args, wh, rng, limits["sigstop_down_jitter_s"])
                elif fault == "column":
                    result = trial_column(args, wh, rng, trial)
                else:
                    result = trial_poll(args, wh, rng)
                trials[fault].append(result)
        if wh.running():
            wh.process.send_signal(signal.SIGTERM)
            wh.wait_exit()
    finally:
        wh.kill_leftovers()
    return {
        "config": {
            **{k: v for k, v in vars(args).items() if k != "json"},
            "detection_bound_s": round(detection_bound, 3),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "bounds": limits,
        "trials": trials,
        "warehouse_starts": wh.starts,
        "elapsed_s": round(time.monotonic() - started_at, 1),
    }


def stats(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """(p50, max, missing) of the values that are there."""
    present = [v for v in values if v is not None]
    missing = len(values) - len(present)
    if not present:
        return None, None, missing
    return percentile(present, 0.5), max(present), missing


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def all_equal(results: list[dict[str, Any]], key: str, expected: object) -> bool:
    return all(r[key] == expected for r in results)


def summarize(report: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """Text lines and the judge's verdicts."""
    c, b, trials = report["config"], report["bounds"], report["trials"]
    n, f, j = c["threshold"], c["retry"], c["jitter"]
    lines = [
        f"bench.watch_detection: {c['trials']} trials per watch fault, {c['poll_trials']} "
        f"polling trials; polling_interval {c['interval']:g} s, failure_retry_interval "
        f"{f:g} s, threshold {n}, timeout {c['timeout']:g} s, watch_wait "
        f"{c['watch_wait']:g} s, jitter {j:g}; detection_bound_s {c['detection_bound_s']}; "
        f"{c['cpus']} CPUs, Python {c['python']}; {report['elapsed_s']} s, "
        f"{report['warehouse_starts']} warehouse starts",
    ]
    verdicts: list[dict[str, Any]] = []
    at_once_ms = 1000 * b["at_once_s"]

    if "sigterm" in trials:
        rs = trials["sigterm"]
        cb50, cbmax, cbmiss = stats([r["down_callback_ms"] for r in rs])
        hk50, hkmax, _ = stats([r["down_hook_ms"] for r in rs])
        rc50, rcmax, _ = stats([r["recovered_after_ready_ms"] for r in rs])
        reasons = Counter(r["down_reason"] for r in rs)
        lines.append(
            f"  SIGTERM       on_server_down after the signal p50 {fmt(cb50)} / max {fmt(cbmax)} "
            f"ms (hook p50 {fmt(hk50)} / max {fmt(hkmax)} ms) vs {at_once_ms:g} ms; downs per "
            f"trial {[r['downs'] for r in rs]}, reasons {dict(reasons)}; restart: recoveries "
            f"per trial {[r['recoveries'] for r in rs]}, recovered p50 {fmt(rc50)} / max "
            f"{fmt(rcmax)} ms after the restarted agent answered our readiness probe; exit "
            f"codes {[r['exit_code'] for r in rs]}"
        )
        verdicts += [
            verdict(
                f"SIGTERM: on_server_down <= {at_once_ms:g} ms after the signal",
                cbmiss == 0 and cbmax is not None and cbmax <= at_once_ms,
                f"p50 {fmt(cb50)} / max {fmt(cbmax)} ms over {len(rs)} trials",
            ),
            verdict(
                "SIGTERM: down exactly once, reason shutting_down",
                all_equal(rs, "downs", 1) and all_equal(rs, "down_reason", "shutting_down"),
                f"downs {[r['downs'] for r in rs]}, reasons {dict(reasons)}",
            ),
            verdict(
                "SIGTERM then restart: recovered exactly once",
                all_equal(rs, "recoveries", 1),
                f"{[r['recoveries'] for r in rs]}",
            ),
        ]

    if "kill" in trials:
        rs = trials["kill"]
        ff50, ffmax, ffmiss = stats([r["first_failure_ms"] for r in rs])
        dn50, dnmax, dnmiss = stats([r["down_hook_ms"] for r in rs])
        cb50, cbmax, _ = stats([r["down_callback_ms"] for r in rs])
        fd50, fdmax, _ = stats([r["failure_to_down_ms"] for r in rs])
        nominal_ms, jitter_ms = 1000 * b["kill_down_s"], 1000 * b["kill_down_jitter_s"]
        within = sum(
            1 for r in rs if r["down_hook_ms"] is not None and r["down_hook_ms"] <= nominal_ms
        )
        reasons = Counter(r["first_failure_reason"] for r in rs)
        lines.append(
            f"  kill -9       first failure p50 {fmt(ff50)} / max {fmt(ffmax)} ms vs "
            f"{at_once_ms:g} ms (reasons {dict(reasons)}); down p50 {fmt(dn50)} / max "
            f"{fmt(dnmax)} ms after the kill (callback p50 {fmt(cb50)} / max {fmt(cbmax)} ms; "
            f"first failure to down p50 {fmt(fd50)} / max {fmt(fdmax)} ms) vs (N-1)*F + 100 ms "
            f"= {nominal_ms:g} ms ({within}/{len(rs)} within), with jitter (N-1)*F*(1+j) + "
            f"100 ms = {jitter_ms:g} ms; failures to down {[r['failures_to_down'] for r in rs]}; "
            f"downs {[r['downs'] for r in rs]}; restart: recoveries "
            f"{[r['recoveries'] for r in rs]}"
        )
        verdicts += [
            verdict(
                f"kill -9: first failure <= {at_once_ms:g} ms after the kill",
                ffmiss == 0 and ffmax is not None and ffmax <= at_once_ms,
                f"p50 {fmt(ff50)} / max {fmt(ffmax)} ms",
            ),
            verdict(
                f"kill -9: down <= (N-1)*F + 100 ms = {nominal_ms:g} ms after the kill",
                dnmiss == 0 and dnmax is not None and dnmax <= nominal_ms,
                f"p50 {fmt(dn50)} / max {fmt(dnmax)} ms, {within}/{len(rs)} within",
            ),
            verdict(
                f"kill -9: down <= (N-1)*F*(1+jitter) + 100 ms = {jitter_ms:g} ms after the kill",
                dnmiss == 0 and dnmax is not None and dnmax <= jitter_ms,
                f"max {fmt(dnmax)} ms",
            ),
            verdict(
                "kill -9 then restart: down once, recovered once",
                all_equal(rs, "downs", 1) and all_equal(rs, "recoveries", 1),
                f"downs {[r['downs'] for r in rs]}, recoveries {[r['recoveries'] for r in rs]}",
            ),
        ]

    if "sigstop" in trials:
        rs = trials["sigstop"]
        ff50, ffmax, _ = stats([r["first_failure_s"] for r in rs])
        dn50, dnmax, dnmiss = stats([r["down_hook_s"] for r in rs])
        cb50, cbmax, _ = stats([r["down_callback_s"] for r in rs])
        rc50, rcmax, _ = stats([r["recovered_after_sigcont_ms"] for r in rs])
        nominal, jittered = b["sigstop_down_s"], b["sigstop_down_jitter_s"]
        reasons = Counter(r["down_reason"] for r in rs)
        lines.append(
            f"  SIGSTOP       first failure p50 {fmt(ff50, 2)} / max {fmt(ffmax, 2)} s; down p50 "
            f"{fmt(dn50, 2)} / max {fmt(dnmax, 2)} s after SIGSTOP (callback p50 {fmt(cb50, 2)}"
            f" / max {fmt(cbmax, 2)} s) vs watch_wait + timeout + (N-1)(F + timeout) = "
            f"{nominal:g} s (with jitter {jittered:g} s); reasons {dict(reasons)}; downs "
            f"{[r['downs'] for r in rs]}; SIGCONT: recoveries {[r['recoveries'] for r in rs]}, "
            f"recovered p50 {fmt(rc50)} / max {fmt(rcmax)} ms after SIGCONT"
        )
        verdicts += [
            verdict(
                f"SIGSTOP: down <= watch_wait + timeout + (N-1)(F + timeout) = {nominal:g} s",
                dnmiss == 0 and dnmax is not None and dnmax <= nominal,
                f"p50 {fmt(dn50, 2)} / max {fmt(dnmax, 2)} s (with jitter: {jittered:g} s)",
            ),
            verdict(
                "SIGSTOP: down exactly once (timeout); SIGCONT: recovered exactly once",
                all_equal(rs, "downs", 1)
                and all_equal(rs, "down_reason", "timeout")
                and all_equal(rs, "recoveries", 1),
                f"downs {[r['downs'] for r in rs]}, recoveries {[r['recoveries'] for r in rs]}",
            ),
        ]

    if "column" in trials:
        rs = trials["column"]
        rl50, rlmax, _ = stats([r["reload_after_ready_ms"] for r in rs])
        cb50, cbmax, _ = stats([r["down_callback_ms"] for r in rs])
        lines.append(
            f"  new column    on_schema_change per trial {[r['reload_callbacks'] for r in rs]} "
            f"(datasource.reloads {[r['datasource_reloads'] for r in rs]}), column seen "
            f"{[r['column_seen'] for r in rs]}; reload p50 {fmt(rl50)} / max {fmt(rlmax)} ms "
            f"after the restarted agent answered our readiness probe; downs "
            f"{[r['downs'] for r in rs]} (p50 {fmt(cb50)} / max {fmt(cbmax)} ms after SIGTERM), "
            f"recoveries {[r['recoveries'] for r in rs]}"
        )
        verdicts.append(
            verdict(
                "restart with a new column: one reload (on_schema_change once), one recovery",
                all_equal(rs, "reload_callbacks", 1)
                and all_equal(rs, "datasource_reloads", 1)
                and all_equal(rs, "column_seen", True)
                and all_equal(rs, "recoveries", 1)
                and all_equal(rs, "downs", 1),
                f"reloads {[r['reload_callbacks'] for r in rs]}, recoveries "
                f"{[r['recoveries'] for r in rs]}",
            )
        )

    if "poll" in trials:
        rs = trials["poll"]
        good = sum(1 for r in rs if r["downs"] == 1 and r["down_reason"] == "shutting_down")
        cb50, cbmax, _ = stats([r["down_callback_ms"] for r in rs])
        reasons = Counter(r["down_reason"] for r in rs)
        need = POLL_PASS_SHARE * len(rs)
        lines.append(
            f"  poll SIGTERM  {good}/{len(rs)} trials down once as shutting_down (reasons "
            f"{dict(reasons)}); down p50 {fmt(cb50)} / max {fmt(cbmax)} ms after the signal "
            f"(poller every {POLL_INTERVAL_D_S:g} s); failures to down "
            f"{[r['failures_to_down'] for r in rs]}"
        )
        verdicts.append(
            verdict(
                f"polling: SIGTERM seen as 503 shutting_down in >= {need:g} of {len(rs)} trials",
                good >= need,
                f"{good}/{len(rs)}",
            )
        )

    codes = [r["exit_code"] for name in ("sigterm", "column", "poll") for r in trials.get(name, [])]
    verdicts.append(
        verdict(
            "warehouse exited 0 after every SIGTERM",
            all(code == 0 for code in codes) if codes else None,
            f"{dict(Counter(codes))}",
        )
    )
    return lines, verdicts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="bench-watch-") as workdir:
        report = run(args, Path(workdir))
    lines, verdicts = summarize(report)
    report["verdicts"] = verdicts
    report["ok"] = all(v["passed"] is not False for v in verdicts)
    print("\n".join([*lines, "judge:", *render_verdicts(verdicts)]))
    return conclude(report, args.json)


if __name__ == "__main__":
    run_as_script(main, "clients stopped, child processes terminated")
