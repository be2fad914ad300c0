"""Agents of each kind on each server, as child processes on 127.0.0.1 port 0.

One launcher for the benchmarks and the tests: `ServerKind` says how to serve the warehouse
with its agent (the project's runner, waitress, gunicorn with gthread, sync or ASGI workers,
uvicorn around the FastAPI twin), `start_agent` starts one on port 0, reads the port it
announces, waits until it answers a signed probe, and `AgentProcess.end` kills its whole
session. Children die with this process (`PR_SET_PDEATHSIG`), so none outlives a run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness.signed import signed_get

REPO_ROOT = Path(__file__).resolve().parents[2]
HEALTH = "/forest/health"
READY_DEADLINE_S = 30.0
EXIT_DEADLINE_S = 15.0
PR_SET_PDEATHSIG = 1
# gunicorn's access log: the worker's pid, the request line, the status, the user agent.
GUNICORN_ACCESS_FORMAT = '%(p)s "%(r)s" %(s)s "%(a)s"'
# The line a server prints once it listens: the runner and waitress ("serving on"),
# gunicorn ("Listening at").
_LISTENING = re.compile(r"(?:serving on|Listening at:) http://127\.0\.0\.1:(\d+)")
_BOOTED_WORKER = re.compile(r"Booting worker with pid: (\d+)")


def run_secret() -> str:
    """A fresh secret for one run (never a fixed one: benchmarks are not test vectors)."""
    return secrets.token_urlsafe(32)


def die_with_parent() -> None:
    """`preexec_fn` of every child: SIGTERM it if this process dies, even by SIGKILL (Linux)."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class ServerKind:
    """One way of serving the warehouse with its agent."""

    name: str
    workers: int = 1
    holds_watches: bool = True  # a held watch needs a thread or a coroutine to wait in
    worker_class: str | None = None  # gunicorn's -k; None: one of the project's own commands
    module: str = "examples.warehouse"  # the command when not gunicorn
    module_options: tuple[str, ...] = ()
    threads: int = 4  # gthread's --threads
    preload: bool = False  # gunicorn's --preload: the app is loaded in the master
    app_factory: str = "create_app"  # the warehouse factory gunicorn loads
    app_module: str = "examples.warehouse"  # the module gunicorn loads it from
    factory_options: str = ""  # more keyword arguments for it, e.g. ", db_check_interval=0.1"

    @property
    def is_gunicorn(self) -> bool:
        return self.worker_class is not None

    def command(self, port: int, db_path: Path, *, access_log: bool = False) -> list[str]:
        """The command line serving on 127.0.0.1:`port` (0: any free port, announced)."""
        if self.worker_class is None:
            return [
                sys.executable,
                "-m",
                self.module,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--db",
                str(db_path),
                *self.module_options,
            ]
        # gunicorn turns `-k sync` into gthread when --threads is over 1: give it only to gthread.
        threads = ["--threads", str(self.threads)] if self.worker_class == "gthread" else []
        logging_options = (
            ["--access-logfile", "-", "--access-logformat", GUNICORN_ACCESS_FORMAT]
            if access_log
            else []
        )
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "python:rpc_agent.gunicorn",
            "--no-control-socket",
            "-w",
            str(self.workers),
            "-k",
            self.worker_class,
            *threads,
            *(["--preload"] if self.preload else []),
            "-b",
            f"127.0.0.1:{port}",
            *logging_options,
            f"{self.app_module}:{self.app_factory}({str(db_path)!r}{self.factory_options})",
        ]


RUNNER = ServerKind("runner")
WAITRESS = ServerKind("waitress", module_options=("--server", "waitress"))
UVICORN = ServerKind("uvicorn-fastapi", module="examples.warehouse_asgi")
GUNICORN_GTHREAD = ServerKind("gunicorn-gthread", workers=2, worker_class="gthread")
GUNICORN_SYNC = ServerKind("gunicorn-sync", workers=2, holds_watches=False, worker_class="sync")
GUNICORN_UVICORN = ServerKind(
    "gunicorn-uvicorn",
    workers=2,
    worker_class="rpc_agent.servers.uvicorn_worker.UvicornWorker",
    app_factory="create_asgi_app",
)
KINDS = {
    kind.name: kind
    for kind in (RUNNER, WAITRESS, UVICORN, GUNICORN_GTHREAD, GUNICORN_SYNC, GUNICORN_UVICORN)
}
# The servers the README recommends for a data server: the runner, gunicorn with the ASGI
# worker, and gunicorn gthread or waitress behind a proxy.
RECOMMENDED = (RUNNER, GUNICORN_UVICORN, GUNICORN_GTHREAD, WAITRESS)


def agent_environment(secret: str, settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any `FOREST_*` variable, plus the secret and
    `settings` (agent settings such as `FOREST_HEALTH_MAX_WATCHERS`)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FOREST_")}
    env["FOREST_AUTH_SECRET"] = secret
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings or {})
    return env


class AgentStartError(RuntimeError):
    """An agent did not start or answer in time (the message quotes its log)."""


@dataclass
class AgentProcess:
    """One running server with its agent, in a session of its own."""

    kind: ServerKind
    process: subprocess.Popen[bytes]
    log_path: Path
    secret: str
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def worker_pids(self) -> list[int]:
        """gunicorn's booted workers (the server itself for the others)."""
        if not self.kind.is_gunicorn:
            return [self.pid]
        return [int(pid) for pid in _BOOTED_WORKER.findall(self.log())]

    def pids(self) -> list[int]:
        """Every process of the server: the master and its workers."""
        return sorted({self.pid, *self.worker_pids()})

    def send_signal(self, signum: int) -> None:
        """`signum` to the server's master (gunicorn passes it on to its workers)."""
        self.process.send_signal(signum)

    def signal_all(self, signum: int) -> None:
        """`signum` to every process of the session (a freeze must stop the workers too)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def wait_exit(self, timeout: float = EXIT_DEADLINE_S) -> int | None:
        """The exit code, or None if it did not exit within `timeout`."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def end(self) -> None:
        """Whatever happened, at once: SIGKILL to the whole session, and reap."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        self.process.wait()

    def answers(self, timeout: float = 1.0) -> bool:
        """Whether a signed health probe gets 200."""
        try:
            return signed_get(self.url, HEALTH, self.secret, timeout=timeout).status == 200
        except OSError:
            return False


def _announced_port(agent: AgentProcess, deadline: float) -> int:
    pause = threading.Event()
    while time.monotonic() < deadline:
        found = _LISTENING.search(agent.log())
        if found:
            return int(found.group(1))
        if agent.process.poll() is not None:
            break
        pause.wait(0.02)
    raise AgentStartError(f"{agent.kind.name} announced no port; log:\n{agent.log()[-2000:]}")


def launch_agent(
    kind: ServerKind,
    workdir: Path,
    secret: str,
    *,
    settings: Mapping[str, str] | None = None,
    access_log: bool = False,
    name: str | None = None,
) -> AgentProcess:
    """Start `kind` on port 0 in `workdir` (its database and log there); not waited for."""
    workdir.mkdir(parents=True, exist_ok=True)
    label = name or f"{kind.name}-{time.monotonic_ns()}"
    db_path = workdir / f"{label}.db"
    if kind.is_gunicorn and not db_path.exists():
        # Each gunicorn worker opens the database; one that finds the file another has just
        # made, before its tables are there, would serve an empty schema: create it first.
        from examples.warehouse.database import connect

        connect(db_path).close()
    log_path = workdir / f"{label}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            kind.command(0, db_path, access_log=access_log),
            cwd=REPO_ROOT,
            env=agent_environment(secret, settings),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    return AgentProcess(kind, process, log_path, secret)


def wait_ready(agent: AgentProcess, deadline_s: float = READY_DEADLINE_S) -> AgentProcess:
    """Until `agent` announced its port, answers a signed probe and booted all its workers."""
    deadline = time.monotonic() + deadline_s
    try:
        agent.port = _announced_port(agent, deadline)
        pause = threading.Event()
        while time.monotonic() < deadline:
            if agent.process.poll() is not None:
                break
            if agent.answers() and len(agent.worker_pids()) >= agent.kind.workers:
                return agent
            pause.wait(0.05)
    except BaseException:
        agent.end()
        raise
    agent.end()
    raise AgentStartError(
        f"{agent.kind.name} not ready within {deadline_s:g} s; log:\n{agent.log()[-2000:]}"
    )


def start_agent(
    kind: ServerKind,
    workdir: Path,
    secret: str,
    *,
    settings: Mapping[str, str] | None = None,
    access_log: bool = False,
    name: str | None = None,
) -> AgentProcess:
    """Start `kind` on port 0 and wait until it is ready (`AgentStartError` otherwise)."""
    agent = launch_agent(kind, workdir, secret, settings=settings, access_log=access_log, name=name)
    return wait_ready(agent)


@dataclass
class Fleet:
    """Agents started together (launched at once, then each waited for), all ended on exit."""

    workdir: Path
    secret: str = field(default_factory=run_secret)
    agents: list[AgentProcess] = field(default_factory=list)

    def start(
        self, kind: ServerKind, count: int, settings: Mapping[str, str] | None = None
    ) -> list[AgentProcess]:
        """`count` more agents of `kind`, ready."""
        launched = [
            launch_agent(kind, self.workdir, self.secret, settings=settings) for _ in range(count)
        ]
        self.agents.extend(launched)
        return [wait_ready(agent) for agent in launched]

    def end(self) -> None:
        for agent in self.agents:
            agent.end()


@contextmanager
def fleet(workdir: Path, secret: str | None = None) -> Iterator[Fleet]:
    """A `Fleet` whose agents are all killed on the way out, whatever happened."""
    agents = Fleet(workdir, secret or run_secret())
    try:
        yield agents
    finally:
        agents.end()


@contextmanager
def running_agent(
    kind: ServerKind,
    workdir: Path,
    secret: str,
    *,
    settings: Mapping[str, str] | None = None,
    access_log: bool = False,
) -> Iterator[AgentProcess]:
    """One ready agent, killed on the way out."""
    agent = start_agent(kind, workdir, secret, settings=settings, access_log=access_log)
    try:
        yield agent
    finally:
        agent.end()
