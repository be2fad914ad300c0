"""`python -m bench.agent_cost`: what the signed `GET /forest/health` costs against a bare
JSON route of the same size, on the production server (wrk) and on Flask's test client.

One Flask app carries the agent (`RpcAgent`, a TEST secret) and a bare route, `/bare`: no
auth, `jsonify` of a dict padded to the byte length of the health body. The cost of a route
is time per request, so cost(health) / cost(bare) = rps(bare) / rps(health) (on the test
client: µs(health) / µs(bare)). The issue asks for at most 1.10.

1. **Production server, wrk.** `--serve` mode of this script runs the app on the project's
   runner (uvicorn; `serve_agent_until_signalled`, as the warehouse does) in a child process
   on a free port.
   `wrk -t1 -c4 -d3s` runs against `/forest/health` with signed headers (made fresh for each
   run; a signature stays valid for the 300 s clock skew) and against `/bare` without,
   alternating A B A B for `--rounds` rounds. Two variants, each with its own server:
   *unpinned* (server and wrk share both cores as the scheduler likes) and *pinned*
   (server `taskset -c 0`, wrk `taskset -c 1`: the server has one core of its own and is
   CPU-bound). A run with any non-2xx answer or socket error is reported and not trusted.
   Also shown: the server's CPU (user + sys of the child, from /proc) per request of each
   run, a second view of the same cost that the client's share of the cores does not move.
2. **Test client.** `app.test_client()` in this process, `--requests` requests of each
   route, in `--rounds` rounds of A then B. Health is signed once per round, not per request
   (making headers per request would add the client's signing cost to health only).
3. **Direct WSGI call.** The app called with a prepared environ, no server and no client:
   what the agent's middleware and the Flask route cost alone, same rounds.
4. **Layers** (median µs per call): `verify_request` alone, `AgentRoutes.handle` (check and
   answer), the whole middleware (the direct call of 3.) and Flask's `/bare` for reference.

The ratios are reported as the ratio of the medians, and per round (A and B side by side).

Exit status 0 either way (a measurement, not a test); 130 on Ctrl-C.

    .venv/bin/python -m bench.agent_cost [--rounds 5] [--duration 3] [--threads 1]
        [--connections 4] [--requests 20000] [--no-pinned] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from pydantic import SecretStr

from bench._support import (
    HEALTH_PATH,
    REPO_ROOT,
    die_with_parent,
    free_port,
    run_as_script,
    sigterm_as_interrupt,
    stop_processes,
    write_json,
)
from rpc_agent import AgentSettings, RpcAgent
from rpc_agent.core.routes import AgentRequest, AgentRoutes, Reply
from rpc_agent.servers.runner import serve_agent_until_signalled
from rpc_common.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, signed_headers, verify_request

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

# TEST VALUE ONLY: a fixed secret for a throwaway agent on 127.0.0.1; never use it anywhere else.
TEST_SECRET = "bench-agent-cost-TEST-ONLY-secret-not-for-production"
BARE_PATH = "/bare"
LIMIT = 1.10
READY_DEADLINE_S = 30.0
SERVER_EXIT_S = 15.0
PAUSE_S = 0.5  # between wrk runs, so one run's closing connections do not overlap the next
WRK = "/usr/bin/wrk"


def build_app() -> tuple[Flask, RpcAgent]:
    """The agent (TEST secret) and `/bare`: a JSON body padded to the health body's size."""
    app = Flask("agent_cost")
    agent = RpcAgent(app, settings=AgentSettings(auth_secret=SecretStr(TEST_SECRET)))
    target = len(agent.health_answer().body(agent.uptime_s()))
    with app.app_context():
        unpadded = len(jsonify({"status": "ok", "pad": ""}).get_data())
    bare = {"status": "ok", "pad": "x" * max(0, target - unpadded)}

    @app.get(BARE_PATH)
    def bare_route() -> ResponseReturnValue:
        return jsonify(bare)

    return app, agent


def health_headers() -> dict[str, str]:
    """Fresh signed headers for `GET /forest/health` (valid for the agent's 300 s skew)."""
    return signed_headers(TEST_SECRET, target=HEALTH_PATH)


# ---------------------------------------------------------------- production server + wrk


def serve(port: int) -> int:
    """`--serve`: the app on the production runner until SIGTERM."""
    app, agent = build_app()
    serve_agent_until_signalled(app, agent, "127.0.0.1", port)
    return 0


@dataclass
class Server:
    """The `--serve` child process on `port`, optionally under `taskset -c CPUS`."""

    port: int
    process: subprocess.Popen[bytes]
    cpus: str | None

    @classmethod
    def start(cls, cpus: str | None) -> Server:
        port = free_port()
        command = [sys.executable, "-m", "bench.agent_cost", "--serve", "--port", str(port)]
        if cpus is not None:
            command = ["taskset", "-c", cpus, *command]
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        server = cls(port, process, cpus)
        server.wait_ready()
        return server

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def fetch(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url(path), headers=headers or {})
        with urllib.request.urlopen(request, timeout=2.0) as reply:
            return int(reply.status), bytes(reply.read())

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_DEADLINE_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early ({self.process.returncode})")
            try:
                if self.fetch(BARE_PATH)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server on port {self.port} not ready within {READY_DEADLINE_S:g} s")

    def sizes(self) -> dict[str, int]:
        """Body bytes of both routes as served (and a check that the signed probe is taken)."""
        health_status, health_body = self.fetch(HEALTH_PATH, health_headers())
        bare_status, bare_body = self.fetch(BARE_PATH)
        if (health_status, bare_status) != (200, 200):
            raise RuntimeError(f"unexpected status: health {health_status}, bare {bare_status}")
        return {"health": len(health_body), "bare": len(bare_body)}

    def stop(self) -> int | None:
        """SIGTERM (the runner drains for 1 s, then stops); its exit code, None if it hung."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(SERVER_EXIT_S)
        except subprocess.TimeoutExpired:
            stop_processes([self.process])
            return None


@dataclass
class WrkRun:
    route: str
    rps: float
    requests: int
    bad: int  # non-2xx/3xx answers + socket errors
    latency: str
    server_cpu_us: float = 0.0  # the server's CPU (user + sys) per request in this run


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


WRK_RPS = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.MULTILINE)
WRK_TOTAL = re.compile(r"^\s*([0-9]+) requests in", re.MULTILINE)
WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+([0-9]+)")
WRK_ERRORS = re.compile(
    r"Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+)"
)
WRK_LATENCY = re.compile(r"^\s*Latency\s+(\S+)", re.MULTILINE)


def parse_wrk(route: str, output: str) -> WrkRun:
    rps = WRK_RPS.search(output)
    total = WRK_TOTAL.search(output)
    if rps is None or total is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    bad = 0
    if (non2xx := WRK_NON2XX.search(output)) is not None:
        bad += int(non2xx.group(1))
    if (errors := WRK_ERRORS.search(output)) is not None:
        bad += sum(int(value) for value in errors.groups())
    latency = WRK_LATENCY.search(output)
    return WrkRun(
        route, float(rps.group(1)), int(total.group(1)), bad, latency.group(1) if latency else "?"
    )


def run_wrk(
    server: Server, route: str, args: argparse.Namespace, headers: dict[str, str]
) -> WrkRun:
    """One bounded wrk run (its own `-d`, and a hard timeout of d + 30 s)."""
    command = [WRK, f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration:g}s"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    command.append(server.url(route))
    if server.cpus is not None:
        command = ["taskset", "-c", args.wrk_cpus, *command]
    cpu_before = process_cpu_s(server.process.pid)
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=args.duration + 30.0, check=False
    )
    cpu = process_cpu_s(server.process.pid) - cpu_before
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    run = parse_wrk(route, done.stdout)
    run.server_cpu_us = cpu / max(run.requests, 1) * 1e6
    return run


@dataclass
class Pairs:
    """Alternated A (health) / B (bare) figures of one variant; `higher_is_faster` for rps."""

    unit: str
    higher_is_faster: bool
    health: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def pair_ratios(self) -> list[float]:
        """cost(health) / cost(bare) of each round."""
        return [self._ratio(h, b) for h, b in zip(self.health, self.bare, strict=True)]

    def _ratio(self, health: float, bare: float) -> float:
        return bare / health if self.higher_is_faster else health / bare

    def ratio(self) -> float:
        """cost(health) / cost(bare) of the medians."""
        return self._ratio(statistics.median(self.health), statistics.median(self.bare))

    def summary(self) -> dict[str, Any]:
        ratios = self.pair_ratios()
        return {
            "unit": self.unit,
            "health": self.health,
            "bare": self.bare,
            "median_health": statistics.median(self.health),
            "median_bare": statistics.median(self.bare),
            "ratio_of_medians": self.ratio(),
            "pair_ratios": ratios,
            "median_pair_ratio": statistics.median(ratios),
            "within_limit": self.ratio() <= LIMIT,
            "notes": self.notes,
        }


def measure_wrk(args: argparse.Namespace, cpus: str | None, label: str) -> tuple[Pairs, Pairs]:
    """Start a server (pinned to `cpus`), alternate wrk runs on both routes, stop it; the
    req/s of each run, and the server's CPU µs per request of each run."""
    rps = Pairs("req/s", higher_is_faster=True)
    cpu = Pairs("server CPU µs/request", higher_is_faster=False, notes=rps.notes)
    server = Server.start(cpus)
    try:
        sizes = server.sizes()
        print(f"  {label}: server pid {server.process.pid}, port {server.port}, body bytes {sizes}")
        # Warm-up, not counted: both routes once, briefly.
        warm = argparse.Namespace(**{**vars(args), "duration": 1.0})
        run_wrk(server, HEALTH_PATH, warm, health_headers())
        run_wrk(server, BARE_PATH, warm, {})
        for round_no in range(1, args.rounds + 1):
            runs = []
            for route in (HEALTH_PATH, BARE_PATH):
                time.sleep(PAUSE_S)
                headers = health_headers() if route == HEALTH_PATH else {}
                runs.append(run_wrk(server, route, args, headers))
            health, bare = runs
            rps.health.append(health.rps)
            rps.bare.append(bare.rps)
            cpu.health.append(health.server_cpu_us)
            cpu.bare.append(bare.server_cpu_us)
            for run in runs:
                if run.bad:
                    rps.notes.append(f"round {round_no} {run.route}: {run.bad} bad answers/errors")
            print(
                f"    round {round_no}: health {health.rps:6.0f} req/s "
                f"({health.server_cpu_us:5.0f} µs CPU, latency {health.latency}), "
                f"bare {bare.rps:6.0f} req/s ({bare.server_cpu_us:5.0f} µs CPU, "
                f"latency {bare.latency}); cost ratio {bare.rps / health.rps:.3f} "
                f"(CPU {health.server_cpu_us / bare.server_cpu_us:.3f})"
                + ("  [BAD ANSWERS]" if health.bad or bare.bad else "")
            )
    finally:
        code = server.stop()
        if code != 0:
            rps.notes.append(f"server exit code {code}")
    return rps, cpu


# ---------------------------------------------------------------- in-process measures


def time_calls(call: Callable[[], int], count: int) -> float:
    """µs per call of `call` (which returns the status; anything but 200 is an error)."""
    started = time.perf_counter()
    for _ in range(count):
        if call() != 200:
            raise RuntimeError("a request was not answered 200")
    return (time.perf_counter() - started) / count * 1e6


def measure_in_process(
    rounds: int,
    per_round: int,
    make_calls: Callable[[], tuple[Callable[[], int], Callable[[], int]]],
) -> Pairs:
    """Alternate A (health) and B (bare) blocks of `per_round` calls; one warm-up round first."""
    pairs = Pairs("µs/request", higher_is_faster=False)
    health_call, bare_call = make_calls()
    time_calls(health_call, min(per_round, 1000))
    time_calls(bare_call, min(per_round, 1000))
    for round_no in range(1, rounds + 1):
        health_call, bare_call = make_calls()  # health signed once per round
        health = time_calls(health_call, per_round)
        bare = time_calls(bare_call, per_round)
        pairs.health.append(health)
        pairs.bare.append(bare)
        print(
            f"    round {round_no}: health {health:7.1f} µs, bare {bare:7.1f} µs, "
            f"cost ratio {health / bare:.3f}"
        )
    return pairs


def client_calls(app: Flask) -> Callable[[], tuple[Callable[[], int], Callable[[], int]]]:
    client = app.test_client()

    def make() -> tuple[Callable[[], int], Callable[[], int]]:
        headers = health_headers()
        return (
            lambda: client.get(HEALTH_PATH, headers=headers).status_code,
            lambda: client.get(BARE_PATH).status_code,
        )

    return make


def base_environ(path: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "REQUEST_URI": path,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.errors": sys.stderr,
    }


def direct_calls(app: Flask) -> Callable[[], tuple[Callable[[], int], Callable[[], int]]]:
    """Calls of the WSGI app itself; the body iterable is consumed and closed as a server does."""
    status: list[int] = [0]

    def start_response(line: str, _headers: list[tuple[str, str]], _exc: Any = None) -> Any:
        status[0] = int(line[:3])
        return None

    def call(environ: WSGIEnvironment) -> int:
        env = dict(environ)
        env["wsgi.input"] = _EMPTY_INPUT
        body: Iterable[bytes] = app(env, start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
        return status[0]

    def make() -> tuple[Callable[[], int], Callable[[], int]]:
        headers = health_headers()
        health_env = base_environ(HEALTH_PATH)
        for name, value in headers.items():
            health_env["HTTP_" + name.upper().replace("-", "_")] = value
        bare_env = base_environ(BARE_PATH)
        return (lambda: call(health_env), lambda: call(bare_env))

    return make


class _EmptyInput:
    def read(self, _size: int = -1) -> bytes:
        return b""


_EMPTY_INPUT = _EmptyInput()


def breakdown(agent: RpcAgent, rounds: int, count: int) -> dict[str, float]:
    """Median µs per call of the agent's layers for one signed health request: the signature
    check alone, and `AgentRoutes.handle` (check + answer), without the WSGI adapter."""
    routes = AgentRoutes(agent)
    route = routes.match(HEALTH_PATH)
    assert route is not None
    settings = agent.settings
    figures: dict[str, list[float]] = {"verify_request": [], "AgentRoutes.handle": []}
    for _ in range(rounds + 1):  # the first round warms up
        headers = health_headers()
        request = AgentRequest(
            method="GET",
            target=HEALTH_PATH,
            query="",
            timestamp=headers[TIMESTAMP_HEADER],
            signature=headers[SIGNATURE_HEADER],
        )

        def verify(request: AgentRequest = request) -> int:
            failure = verify_request(
                request.timestamp,
                request.signature,
                method=request.method,
                target=request.target,
                body=request.body,
                secrets=agent.verification_secrets,
                allowed_clock_skew=settings.allowed_clock_skew,
                require_bound=settings.require_bound_signatures,
            )
            return 200 if failure is None else 401

        def handle(request: AgentRequest = request) -> int:
            reply = routes.handle(route, request)
            return reply.status if isinstance(reply, Reply) else 0

        figures["verify_request"].append(time_calls(verify, count))
        figures["AgentRoutes.handle"].append(time_calls(handle, count))
    return {name: statistics.median(values[1:]) for name, values in figures.items()}


# ---------------------------------------------------------------- report


def verdict_line(name: str, pairs: Pairs) -> str:
    s = pairs.summary()
    ratios = ", ".join(f"{r:.3f}" for r in s["pair_ratios"])
    mark = "≤" if s["within_limit"] else ">"
    trust = f"  (NOT TRUSTED: {'; '.join(pairs.notes)})" if pairs.notes else ""
    return (
        f"  {name}: health {s['median_health']:.1f} / bare {s['median_bare']:.1f} {pairs.unit} "
        f"(medians) → cost ratio {s['ratio_of_medians']:.3f} {mark} {LIMIT:.2f}; "
        f"per round {ratios}{trust}"
    )


def machine_note() -> str:
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.agent_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=5, help="A B rounds of each measure")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t")
    parser.add_argument("--connections", type=int, default=4, help="wrk -c")
    parser.add_argument("--server-cpus", default="0", help="taskset -c of the pinned server")
    parser.add_argument("--wrk-cpus", default="1", help="taskset -c of wrk when pinned")
    parser.add_argument("--no-pinned", action="store_true", help="skip the pinned variant")
    parser.add_argument("--requests", type=int, default=20000, help="test-client requests of each")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.port)
    if not (1 <= args.rounds <= 100 and 0 < args.duration <= 120 and args.requests >= args.rounds):
        parser.error("need 1 ≤ --rounds ≤ 100, 0 < --duration ≤ 120, --requests ≥ --rounds")
    if shutil.which(WRK) is None:
        parser.error(f"{WRK} not found (Debian package wrk)")

    print(f"machine: {machine_note()}")
    app, agent = build_app()
    client = app.test_client()
    health_size = len(client.get(HEALTH_PATH, headers=health_headers()).get_data())
    bare_size = len(client.get(BARE_PATH).get_data())
    print(f"body bytes: health {health_size}, bare {bare_size} (test client)")
    report: dict[str, Any] = {"machine": machine_note(), "args": vars(args) | {"json": None}}
    report["body_bytes"] = {"health": health_size, "bare": bare_size}
    results: dict[str, Pairs] = {}
    with sigterm_as_interrupt():
        wrk_args = f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s"
        print(f"\n1. production server (the runner, serve_agent_until_signalled), {wrk_args}")
        rps, cpu = measure_wrk(args, None, "unpinned")
        results["runner unpinned"], results["runner unpinned, server CPU"] = rps, cpu
        if not args.no_pinned:
            label = f"pinned (server taskset -c {args.server_cpus}, wrk taskset -c {args.wrk_cpus})"
            rps, cpu = measure_wrk(args, args.server_cpus, label)
            results["runner pinned"], results["runner pinned, server CPU"] = rps, cpu
        per_round = args.requests // args.rounds
        print(
            f"\n2. Flask test client, {per_round} requests of each per round, signed once a round"
        )
        results["test client"] = measure_in_process(args.rounds, per_round, client_calls(app))
        print(f"\n3. direct WSGI call (no server, no client), {per_round} of each per round")
        results["direct WSGI"] = measure_in_process(args.rounds, per_round, direct_calls(app))
        layers = breakdown(agent, args.rounds, per_round)
        direct = results["direct WSGI"].summary()
        layers["RpcAgentMiddleware (direct WSGI, health)"] = direct["median_health"]
        layers["Flask /bare (direct WSGI)"] = direct["median_bare"]
        report["layers_us"] = layers
        print("\n4. layers of a signed health request (median µs per call)")
        for name, value in layers.items():
            print(f"    {name}: {value:.1f} µs")

    print(f"\nsummary: cost(signed /forest/health) / cost(bare JSON route), limit {LIMIT:.2f}")
    for name, pairs in results.items():
        print(verdict_line(name, pairs))
    report["results"] = {name: pairs.summary() for name, pairs in results.items()}
    print(f"machine after: {machine_note()}")
    write_json(args.json, report)
    print(f"result: {json.dumps({n: round(p.ratio(), 3) for n, p in results.items()})}")
    return 0


if __name__ == "__main__":
    run_as_script(main, "the server child was stopped")
