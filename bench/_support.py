"""Shared helpers for the benchmarks: agent processes, thread/fd/CPU probes, limits, reports."""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from rpc_datasource.http import AgentRequestError, new_session, signed_get
from rpc_datasource.scheduler import WORKER_THREAD_PREFIX, shared_scheduler

REPO_ROOT = Path(__file__).resolve().parent.parent
HEALTH_PATH = "/forest/health"
THREAD_PREFIX = "rpc-health"
READY_DEADLINE_S = 30.0
EXIT_DEADLINE_S = 15.0
START_ATTEMPTS = 3
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

assert WORKER_THREAD_PREFIX.startswith(THREAD_PREFIX)


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def agent_env(secret: str) -> dict[str, str]:
    """This process's environment without any `FOREST_*` setting, plus the run's secret."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FOREST_")}
    env["FOREST_AUTH_SECRET"] = secret
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Agent:
    """One `python -m examples.warehouse` process and where its output goes."""

    index: int
    port: int
    db_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def health_url(self) -> str:
        """The agent's signed health route."""
        return f"http://127.0.0.1:{self.port}{HEALTH_PATH}"

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the agent's output, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """User + system CPU the agent process has used so far (0 once it has gone)."""
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class AgentFleet:
    """Starts warehouse agents in a work directory; always cleans them up."""

    workdir: Path
    secret: str
    log_level: str = "WARNING"
    agents: list[Agent] = field(default_factory=list)

    def _spawn(self, index: int) -> Agent:
        port = free_port()
        db_path = self.workdir / f"warehouse-{index}.db"
        log_path = self.workdir / f"agent-{index}-{port}.log"
        command = [
            sys.executable,
            "-m",
            "examples.warehouse",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--db",
            str(db_path),
            "--log-level",
            self.log_level,
        ]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=agent_env(self.secret),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only us; we stop the agents ourselves.
            )
        return Agent(index, port, db_path, log_path, process)

    def start(self, count: int, deadline_s: float = READY_DEADLINE_S) -> float:
        """Start `count` agents and wait until each answers a signed health probe; seconds taken."""
        started = time.monotonic()
        self.agents = [self._spawn(index) for index in range(count)]
        for position, agent in enumerate(self.agents):
            for attempt in range(1, START_ATTEMPTS + 1):
                if wait_healthy(agent, self.secret, started + deadline_s):
                    break
                if agent.process.poll() is None or attempt == START_ATTEMPTS:
                    raise RuntimeError(
                        f"agent {agent.index} on port {agent.port} not healthy within "
                        f"{deadline_s:g} s (exit code {agent.process.poll()}):\n{agent.log_tail()}"
                    )
                # Exited early, most likely because its port was taken meanwhile: retry.
                agent = self._spawn(agent.index)
                self.agents[position] = agent
        return time.monotonic() - started

    def terminate(self, deadline_s: float = EXIT_DEADLINE_S) -> dict[str, int | None]:
        """SIGTERM every agent and wait for them; exit code per agent (None: did not exit)."""
        for agent in self.agents:
            if agent.process.poll() is None:
                agent.process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + deadline_s
        for agent in self.agents:
            try:
                codes[f"agent-{agent.index}"] = agent.process.wait(
                    max(0.0, deadline - time.monotonic())
                )
            except subprocess.TimeoutExpired:
                codes[f"agent-{agent.index}"] = None
        return codes

    def kill_leftovers(self) -> None:
        """Last resort for the `finally` path: terminate, then kill, whatever still runs."""
        for agent in self.agents:
            if agent.process.poll() is None:
                agent.process.terminate()
        for agent in self.agents:
            try:
                agent.process.wait(5.0)
            except subprocess.TimeoutExpired:
                agent.process.kill()
                agent.process.wait(5.0)

    def cpu_seconds(self) -> float:
        """CPU used so far by all the agents together."""
        return sum(agent.cpu_seconds() for agent in self.agents)


def wait_healthy(agent: Agent, secret: str, deadline: float) -> bool:
    """Poll the agent's signed /health until a 200 or the deadline; False if it never came."""
    session = new_session()
    try:
        while time.monotonic() < deadline:
            if agent.process.poll() is not None:
                return False
            try:
                reply = signed_get(session, agent.health_url, secret, timeout=1.0)
                if reply.status == 200 and json.loads(reply.body).get("status") == "ok":
                    return True
            except (AgentRequestError, ValueError):
                pass
            time.sleep(0.1)
        return False
    finally:
        session.close()


def health_threads() -> list[str]:
    """Names of the live threads belonging to the shared health scheduler."""
    return [t.name for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


def os_thread_count() -> int:
    """Threads of this process as the kernel sees them (catches non-Python threads too)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def open_fds() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


NET_COUNTERS = {
    "Tcp": ("ActiveOpens", "PassiveOpens", "RetransSegs"),
    "TcpExt": ("ListenOverflows", "ListenDrops", "TCPSynRetrans", "TW"),
}


def net_counters() -> dict[str, int]:
    """A few TCP counters of this network namespace (/proc/net/snmp and /proc/net/netstat)."""
    counters: dict[str, int] = {}
    for source in ("/proc/net/snmp", "/proc/net/netstat"):
        try:
            lines = Path(source).read_text().splitlines()
        except OSError:
            continue
        for names, values in zip(lines[::2], lines[1::2], strict=False):
            group, _, keys = names.partition(": ")
            table = dict(zip(keys.split(), values.split()[1:], strict=False))
            for key in NET_COUNTERS.get(group, ()):
                if key in table:
                    counters[key] = int(table[key])
    return counters


def counter_deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """`after - before`, key by key."""
    return {key: after[key] - before.get(key, 0) for key in after}


def time_wait_sockets() -> int:
    """TCP sockets in TIME-WAIT in this network namespace right now."""
    count = 0
    for source in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(source) as table:
                next(table, None)
                count += sum(1 for line in table if line.split()[3] == "06")
        except OSError:
            continue
    return count


class ConnectionCounter(logging.Filter):
    """Counts this process's new TCP connections from urllib3's debug records, then drops them."""

    NEW = "Starting new HTTP connection"
    RESET = "Resetting dropped connection"

    def __init__(self) -> None:
        super().__init__()
        self.new = 0
        self.reset = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """Count a connect (fresh or after the pooled one was found closed); emit nothing."""
        message = str(record.msg)
        if message.startswith(self.NEW):
            self.new += 1
        elif message.startswith(self.RESET):
            self.reset += 1
        return False

    @property
    def connects(self) -> int:
        """TCP connects so far: fresh pool connections plus reconnects of dropped ones."""
        return self.new + self.reset


@contextmanager
def counting_connections() -> Iterator[ConnectionCounter]:
    """Count urllib3 connects in this process for the duration of the block."""
    pool_logger = logging.getLogger("urllib3.connectionpool")
    counter = ConnectionCounter()
    level = pool_logger.level
    pool_logger.addFilter(counter)
    pool_logger.setLevel(logging.DEBUG)
    try:
        yield counter
    finally:
        pool_logger.setLevel(level)
        pool_logger.removeFilter(counter)


def thread_bound() -> int:
    """The documented bound on rpc-health threads: one scheduler plus the worker pool."""
    return 1 + shared_scheduler.max_workers


def raise_fd_limit(needed: int) -> dict[str, Any]:
    """Raise the soft RLIMIT_NOFILE towards `needed` (never past the hard limit); what was done."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    report: dict[str, Any] = {
        "soft_before": soft,
        "hard": hard,
        "needed": needed,
        "raised": False,
    }
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        report["raised"] = True
    report["soft_after"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    report["enough"] = report["soft_after"] == resource.RLIM_INFINITY or (
        report["soft_after"] >= needed
    )
    return report


def wait_until(predicate: Callable[[], bool], deadline_s: float, step_s: float = 0.05) -> float:
    """Poll `predicate` until true or the deadline; seconds waited, or -1 when it never held."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started >= deadline_s:
            return -1.0
        time.sleep(step_s)


def run_bounded(action: Callable[[], None], deadline_s: float, name: str) -> tuple[bool, float]:
    """Run `action` on a daemon thread; (finished within the deadline, seconds taken)."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            action()
        except BaseException as error:
            failure.append(error)

    started = time.monotonic()
    worker = threading.Thread(target=target, name=f"bench-{name}", daemon=True)
    worker.start()
    worker.join(deadline_s)
    elapsed = time.monotonic() - started
    if failure:
        raise failure[0]
    return not worker.is_alive(), elapsed


def thread_stacks(prefixes: tuple[str, ...] = (THREAD_PREFIX, "bench-")) -> str:
    """Stacks of the threads whose names start with one of `prefixes` (for hang reports)."""
    frames = sys._current_frames()
    parts = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or -1)
        if thread.name.startswith(prefixes) and frame is not None:
            parts.append(f"--- {thread.name}\n" + "".join(traceback.format_stack(frame)))
    return "\n".join(parts)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so `finally` clean-up runs on either."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def percentile(values: list[float], fraction: float) -> float:
    """The `fraction` quantile (nearest rank) of `values`; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def write_json(path: Path | None, report: dict[str, Any]) -> None:
    """Write the report as indented JSON when a path was given."""
    if path is not None:
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
