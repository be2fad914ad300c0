"""Two masters on one agent's legacy SSE route: how often they take its one stream from each
other, and what each is left with.

Each repeat is one agent (the runner) and two legacy `SseClient`s on its `/forest/sse`, the
second started `STAGGER_S` after the first, for `--window` seconds; beside it, on an agent
of its own, the baseline: one master alone. All repeats and baselines run at once (each on
its own agent): the clients spend the window waiting, so they do not disturb each other.

A supersede is counted three ways: the agent's WARNING naming the new stream's client, the
`superseded` events the clients receive, and the clients' WARNINGs (one per run of
supersedes). Before the window, a raw stream on each agent is superseded by another to read
what the wire carries (`event: superseded`, `retry: 30000`). Who held the stream when comes
from each client's events (a stream's first heartbeat is sent as it opens); when the agent
had none, from its log. Heartbeats every second (default 10 s) only make a lost stream
visible sooner: the agent ends a superseded stream as the new one registers, and the
client's wait depends on the `retry` alone.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from bench.harness.fleet import RUNNER, AgentProcess, fleet
from bench.harness.report import Report, Spread, Table, Verdict
from rpc_common.protocol import SUPERSEDED_EVENT, SUPERSEDED_RETRY_MS
from rpc_common.signing import signed_headers
from rpc_datasource.legacy.sse_client import (
    BACKOFF_JITTER,
    SUPERSEDED_BACKOFF_CAP_S,
    SseClient,
)
from rpc_datasource.legacy.sse_parser import SseEvent

SUMMARY = "two legacy SSE masters on one agent: supersedes, reconnects, who held the stream"
SMOKE = ["--window", "5", "--repeats", "1"]

SSE = "/forest/sse"
STAGGER_S = 1.0
# How far a kick may come outside its jittered backoff: the reconnect and the callback.
SLACK_S = 1.0
WIRE_DEADLINE_S = 10.0
CLIENT_LOGGER = "rpc_datasource.legacy.sse_client"
_AGENT_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ rpc_agent\.core\.sse: SSE stream (\w+) (.*)$",
    re.MULTILINE,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window", type=float, default=300.0, help="seconds (default 300)")
    parser.add_argument("--repeats", type=int, default=3, help="fights, run at once (default 3)")
    parser.add_argument(
        "--heartbeat", type=float, default=1.0, help="agent and client heartbeat, s (default 1)"
    )
    parser.add_argument("--plot", type=Path, help="draw who held the stream when (PNG)")


class Master:
    """One legacy client and the events it received, stamped as they came."""

    def __init__(self, label: str, agent: AgentProcess, heartbeat: float) -> None:
        self.label = label
        self.seen: list[tuple[float, str, int]] = []  # (time, event, connection attempt)
        self.client = SseClient(
            agent.url + SSE, agent.secret, heartbeat_interval=heartbeat, on_event=self._seen
        )

    def _seen(self, event: SseEvent) -> None:
        self.seen.append((time.time(), event.event, self.client.connection_attempts))

    @property
    def reconnects(self) -> int:
        return max(0, self.client.connection_attempts - 1)

    def superseded_at(self) -> list[float]:
        return [at for at, event, _ in self.seen if event == SUPERSEDED_EVENT]

    def held(self, start: float, end: float) -> list[tuple[float, float]]:
        """When this master held the stream: from a stream's first event to its `superseded`
        (or to the window's end for the last one), clipped to the window."""
        streams: dict[int, list[tuple[float, str]]] = {}
        for at, event, attempt in self.seen:
            streams.setdefault(attempt, []).append((at, event))
        intervals = []
        for attempt, events in sorted(streams.items()):
            ended = next((at for at, event in events if event == SUPERSEDED_EVENT), None)
            if ended is None:
                ended = end if attempt == max(streams) else events[-1][0]
            begun, ended = max(events[0][0], start), min(ended, end)
            if ended > begun:
                intervals.append((begun, ended))
        return intervals


@dataclass
class Run:
    """One agent and its masters over one window, and what its log said."""

    label: str
    agent: AgentProcess
    masters: list[Master]
    log_offset: int = 0
    log_text: str = ""  # the agent's log from the window on, kept when the agent is gone
    wire: str = ""
    start: float = 0.0
    end: float = 0.0
    client_warnings: list[logging.LogRecord] = field(default_factory=list)

    def agent_lines(self) -> list[tuple[float, str, str]]:
        """(time, stream id, rest) of the agent's SSE lines written since the window began."""
        return [
            (datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp(), stream, rest)
            for stamp, stream, rest in _AGENT_LINE.findall(self.log_text)
        ]

    def kicks(self) -> list[float]:
        """When the agent logged a supersede, in seconds into the window."""
        return [
            at - self.start
            for at, _, rest in self.agent_lines()
            if rest.startswith("superseded by") and self.start <= at <= self.end
        ]

    def kicks_naming_a_client(self) -> int:
        return sum(
            bool(re.match(r"superseded by \w+ from 127\.0\.0\.1:\d+", rest))
            for at, _, rest in self.agent_lines()
            if self.start <= at <= self.end
        )

    def without_stream_s(self) -> float:
        """How long in the window the agent had no stream at all (from its log)."""
        opened: dict[str, float] = {}
        intervals = []
        for at, stream, rest in self.agent_lines():
            if rest == "started":
                opened[stream] = at
            elif rest.startswith("stopped") and stream in opened:
                intervals.append((opened.pop(stream), at))
        intervals += [(at, self.end) for at in opened.values()]
        return (self.end - self.start) - covered(intervals, self.start, self.end)

    def share(self, master: Master) -> float:
        return covered(master.held(self.start, self.end), self.start, self.end) / (
            self.end - self.start
        )

    def superseded_events(self) -> int:
        return sum(len(master.superseded_at()) for master in self.masters)

    def runs_of_supersedes(self) -> int:
        """How many WARNINGs the clients should have logged: one per master kicked (nothing
        but supersedes ends a stream here, so each master's are one run)."""
        return sum(bool(master.superseded_at()) for master in self.masters)

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "window_s": self.end - self.start,
            "kicks_at_s": self.kicks(),
            "agent_warnings": len(self.kicks()),
            "agent_warnings_naming_client": self.kicks_naming_a_client(),
            "superseded_events": {m.label: len(m.superseded_at()) for m in self.masters},
            "client_warnings": len(self.client_warnings),
            "runs_of_supersedes": self.runs_of_supersedes(),
            "reconnects": {m.label: m.reconnects for m in self.masters},
            "share": {m.label: self.share(m) for m in self.masters},
            "held": {m.label: m.held(self.start, self.end) for m in self.masters},
            "without_stream_s": self.without_stream_s(),
            "wire_superseded": self.wire,
        }


def covered(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """The length of the union of `intervals` within [start, end]."""
    total, reach = 0.0, start
    for begun, ended in sorted(intervals):
        begun, ended = max(begun, reach), min(ended, end)
        if ended > begun:
            total += ended - begun
            reach = ended
    return total


def gaps(kicks: list[float]) -> list[float]:
    return [later - earlier for earlier, later in pairwise(kicks)]


def nominal_gaps(count: int) -> list[float]:
    """The backoff before each kick after the first, as the design has it: the master kicked
    waits the `retry` doubled at each supersede in a row (capped); they alternate."""
    base = SUPERSEDED_RETRY_MS / 1000
    return [min(base * 2 ** ((k - 2) // 2), SUPERSEDED_BACKOFF_CAP_S) for k in range(2, count + 1)]


def gaps_outside_backoff(kicks: list[float]) -> list[str]:
    """Each gap between kicks that the jittered backoff does not explain."""
    outside = []
    for number, (gap, nominal) in enumerate(
        zip(gaps(kicks), nominal_gaps(len(kicks)), strict=True), start=2
    ):
        low = nominal * (1 - BACKOFF_JITTER) - SLACK_S
        high = nominal * (1 + BACKOFF_JITTER) + SLACK_S
        if not low <= gap <= high:
            outside.append(
                f"kick {number}: {gap:.1f} s after the last, not in [{low:.0f}, {high:.0f}]"
            )
    return outside


def raw_stream(agent: AgentProcess) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """A signed `/forest/sse` stream on a plain connection, its first bytes read."""
    connection = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=WIRE_DEADLINE_S)
    headers = signed_headers(agent.secret, method="GET", target=SSE)
    connection.request("GET", SSE, headers={**headers, "Accept": "text/event-stream"})
    response = connection.getresponse()
    if response.status != 200:
        connection.close()
        raise RuntimeError(f"{SSE} answered {response.status}")
    response.read1(4096)
    return connection, response


def superseded_on_the_wire(agent: AgentProcess) -> str:
    """What a stream receives when another takes its place (its last event block)."""
    first, stream = raw_stream(agent)
    try:
        second, _ = raw_stream(agent)
        try:
            received = b""
            deadline = time.monotonic() + WIRE_DEADLINE_S
            while b"event: superseded" not in received and time.monotonic() < deadline:
                chunk = stream.read1(4096)
                if not chunk:
                    break
                received += chunk
            if b"event: superseded" in received:
                received += b"" if received.endswith(b"\n\n") else stream.read1(4096)
        finally:
            second.close()
    finally:
        first.close()
    text = received.decode("utf-8", "replace")
    return text[text.rfind("event:") :].strip() if "event:" in text else text.strip()


class ClientWarnings(logging.Handler):
    """The legacy clients' WARNINGs, kept (and not printed)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def client_warnings() -> Iterator[ClientWarnings]:
    handler = ClientWarnings()
    logger = logging.getLogger(CLIENT_LOGGER)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def fight(args: argparse.Namespace, workdir: Path) -> list[Run]:
    """Every repeat and its baseline at once, over one window."""
    settings = {"FOREST_SSE_HEARTBEAT_INTERVAL": f"{args.heartbeat:g}"}
    with fleet(workdir) as agents, client_warnings() as warnings:
        started = agents.start(RUNNER, 2 * args.repeats, settings)
        runs = []
        for number in range(args.repeats):
            fought, alone = started[2 * number], started[2 * number + 1]
            masters = [Master(label, fought, args.heartbeat) for label in ("A", "B")]
            runs.append(Run(f"fight {number + 1}", fought, masters))
            runs.append(Run(f"alone {number + 1}", alone, [Master("A", alone, args.heartbeat)]))
        for run in runs:
            if run.label.startswith("fight"):
                run.wire = superseded_on_the_wire(run.agent)
            run.log_offset = len(run.agent.log())
        pause = threading.Event()
        try:
            window_start = time.time()
            for run in runs:
                run.start = window_start
                run.masters[0].client.start()
            pause.wait(STAGGER_S)
            for run in runs:
                for master in run.masters[1:]:
                    master.client.start()
            pause.wait(max(0.0, window_start + args.window - time.time()))
            window_end = time.time()
        finally:
            for run in runs:
                for master in run.masters:
                    master.client.close()
        # The agents log a stream's end as they see it: give the last lines a moment.
        pause.wait(0.5)
        for run in runs:
            run.end = window_end
            run.log_text = run.agent.log()[run.log_offset :]
            url = run.agent.url + SSE
            run.client_warnings = [
                r for r in warnings.records if isinstance(r.args, tuple) and r.args[:1] == (url,)
            ]
            run.client_warnings = [r for r in run.client_warnings if "another master" in r.msg]
    return runs


def run(args: argparse.Namespace, command: str) -> Report:
    with tempfile.TemporaryDirectory(prefix="bench-sse-fight-") as workdir:
        runs = fight(args, Path(workdir))
    fights = [run for run in runs if run.label.startswith("fight")]
    alone = [run for run in runs if run.label.startswith("alone")]
    minutes = args.window / 60
    table = Table(
        f"Two masters on one agent's /forest/sse for {args.window:g} s ({len(fights)} "
        f"repeat{'s' * (len(fights) != 1)}, "
        f"median [range]); baseline: one master alone",
        [
            "masters",
            "supersedes (agent WARNINGs)",
            "per minute",
            "`superseded` events received",
            "client WARNINGs",
            "reconnects per master",
            "share of the window held: A / B",
            "agent without a stream",
        ],
    )
    for label, group in (("2 (A, then B 1 s later)", fights), ("1 (baseline)", alone)):
        kicks = [len(r.kicks()) for r in group]
        shares = [
            Spread.of(r.share(r.masters[i]) * 100 for r in group).render(1, " %")
            for i in range(len(group[0].masters))
        ]
        table.add(
            label,
            Spread.of(kicks).render(0),
            Spread.of(k / minutes for k in kicks).render(2),
            Spread.of(r.superseded_events() for r in group).render(0),
            Spread.of(len(r.client_warnings) for r in group).render(0),
            Spread.of(m.reconnects for r in group for m in r.masters).render(0),
            " / ".join(shares),
            Spread.of(r.without_stream_s() * 1000 for r in group).render(0, " ms"),
        )
    timeline = Table(
        "When the agent logged each supersede (s into the window), and the backoff before it",
        ["repeat", "kicks at", "gaps"],
    )
    for r in fights:
        kick_times = r.kicks()
        timeline.add(
            r.label,
            ", ".join(f"{k:.1f}" for k in kick_times) or "none",
            ", ".join(f"{g:.1f}" for g in gaps(kick_times)) or "-",
        )
    designed = nominal_gaps(max((len(r.kicks()) for r in fights), default=0) + 1)
    timeline.add(
        "design",
        f"{STAGGER_S:g}, then each gap",
        ", ".join(f"{g:.0f} ±{BACKOFF_JITTER:.0%}" for g in designed) or "-",
    )
    report = Report("sse_fight", command, tables=[table, timeline])
    report.verdicts = verdicts(fights, alone)
    report.data = {
        "window_s": args.window,
        "heartbeat_s": args.heartbeat,
        "stagger_s": STAGGER_S,
        "runs": [r.summary() for r in runs],
    }
    if args.plot is not None:
        plot(fights, args.plot)
    return report


def verdicts(fights: list[Run], alone: list[Run]) -> list[Verdict]:
    """The counts agree, the backoff holds, and one master alone is never kicked."""
    wrong_wire = [r.label for r in fights if not wire_ok(r.wire)]
    disagree = [
        f"{r.label}: agent {len(r.kicks())}, events {r.superseded_events()}, "
        f"client WARNINGs {len(r.client_warnings)} for {r.runs_of_supersedes()} runs"
        for r in fights
        if not (
            len(r.kicks()) == r.kicks_naming_a_client() == r.superseded_events()
            and len(r.client_warnings) == r.runs_of_supersedes()
        )
    ]
    outside = [f"{r.label}: {gap}" for r in fights for gap in gaps_outside_backoff(r.kicks())]
    kicked_alone = [
        f"{r.label}: {len(r.kicks())} supersedes, {r.masters[0].reconnects} reconnects"
        for r in alone
        if r.kicks() or r.masters[0].reconnects
    ]
    return [
        Verdict(
            "a superseded stream ends with `event: superseded` and `retry: 30000`",
            not wrong_wire,
            "; ".join(wrong_wire) or repr(fights[0].wire) if fights else "no fight",
        ),
        Verdict(
            "one supersede = one agent WARNING naming the client = one `superseded` event; "
            "one client WARNING per run",
            not disagree,
            "; ".join(disagree) or "all agree",
        ),
        Verdict(
            "each kick comes after the kicked master's backoff (30 s doubled per supersede in "
            "a row, ±20 %)",
            not outside,
            "; ".join(outside) or "every gap inside",
        ),
        Verdict(
            "one master alone: no supersede, no reconnect",
            not kicked_alone,
            "; ".join(kicked_alone) or f"{len(alone)} baselines clean",
        ),
        Verdict(
            "what a second master gets",
            None,
            "; ".join(
                f"master {label} held the stream "
                f"{Spread.of(r.share(r.masters[n]) * 100 for r in fights).render(0, ' %')}"
                for n, label in enumerate(("A", "B"))
            )
            + " of the window; the other saw no RpcServerStop meanwhile"
            if fights
            else "no fight",
        ),
    ]


def wire_ok(wire: str) -> bool:
    lines = wire.splitlines()
    return f"event: {SUPERSEDED_EVENT}" in lines and f"retry: {SUPERSEDED_RETRY_MS}" in lines


def plot(fights: list[Run], path: Path) -> None:
    """A timeline per repeat: when A and when B held the stream, and each supersede."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 0.5 + 0.7 * len(fights)))
    colours = {"A": "tab:blue", "B": "tab:orange"}
    labels = []
    for row, r in enumerate(fights):
        for master in r.masters:
            spans = [(b - r.start, e - b) for b, e in master.held(r.start, r.end)]
            axis.broken_barh(spans, (row - 0.35, 0.7), color=colours[master.label], alpha=0.8)
        for kick in r.kicks():
            axis.plot([kick, kick], [row - 0.45, row + 0.45], color="black", linewidth=0.8)
        labels.append(r.label)
    axis.set_yticks(range(len(fights)), labels)
    axis.set_xlabel("seconds into the window (black: a supersede)")
    axis.set_title("Who held the agent's one SSE stream: master A (blue), master B (orange)")
    axis.set_xlim(0, max((r.end - r.start for r in fights), default=1))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
