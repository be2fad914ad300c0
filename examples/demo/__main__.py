"""`python -m examples.demo`: warehouse and master through a graceful stop, a crash, a migration
and a restart, and a database outage the warehouse's readiness check reports, once with the
master polling and once watching (held health requests).

Prints a timeline and a comparison of the two modes, and exits 0 when every step happened as
it should, else 1 naming the step.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from examples.demo.processes import ChildProcess
from examples.warehouse.database import add_column
from rpc_common.signing import signed_headers

POLLING_INTERVAL = 0.5
FAILURE_THRESHOLD = 3
PROBE_TIMEOUT = 1.0
WATCH_WAIT = 1.0
DB_CHECK_INTERVAL = 0.25
MODES = ("poll", "watch")
# The data server the demo runs: the Flask warehouse on the project's runner, or the FastAPI
# one with the ASGI middleware; both on uvicorn.
SERVERS = {"flask": "examples.warehouse", "asgi": "examples.warehouse_asgi"}
NEW_COLUMNS = {
    "poll": ("products", "weight_grams", "INTEGER"),
    "watch": ("products", "color", "TEXT"),
}


@dataclass(frozen=True)
class Detection:
    """How long one mode took to see each kind of stop."""

    mode: str
    graceful_s: float
    crash_s: float
    bound_s: float


class StepFailed(Exception):
    """A step of the story did not happen as it should."""


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Demo:
    """The story, step by step, with a timeline relative to the start."""

    def __init__(self, workdir: Path, verbose: bool, server: str = "flask") -> None:
        self.started = time.monotonic()
        self.verbose = verbose
        self.server_module = SERVERS[server]
        self.secret = secrets.token_urlsafe(32)
        self.db = workdir / "warehouse.db"
        self.warehouse_port = free_port()
        self.master_port = free_port()
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "FOREST_AUTH_SECRET": self.secret,
            "FOREST_HEALTH_CHECK_INTERVAL": str(POLLING_INTERVAL),
            "FOREST_HEALTH_CHECK_FAILURE_THRESHOLD": str(FAILURE_THRESHOLD),
            "FOREST_HEALTH_CHECK_TIMEOUT": str(PROBE_TIMEOUT),
            "FOREST_HEALTH_CHECK_WATCH_WAIT": str(WATCH_WAIT),
        }
        self.detections: list[Detection] = []
        self.warehouse: ChildProcess | None = None
        self.master: ChildProcess | None = None

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.2f}s] {message}", flush=True)

    def start_warehouse(self) -> ChildProcess:
        args = [
            *("--host", "127.0.0.1", "--port", str(self.warehouse_port), "--db", str(self.db)),
            *("--db-check-interval", str(DB_CHECK_INTERVAL)),
        ]
        warehouse = ChildProcess("warehouse", self.server_module, args, self.env)
        deadline = time.monotonic() + 30
        url = f"http://127.0.0.1:{self.warehouse_port}/forest/health"
        while time.monotonic() < deadline:
            try:
                headers = signed_headers(self.secret, target="/forest/health")
                if requests.get(url, headers=headers, timeout=1).status_code == 200:
                    return warehouse
            except requests.RequestException:
                pass
            if not warehouse.running:
                break
            threading.Event().wait(0.05)
        raise StepFailed("the warehouse did not answer its health check:\n" + self._tail(warehouse))

    def master_line(self, step: str, pattern: str, timeout: float, after: float = 0.0) -> Any:
        assert self.master is not None
        line = self.master.wait_for_line(pattern, timeout, after)
        if line is None:
            raise StepFailed(f"{step}: no master line matching {pattern!r} within {timeout:g} s")
        if self.verbose:
            self.say(f"  master: {line.text}")
        return line

    def master_status(self, expect: int = 200) -> dict[str, Any]:
        reply = requests.get(f"http://127.0.0.1:{self.master_port}/status", timeout=5)
        if reply.status_code != expect:
            raise StepFailed(f"the master's /status answered {reply.status_code}, not {expect}")
        status: dict[str, Any] = reply.json()["warehouse"]
        return status

    def master_metrics(self) -> dict[str, float]:
        """The master's /metrics for the warehouse: `name{label=value}` to value."""
        reply = requests.get(f"http://127.0.0.1:{self.master_port}/metrics", timeout=5)
        reply.raise_for_status()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(reply.text):
            for sample in family.samples:
                if sample.labels.pop("agent", None) == "warehouse":
                    labels = ",".join(f"{name}={value}" for name, value in sample.labels.items())
                    samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def report_metrics(self, mode: str, names: tuple[str, ...]) -> None:
        """Print the master's metrics whose names start with one of `names`, non-zero ones."""
        samples = self.master_metrics()
        shown = [
            f"{name.removeprefix('forest_datasource_')} {value:g}"
            for name, value in samples.items()
            if name.startswith(names) and (value or name.startswith("forest_datasource_agent_up"))
        ]
        self.say(f"[{mode}] master /metrics: " + "; ".join(shown))

    def run(self) -> None:
        self.warehouse = self.start_warehouse()
        self.say(
            f"warehouse ({self.server_module}) up on port {self.warehouse_port}"
            " (secret generated for this run)"
        )
        for mode in MODES:
            self.run_mode(mode)
        self.print_comparison()
        assert self.warehouse is not None
        if self.warehouse.stop() != 0:
            raise StepFailed("clean stop: the warehouse did not exit 0 on SIGTERM")
        self.say("master and warehouse stopped cleanly (SIGTERM, exit code 0)")

    def run_mode(self, mode: str) -> None:
        """One master in `mode`: a graceful stop, a crash with a migration, the recoveries."""
        self.master = self.start_master(mode)
        bound = float(self.master_status()["detection_bound_s"])
        self.say(
            f"[{mode}] every {POLLING_INTERVAL:g} s, down after {FAILURE_THRESHOLD} failures; "
            f"worst-case detection {bound:.2f} s"
        )
        threading.Event().wait(POLLING_INTERVAL * 1.5)

        graceful = self.stop_gracefully_and_restart(mode)
        crash = self.crash_migrate_and_restart(mode, bound)
        self.lose_and_restore_the_database(mode)
        self.check_each_event_once(mode)
        if self.master.stop() != 0:
            raise StepFailed(f"clean stop: the {mode} master did not exit 0 on SIGTERM")
        self.detections.append(Detection(mode, graceful, crash, bound))

    def start_master(self, mode: str) -> ChildProcess:
        master_args = [
            "--rpc-uri",
            f"http://127.0.0.1:{self.warehouse_port}",
            "--name",
            "warehouse",
            "--port",
            str(self.master_port),
        ]
        env = {**self.env, "FOREST_HEALTH_CHECK_MODE": mode}
        self.master = ChildProcess("master", "examples.master", master_args, env)
        line = self.master_line(
            "master connected", r"warehouse connected: collections (.*?) \(", 30
        )
        self.master_line("master serving", r"serving on http://", 30)
        self.say(f"[{mode}] master connected: {line.text.split('connected: ', 1)[1]}")
        return self.master

    def stop_gracefully_and_restart(self, mode: str) -> float:
        assert self.warehouse is not None
        stopped_at = time.monotonic()
        self.warehouse.terminate()
        self.say(f"[{mode}] warehouse stopping gracefully (SIGTERM)")
        down = self.master_line("graceful stop detected", r"warehouse DOWN", 30, stopped_at)
        latency = float(down.at - stopped_at)
        self.say(f"[{mode}] graceful stop detected in {latency:.2f} s: {self.event(down.text)}")
        if self.warehouse.wait(15) != 0:
            raise StepFailed("the warehouse did not exit 0 on SIGTERM")
        restarted_at = time.monotonic()
        self.warehouse = self.start_warehouse()
        self.say(f"[{mode}] warehouse restarted")
        recovered = self.master_line("recovery", r"warehouse RECOVERED", 30, restarted_at)
        self.say(f"[{mode}] master: {self.event(recovered.text)}")
        return latency

    def crash_migrate_and_restart(self, mode: str, bound: float) -> float:
        assert self.warehouse is not None
        threading.Event().wait(POLLING_INTERVAL * 1.5)
        killed_at = time.monotonic()
        self.warehouse.kill_hard()
        self.say(f"[{mode}] warehouse killed (SIGKILL)")
        down = self.master_line("outage detected", r"warehouse DOWN", bound + 10, killed_at)
        latency = float(down.at - killed_at)
        self.say(
            f"[{mode}] outage detected in {latency:.2f} s (bound {bound:.2f} s): "
            f"{self.event(down.text)}"
        )
        if latency > bound:
            raise StepFailed(f"outage detected in {latency:.2f} s, over the {bound:.2f} s bound")
        self.say(f"[{mode}] master /status: 503, state {self.master_status(503)['state']}")
        self.report_metrics(
            mode, ("forest_datasource_agent_up", "forest_datasource_probe_failures_total")
        )

        table, column, sql_type = NEW_COLUMNS[mode]
        add_column(self.db, table, column, sql_type)
        self.say(f"[{mode}] migration applied: {table}.{column} {sql_type}")
        restarted_at = time.monotonic()
        self.warehouse = self.start_warehouse()
        self.say(f"[{mode}] warehouse back up")
        recovered = self.master_line("recovery", r"warehouse RECOVERED", 30, restarted_at)
        self.say(f"[{mode}] master: {self.event(recovered.text)}")
        field = rf"\+field {table}\.{column}"
        reloaded = self.master_line(
            "schema reload", rf"warehouse SCHEMA RELOADED: .*{field}", 30, restarted_at
        )
        self.say(f"[{mode}] master: {self.event(reloaded.text)}")
        return latency

    def lose_and_restore_the_database(self, mode: str) -> None:
        """The warehouse process lives on, but its database is gone: its readiness check
        fails, the agent answers 503 `unavailable`, and the master sees an outage naming the
        check; with the database back it recovers, and no schema is reloaded (none changed)."""
        away = self.db.with_name(self.db.name + ".away")
        threading.Event().wait(POLLING_INTERVAL * 1.5)
        lost_at = time.monotonic()
        os.replace(self.db, away)
        self.say(f"[{mode}] database made unavailable (its file moved away)")
        down = self.master_line("database outage", r"warehouse DOWN", 30, lost_at)
        if "not_ready" not in down.text or "database" not in down.text:
            raise StepFailed(f"the outage should name not_ready and the check: {down.text}")
        self.say(f"[{mode}] database outage seen as not ready: {self.event(down.text)}")
        failing = self.master_status(503)["failing_checks"]
        self.say(f"[{mode}] master /status: 503, failing checks {', '.join(failing)}")
        back_at = time.monotonic()
        os.replace(away, self.db)
        self.say(f"[{mode}] database back")
        recovered = self.master_line("database recovery", r"warehouse RECOVERED", 30, back_at)
        self.say(f"[{mode}] master: {self.event(recovered.text)}")

    @staticmethod
    def event(line: str) -> str:
        return line.split("warehouse ", 1)[1]

    def check_each_event_once(self, mode: str) -> None:
        """After a few more probes: one DOWN and one RECOVERED per outage, one reload."""
        probes = self.master_status()["probes"]
        deadline = time.monotonic() + 30
        while self.master_status()["probes"] < probes + 3:
            if time.monotonic() > deadline:
                raise StepFailed("the master stopped probing after the recovery")
            threading.Event().wait(0.2)
        assert self.master is not None
        counts = {
            event: self.master.count_lines(rf"warehouse {event}")
            for event in ("DOWN", "RECOVERED", "SCHEMA RELOADED")
        }
        if counts != {"DOWN": 3, "RECOVERED": 3, "SCHEMA RELOADED": 1}:
            raise StepFailed(f"each event should be logged once per outage, got {counts}")
        status = self.master_status()
        if status["state"] != "up" or status["schema_reloads"] != 1:
            raise StepFailed(f"unexpected master status: {status}")
        samples = self.master_metrics()
        expected = {
            "forest_datasource_agent_up": 1,
            "forest_datasource_state_transitions_total{state=down}": 3,
            "forest_datasource_schema_reloads_total": 1,
        }
        found = {name: samples.get(name) for name in expected}
        if found != expected:
            raise StepFailed(f"unexpected master metrics: {found}")
        self.report_metrics(
            mode,
            (
                "forest_datasource_agent_up",
                "forest_datasource_state_transitions_total",
                "forest_datasource_schema_reloads_total",
            ),
        )
        self.say(
            f"[{mode}] each event seen exactly once per outage; master status: state "
            f"{status['state']}, {status['probes']} probes, {status['failures']} failures, "
            f"schema ETag {status['schema_etag']}"
        )

    def print_comparison(self) -> None:
        self.say("time from the stop to the master's DOWN line:")
        print(f"    {'mode':<6} {'SIGTERM':>9} {'SIGKILL':>9} {'bound':>9}")
        for found in self.detections:
            print(
                f"    {found.mode:<6} {found.graceful_s:>8.2f}s {found.crash_s:>8.2f}s "
                f"{found.bound_s:>8.2f}s"
            )

    def cleanup(self) -> None:
        for child in (self.master, self.warehouse):
            if child is not None and child.running:
                child.stop(timeout=5)

    def _tail(self, child: ChildProcess) -> str:
        return "\n".join(f"  {child.name}: {text}" for text in child.tail())

    def report_failure(self, error: StepFailed) -> None:
        self.say(f"FAILED: {error}")
        for child in (self.warehouse, self.master):
            if child is not None:
                print(self._tail(child), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the story; 0 when it happened as it should."""
    parser = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__)
    parser.add_argument("--verbose", action="store_true", help="echo the master's event lines")
    parser.add_argument(
        "--server",
        choices=sorted(SERVERS),
        default="flask",
        help="the warehouse to run: Flask (default) or FastAPI, both on uvicorn",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rpc-demo-") as workdir:
        demo = Demo(Path(workdir), args.verbose, args.server)
        try:
            demo.run()
        except StepFailed as error:
            demo.report_failure(error)
            return 1
        finally:
            demo.cleanup()
    demo.say(
        "demo passed: in both modes, each outage detected once (the database's as not ready), "
        "recovery, migration reloaded"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
