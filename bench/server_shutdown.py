"""`python -m bench.server_shutdown`: how fast SIGTERM reaches what a server has open, under
each server that embeds the agent.

For each server, `--trials` times: start it (a child process on a free port of 127.0.0.1,
its SQLite file in a temporary directory, a random secret), open a signed SSE stream (until
its first heartbeat) and a signed health watch (`?wait=30` with the current ETag), send
SIGTERM to the server's process, then probe health every 10 ms until one answers 503. Each
time is taken from the signal:

- `sse_stop`: the stream's `RpcServerStop` event is complete;
- `watch`: the watch's answer (503 `shutting_down` when it was held; under sync workers,
  which cannot hold one, it was answered at once before the signal and is not timed);
- `probe_503`: the first probe answered 503 (probes before it got 200: a worker that had
  not yet begun its shutdown); it shows the server still answers during the drain;
- `exit`: the process exited (after the agent's drain, `FOREST_SHUTDOWN_DRAIN_SECONDS`).
  The stream's and the watch's connections stay open once answered, as a pooled client's
  would; a gthread worker waits for such kept-alive connections (up to gunicorn's keep-alive
  of 2 s after their last answer), so its exit comes about a second after the others'.
  `--hang-up` closes them as soon as they end.

The servers: gunicorn with `rpc_agent.servers.gunicorn`'s hooks and 2 gthread workers (4 threads
each), the same with 2 sync workers, around the Flask warehouse; and uvicorn around the
FastAPI warehouse (`python -m examples.warehouse_asgi`). The judge checks every trial: the
stream got `RpcServerStop` and the held watch a 503 within `AT_ONCE_S`, a probe got 503
before the exit, and the process exited 0 within the drain plus `EXIT_SLACK_S`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._support import (
    EXIT_DEADLINE_S,
    READY_DEADLINE_S,
    REPO_ROOT,
    agent_env,
    conclude,
    die_with_parent,
    free_port,
    render_verdicts,
    run_as_script,
    sigterm_as_interrupt,
    stop_processes,
    verdict,
)
from examples.warehouse.database import connect
from rpc_common.signing import signed_headers
from tests.support.server_processes import ALL_KINDS as KINDS
from tests.support.server_processes import ServerKind

HEALTH = "/forest/health"
SSE = "/forest/sse"
WATCH_WAIT_S = 30.0
# "At once": from the signal to the stream's RpcServerStop, or to the held watch's 503.
AT_ONCE_S = 0.100
# The exit may come this long after the drain (the server closing its connections, workers).
EXIT_SLACK_S = 3.0
DEFAULT_DRAIN_S = 1.0  # AgentSettings.shutdown_drain_seconds
PROBE_EVERY_S = 0.010
READ_TIMEOUT_S = 60.0
METRICS = ("sse_stop", "watch", "probe_503", "exit")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.server_shutdown", description=__doc__)
    parser.add_argument("--trials", type=int, default=3, help="SIGTERMs per server")
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=[kind.name for kind in KINDS],
        default=[kind.name for kind in KINDS],
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=None,
        help="FOREST_SHUTDOWN_DRAIN_SECONDS of the servers (default: the agent's, 1 s)",
    )
    parser.add_argument(
        "--hang-up",
        action="store_true",
        help="close the stream's and the watch's connections as soon as they end (by default "
        "they stay open, as a pooled client's would: gthread workers wait for them)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    args.drain_s = DEFAULT_DRAIN_S if args.drain is None else args.drain
    if args.trials < 1 or (args.drain is not None and args.drain < 0):
        parser.error("--trials must be >= 1 and --drain >= 0")
    return args


class Connection:
    """One signed GET on its own connection of 127.0.0.1; `close()` hangs up from any thread
    (http.client forgets the socket of a `Connection: close` answer, so it is kept here)."""

    def __init__(self, port: int, secret: str, target: str, timeout: float) -> None:
        self.target = target
        self._secret = secret
        self._http = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._closed = False

    def send(self, headers: dict[str, str] | None = None) -> None:
        """Write the request (the answer is read by `response()`)."""
        signed = signed_headers(self._secret, target=self.target)
        self._http.request("GET", self.target, headers={**signed, **(headers or {})})
        with self._lock:
            self._socket = self._http.sock
            closed = self._closed
        if closed:
            self.close()

    def response(self) -> http.client.HTTPResponse:
        return self._http.getresponse()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._http.close()


@dataclass
class Stream:
    """The SSE stream, read on a thread: when each event arrived."""

    connection: Connection
    hang_up: bool = False  # close the connection once the stream ended
    events: list[tuple[float, str]] = field(default_factory=list)
    error: str | None = None
    first: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Stream:
        threading.Thread(target=self._read, name="bench-sse", daemon=True).start()
        return self

    def stop_at(self) -> float | None:
        return next((at for at, name in self.events if name == "RpcServerStop"), None)

    def _read(self) -> None:
        try:
            self.connection.send()
            response = self.connection.response()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            name = ""
            while line := response.readline():
                text = line.decode().rstrip("\r\n")
                if text.startswith("event:"):
                    name = text.removeprefix("event:").strip()
                elif not text and name:
                    self.events.append((time.monotonic(), name))
                    self.first.set()
                    name = ""
        except Exception as error:
            self.error = repr(error)
        finally:
            if self.hang_up:
                self.connection.close()
            self.ended.set()
            self.first.set()


@dataclass
class Watch:
    """The held health watch, on a thread: when and how it was answered."""

    connection: Connection
    etag: str
    hang_up: bool = False  # close the connection once answered
    status: int | None = None
    state: str | None = None
    error: str | None = None
    answered_at: float | None = None
    sent: threading.Event = field(default_factory=threading.Event)
    answered: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Watch:
        threading.Thread(target=self._ask, name="bench-watch", daemon=True).start()
        return self

    def _ask(self) -> None:
        try:
            self.connection.send({"If-None-Match": self.etag})
            self.sent.set()
            response = self.connection.response()
            body = response.read()
            self.answered_at = time.monotonic()
            self.status = response.status
            self.state = json.loads(body).get("status")
        except Exception as error:
            self.error = repr(error)
        finally:
            if self.hang_up:
                self.connection.close()
            self.sent.set()
            self.answered.set()


def health(port: int, secret: str, timeout: float = 2.0) -> tuple[int, str, str]:
    """One signed probe on a new connection: status, health `status` and `ETag`."""
    connection = Connection(port, secret, HEALTH, timeout)
    try:
        connection.send({"Connection": "close"})
        response = connection.response()
        body = json.loads(response.read())
        return response.status, str(body.get("status")), response.getheader("ETag", "")
    finally:
        connection.close()


def wait_ready(process: subprocess.Popen[bytes], port: int, secret: str) -> str:
    """The health ETag once a probe answers 200; RuntimeError if it exits or never does."""
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before it was ready")
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
            status, _, etag = health(port, secret)
            if status == 200:
                return etag
        time.sleep(0.05)
    raise RuntimeError(f"not ready within {READY_DEADLINE_S:g} s")


def since(start: float, at: float | None) -> float | None:
    return None if at is None else round(at - start, 4)


def run_trial(
    kind: ServerKind, workdir: Path, args: argparse.Namespace, env: dict[str, str], number: int
) -> dict[str, Any]:
    """Start, open a stream and a watch, SIGTERM, time what follows; the trial's figures."""
    secret, drain = env["FOREST_AUTH_SECRET"], args.drain_s
    port = free_port()
    log_path = workdir / f"{kind.name}-{number}.log"
    db = workdir / f"{kind.name}-{number}.db"
    # gunicorn's workers each open the database: one that finds the file another has just
    # made, before its tables are there, would serve an empty schema. Create it first.
    connect(db).close()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            kind.command(port, db),
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the servers ourselves.
            preexec_fn=die_with_parent,
        )
    stream: Stream | None = None
    watch: Watch | None = None
    try:
        etag = wait_ready(process, port, secret)
        stream = Stream(Connection(port, secret, SSE, READ_TIMEOUT_S), args.hang_up).start()
        if not stream.first.wait(EXIT_DEADLINE_S) or stream.error:
            raise RuntimeError(f"no SSE heartbeat ({stream.error})")
        watch_target = f"{HEALTH}?wait={WATCH_WAIT_S:g}"
        watch_connection = Connection(port, secret, watch_target, READ_TIMEOUT_S)
        watch = Watch(watch_connection, etag, args.hang_up).start()
        watch.sent.wait(EXIT_DEADLINE_S)
        # A probe after the watch: answered while the watch is held (or after it was not).
        before = health(port, secret)[0]
        held = not watch.answered.is_set()

        exited_at: list[float] = []

        def reap() -> None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(drain + EXIT_SLACK_S + EXIT_DEADLINE_S)
                exited_at.append(time.monotonic())

        reaper = threading.Thread(target=reap, name="bench-reap", daemon=True)
        reaper.start()
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        probes: list[int] = []
        probe_503_at = None
        while process.poll() is None and time.monotonic() - signalled < EXIT_DEADLINE_S:
            try:
                status = health(port, secret)[0]
            except (OSError, http.client.HTTPException, ValueError):
                break  # no longer answering
            probes.append(status)
            if status == 503:
                probe_503_at = time.monotonic()
                break
            time.sleep(PROBE_EVERY_S)
        stream.ended.wait(EXIT_DEADLINE_S)
        watch.answered.wait(EXIT_DEADLINE_S)
        reaper.join(drain + EXIT_SLACK_S + EXIT_DEADLINE_S)
        return {
            "probe_before": before,
            "watch_held": held,
            "sse_stop": since(signalled, stream.stop_at()),
            "sse_events": [name for _, name in stream.events],
            "sse_error": stream.error,
            "watch": since(signalled, watch.answered_at) if held else None,
            "watch_status": watch.status,
            "watch_state": watch.state,
            "watch_error": watch.error,
            "probe_503": since(signalled, probe_503_at),
            "probes_after_signal": probes,
            "exit": since(signalled, exited_at[0] if exited_at else None),
            "exit_code": process.poll(),
        }
    except Exception as error:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        return {"error": f"{error!r}\n{tail}"}
    finally:
        for opened in (stream, watch):
            if opened is not None:
                opened.connection.close()
        stop_processes([process])


def spread(values: list[float | None]) -> dict[str, float] | None:
    """min / median / max of the values that were measured."""
    measured = [value for value in values if value is not None]
    if not measured:
        return None
    return {
        "min": min(measured),
        "median": round(statistics.median(measured), 4),
        "max": max(measured),
        "n": len(measured),
    }


def judge_kind(
    kind: ServerKind, trials: list[dict[str, Any]], drain: float
) -> list[dict[str, Any]]:
    name = kind.name
    failed = [t["error"].splitlines()[0] for t in trials if "error" in t]
    ran = [t for t in trials if "error" not in t]
    verdicts = [verdict(f"{name}: every trial ran", not failed, "; ".join(failed) or "-")]
    if not ran:
        return verdicts
    stops = [t["sse_stop"] for t in ran]
    verdicts.append(
        verdict(
            f"{name}: the SSE stream got RpcServerStop <= {AT_ONCE_S * 1000:g} ms",
            all(s is not None and s <= AT_ONCE_S for s in stops)
            and all(t["sse_events"][-1:] == ["RpcServerStop"] for t in ran),
            f"{stops}",
        )
    )
    if kind.holds_watches:
        watches = [(t["watch_held"], t["watch"], t["watch_status"], t["watch_state"]) for t in ran]
        verdicts.append(
            verdict(
                f"{name}: the held watch got 503 shutting_down <= {AT_ONCE_S * 1000:g} ms",
                all(
                    held and at is not None and at <= AT_ONCE_S and status == 503
                    for held, at, status, _ in watches
                )
                and all(state == "shutting_down" for *_, state in watches),
                f"{[w[1] for w in watches]}",
            )
        )
    else:
        verdicts.append(
            verdict(
                f"{name}: the watch was answered at once, 200 ok (a sync worker cannot hold)",
                all(
                    not t["watch_held"] and (t["watch_status"], t["watch_state"]) == (200, "ok")
                    for t in ran
                ),
                f"{[(t['watch_status'], t['watch_state']) for t in ran]}",
            )
        )
    verdicts.append(
        verdict(
            f"{name}: a probe got 503 during the drain, none refused",
            all(t["probe_503"] is not None for t in ran),
            f"{[t['probes_after_signal'] for t in ran]}",
        )
    )
    bound = drain + EXIT_SLACK_S
    verdicts.append(
        verdict(
            f"{name}: exit 0 within the drain + {EXIT_SLACK_S:g} s ({bound:g} s)",
            all(t["exit_code"] == 0 and t["exit"] is not None and t["exit"] <= bound for t in ran),
            f"codes {[t['exit_code'] for t in ran]}, after {[t['exit'] for t in ran]} s",
        )
    )
    return verdicts


def render(report: dict[str, Any]) -> list[str]:
    c = report["config"]
    lines = [
        f"bench.server_shutdown: {c['trials']} SIGTERM(s) per server, drain {c['drain']:g} s, "
        f"SSE heartbeat {c['heartbeat']} s, "
        f"{'hang up' if c['hang_up'] else 'keep'} connections once answered "
        f"({report['platform']})",
        "  seconds from SIGTERM       min     median  max",
    ]
    for name, result in report["servers"].items():
        lines.append(f"  {name}")
        for metric in METRICS:
            figures = result["summary"][metric]
            if figures is None:
                lines.append(f"    {metric:<20}  {'-':>7}")
                continue
            lines.append(
                f"    {metric:<20}  {figures['min']:>7.4f}  {figures['median']:>7.4f}  "
                f"{figures['max']:>7.4f}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    secret = secrets.token_hex(32)
    heartbeat = "0.5"
    extra = {"FOREST_SSE_HEARTBEAT_INTERVAL": heartbeat}
    if args.drain is not None:
        extra["FOREST_SHUTDOWN_DRAIN_SECONDS"] = f"{args.drain:g}"
    drain = args.drain_s
    env = agent_env(secret, extra)
    kinds = [kind for kind in KINDS if kind.name in args.servers]
    servers: dict[str, Any] = {}
    verdicts: list[dict[str, Any]] = []
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="bench-shutdown-") as tmp:
        for kind in kinds:
            trials = [run_trial(kind, Path(tmp), args, env, n) for n in range(args.trials)]
            ran = [t for t in trials if "error" not in t]
            summary = {metric: spread([t[metric] for t in ran]) for metric in METRICS}
            servers[kind.name] = {"trials": trials, "summary": summary}
            verdicts += judge_kind(kind, trials, drain)
    report: dict[str, Any] = {
        "config": {
            "trials": args.trials,
            "drain": drain,
            "heartbeat": heartbeat,
            "hang_up": args.hang_up,
        },
        "platform": f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.system()}",
        "servers": servers,
        "verdicts": verdicts,
    }
    report["ok"] = all(v["passed"] is not False for v in verdicts)
    print("\n".join([*render(report), "judge:", *render_verdicts(verdicts)]))
    return conclude(report, args.json)


if __name__ == "__main__":
    run_as_script(main, "servers terminated")
