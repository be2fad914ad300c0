"""The fault matrix: each way an agent can fail, once each against real sockets and processes
(the probe modes taking turns), checked the same way. The exact timing bounds of every fault
kind, in both modes and from every starting moment, are proven on a fake clock in
`test_detection_bounds`; this tier checks that real servers and sockets behave as modelled.

Every case starts a `HealthCheckClient` (or, for a redeploy, an `RpcDatasource`) against a
real server on 127.0.0.1, brings one fault about and checks the contract:

* `on_server_down` fires exactly once per outage that reaches `failure_threshold` (at once on
  a 503 `shutting_down`), never for one that does not; `on_server_recovered` exactly once
  at the first success after it, where the case recovers;
* the down comes within `client.detection_bound_s` of the moment the fault began (plus
  `SCHEDULER_SLACK_S` for a loaded machine);
* `stats().last_reason` names the fault's category when the down fires;
* no exception escapes any thread (a `threading.excepthook` recorder), and the library logs
  none (no ERROR record from `rpc_datasource` or `asyncio`).

Where the fault begins matters for the bound. In poll mode a fault begins right after a
success (the polling bound's worst case). In watch mode it begins while a held request is
open: at the very start of a hold the held bound has only `jitter * (N-1) * retry` (10 ms
here) of slack, less than an event loop's timer latency on a busy machine, so a fault
begins `MID_HOLD` into it instead. Faults present from the start begin at `start()`.

The agents:

* `FaultAgent`, a `ScriptedServer` whose answer is a `Behaviour` that the test switches
  (or a program of them, one per request). Healthy, it holds a watch (`?wait=` with the
  current `If-None-Match`) for its wait, like the real agent; a new behaviour ends the hold;
* the real `python -m examples.warehouse` process (kill -9, SIGTERM, SIGSTOP, the wrong
  secret, a client clock 10 minutes ahead, a redeploy on the same port);
* sockets: a refused port, a listener whose accept queue is full, and a `.invalid` name that
  a stand-in for `socket.getaddrinfo` refuses, so that no lookup leaves the machine (the
  resolver here is a remote name server).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import threading
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qs

import pytest
from freezegun import freeze_time

from examples.warehouse.database import add_column
from rpc_common.protocol import DEFAULT_HEALTH_MAX_BYTES
from rpc_common.settings import ConfigurationError
from rpc_datasource import (
    DatasourceSettings,
    HealthCheckClient,
    HealthStats,
    ProbeEvent,
    RpcDatasource,
    SchemaEvent,
    SchemaOutcome,
    get_probe_hooks,
    get_schema_hooks,
    set_probe_hooks,
    set_schema_hooks,
)
from tests.support import (
    HEALTH_PATH,
    OTHER_SECRET,
    TEST_SECRET,
    closed_port,
    library_threads,
    unresolvable_name,
    wait_until,
)
from tests.support.scripted_server import Answer, Received, ScriptedServer
from tests.support.warehouse import Warehouse, running_warehouse

pytestmark = pytest.mark.slow

MODES = ("poll", "watch")
# Real processes and sockets, on a shared and loaded machine: a down may come this much after
# the bound through scheduling alone. The bounds themselves are proven exactly, for every
# fault kind and moment, on a fake clock in `test_detection_bounds`.
SCHEDULER_SLACK_S = 0.5
TIMEOUT_S = 0.5
WATCH_WAIT_S = 0.3
CLIENT_OPTIONS: dict[str, dict[str, Any]] = {
    "poll": {
        "polling_interval": 0.1,  # the failure retry interval defaults to it
        "failure_threshold": 2,
        "timeout": TIMEOUT_S,
        "jitter": 0.1,
    },
    "watch": {
        "polling_interval": 0.1,  # while down, and against an agent that does not hold
        "failure_threshold": 2,
        "timeout": TIMEOUT_S,
        "jitter": 0.1,
        "mode": "watch",
        "watch_wait": WATCH_WAIT_S,
    },
}
# How far into a held request a watch-mode fault begins (see the module's docstring).
MID_HOLD = 0.4 * WATCH_WAIT_S
DEADLINE_S = 15.0
# A failed probe's duration, measured from the request's arrival at the agent, may differ from
# its deadline by the connection set-up (before) and the loop's timer latency (after).
EARLY_S = 0.1
LATE_S = 0.5
# The 50 MB answer must be refused with far less memory than it would take.
MEMORY_CEILING_BYTES = 8 * 1024 * 1024
FIFTY_MB = 50 * 1024 * 1024
LIBRARY_LOGGERS = ("rpc_datasource", "asyncio")


# --- one mode per case ----------------------------------------------------------------------
# Each fault kind runs once against real sockets, the modes taking turns: what differs between
# the modes is proven for every kind on the fake clock, and in test_watch_warehouse.

C = TypeVar("C")


def one_mode_each(cases: list[C], name: Callable[[C], str]) -> list[Any]:
    """`(case, mode)` parameters, the modes taking turns along `cases`."""
    return [
        pytest.param(case, MODES[index % 2], id=f"{name(case)}-{MODES[index % 2]}")
        for index, case in enumerate(cases)
    ]


def with_one_mode_each(cases: list[Any]) -> list[Any]:
    """`cases` (each a `pytest.param`), each with a mode added, the modes taking turns."""
    return [
        pytest.param(*case.values, MODES[index % 2], id=f"{case.id}-{MODES[index % 2]}")
        for index, case in enumerate(cases)
    ]


# --- guards: nothing escapes ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def escaped_exceptions(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every exception that escapes a thread during the test; none may."""
    escaped: list[str] = []

    def record(args: threading.ExceptHookArgs) -> None:
        thread = args.thread.name if args.thread is not None else "?"
        escaped.append(f"{thread}: {args.exc_type.__name__}: {args.exc_value}")

    monkeypatch.setattr(threading, "excepthook", record)
    yield escaped
    # The clients are stopped by now; wait for their threads so that a late raise counts.
    wait_until(lambda: not library_threads(), 5.0)
    assert escaped == [], f"exceptions escaped threads: {escaped}"


@pytest.fixture(autouse=True)
def logged_exceptions(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The library logs no error and no traceback (a probe that raised, a task's exception
    never retrieved, a RecursionError from a deep body, an unclosed session)."""
    yield
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    bad = [
        f"{record.name}: {record.getMessage()}"
        for record in records
        if record.name.startswith(LIBRARY_LOGGERS)
        and (record.levelno >= logging.ERROR or record.exc_info is not None)
    ]
    assert bad == [], f"the library logged errors: {bad}"


# --- a client and what it reported ----------------------------------------------------------------


class Watch:
    """One client, and every probe event and callback it gave, stamped with monotonic time."""

    def __init__(
        self,
        url: str,
        mode: str,
        secret: str = TEST_SECRET,
        hooks: tuple[Callable[[ProbeEvent], None], ...] = (),
        **options: Any,
    ) -> None:
        self._lock = threading.Lock()
        self._events: list[tuple[float, ProbeEvent]] = []
        self._downs: list[tuple[float, HealthStats]] = []
        self._recoveries: list[tuple[float, HealthStats]] = []
        self.client = HealthCheckClient(
            url,
            secret,
            on_server_down=self._on_down,
            on_server_recovered=self._on_recovered,
            hooks=[self._on_event, *hooks],
            **{**CLIENT_OPTIONS[mode], **options},
        )

    def _on_event(self, event: ProbeEvent) -> None:
        with self._lock:
            self._events.append((time.monotonic(), event))

    def _on_down(self) -> None:
        stats = self.client.stats()
        with self._lock:
            self._downs.append((time.monotonic(), stats))

    def _on_recovered(self) -> None:
        stats = self.client.stats()
        with self._lock:
            self._recoveries.append((time.monotonic(), stats))

    @property
    def downs(self) -> list[tuple[float, HealthStats]]:
        with self._lock:
            return list(self._downs)

    @property
    def recoveries(self) -> list[tuple[float, HealthStats]]:
        with self._lock:
            return list(self._recoveries)

    def events(self, since: float = 0.0) -> list[tuple[float, ProbeEvent]]:
        with self._lock:
            return [(at, event) for at, event in self._events if at >= since]

    def successes(self, since: float = 0.0) -> list[float]:
        return [at for at, event in self.events(since) if event.result.succeeded]

    def failures(self, since: float = 0.0) -> list[tuple[float, ProbeEvent]]:
        return [(at, event) for at, event in self.events(since) if not event.result.succeeded]

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        assert wait_until(condition, DEADLINE_S), f"{what} within {DEADLINE_S} s: {self}"

    def start_and_wait_until_up(self) -> None:
        """Started, and past its first successes (in watch mode, a held request is open)."""
        self.client.start()
        self.wait_for(lambda: len(self.successes()) >= 2, "two successful probes")

    def __repr__(self) -> str:
        events = [
            (round(at, 3), event.result.kind.value, event.reason) for at, event in self.events()
        ]
        return f"Watch({self.client.stats()}, events={events[-12:]})"


@pytest.fixture
def watch() -> Iterator[Callable[..., Watch]]:
    """Makes `Watch`es; stops every client at the end of the test."""
    made: list[Watch] = []

    def make(url: str, mode: str, **options: Any) -> Watch:
        made.append(Watch(url, mode, **options))
        return made[-1]

    yield make
    for one in made:
        one.client.stop()


def assert_one_outage(
    watch: Watch, began: float, reasons: set[str], *, at_once: bool = False
) -> HealthStats:
    """One down, within the bound from `began`, with `last_reason` in `reasons`; and the
    outage goes on (more failing probes) without a second down or any recovery."""
    watch.wait_for(lambda: bool(watch.downs), "a down")
    down_at, stats = watch.downs[0]
    took = down_at - began
    bound = watch.client.detection_bound_s
    assert took <= bound + SCHEDULER_SLACK_S, (
        f"down {took:.3f} s after the fault, bound {bound:.3f} s: {watch}"
    )
    assert stats.state == "down"
    assert stats.last_reason in reasons, stats
    if at_once:
        assert stats.consecutive_failures == 1, stats
    failures = len(watch.failures())
    watch.wait_for(lambda: len(watch.failures()) > failures, "another failed probe")
    assert len(watch.downs) == 1, watch.downs
    assert watch.recoveries == []
    return stats


def assert_one_recovery(watch: Watch, healed: float) -> None:
    """One recovery, at the first success after `healed`; no other callback after it."""
    # The callback may run before the event reaches this test's hook (callbacks and hooks
    # run on different threads): wait for both.
    watch.wait_for(
        lambda: (
            bool(watch.recoveries)
            and any(event.result.succeeded for _, event in watch.events(healed))
        ),
        "a recovery",
    )
    _, stats = watch.recoveries[0]
    first_success = next(event for _, event in watch.events(healed) if event.result.succeeded)
    assert first_success.recovered, first_success
    assert stats.consecutive_failures == 0
    successes = len(watch.successes())
    watch.wait_for(lambda: len(watch.successes()) > successes, "another success")
    assert (len(watch.downs), len(watch.recoveries)) == (1, 1)
    assert watch.client.stats().state == "up"


def first_failure_after(watch: Watch, began: float) -> tuple[float, ProbeEvent]:
    watch.wait_for(lambda: bool(watch.failures(since=began)), "a failed probe")
    return watch.failures(since=began)[0]


# --- the fault agent ------------------------------------------------------------------------------

HEALTH_ETAG = '"fault-matrix-health-1"'
HEALTH_DOCUMENT = {
    "status": "ok",
    "version": "1.0.0",
    "instance_id": "fault-matrix",
    "schema_etag": '"fault-matrix-schema-1"',
    "uptime_s": 1.0,
}
HEALTHY_ANSWER = Answer.json(HEALTH_DOCUMENT, headers={"ETag": HEALTH_ETAG})
# Where the redirect points: the fault agent answers it healthy, so following it would show.
MOVED_PATH = "/moved" + HEALTH_PATH


@dataclass(frozen=True)
class Behaviour:
    """How the fault agent answers a health request: with `answer`, after holding a watch
    for its wait (if `holds`) and then `delay_s` more."""

    answer: Answer
    holds: bool = False
    delay_s: float = 0.0


HEALTHY = Behaviour(HEALTHY_ANSWER, holds=True)
FAILING_500 = Behaviour(Answer(500, b"internal error", {"Content-Type": "text/plain"}))


def wait_of(target: str) -> float | None:
    """The `wait` a watch asks for in its request target, if it is one."""
    values = parse_qs(target.partition("?")[2]).get("wait")
    return float(values[0]) if values else None


class FaultAgent(ScriptedServer):
    """A scripted server whose answers come from the current `Behaviour` (`become`), or
    from a program of them, one per health request (`play`), instead of from a queue."""

    def __init__(self) -> None:
        super().__init__()
        self._state = threading.Condition()
        self._behaviour = HEALTHY
        self._generation = 0
        self._program: deque[Behaviour] = deque()
        self._arrivals: list[tuple[float, str]] = []
        self._holding = 0

    def become(self, behaviour: Behaviour) -> float:
        """Answer with `behaviour` from now on, held watches included; when it began."""
        with self._state:
            self._behaviour = behaviour
            self._generation += 1
            self._state.notify_all()
        return time.monotonic()

    def play(self, *behaviours: Behaviour) -> float:
        """The next health requests get `behaviours`, one each; when the program began."""
        with self._state:
            self._program.extend(behaviours)
        return time.monotonic()

    def program_left(self) -> int:
        with self._state:
            return len(self._program)

    def holding(self) -> int:
        """How many watches are held now."""
        with self._state:
            return self._holding

    def arrivals(self) -> list[tuple[float, str]]:
        """(monotonic arrival, request target) of every request so far."""
        with self._state:
            return list(self._arrivals)

    def release(self) -> None:
        super().release()
        with self._state:
            self._state.notify_all()

    def _take(self, received: Received) -> Answer:
        super()._take(received)  # keeps `received`; its queue stays empty and is not used
        arrived = time.monotonic()
        with self._state:
            self._arrivals.append((arrived, received.target))
            if received.target.partition("?")[0] != HEALTH_PATH:
                return HEALTHY_ANSWER
            behaviour = self._program.popleft() if self._program else self._behaviour
            generation = self._generation
        wait = wait_of(received.target)
        if wait is not None and received.headers.get("If-None-Match") == HEALTH_ETAG:
            behaviour = self._hold(behaviour, generation, arrived + wait)
        if behaviour.delay_s:
            self.released.wait(behaviour.delay_s)
        return behaviour.answer

    def _hold(self, behaviour: Behaviour, generation: int, until: float) -> Behaviour:
        """Hold a watch while the behaviour holds, until `until`; the behaviour then."""
        with self._state:
            self._holding += 1
            try:
                while behaviour.holds and not self.released.is_set():
                    remaining = until - time.monotonic()
                    if remaining <= 0:
                        break
                    self._state.wait(remaining)
                    if self._generation != generation:
                        generation, behaviour = self._generation, self._behaviour
            finally:
                self._holding -= 1
        return behaviour


@pytest.fixture
def fault_agent() -> Iterator[FaultAgent]:
    agent = FaultAgent()
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


def up_then_fault_phase(watch: Watch, agent: FaultAgent, mode: str) -> None:
    """Up; then at the phase where a fault begins: right after a success in poll mode,
    `MID_HOLD` into a held watch in watch mode."""
    watch.start_and_wait_until_up()
    if mode == "poll":
        successes = len(watch.successes())
        watch.wait_for(lambda: len(watch.successes()) > successes, "a success")
        return
    watch.wait_for(lambda: agent.holding() >= 1, "a held watch")
    held_since = watch.successes()[-1]
    watch.wait_for(lambda: time.monotonic() - held_since >= MID_HOLD, "the middle of a hold")
    assert agent.holding() >= 1


@contextlib.contextmanager
def peak_memory() -> Iterator[Callable[[], int]]:
    """Traces allocations in the block; yields a function that gives their peak so far."""
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- HTTP faults: the fault agent's answers -------------------------------------------------------

# 60 KB of JSON nested 30 000 deep: under the 64 KB cap, far over the parser's recursion limit.
DEEP_JSON = (
    b'{"status": "ok", "instance_id": "deep", "nested": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
)
assert len(DEEP_JSON) < DEFAULT_HEALTH_MAX_BYTES


@dataclass(frozen=True)
class HttpFault:
    """One fault of the fault agent: its behaviour (or a function that makes it, for the
    big ones), the `last_reason` expected (None: no failure at all), and what else to check."""

    id: str
    behaviour: Behaviour | Callable[[], Behaviour]
    reason: str | None
    at_once: bool = False  # down on the first failure (a 503 shutting_down)
    at_deadline: bool = False  # each failed probe ends at its deadline, not before or long after
    bounded_memory: bool = False

    def make(self) -> Behaviour:
        return self.behaviour if isinstance(self.behaviour, Behaviour) else self.behaviour()


HTTP_FAULTS = [
    HttpFault("http-500", FAILING_500, "http_status"),
    HttpFault(
        "http-503-shutting-down",
        Behaviour(Answer.json({**HEALTH_DOCUMENT, "status": "shutting_down"}, status=503)),
        "shutting_down",
        at_once=True,
    ),
    HttpFault(
        "html-200",
        Behaviour(Answer(200, b"<html><body>OK</body></html>", {"Content-Type": "text/html"})),
        "bad_body",
    ),
    HttpFault("cut-mid-body", Behaviour(HEALTHY_ANSWER.cut(after_bytes=10)), "connection"),
    HttpFault("redirect", Behaviour(Answer.redirect(MOVED_PATH)), "http_status"),
    HttpFault(
        "50mb-body-until-close",
        lambda: Behaviour(Answer(200, b" " * FIFTY_MB, content_length=False)),
        "bad_body",
        bounded_memory=True,
    ),
    HttpFault(
        "50mb-body-declared",
        lambda: Behaviour(Answer(200, b" " * FIFTY_MB)),
        "bad_body",
        bounded_memory=True,
    ),
    HttpFault(
        "deeply-nested-json",
        Behaviour(Answer(200, DEEP_JSON, {"Content-Type": "application/json"})),
        "bad_body",
    ),
    # A byte every 50 ms: each well within `timeout`, the whole answer takes seconds.
    HttpFault(
        "drip-fed-body", Behaviour(HEALTHY_ANSWER.drip_body(0.05)), "timeout", at_deadline=True
    ),
    HttpFault(
        "drip-fed-head", Behaviour(HEALTHY_ANSWER.drip_head(0.05)), "timeout", at_deadline=True
    ),
    HttpFault(
        "answer-just-under-timeout",
        Behaviour(HEALTHY_ANSWER, holds=True, delay_s=TIMEOUT_S * 0.7),
        None,
    ),
    HttpFault(
        "answer-just-over-timeout",
        Behaviour(HEALTHY_ANSWER, holds=True, delay_s=TIMEOUT_S * 1.3),
        "timeout",
        at_deadline=True,
    ),
]


def assert_failures_took_their_deadline(watch: Watch, agent: FaultAgent, began: float) -> None:
    """Each failed probe since `began` timed out at its deadline (`timeout`, plus the wait
    for a watch), counted from its request's arrival: the deadline bounds the whole answer."""
    arrivals = agent.arrivals()
    failures = watch.failures(since=began)
    assert failures
    for failed_at, event in failures:
        assert event.reason == "timeout", event.result
        sent_at, target = [(at, target) for at, target in arrivals if at <= failed_at][-1]
        deadline = TIMEOUT_S + (wait_of(target) or 0.0)
        took = failed_at - sent_at
        assert deadline - EARLY_S <= took <= deadline + LATE_S, (target, took, deadline)


@pytest.mark.parametrize(("fault", "mode"), one_mode_each(HTTP_FAULTS, lambda fault: fault.id))
def test_http_fault(
    fault: HttpFault, mode: str, fault_agent: FaultAgent, watch: Callable[..., Watch]
) -> None:
    client = watch(fault_agent.url + HEALTH_PATH, mode)
    up_then_fault_phase(client, fault_agent, mode)
    behaviour = fault.make()
    with peak_memory() if fault.bounded_memory else contextlib.nullcontext() as peak:
        began = fault_agent.become(behaviour)

        if fault.reason is None:  # slower than before, still within the deadline
            client.wait_for(lambda: len(client.successes(since=began)) >= 3, "three successes")
            assert client.failures(since=began) == []
            assert (client.downs, client.recoveries) == ([], [])
            stats = client.client.stats()
            assert stats.last_reason is None
            assert stats.last_latency_s is not None
            assert stats.last_latency_s >= behaviour.delay_s
            return

        down = assert_one_outage(client, began, {fault.reason}, at_once=fault.at_once)
        if peak is not None:
            assert peak() < MEMORY_CEILING_BYTES, f"peak {peak()} bytes while refusing 50 MB"
    if fault.at_deadline:
        assert_failures_took_their_deadline(client, fault_agent, began)
    elif mode == "watch":  # the open held request got the fault: a failure at once
        failed_at, _ = first_failure_after(client, began)
        assert failed_at - began < TIMEOUT_S, "the held request did not fail at once"
    if fault.reason == "bad_body" and fault.bounded_memory:
        assert down.last_error is not None and "body over" in down.last_error
    # Nothing is followed: every request went to the health route.
    assert {target.partition("?")[0] for _, target in fault_agent.arrivals()} == {HEALTH_PATH}

    healed = fault_agent.become(HEALTHY)
    assert_one_recovery(client, healed)


# --- flapping: runs of failures below and at the threshold ----------------------------------------

FLAP_THRESHOLD = 3
FLAP_RUNS = 3


@pytest.mark.parametrize(
    ("run_length", "downs_per_run", "mode"),
    [
        pytest.param(FLAP_THRESHOLD - 1, 0, "poll", id="runs-below-threshold-poll"),
        pytest.param(FLAP_THRESHOLD, 1, "watch", id="runs-at-threshold-watch"),
    ],
)
def test_flapping(
    run_length: int,
    downs_per_run: int,
    mode: str,
    fault_agent: FaultAgent,
    watch: Callable[..., Watch],
) -> None:
    client = watch(fault_agent.url + HEALTH_PATH, mode, failure_threshold=FLAP_THRESHOLD)
    up_then_fault_phase(client, fault_agent, mode)
    began = fault_agent.play(*([FAILING_500] * run_length + [HEALTHY]) * FLAP_RUNS)
    client.wait_for(lambda: fault_agent.program_left() == 0, "the program played")
    played = time.monotonic()
    client.wait_for(lambda: len(client.successes(since=played)) >= 2, "two successes after it")

    events = client.events(since=began)
    assert sum(1 for _, event in events if not event.result.succeeded) == run_length * FLAP_RUNS
    assert {event.reason for _, event in events if not event.result.succeeded} == {"http_status"}
    expected = downs_per_run * FLAP_RUNS
    assert (len(client.downs), len(client.recoveries)) == (expected, expected)
    # Down and recovered alternate, one of each per run.
    changes = [
        "down" if event.went_down else "recovered"
        for _, event in events
        if event.went_down or event.recovered
    ]
    assert changes == ["down", "recovered"] * expected
    # Each down within the bound of its run's start: the success before it.
    successes = [began, *client.successes(since=began)]
    for down_at, stats in client.downs:
        run_began = max(at for at in successes if at < down_at)
        assert down_at - run_began <= client.client.detection_bound_s + SCHEDULER_SLACK_S
        assert stats.last_reason == "http_status"
        assert stats.consecutive_failures == FLAP_THRESHOLD


# --- unreachable agents: refused, unresolvable, never accepting -----------------------------------


@contextlib.contextmanager
def refused_port(_: pytest.MonkeyPatch) -> Iterator[str]:
    yield f"127.0.0.1:{closed_port()}"


@contextlib.contextmanager
def never_accepting_port(_: pytest.MonkeyPatch) -> Iterator[str]:
    """A listener with `listen(0)` that never accepts, its accept queue filled first: the
    kernel drops further SYNs, so a connect neither succeeds nor fails."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        with pytest.raises(TimeoutError):  # the queue is full: a connect hangs
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        yield f"127.0.0.1:{port}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


UNREACHABLE = [
    pytest.param(refused_port, "refused", id="refused-port"),
    pytest.param(unresolvable_name, "dns", id="unresolvable-name"),
    pytest.param(never_accepting_port, "timeout", id="never-accepting-port"),
]


@pytest.mark.parametrize(("where", "reason", "mode"), with_one_mode_each(UNREACHABLE))
def test_unreachable_agent(
    where: Callable[[pytest.MonkeyPatch], contextlib.AbstractContextManager[str]],
    reason: str,
    mode: str,
    watch: Callable[..., Watch],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with where(monkeypatch) as host_port:
        client = watch(f"http://{host_port}{HEALTH_PATH}", mode)
        began = time.monotonic()
        client.client.start()
        assert_one_outage(client, began, {reason})
        assert client.successes() == []
        client.client.stop()


# --- a real agent that refuses the client: wrong secret, clock off --------------------------------


@pytest.fixture(scope="module")
def shared_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    """One warehouse for the cases that leave it running as it was."""
    directory = tmp_path_factory.mktemp("shared-warehouse")
    with running_warehouse(directory / "warehouse.db", directory / "logs") as running:
        yield running


@contextlib.contextmanager
def client_clock_ahead(seconds: float) -> Iterator[None]:
    """This process's wall clock `seconds` ahead (the agent's, in its own process, is not);
    the client signs with it, so the agent refuses the timestamp (default skew: 300 s).
    Asyncio keeps the real monotonic clock; this module's own stopwatch does too."""
    with freeze_time(
        datetime.now(UTC) + timedelta(seconds=seconds),
        tick=True,
        real_asyncio=True,
        ignore=[__name__, "tests.support"],
    ):
        yield


# The skew is read off the agent's `Date` header: whole seconds, and the runner (uvicorn)
# refreshes it once a second, so it may be up to 2 s off the 600 s moved.
REFUSALS = [
    pytest.param(
        {"secret": OTHER_SECRET}, contextlib.nullcontext, r"bad_signature", id="wrong-secret"
    ),
    pytest.param(
        {},
        lambda: client_clock_ahead(600),
        r"timestamp_out_of_window\): the agent's clock is -(59[89]|60[012]) s from ours",
        id="client-clock-10-min-ahead",
    ),
    pytest.param(
        {},
        lambda: client_clock_ahead(-600),
        r"timestamp_out_of_window\): the agent's clock is \+(59[89]|60[012]) s from ours",
        id="client-clock-10-min-behind",
    ),
]


@pytest.mark.parametrize(("options", "clock", "error", "mode"), with_one_mode_each(REFUSALS))
def test_agent_refuses_the_client(
    options: dict[str, Any],
    clock: Callable[[], contextlib.AbstractContextManager[None]],
    error: str,
    mode: str,
    shared_warehouse: Warehouse,
    watch: Callable[..., Watch],
) -> None:
    with clock():
        client = watch(shared_warehouse.url + HEALTH_PATH, mode, **options)
        began = time.monotonic()
        client.client.start()
        stats = assert_one_outage(client, began, {"unauthorized"})
        client.client.stop()
    assert stats.last_error is not None and "HTTP 401" in stats.last_error
    assert re.search(error, stats.last_error), stats.last_error
    assert client.successes() == []


# --- the warehouse process: kill -9, SIGTERM, SIGSTOP then SIGCONT --------------------------------


@dataclass(frozen=True)
class ProcessFault:
    """A signal to the warehouse process, the `last_reason`s the down may carry, and how the
    agent ends (or, with `resume`, comes back)."""

    id: str
    signum: signal.Signals
    reasons: set[str]
    drain_s: str = "0"  # FOREST_SHUTDOWN_DRAIN_SECONDS
    at_once: bool = False  # down on the first failure
    ends_the_held_request: bool = False  # in watch mode, the first failure comes at once
    resume: signal.Signals | None = None  # sent after the down; then the agent recovers
    exit_code: int | None = None


PROCESS_FAULTS = [
    # The first probe may find the connection it kept alive reset, the next ones refused.
    ProcessFault("kill-9", signal.SIGKILL, {"connection", "refused"}, ends_the_held_request=True),
    ProcessFault(
        "sigterm",
        signal.SIGTERM,
        {"shutting_down"},
        drain_s="0.5",
        at_once=True,
        ends_the_held_request=True,
        exit_code=0,
    ),
    ProcessFault("sigstop-sigcont", signal.SIGSTOP, {"timeout"}, resume=signal.SIGCONT),
]


@pytest.mark.parametrize(("fault", "mode"), one_mode_each(PROCESS_FAULTS, lambda fault: fault.id))
def test_warehouse_process_fault(
    fault: ProcessFault,
    mode: str,
    db_path: Path,
    tmp_path: Path,
    watch: Callable[..., Watch],
) -> None:
    settings = {"FOREST_SHUTDOWN_DRAIN_SECONDS": fault.drain_s}
    with running_warehouse(db_path, tmp_path / "logs", settings=settings) as warehouse:
        client = watch(warehouse.url + HEALTH_PATH, mode)
        client.start_and_wait_until_up()
        if mode == "watch":  # the held request the last success opened is MID_HOLD old
            held_since = client.successes()[-1]
            client.wait_for(lambda: time.monotonic() - held_since >= MID_HOLD, "mid-hold")
        began = time.monotonic()
        os.kill(warehouse.process.pid, fault.signum)
        try:
            assert_one_outage(client, began, fault.reasons, at_once=fault.at_once)
            if mode == "watch" and fault.ends_the_held_request:
                failed_at, _ = first_failure_after(client, began)
                assert failed_at - began < TIMEOUT_S, "the held request did not end at once"
            if fault.exit_code is not None:
                assert warehouse.process.wait(DEADLINE_S) == fault.exit_code
            if fault.resume is not None:
                healed = time.monotonic()
                os.kill(warehouse.process.pid, fault.resume)
                assert_one_recovery(client, healed)
        finally:
            client.client.stop()
            if warehouse.process.poll() is None:
                os.kill(warehouse.process.pid, signal.SIGCONT)


# --- a fast redeploy on the same port, through RpcDatasource --------------------------------------


Event = TypeVar("Event", ProbeEvent, SchemaEvent)


class EventLog(Generic[Event]):
    """A process-wide hook (`set_probe_hooks`, `set_schema_hooks`): the events it was given."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Event] = []

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)

    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)


@pytest.fixture
def probe_log() -> Iterator[EventLog[ProbeEvent]]:
    log = EventLog[ProbeEvent]()
    previous = get_probe_hooks()
    set_probe_hooks([*previous, log])
    try:
        yield log
    finally:
        set_probe_hooks(previous)


@pytest.fixture
def schema_log() -> Iterator[EventLog[SchemaEvent]]:
    log = EventLog[SchemaEvent]()
    previous = get_schema_hooks()
    set_schema_hooks([*previous, log])
    try:
        yield log
    finally:
        set_schema_hooks(previous)


@dataclass
class Calls:
    """What the datasource's callbacks were called with."""

    downs: int = 0
    recoveries: int = 0
    schemas: list[dict[str, Any]] = field(default_factory=list)

    def down(self) -> None:
        self.downs += 1

    def recovered(self) -> None:
        self.recoveries += 1

    def schema_changed(self, schema: dict[str, Any]) -> None:
        self.schemas.append(schema)


REDEPLOY_INTERVAL_S = 1.0  # longer than a restart: it falls between two probes
# Polling, a restart that falls between two probes sees none fail; one that a loaded machine
# slows down may see a few refused, never this many.
REDEPLOY_THRESHOLD = 10


@pytest.mark.parametrize(
    ("new_column", "mode"),
    [
        pytest.param(False, "watch", id="same-schema-watch"),
        # In watch mode: test_watch_warehouse's restart with a new column.
        pytest.param(True, "poll", id="new-column-poll"),
    ],
)
def test_fast_redeploy(
    new_column: bool,
    mode: str,
    db_path: Path,
    tmp_path: Path,
    probe_log: EventLog[ProbeEvent],
    schema_log: EventLog[SchemaEvent],
) -> None:
    """The warehouse restarts on its port between two probes. Polling, the restart is
    faster than the threshold: no down. Watching, the held request hears of the SIGTERM
    (503 shutting_down): one down, one recovery. Either way one reload if and only if the
    schema changed."""
    logs = tmp_path / "logs"
    # Polling: no drain, the stop is quick; watching: a drain, held requests hear of it.
    settings = {"FOREST_SHUTDOWN_DRAIN_SECONDS": "0" if mode == "poll" else "0.5"}
    calls = Calls()
    datasource: RpcDatasource | None = None
    try:
        with running_warehouse(db_path, logs, settings=settings) as first:
            port = first.port
            first_health = first.get(HEALTH_PATH).json()
            # build() takes no mode: watch mode comes in settings (with the URI and the
            # secret: giving those to build() as well fails, see the xfail at the end).
            datasource = RpcDatasource.build(
                health_check_interval=REDEPLOY_INTERVAL_S,
                health_check_failure_threshold=REDEPLOY_THRESHOLD,
                on_schema_change=calls.schema_changed,
                health_check_timeout=TIMEOUT_S,
                on_server_down=calls.down,
                on_server_recovered=calls.recovered,
                settings=DatasourceSettings(
                    rpc_uri=first.url,
                    auth_secret=TEST_SECRET,
                    health_check_mode=mode,
                    health_check_watch_wait=REDEPLOY_INTERVAL_S,
                ),
            )
            health = datasource.health
            # Right after the first probe: the next one is a full interval away.
            assert wait_until(lambda: health.stats().probes >= 1, DEADLINE_S)
            assert health.stats().state == "up"
            assert first.stop() == 0  # a redeploy: a graceful stop
        if new_column:
            add_column(db_path, "products", "color", "TEXT")
        with running_warehouse(db_path, logs, port=port, settings=settings) as second:
            second_health = second.get(HEALTH_PATH).json()

            def saw_second() -> list[ProbeEvent]:
                return [
                    event
                    for event in probe_log.events()
                    if event.result.instance_id == second_health["instance_id"]
                ]

            assert wait_until(lambda: bool(saw_second()), DEADLINE_S), health.stats()
            if new_column:
                assert wait_until(lambda: bool(calls.schemas), DEADLINE_S)
            # Settled: another probe of the new instance, and the schema has its ETag.
            seen = len(saw_second())
            assert wait_until(lambda: len(saw_second()) > seen, DEADLINE_S)
            assert wait_until(
                lambda: (
                    datasource is not None
                    and datasource.schema_etag == second_health["schema_etag"]
                ),
                DEADLINE_S,
            ), (datasource.schema_etag, second_health)
            stats = health.stats()
            datasource.close()  # before this warehouse stops too: the client would see it
    finally:
        if datasource is not None:
            datasource.close()

    assert first_health["instance_id"] != second_health["instance_id"]
    assert (first_health["schema_etag"] != second_health["schema_etag"]) is new_column
    assert sum(1 for event in saw_second() if event.restarted) == 1
    assert stats.state == "up"
    if mode == "poll":
        assert (calls.downs, calls.recoveries) == (0, 0), stats
        assert stats.failures < REDEPLOY_THRESHOLD
    else:
        assert (calls.downs, calls.recoveries) == (1, 1), stats
        downs = [event for event in probe_log.events() if event.went_down]
        assert [event.reason for event in downs] == ["shutting_down"]
        # The recovery re-read the schema, whether or not it changed.
        if not new_column:
            outcomes = [event.outcome for event in schema_log.events()]
            assert outcomes == [SchemaOutcome.LOADED, SchemaOutcome.NOT_MODIFIED]
    assert datasource.reloads == int(new_column)
    assert len(calls.schemas) == int(new_column)
    if new_column:
        products = [c for c in calls.schemas[0]["collections"] if c["name"] == "products"]
        assert "color" in {f["name"] for f in products[0]["fields"]}


# --- found: the watch-mode bound does not hold against an agent that does not hold ----------------


def test_watch_bound_holds_when_the_agent_does_not_hold_then_freezes(
    fault_agent: FaultAgent, watch: Callable[..., Watch]
) -> None:
    began: list[float] = []
    armed = threading.Event()

    def freeze_right_after_a_success(event: ProbeEvent) -> None:
        if armed.is_set() and event.result.succeeded and not began:
            began.append(fault_agent.become(Behaviour(Answer.never())))

    fault_agent.become(Behaviour(HEALTHY_ANSWER, holds=False))  # answers watches at once
    client = watch(
        fault_agent.url + HEALTH_PATH,
        "watch",
        polling_interval=0.6,
        failure_retry_interval=0.1,
        watch_wait=0.6,
        timeout=0.3,
        hooks=(freeze_right_after_a_success,),
    )
    client.start_and_wait_until_up()
    assert any(wait_of(target) for _, target in fault_agent.arrivals()), "no watch was sent"
    armed.set()
    client.wait_for(lambda: bool(client.downs), "a down")
    down_at, stats = client.downs[0]
    assert stats.last_reason == "timeout"
    took = down_at - began[0]
    bound = client.client.detection_bound_s
    assert took <= bound + SCHEDULER_SLACK_S, (
        f"down {took:.3f} s after the agent froze, bound {bound:.3f} s"
    )


def test_build_takes_uri_and_secret_alongside_settings(shared_warehouse: Warehouse) -> None:
    url = shared_warehouse.url
    settings = DatasourceSettings(rpc_uri=url, auth_secret=TEST_SECRET)
    datasource = RpcDatasource.build(uri=url + "/", auth_secret=TEST_SECRET, settings=settings)
    try:
        assert datasource.settings.rpc_uri == url  # validated like any argument
    finally:
        datasource.close()
    with pytest.raises(ConfigurationError, match="health_check_interval"):
        RpcDatasource.build(health_check_interval=-5, settings=settings)
