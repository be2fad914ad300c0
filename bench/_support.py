"""Shared helpers for the benchmarks: child processes (agents, hung servers), probes of this
process (threads, fds), bounded waits, and small report utilities."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from rpc_datasource import HealthCheckClient

REPO_ROOT = Path(__file__).resolve().parent.parent
HEALTH_PATH = "/forest/health"
THREAD_PREFIX = "rpc-health"
# The engine runs 1 loop thread + at most 2 resolver threads (rpc_datasource/engine.py);
# the acceptance limit for probing threads is 4.
PROBING_THREAD_LIMIT = 4
READY_DEADLINE_S = 30.0
EXIT_DEADLINE_S = 15.0
STOP_ALL_DEADLINE_S = 60.0
CLEANUP_DEADLINE_S = 10.0
START_ATTEMPTS = 3
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """`preexec_fn` of every child: SIGTERM it if the benchmark dies, even by SIGKILL (Linux)."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def agent_env(secret: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any `FOREST_*` setting, plus the run's secret and
    `extra` (agent settings such as `FOREST_HEALTH_MAX_WATCHERS`, given last so they win)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FOREST_")}
    env["FOREST_AUTH_SECRET"] = secret
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def parse_env_assignment(text: str) -> tuple[str, str]:
    """`KEY=VALUE` (as given to `--agent-env`) split at the first `=`; ValueError otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key or not key.replace("_", "").isalnum():
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def health_url(port: int) -> str:
    """The signed health route of whatever listens on `port` of 127.0.0.1."""
    return f"http://127.0.0.1:{port}{HEALTH_PATH}"


@dataclass
class Agent:
    """One `python -m examples.warehouse` process and where its output goes."""

    index: int
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def health_url(self) -> str:
        return health_url(self.port)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the agent's output, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def spawn_warehouse(index: int, port: int, db: Path, log_path: Path, env: dict[str, str]) -> Agent:
    """Start `python -m examples.warehouse` on 127.0.0.1:`port`, its output in `log_path`."""
    command = [sys.executable, "-m", "examples.warehouse", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--db", str(db), "--log-level", "WARNING"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the agents ourselves.
            preexec_fn=die_with_parent,
        )
    return Agent(index, port, log_path, process)


@dataclass
class AgentFleet:
    """Starts warehouse agents in a work directory; `kill_leftovers` always cleans up."""

    workdir: Path
    secret: str
    agents: list[Agent] = field(default_factory=list)
    # Extra environment of every agent (`--agent-env`), e.g. FOREST_HEALTH_MAX_WATCHERS.
    extra_env: dict[str, str] = field(default_factory=dict)

    def _spawn(self, index: int) -> Agent:
        port = free_port()
        return spawn_warehouse(
            index,
            port,
            self.workdir / f"warehouse-{index}.db",
            self.workdir / f"agent-{index}-{port}.log",
            agent_env(self.secret, self.extra_env),
        )

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
        deadline = time.monotonic() + deadline_s
        codes: dict[str, int | None] = {}
        for agent in self.agents:
            try:
                codes[f"agent-{agent.index}"] = agent.process.wait(
                    max(0.0, deadline - time.monotonic())
                )
            except subprocess.TimeoutExpired:
                codes[f"agent-{agent.index}"] = None
        return codes

    def kill_leftovers(self) -> None:
        """Last resort for the `finally` path: whatever still runs is terminated, then killed."""
        stop_processes(agent.process for agent in self.agents)


def stop_processes(processes: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process still running, then SIGKILL those not gone within 5 s."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.terminate()
    for process in running:
        try:
            process.wait(5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)


def wait_healthy(agent: Agent, secret: str, deadline: float) -> bool:
    """Probe the agent (the library's one-off probe) until it is healthy or the deadline."""
    client = HealthCheckClient(agent.health_url, secret, timeout=1.0)
    while time.monotonic() < deadline:
        if agent.process.poll() is not None:
            return False
        if client.probe_now().succeeded:
            return True
        time.sleep(0.1)
    return False


@dataclass
class HungServers:
    """The `bench.hung_servers` child process: one never-answering and one full-backlog port."""

    process: subprocess.Popen[bytes]
    ports: dict[str, int]

    @classmethod
    def start(cls, lifetime_s: float, deadline_s: float = 10.0) -> HungServers:
        """Start it and read the ports it announces; it exits by itself after `lifetime_s`."""
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.hung_servers", "--max-seconds", str(lifetime_s)],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,  # its lifeline: it exits when we close this (or die)
            stdout=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], deadline_s)
        line = process.stdout.readline() if readable else b""
        if not line:
            stop_processes([process])
            raise RuntimeError(f"bench.hung_servers not ready within {deadline_s:g} s")
        return cls(process, json.loads(line))

    def url(self, kind: str) -> str:
        """The health URL of the `never_answers` or `full_backlog` server."""
        return health_url(self.ports[kind])

    def close(self) -> None:
        """Close its lifeline (it then exits by itself) and make sure it is gone."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(2.0)
        except subprocess.TimeoutExpired:
            stop_processes([self.process])


def health_threads() -> list[str]:
    """Names of the live threads of the shared health engine (loop, resolvers)."""
    return [t.name for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


def engine_threads() -> list[str]:
    """The engine's threads still alive: loop, resolvers and callback pool (`rpc-*`)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("rpc-")]


def os_thread_count() -> int:
    """Threads of this process as the kernel sees them (catches non-Python threads too)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def open_fds() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def raise_fd_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards `needed` (never past the hard limit); the new one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


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


def stop_all(clients: list[HealthCheckClient]) -> None:
    """Stop every client, one after another, as an application shutting down would."""
    for client in clients:
        client.stop()


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


def verdict(name: str, passed: bool | None, detail: str) -> dict[str, Any]:
    """One acceptance line: passed is None when it does not apply to this run."""
    return {"check": name, "passed": passed, "detail": detail}


def render_verdicts(verdicts: list[dict[str, Any]]) -> list[str]:
    """`PASS`/`FAIL`/`n/a` lines for the judge step."""
    labels = {True: "PASS", False: "FAIL", None: "n/a "}
    return [f"  {labels[v['passed']]}  {v['check']}: {v['detail']}" for v in verdicts]


def write_json(path: Path | None, report: dict[str, Any]) -> None:
    """Write the report as indented JSON when a path was given."""
    if path is not None:
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def conclude(report: dict[str, Any], json_path: Path | None) -> int:
    """Print the PASS/FAIL line, write the JSON report, and give the exit status (1: a FAIL)."""
    print(f"result: {'PASS' if report['ok'] else 'FAIL'}")
    write_json(json_path, report)
    return 0 if report["ok"] else 1


def run_as_script(main: Callable[[], int], what_was_cleaned: str) -> None:
    """`sys.exit(main())`; Ctrl-C or SIGTERM (see `sigterm_as_interrupt`) exits 130."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print(f"interrupted: {what_was_cleaned}", file=sys.stderr)
        sys.exit(130)
