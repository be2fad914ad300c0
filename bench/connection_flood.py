"""`python -m bench.connection_flood`: whether a master polling the warehouse's agent sees a
failure while idle, slowloris and SSE connections are held open to the warehouse, under each
server that could run it.

No signature is needed to open a socket: a server that gives each connection a thread runs
out of them. For each server and each scenario, on a freshly started server (a child process
on a free port of 127.0.0.1, its SQLite file in a temporary directory, a random secret,
SSE heartbeat every `SSE_HEARTBEAT_S`):

1. `sse` scenarios first open one signed `GET /forest/sse` stream and read it on a thread;
2. the flood opens its connections, all at once (non-blocking connects), and waits up to
   `CONNECT_DEADLINE_S` for them: `idle` ones send nothing; `slowloris` ones send
   `GET /forest/health HTTP/1.1` and `Host: x`, then one header line every `DRIP_EVERY_S`,
   never the blank line that ends the request. A flood connection the server closes is
   opened again at the next tick (`--no-reopen`: not), as an attacker's would be;
3. then, for `--duration` seconds, a prober (the master) sends a signed `GET /forest/health`
   every `POLL_EVERY_S` on one keep-alive `requests.Session` with a `PROBE_TIMEOUT_S`
   timeout; a failure is a status other than 200, a timeout, a connection error, or an
   answer after more than `PROBE_TIMEOUT_S` (`requests` bounds each read; the master's
   timeout, in `rpc_datasource.transport.http`, bounds the whole request). Its first probe opens a
   new connection after the flood's: the master's (re)connection has to be accepted too.
   `DOWN` marks `DOWN_AFTER` failures in a row (the master's verdict). Latencies: p50, p99,
   max of all probes, the first probe's (`1st`) and the slowest of the others (`later`);
4. at the end, before anything is closed: the server's RSS and threads (every process of
   its session, from /proc) and how many of the flood's open connections it has accepted
   (the sockets its processes hold whose peer is one of them, from /proc/net/tcp; a
   connection the kernel completed but the server never accepted is not counted).

Scenarios: `baseline` (no flood), `idle-N`, `slowloris-N`, `sse+idle-N` for each N of
`--sizes`, and `idle+slowloris-N` (N idle and N slowloris at once, `--combined`). The judge
line per server: no probe failed in `idle+slowloris-N` (the acceptance: N = 1000, 30 s);
and in the `sse` scenarios the stream's heartbeats kept coming (no gap over
`SSE_MAX_GAP_S`: a server that buffers small writes would hold them back). The exit status
is 1 when a judge line fails, as it does for some of the servers compared here.

Servers (`--servers`), each around the Flask warehouse but `uvicorn-fastapi`:
`runner` (`python -m examples.warehouse`, the project's runner: uvicorn, the agent's routes
answered on the event loop by `rpc_agent.asgi.RpcAgentMiddleware`, the app's on a2wsgi's
threads); `cheroot`, the project's former runner as it was tuned (`CHEROOT_TUNED`: cheroot's
`wsgi.Server`, run by `SERVE_PROGRAM`); `waitress` (its defaults) and
`waitress-tuned` (`WAITRESS_TUNED`); `gunicorn-gthread` (2 workers of 8 threads,
`rpc_agent.servers.gunicorn`'s hooks); `uvicorn-fastapi` (`python -m examples.warehouse_asgi`).
cheroot and waitress are not project dependencies: `pip install cheroot waitress` first.

The soft fd limit is raised to the hard one (the servers inherit it).

    .venv/bin/python -m bench.connection_flood [--servers ...] [--scenarios ...]
        [--sizes 16 1000] [--combined 1000] [--duration 30] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import http.client
import json
import os
import platform
import resource
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import requests

from bench._support import (
    REPO_ROOT,
    agent_env,
    conclude,
    die_with_parent,
    free_port,
    percentile,
    render_verdicts,
    run_as_script,
    sigterm_as_interrupt,
    verdict,
)
from examples.warehouse.database import connect
from rpc_common.signing import signed_headers

HOST = "127.0.0.1"
HEALTH = "/forest/health"
SSE = "/forest/sse"
POLL_EVERY_S = 0.5
PROBE_TIMEOUT_S = 5.0
DOWN_AFTER = 3  # failures in a row before the master declares the agent down
DRIP_EVERY_S = 2.0
SLOWLORIS_START = b"GET /forest/health HTTP/1.1\r\nHost: x\r\n"
SLOWLORIS_LINE = b"X-a: b\r\n"
CONNECT_DEADLINE_S = 10.0
READY_DEADLINE_S = 30.0
SETTLE_S = 1.0  # after the first 200: gunicorn's second worker is still loading the app
STOP_DEADLINE_S = 10.0
SSE_HEARTBEAT_S = 1.0
SSE_FIRST_EVENT_DEADLINE_S = 5.0
SSE_MAX_GAP_S = 3.0
SSE_READ_TIMEOUT_S = 30.0
ACCEPTANCE_SIZE = 1000
ACCEPTANCE_DURATION_S = 30.0
SCENARIO_KINDS = ("baseline", "idle", "slowloris", "sse", "combined")
# The former runner (rpc_agent/serving.py before it moved to uvicorn): a listen backlog of
# 128, up to 1024 idle keep-alive connections, 16 threads plus one per watch the agent may
# hold (health_max_watchers, 8 by default).
CHEROOT_TUNED: dict[str, Any] = {
    "backlog": 128,
    "keep_alive_conn_limit": 1024,
    "traffic_threads": 16,
}
# waitress tuned for a flood: more connections than the flood (default 100: beyond it waitress
# stops accepting), poll() instead of select() (which cannot watch an fd over 1023), 16
# threads like cheroot's, idle connections closed after 30 s (default 120) checked every 10 s.
WAITRESS_TUNED: dict[str, Any] = {
    "threads": 16,
    "connection_limit": 4096,
    "asyncore_use_poll": True,
    "channel_timeout": 30,
    "cleanup_interval": 10,
}


# --- the servers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    name: str
    processes: int  # processes in its session once it serves (gunicorn: master + 2 workers)

    def command(self, port: int, db: Path) -> list[str]:
        where = ["--host", HOST, "--port", str(port), "--db", str(db)]
        if self.name == "runner":
            return [sys.executable, "-m", "examples.warehouse", *where, "--log-level", "WARNING"]
        if self.name == "uvicorn-fastapi":
            return [
                sys.executable,
                "-m",
                "examples.warehouse_asgi",
                *where,
                "--log-level",
                "WARNING",
            ]
        if self.name == "gunicorn-gthread":
            return [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "python:rpc_agent.gunicorn",
                "--no-control-socket",
                "-w",
                "2",
                "-k",
                "gthread",
                "--threads",
                "8",
                "--log-level",
                "warning",
                "-b",
                f"{HOST}:{port}",
                f"examples.warehouse:create_app({str(db)!r})",
            ]
        options = {"cheroot": CHEROOT_TUNED, "waitress-tuned": WAITRESS_TUNED}.get(self.name, {})
        program = [sys.executable, "-c", SERVE_PROGRAM, self.name]
        return [*program, HOST, str(port), str(db), json.dumps(options)]


SERVERS = (
    Server("runner", 1),
    Server("cheroot", 1),
    Server("waitress", 1),
    Server("waitress-tuned", 1),
    Server("gunicorn-gthread", 3),
    Server("uvicorn-fastapi", 1),
)
# The Flask warehouse on cheroot or waitress, run with `python -c` (importing this module would
# bring requests and aiohttp into the server and add about 15 MiB to its RSS). Arguments: the
# mode, host, port, database and the options as JSON. SIGTERM ends it (default handler).
SERVE_PROGRAM = """
import json, logging, sys
from examples.warehouse.app import create_app
from rpc_agent.extension import EXTENSION_KEY
mode, host, port, db, options = sys.argv[1:6]
port, options = int(port), json.loads(options)
logging.basicConfig(level=logging.WARNING)
app = create_app(db)
if mode == "cheroot":
    from cheroot import wsgi
    watchers = app.extensions[EXTENSION_KEY].settings.health_max_watchers
    server = wsgi.Server((host, port), app, numthreads=options["traffic_threads"] + watchers,
                         request_queue_size=options["backlog"])
    server.keep_alive_conn_limit = options["keep_alive_conn_limit"]
    server.start()
else:
    import waitress
    waitress.serve(app, host=host, port=port, **options)
"""


# --- the server's processes, from /proc ---------------------------------------------------


def session_pids(sid: int) -> list[int]:
    """Every process of session `sid` (the server was started in its own session)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            found.append(int(entry))
    return found


def status_field(pid: int, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:"):
                    inodes.add(link)
    return inodes


def peer_ports(port: int) -> dict[str, int]:
    """`socket:[inode]` -> the peer's port, of the IPv4 TCP sockets whose local port is `port`."""
    peers = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(local.rpartition(":")[2], 16) == port:
                peers[f"socket:[{inode}]"] = int(remote.rpartition(":")[2], 16)
    return peers


@dataclass(frozen=True)
class ProcessFigures:
    rss_mib: float
    threads: int
    accepted: int  # sockets the session's processes hold whose peer is in `clients`

    @classmethod
    def of_session(cls, sid: int, port: int, clients: set[int]) -> ProcessFigures:
        pids = session_pids(sid)
        inodes: set[str] = set()
        for pid in pids:
            inodes |= socket_inodes(pid)
        peers = peer_ports(port)
        return cls(
            rss_mib=round(sum(status_field(pid, "VmRSS") for pid in pids) / 1024, 1),
            threads=sum(status_field(pid, "Threads") for pid in pids),
            accepted=sum(peers.get(inode) in clients for inode in inodes),
        )


@dataclass
class RunningServer:
    server: Server
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def figures(self, clients: set[int] | None = None) -> ProcessFigures:
        """RSS and threads of its processes, and how many of the `clients` (local ports of
        connections to it) it has accepted."""
        return ProcessFigures.of_session(self.process.pid, self.port, clients or set())

    def stop(self) -> str:
        """SIGTERM, then SIGKILL to its whole session (workers too) after `STOP_DEADLINE_S`.
        The group is killed only while the leader is unreaped, so its id is still ours."""
        if self.process.poll() is not None:
            return f"had exited ({self.process.returncode})"
        started = time.monotonic()
        self.process.terminate()
        try:
            self.process.wait(STOP_DEADLINE_S)
            return f"SIGTERM, {time.monotonic() - started:.1f} s"
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_DEADLINE_S)
            return "SIGKILL"


def probe_once(port: int, secret: str, timeout: float = 2.0) -> int:
    """One signed health probe on a new connection (closed after): its status."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {**signed_headers(secret, target=HEALTH), "Connection": "close"}
        connection.request("GET", HEALTH, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def start_server(server: Server, workdir: Path, env: dict[str, str], label: str) -> RunningServer:
    """Start it on a free port (again if the port was taken meanwhile) and wait until a signed
    probe answers 200 and its processes are all there; RuntimeError otherwise."""
    db = workdir / f"{label}.db"
    # gunicorn's workers each open the database: create it once, first.
    connect(db).close()
    problem = ""
    for attempt in range(3):
        port = free_port()
        log_path = workdir / f"{label}-{attempt}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                server.command(port, db),
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only us; we stop the servers ourselves.
                preexec_fn=die_with_parent,
            )
        running = RunningServer(server, process, port, log_path)
        deadline = time.monotonic() + READY_DEADLINE_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status = probe_once(port, env["FOREST_AUTH_SECRET"])
            except (OSError, http.client.HTTPException) as error:
                problem = repr(error)
            else:
                problem = f"HTTP {status}"
                if status == 200 and len(session_pids(process.pid)) >= server.processes:
                    time.sleep(SETTLE_S)
                    return running
            time.sleep(0.1)
        exited = process.poll() is not None
        problem = f"{problem}; log:\n{running.log_tail()}"
        running.stop()
        if not exited:
            break  # it ran but never answered: another port would not help
    raise RuntimeError(f"{server.name} not ready within {READY_DEADLINE_S:g} s ({problem})")


# --- the flood ------------------------------------------------------------------------------


@dataclass
class Slot:
    """One flood connection the flood keeps open (reopened when the server closes it)."""

    slowloris: bool
    sock: socket.socket | None = None
    local_port: int = 0
    state: str = "closed"  # "pending" (connecting), "open", "closed"


@dataclass
class Flood:
    """`idle` and `slowloris` connections to `port`, opened, dripped and watched on one
    thread until `close()` or `hard_stop` (a monotonic time), whichever comes first."""

    port: int
    idle: int
    slowloris: int
    hard_stop: float
    reopen: bool = True
    slots: list[Slot] = field(default_factory=list)
    opened: int = 0
    connect_errors: int = 0
    closed_by_server: int = 0
    answered: int = 0  # connections the server wrote something to (an error page)
    connected_at_start: int = 0
    connect_s: float | None = None  # until every connection was connected
    error: str | None = None
    ready: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._run, name="bench-flood", daemon=True)
        self.slots = [Slot(False) for _ in range(self.idle)]
        self.slots += [Slot(True) for _ in range(self.slowloris)]

    @property
    def size(self) -> int:
        return len(self.slots)

    def start(self) -> Flood:
        self._thread.start()
        return self

    def held(self) -> int:
        return sum(slot.state == "open" for slot in self.slots)

    def open_ports(self) -> set[int]:
        """Local ports of the connections open now (read from another thread: a snapshot)."""
        return {slot.local_port for slot in list(self.slots) if slot.state == "open"}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(STOP_DEADLINE_S)

    def _open(self, slot: Slot) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        self.opened += 1
        code = sock.connect_ex((HOST, self.port))
        slot.sock = sock
        with contextlib.suppress(OSError):
            slot.local_port = sock.getsockname()[1]
        if code in (0, errno.EINPROGRESS):
            slot.state = "pending"
            self._selector.register(sock, selectors.EVENT_WRITE, slot)
        else:
            self.connect_errors += 1
            self._drop(slot)

    def _drop(self, slot: Slot) -> None:
        if slot.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(slot.sock)
            slot.sock.close()
        slot.sock = None
        slot.state = "closed"

    def _send(self, slot: Slot, data: bytes) -> None:
        assert slot.sock is not None
        try:
            slot.sock.send(data)
        except BlockingIOError:
            pass  # the server is not reading: nothing more to add
        except OSError:
            self.closed_by_server += 1
            self._drop(slot)

    def _connected(self, slot: Slot) -> None:
        assert slot.sock is not None
        if slot.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.connect_errors += 1
            self._drop(slot)
            return
        slot.state = "open"
        self._selector.modify(slot.sock, selectors.EVENT_READ, slot)
        if slot.slowloris:
            self._send(slot, SLOWLORIS_START)

    def _readable(self, slot: Slot) -> None:
        assert slot.sock is not None
        try:
            data = slot.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.answered += 1
            return
        self.closed_by_server += 1
        self._drop(slot)

    def _service(self, timeout: float) -> None:
        for key, _mask in self._selector.select(timeout):
            slot: Slot = key.data
            if slot.sock is not key.fileobj:
                continue  # dropped earlier in this batch
            if slot.state == "pending":
                self._connected(slot)
            elif slot.state == "open":
                self._readable(slot)

    def _run(self) -> None:
        try:
            started = time.monotonic()
            for slot in self.slots:
                self._open(slot)
            connect_by = started + CONNECT_DEADLINE_S
            while time.monotonic() < min(connect_by, self.hard_stop) and not self._stop.is_set():
                if all(slot.state != "pending" for slot in self.slots):
                    break
                self._service(0.05)
            if all(slot.state != "pending" for slot in self.slots):
                self.connect_s = round(time.monotonic() - started, 3)
            self.connected_at_start = self.held()
            self.ready.set()
            next_drip = time.monotonic() + DRIP_EVERY_S
            while not self._stop.is_set() and time.monotonic() < self.hard_stop:
                self._service(max(0.0, min(0.2, next_drip - time.monotonic())))
                if time.monotonic() < next_drip:
                    continue
                next_drip += DRIP_EVERY_S
                for slot in self.slots:
                    if slot.slowloris and slot.state == "open":
                        self._send(slot, SLOWLORIS_LINE)
                    elif slot.state == "closed" and self.reopen:
                        self._open(slot)
        except Exception as error:
            self.error = repr(error)
        finally:
            self.ready.set()
            for slot in self.slots:
                self._drop(slot)
            self._selector.close()

    def figures(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "connected_at_start": self.connected_at_start,
            "connect_s": self.connect_s,
            "held_at_end": self.held(),
            "opened": self.opened,
            "connect_errors": self.connect_errors,
            "closed_by_server": self.closed_by_server,
            "answered": self.answered,
            "error": self.error,
        }


# --- the SSE stream and the prober ----------------------------------------------------------


@dataclass
class SseReader:
    """One signed SSE stream, read on a thread: when each event arrived."""

    port: int
    secret: str
    status: int | None = None
    events: list[float] = field(default_factory=list)
    error: str | None = None
    first: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._http = http.client.HTTPConnection(HOST, self.port, timeout=SSE_READ_TIMEOUT_S)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._closed = False
        self._sent_at = 0.0
        self._thread = threading.Thread(target=self._read, name="bench-sse", daemon=True)

    def start(self) -> SseReader:
        self._sent_at = time.monotonic()
        self._thread.start()
        return self

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(STOP_DEADLINE_S)
        self._http.close()

    def _read(self) -> None:
        try:
            self._http.request("GET", SSE, headers=signed_headers(self.secret, target=SSE))
            with self._lock:
                self._sock = self._http.sock
                closed = self._closed
            if closed:
                return
            response = self._http.getresponse()
            self.status = response.status
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            while line := response.readline():
                if line in (b"\n", b"\r\n"):
                    self.events.append(time.monotonic())
                    self.first.set()
        except Exception as error:
            if not self._closed:
                self.error = repr(error)
        finally:
            self.first.set()

    def figures(self, since: float, until: float) -> dict[str, Any]:
        """Events in [since, until] and the longest wait for one in that window."""
        events = list(self.events)
        first = round(events[0] - self._sent_at, 3) if events else None
        marks = [since] + [at for at in events if since <= at <= until] + [until]
        gap = max(later - earlier for earlier, later in pairwise(marks))
        return {
            "status": self.status,
            "first_event_s": first,
            "events_while_probing": len(marks) - 2,
            "max_gap_s": round(gap, 2),
            "error": self.error,
        }


@dataclass
class Probe:
    at: float  # seconds since the prober started
    status: int | None
    latency_s: float
    error: str | None

    @property
    def failed(self) -> bool:
        return self.status != 200 or self.latency_s > PROBE_TIMEOUT_S


def poll(port: int, secret: str, duration_s: float) -> list[Probe]:
    """The master: a signed health probe every `POLL_EVERY_S` for `duration_s` (a tick missed
    while a probe was waiting is skipped, as a poller on a timer would)."""
    url = f"http://{HOST}:{port}{HEALTH}"
    probes: list[Probe] = []
    started = time.monotonic()
    with requests.Session() as session:
        tick = 0
        while tick * POLL_EVERY_S < duration_s:
            wait = started + tick * POLL_EVERY_S - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            sent = time.monotonic()
            status, error = None, None
            try:
                headers = signed_headers(secret, target=HEALTH)
                response = session.get(url, headers=headers, timeout=PROBE_TIMEOUT_S)
                status = response.status_code
            except requests.RequestException as exc:
                error = type(exc).__name__
            done = time.monotonic()
            probes.append(Probe(round(sent - started, 3), status, done - sent, error))
            tick = max(tick + 1, int((done - started) / POLL_EVERY_S) + 1)
    return probes


def probe_figures(probes: list[Probe]) -> dict[str, Any]:
    """Count, failures, the longest run of failures, and latency quantiles of every probe (a
    timed-out one counts its `PROBE_TIMEOUT_S`) in milliseconds; apart, the first probe's and
    the slowest of the others (with 60 probes the p99 is the maximum, often the first)."""
    latencies = [p.latency_s * 1000 for p in probes]
    run = longest = 0
    for probe in probes:
        run = run + 1 if probe.failed else 0
        longest = max(longest, run)
    errors: dict[str, int] = {}
    for probe in probes:
        if probe.failed:
            key = probe.error or (f"HTTP {probe.status}" if probe.status != 200 else "late")
            errors[key] = errors.get(key, 0) + 1
    return {
        "probes": len(probes),
        "failures": sum(p.failed for p in probes),
        "failures_in_a_row": longest,
        "down": longest >= DOWN_AFTER,
        "errors": errors,
        "p50_ms": round(percentile(latencies, 0.50), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies, default=0.0), 1),
        # The first probe opens its connection while the server still takes the flood's.
        "first_ms": round(latencies[0], 1) if latencies else None,
        "max_after_first_ms": round(max(latencies[1:], default=0.0), 1),
    }


# --- scenarios ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    idle: int = 0
    slowloris: int = 0
    sse: bool = False


def scenarios(kinds: list[str], sizes: list[int], combined: int) -> list[Scenario]:
    chosen = [Scenario("baseline")] if "baseline" in kinds else []
    for size in sizes:
        if "idle" in kinds:
            chosen.append(Scenario(f"idle-{size}", idle=size))
        if "slowloris" in kinds:
            chosen.append(Scenario(f"slowloris-{size}", slowloris=size))
        if "sse" in kinds:
            chosen.append(Scenario(f"sse+idle-{size}", idle=size, sse=True))
    if "combined" in kinds and combined > 0:
        chosen.append(Scenario(f"idle+slowloris-{combined}", idle=combined, slowloris=combined))
    return chosen


def run_scenario(
    server: Server,
    scenario: Scenario,
    args: argparse.Namespace,
    workdir: Path,
    env: dict[str, str],
) -> dict[str, Any]:
    """A fresh server, the SSE stream and the flood, `--duration` s of probes; the figures."""
    secret = env["FOREST_AUTH_SECRET"]
    label = f"{server.name}-{scenario.name}"
    result: dict[str, Any] = {"server": server.name, "scenario": scenario.name}
    running: RunningServer | None = None
    stream: SseReader | None = None
    flood: Flood | None = None
    try:
        running = start_server(server, workdir, env, label)
        result["rss_mib_ready"] = running.figures().rss_mib
        if scenario.sse:
            stream = SseReader(running.port, secret).start()
            stream.first.wait(SSE_FIRST_EVENT_DEADLINE_S)
        if scenario.idle or scenario.slowloris:
            hard_stop = time.monotonic() + CONNECT_DEADLINE_S + args.duration + 3 * PROBE_TIMEOUT_S
            flood = Flood(
                running.port, scenario.idle, scenario.slowloris, hard_stop, not args.no_reopen
            )
            flood.start().ready.wait(CONNECT_DEADLINE_S + 5.0)
        since = time.monotonic()
        probes = poll(running.port, secret, args.duration)
        until = time.monotonic()
        after = running.figures(flood.open_ports() if flood is not None else None)
        result.update(probe_figures(probes))
        result.update(rss_mib=after.rss_mib, threads=after.threads, exited=running.process.poll())
        if flood is not None:
            result["flood"] = {**flood.figures(), "accepted_at_end": after.accepted}
        if stream is not None:
            result["sse"] = stream.figures(since, until)
        result["probe_log"] = [[p.at, p.status, round(p.latency_s * 1000, 1)] for p in probes]
    except Exception as error:
        result["error"] = repr(error)
    finally:
        if flood is not None:
            flood.close()
        if stream is not None:
            stream.close()
        if running is not None:
            result["stop"] = running.stop()
    return result


# --- report -----------------------------------------------------------------------------------


def judge(server: str, results: list[dict[str, Any]], args: argparse.Namespace) -> list[Any]:
    errors = [f"{r['scenario']}: {r['error'].splitlines()[0]}" for r in results if "error" in r]
    verdicts = [verdict(f"{server}: every scenario ran", not errors, "; ".join(errors) or "-")]
    name = f"idle+slowloris-{args.combined}"
    combined = next((r for r in results if r["scenario"] == name and "error" not in r), None)
    check = (
        f"{server}: no failed probe with {args.combined} idle + {args.combined} slowloris "
        f"over {args.duration:g} s"
    )
    if combined is None:
        verdicts.append(verdict(check, None, "not run"))
    else:
        flood = combined["flood"]
        verdicts.append(
            verdict(
                check,
                combined["failures"] == 0,
                f"{combined['failures']}/{combined['probes']} failed, p99 {combined['p99_ms']} ms, "
                f"{flood['connected_at_start']}/{flood['size']} connected, "
                f"{flood['accepted_at_end']} accepted",
            )
        )
    streams = [r for r in results if "sse" in r]
    if streams:
        gaps = [r["sse"]["max_gap_s"] for r in streams]
        verdicts.append(
            verdict(
                f"{server}: SSE heartbeats every {SSE_HEARTBEAT_S:g} s kept coming "
                f"(no gap > {SSE_MAX_GAP_S:g} s)",
                all(
                    r["sse"]["status"] == 200 and g <= SSE_MAX_GAP_S
                    for r, g in zip(streams, gaps, strict=True)
                ),
                ", ".join(
                    f"{r['scenario']}: first {r['sse']['first_event_s']} s, max gap {g} s"
                    for r, g in zip(streams, gaps, strict=True)
                ),
            )
        )
    return verdicts


def render_row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"  {r['scenario']:<22} ERROR {r['error'].splitlines()[0]}"
    flood = r.get("flood")
    if flood is None:
        conn = "-"
    else:
        conn = (
            f"{flood['connected_at_start']}/{flood['size']}, held {flood['held_at_end']}, "
            f"accepted {flood['accepted_at_end']}, closed {flood['closed_by_server']}"
        )
    down = " DOWN" if r["down"] else ""
    sse = f" sse gap {r['sse']['max_gap_s']} s" if "sse" in r else ""
    return (
        f"  {r['scenario']:<22} {r['failures']:>3}/{r['probes']:<3}{down:<5} "
        f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['max_ms']:>7.1f} "
        f"{r['first_ms'] or 0:>7.1f} {r['max_after_first_ms']:>7.1f} "
        f"{r['rss_mib']:>7.1f} {r['threads']:>4}  {conn}{sse}"
    )


def render(report: dict[str, Any]) -> list[str]:
    c = report["config"]
    lines = [
        f"bench.connection_flood: {c['duration']:g} s of probes every {POLL_EVERY_S:g} s "
        f"(timeout {PROBE_TIMEOUT_S:g} s) per scenario, fd limit {c['fd_limit']} "
        f"({report['platform']})",
        "  scenario               fail/probes  p50 ms  p99 ms  max ms  1st ms   later  RSS MiB "
        "thr  "
        "flood: connected/N at start; at the end held, accepted; closed by the server",
    ]
    for name, results in report["servers"].items():
        lines.append(f"  {name}")
        lines += [render_row(r) for r in results]
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.connection_flood", description=__doc__)
    names = [server.name for server in SERVERS]
    parser.add_argument("--servers", nargs="+", choices=names, default=names)
    parser.add_argument(
        "--scenarios", nargs="+", choices=SCENARIO_KINDS, default=list(SCENARIO_KINDS)
    )
    parser.add_argument(
        "--sizes", nargs="+", type=int, default=[16, 1000], help="N of the idle, slowloris, sse"
    )
    parser.add_argument(
        "--combined", type=int, default=ACCEPTANCE_SIZE, help="N idle + N slowloris at once"
    )
    parser.add_argument("--duration", type=float, default=ACCEPTANCE_DURATION_S)
    parser.add_argument(
        "--no-reopen", action="store_true", help="do not reopen flood connections closed"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.duration <= 0 or any(size < 1 for size in args.sizes) or args.combined < 0:
        parser.error("--duration and --sizes must be > 0, --combined >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the servers inherit it
    env = agent_env(
        secrets.token_urlsafe(32), {"FOREST_SSE_HEARTBEAT_INTERVAL": f"{SSE_HEARTBEAT_S:g}"}
    )
    chosen = scenarios(args.scenarios, args.sizes, args.combined)
    servers: dict[str, list[dict[str, Any]]] = {}
    verdicts: list[dict[str, Any]] = []
    started = time.monotonic()
    load_before = os.getloadavg()
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        for server in (s for s in SERVERS if s.name in args.servers):
            results = []
            for scenario in chosen:
                result = run_scenario(server, scenario, args, Path(tmp), env)
                results.append(result)
                print(render_row(result).replace("  ", f"  {server.name}: ", 1), flush=True)
            servers[server.name] = results
            verdicts += judge(server.name, results, args)
    report: dict[str, Any] = {
        "config": {
            "duration": args.duration,
            "sizes": args.sizes,
            "combined": args.combined,
            "reopen": not args.no_reopen,
            "fd_limit": hard,
            "cheroot_tuned": CHEROOT_TUNED,
            "waitress_tuned": WAITRESS_TUNED,
            "elapsed_s": round(time.monotonic() - started, 1),
            "load_average_before_after": [load_before, os.getloadavg()],
        },
        "platform": f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.system()}, {os.cpu_count()} CPUs",
        "servers": servers,
        "verdicts": verdicts,
    }
    report["ok"] = all(v["passed"] is not False for v in verdicts)
    print("\n".join([*render(report), "judge:", *render_verdicts(verdicts)]))
    load = report["config"]["load_average_before_after"]
    print(
        f"elapsed: {report['config']['elapsed_s']:g} s, load average (1 min) "
        f"{load[0][0]:.2f} before, {load[1][0]:.2f} after"
    )
    return conclude(report, args.json)


if __name__ == "__main__":
    run_as_script(main, "flood closed, servers terminated")
