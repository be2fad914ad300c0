"""Readiness checks under measure: whether a health probe ever waits on a check, and how soon
a database outage becomes a 503 and reaches a watching master.

The data server is a small Flask app with the warehouse's own database check
(`check_database`: a new connection to the SQLite file answers `SELECT 1`) as its one
critical check, every `--interval` s with a `--timeout`, on the project's runner. This module
serves it when run as `python -m bench.scenarios.readiness --db PATH ...` (the fleet starts
it). The check also waits while a marker file beside the database exists: storage that
stopped answering, so that the check can be hung past its timeout on demand.

Two measures, against one agent:

- health latency over `--probes` signed probes on one keep-alive connection, with the check
  passing (the baseline) and with it hung past its timeout, `--repeats` times;
- `--trials` outages of each kind: the database file moved away (the check fails at once)
  and the check hung. From the outage to the first 503 (a probe every 5 ms), to the failing
  event of a master in watch mode (one per trial, its request held when the outage begins),
  from the agent's logged flip to that event, and from the repair to the first 200. Each
  outage begins, and each repair comes, at a random point of the check's interval.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench.harness.fleet import AgentProcess, ServerKind, run_secret, running_agent
from bench.harness.report import Report, Spread, Summary, Table, Verdict, percentile
from rpc_common.signing import signed_headers
from rpc_datasource import HealthCheckClient, ProbeEvent
from rpc_datasource.instrumentation.in_flight import probes_in_flight

SUMMARY = "readiness checks: health latency with a hung check, database outage to 503"
SMOKE = [
    *("--probes", "200", "--repeats", "1", "--trials", "1"),
    *("--interval", "0.5", "--timeout", "0.25"),
]

HEALTH = "/forest/health"
CHECK = "database"
HANG_LIMIT_S = 60.0
PROBE_PAUSE_S = 0.005
# A 503 or an event later than its bound by this much is late (scheduling on a busy machine).
SLACK_S = 0.1
DEADLINE_S = 10.0
# The watching master: watch mode, its first probe within the first half second.
WATCH_POLLING_S = 0.5
WATCH_WAIT_S = 20.0
WATCH_TIMEOUT_S = 2.0
_FLIP = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) WARNING rpc_agent\.core\.checks: "
    rf"check '{CHECK}': failing",
    re.MULTILINE,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--probes", type=int, default=1000, help="per latency run (default 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="latency runs (default 3)")
    parser.add_argument("--trials", type=int, default=10, help="outages of each kind (default 10)")
    parser.add_argument("--interval", type=float, default=1.0, help="check interval, s (default 1)")
    parser.add_argument("--timeout", type=float, default=0.5, help="check timeout, s (default 0.5)")


def hang_marker(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".hang")


# --- the data server (this module run as a program) ------------------------------------------


def serve(argv: list[str] | None = None) -> int:
    """Serve the app until signalled: `--host --port --db --interval --timeout`."""
    from flask import Flask

    from examples.logs import configure_logging
    from examples.warehouse.database import check_database, connect
    from rpc_agent import AgentSettings, RpcAgent
    from rpc_agent.servers.runner import serve_agent_until_signalled

    parser = argparse.ArgumentParser(prog="python -m bench.scenarios.readiness")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    args = parser.parse_args(argv)
    configure_logging("INFO")
    connect(args.db).close()
    marker = hang_marker(args.db)

    def database() -> None:
        pause = threading.Event()
        deadline = time.monotonic() + HANG_LIMIT_S
        while marker.exists() and time.monotonic() < deadline:
            pause.wait(0.01)
        check_database(args.db)

    app = Flask("readiness")
    agent = RpcAgent(
        app, settings=AgentSettings(), schema_provider=lambda: {"collections": [], "charts": []}
    )
    agent.add_check(CHECK, database, interval=args.interval, timeout=args.timeout)
    serve_agent_until_signalled(app, agent, args.host, args.port)
    return 0


def server_kind(interval: float, timeout: float) -> ServerKind:
    return ServerKind(
        "readiness-app",
        module="bench.scenarios.readiness",
        module_options=("--interval", f"{interval:g}", "--timeout", f"{timeout:g}"),
    )


# --- the bench --------------------------------------------------------------------------------


class Prober:
    """Signed health probes on one keep-alive connection (a new one after an error)."""

    def __init__(self, agent: AgentProcess) -> None:
        self.agent = agent
        self._connection: http.client.HTTPConnection | None = None

    def get(self) -> tuple[int, bytes]:
        """Status and body (status 0: no answer)."""
        if self._connection is None:
            self._connection = http.client.HTTPConnection("127.0.0.1", self.agent.port, timeout=5)
        try:
            self._connection.request(
                "GET", HEALTH, headers=signed_headers(self.agent.secret, target=HEALTH)
            )
            response = self._connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            return 0, b""

    def timed(self) -> float:
        started = time.perf_counter()
        self.get()
        return time.perf_counter() - started

    def wait_for(
        self, status: int, deadline_s: float = DEADLINE_S, reason: str | None = None
    ) -> float:
        """The wall time `status` was first answered (with the check's `reason`, if given);
        NaN if not within `deadline_s`."""
        pause = threading.Event()
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            answered, body = self.get()
            if answered == status and (reason is None or check_reason(body) == reason):
                return time.time()
            pause.wait(PROBE_PAUSE_S)
        return float("nan")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def check_reason(body: bytes) -> str | None:
    with contextlib.suppress(ValueError, KeyError, TypeError):
        reason = json.loads(body)["checks"][CHECK]["reason"]
        return reason if isinstance(reason, str) else None
    return None


@dataclass
class Outage:
    """One way the database fails, begun and ended on demand."""

    kind: str  # "gone": the file moved away; "hung": the check waits past its timeout
    db_path: Path

    def begin(self) -> None:
        if self.kind == "gone":
            self.db_path.rename(self.db_path.with_name(self.db_path.name + ".away"))
        else:
            hang_marker(self.db_path).touch()

    def end(self) -> None:
        if self.kind == "gone":
            self.db_path.with_name(self.db_path.name + ".away").rename(self.db_path)
        else:
            hang_marker(self.db_path).unlink(missing_ok=True)


@contextmanager
def outage(kind: str, db_path: Path) -> Iterator[Outage]:
    """An outage, ended on the way out whatever happened."""
    begun = Outage(kind, db_path)
    begun.begin()
    try:
        yield begun
    finally:
        begun.end()


def latency_runs(
    prober: Prober, db_path: Path, args: argparse.Namespace
) -> dict[str, list[list[float]]]:
    """`--repeats` runs of `--probes` probes with the check passing, then hung."""
    runs: dict[str, list[list[float]]] = {"passing": [], "hung": []}
    for _ in range(args.repeats):
        require(prober.wait_for(200), "the agent was not ready")
        runs["passing"].append([prober.timed() for _ in range(args.probes)])
        with outage("hung", db_path):
            bound = args.interval + args.timeout + DEADLINE_S
            require(prober.wait_for(503, bound, reason="timeout"), "the check did not time out")
            runs["hung"].append([prober.timed() for _ in range(args.probes)])
    return runs


def require(value: float, what: str) -> None:
    if value != value:  # NaN: the wait ran out
        raise RuntimeError(what)


def watching_master(agent: AgentProcess) -> tuple[HealthCheckClient, threading.Event, list[float]]:
    """A master in watch mode whose request is held, and when it first saw a failure."""
    failed = threading.Event()
    seen: list[float] = []

    def hook(event: ProbeEvent) -> None:
        if not event.result.succeeded and not seen:
            seen.append(time.time())
            failed.set()

    client = HealthCheckClient(
        agent.url,
        agent.secret,
        polling_interval=WATCH_POLLING_S,
        timeout=WATCH_TIMEOUT_S,
        mode="watch",
        watch_wait=WATCH_WAIT_S,
        hooks=(hook,),
    )
    client.start()
    pause = threading.Event()
    deadline = time.monotonic() + DEADLINE_S
    while not (client.stats().probes >= 1 and probes_in_flight.value == 1):
        if time.monotonic() > deadline:
            client.stop()
            raise RuntimeError("the watching master holds no request")
        pause.wait(0.01)
    return client, failed, seen


def trial(
    kind: str,
    agent: AgentProcess,
    prober: Prober,
    db_path: Path,
    args: argparse.Namespace,
    rng: random.Random,
) -> dict[str, float]:
    """One outage: when it began, when a probe got 503, when the master saw it, and when a
    probe got 200 again after the repair (wall times)."""
    require(prober.wait_for(200), "the agent was not ready before the outage")
    bound = args.interval + (args.timeout if kind == "hung" else 0.0)
    pause = threading.Event()
    client, failed, seen = watching_master(agent)
    try:
        pause.wait(rng.uniform(0.0, args.interval))
        with outage(kind, db_path):
            began = time.time()
            unavailable = prober.wait_for(503, bound + DEADLINE_S)
            failed.wait(bound + DEADLINE_S)
            client.stop()  # before its re-probes make it report the outage
            pause.wait(rng.uniform(0.0, args.interval))
            repaired = time.time()
        ready = prober.wait_for(200, bound + DEADLINE_S)
    finally:
        client.stop()
    return {
        "began": began,
        "unavailable": unavailable,
        "master_saw": seen[0] if seen else float("nan"),
        "repaired": repaired,
        "ready": ready,
        "bound": bound,
    }


def flip_times(log: str) -> list[float]:
    """When the agent logged the check failing (wall time, to the millisecond)."""
    return [
        datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp() for stamp in _FLIP.findall(log)
    ]


def with_flips(trials: list[dict[str, float]], flips: list[float]) -> None:
    """Each trial's first logged flip after its outage began (the log truncates to ms)."""
    for found in trials:
        after = [flip for flip in flips if flip >= found["began"] - 0.001]
        found["flip"] = min(after) if after else float("nan")


def run(args: argparse.Namespace, command: str) -> Report:
    rng = random.Random()
    kind = server_kind(args.interval, args.timeout)
    with (
        tempfile.TemporaryDirectory(prefix="bench-readiness-") as workdir,
        running_agent(kind, Path(workdir), run_secret()) as agent,
    ):
        db_path = next(Path(workdir).glob("*.db"))
        prober = Prober(agent)
        try:
            latencies = latency_runs(prober, db_path, args)
            trials: dict[str, list[dict[str, float]]] = {"gone": [], "hung": []}
            for _ in range(args.trials):
                for outage_kind in trials:
                    trials[outage_kind].append(
                        trial(outage_kind, agent, prober, db_path, args, rng)
                    )
        finally:
            prober.close()
        flips = flip_times(agent.log())
    for found in trials.values():
        with_flips(found, flips)
    return report(args, command, latencies, trials)


def ms(values: list[float]) -> list[float]:
    return [value * 1000 for value in values]


def report(
    args: argparse.Namespace,
    command: str,
    latencies: dict[str, list[list[float]]],
    trials: dict[str, list[dict[str, float]]],
) -> Report:
    labels = {"passing": "check passing (baseline)", "hung": "check hung past its timeout"}
    latency = Table(
        f"Health latency over {args.probes} signed probes on one connection, check every "
        f"{args.interval:g} s (median [range] over {args.repeats} "
        f"repeat{'s' * (args.repeats != 1)})",
        ["database check", "p99", "max"],
    )
    for condition, runs in latencies.items():
        latency.add(
            labels[condition],
            Spread.of(percentile(ms(r), 0.99) for r in runs).render(2, " ms"),
            Spread.of(max(ms(r)) for r in runs).render(2, " ms"),
        )
    outages = Table(
        f"From a database outage to a 503, {args.trials} outage{'s' * (args.trials != 1)} "
        f"of each kind, check every "
        f"{args.interval:g} s with a {args.timeout:g} s timeout (median, max)",
        [
            "outage",
            "bound",
            "outage → first 503",
            "outage → watching master's failure",
            "check flip → held watch answered",
            "repair → first 200",
        ],
    )
    descriptions = {"gone": "database file moved away", "hung": "check hung (storage stalled)"}
    for kind, found in trials.items():
        outages.add(
            descriptions[kind],
            f"{found[0]['bound'] * 1000:.0f} ms" if found else "-",
            spread_ms([t["unavailable"] - t["began"] for t in found]),
            spread_ms([t["master_saw"] - t["began"] for t in found]),
            spread_ms([t["master_saw"] - t["flip"] for t in found], digits=1),
            spread_ms([t["ready"] - t["repaired"] for t in found]),
        )
    result = Report("readiness", command, tables=[latency, outages])
    result.verdicts = verdicts(args, latencies, trials)
    result.data = {
        "interval_s": args.interval,
        "timeout_s": args.timeout,
        "latency_s": latencies,
        "trials": trials,
    }
    return result


def spread_ms(values: list[float], digits: int = 0) -> str:
    summary = Summary.of(value * 1000 for value in values if value == value)
    if summary.n == 0:
        return "n/a"
    missing = len(values) - summary.n
    lost = f" ({missing} not seen)" if missing else ""
    return f"{summary.median:.{digits}f} ms, {summary.max:.{digits}f} ms{lost}"


def verdicts(
    args: argparse.Namespace,
    latencies: dict[str, list[list[float]]],
    trials: dict[str, list[dict[str, float]]],
) -> list[Verdict]:
    slowest = max((max(r) for runs in latencies.values() for r in runs), default=float("nan"))
    late = {
        what: [
            f"{kind} {number + 1}: {(t[field] - t['began']) * 1000:.0f} ms"
            for kind, found in trials.items()
            for number, t in enumerate(found)
            if not t[field] - t["began"] <= t["bound"] + SLACK_S
        ]
        for what, field in (("503", "unavailable"), ("master", "master_saw"))
    }
    pushes = [t["master_saw"] - t["flip"] for found in trials.values() for t in found]
    pushes = [push for push in pushes if push == push]
    return [
        Verdict(
            "no probe waits on a check: the slowest probe is far under the check's timeout",
            slowest < args.timeout / 2,
            f"slowest {slowest * 1000:.1f} ms, timeout {args.timeout * 1000:.0f} ms",
        ),
        Verdict(
            "an outage is a 503 within the check's interval (plus its timeout when it hangs)",
            not late["503"],
            "; ".join(late["503"]) or "every outage in time",
        ),
        Verdict(
            "a watching master sees it within the same bound",
            not late["master"],
            "; ".join(late["master"]) or "every outage in time",
        ),
        Verdict(
            "a check's flip answers the held watch at once",
            None,
            f"median {statistics.median(pushes) * 1000:.1f} ms (the agent's log: to the ms)"
            if pushes
            else "not measured",
        ),
    ]


if __name__ == "__main__":
    sys.exit(serve())
