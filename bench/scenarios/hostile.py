"""Anonymous hostile load against each recommended server, side by side.

Each server is started under a soft open-files limit of `--open-files` (1,024, a common
default), and for each attack (requests with 10,000 headers at 30/s, idle connections that
never send a request, slowloris connections sending a header line every 2 s) a legitimate
master probes the warehouse every 0.5 s (timeout 2 s, threshold 3) for `--attack-s`.
Reported: probes, failures, downs, the probes' p99, the server's RSS (all its processes)
before, at its peak, and after. Every loop is bounded; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.harness.fleet import (
    GUNICORN_UVICORN,
    KINDS,
    RECOMMENDED,
    RUNNER,
    run_secret,
    running_agent,
)
from bench.harness.processes import footprint_of
from bench.harness.report import Report, Table, Verdict, percentile
from rpc_datasource import HealthCheckClient, ProbeEvent

SUMMARY = "anonymous floods (10k headers, idle, slowloris) against each server: false downs?"
SMOKE = ["--servers=runner", "--attacks=idle", "--connections=50", "--attack-s=2"]

POLL_S, THRESHOLD, TIMEOUT_S = 0.5, 3, 2.0
HEADER_FLOOD_PER_S = 30
DRIP_EVERY_S = 2.0
# The servers the README calls safe to face untrusted clients.
SAFE = (RUNNER.name, GUNICORN_UVICORN.name)
MiB = 1024 * 1024

Attack = Callable[[int, int, threading.Event], list[socket.socket]]


def header_flood(port: int, connections: int, stop: threading.Event) -> list[socket.socket]:
    """Requests with 10,000 header lines, 30 a second, until `stop`."""
    request = b"GET /forest/health HTTP/1.1\r\nHost: x\r\n"
    request += b"".join(b"X-Filler-%d: %d\r\n" % (n, n) for n in range(10_000)) + b"\r\n"
    while not stop.wait(1 / HEADER_FLOOD_PER_S):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 5) as s:
            s.sendall(request)
            s.recv(64)
    return []


def idle(port: int, connections: int, stop: threading.Event) -> list[socket.socket]:
    """Connections that never send a byte, held until `stop`."""
    opened = []
    for _ in range(connections):
        if stop.is_set():
            break
        with contextlib.suppress(OSError):
            opened.append(socket.create_connection(("127.0.0.1", port), 5))
    stop.wait()
    return opened


def slowloris(port: int, connections: int, stop: threading.Event) -> list[socket.socket]:
    """Requests whose headers never end: one more line every 2 s, until `stop`."""
    opened = []
    for _ in range(connections // 2):
        if stop.is_set():
            break
        with contextlib.suppress(OSError):
            sock = socket.create_connection(("127.0.0.1", port), 5)
            sock.sendall(b"GET /products HTTP/1.1\r\nHost: x\r\n")
            opened.append(sock)
    while not stop.wait(DRIP_EVERY_S):
        for sock in opened:
            with contextlib.suppress(OSError):
                sock.sendall(b"X-Still-There: 1\r\n")
    return opened


ATTACKS: dict[str, Attack] = {"10k-headers": header_flood, "idle": idle, "slowloris": slowloris}


def names(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--servers", type=names, default=[kind.name for kind in RECOMMENDED])
    parser.add_argument("--attacks", type=names, default=list(ATTACKS))
    parser.add_argument(
        "--connections", type=int, default=2000, help="idle ones; slowloris opens half"
    )
    parser.add_argument("--attack-s", type=float, default=12.0, help="past the 10 s deadline")
    parser.add_argument("--open-files", type=int, default=1024, help="the servers' soft limit")


@contextlib.contextmanager
def soft_open_files(limit: int) -> Iterator[None]:
    """This process's soft open-files limit lowered to `limit` (children started inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def measure(server: str, attack: str, args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    """One server under one attack, with a master probing it throughout."""
    latencies: list[float] = []
    downs: list[float] = []

    def record(event: ProbeEvent) -> None:
        latencies.append(event.latency_s if event.latency_s is not None else TIMEOUT_S)

    secret = run_secret()
    with contextlib.ExitStack() as stack:
        with soft_open_files(args.open_files):
            agent = stack.enter_context(running_agent(KINDS[server], workdir, secret))
        rss = [footprint_of(agent.pids()).rss_bytes]
        client = HealthCheckClient(
            agent.url,
            secret,
            POLL_S,
            THRESHOLD,
            TIMEOUT_S,
            on_server_down=lambda: downs.append(time.monotonic()),
            hooks=[record],
        )
        stop = threading.Event()
        held: list[socket.socket] = []
        attacker = threading.Thread(
            target=lambda: held.extend(ATTACKS[attack](agent.port, args.connections, stop)),
            daemon=True,
        )
        client.start()
        attacker.start()
        peak = rss[0]
        deadline = time.monotonic() + args.attack_s
        while not stop.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
            peak = max(peak, footprint_of(agent.pids()).rss_bytes)
            if time.monotonic() >= deadline:
                stop.set()
        attacker.join(30)
        stats = client.stats()
        client.stop()
        for sock in held:
            sock.close()
        threading.Event().wait(2.0)  # the server releases what the attack held
        rss += [peak, footprint_of(agent.pids()).rss_bytes]
    return {
        "server": server,
        "attack": attack,
        "probes": stats.probes,
        "failures": stats.failures,
        "downs": len(downs),
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "rss_mib": [round(value / MiB) for value in rss],
    }


def run(args: argparse.Namespace, command: str) -> Report:
    unknown = [name for name in args.servers if name not in KINDS] + [
        name for name in args.attacks if name not in ATTACKS
    ]
    if unknown:
        raise SystemExit(f"unknown server or attack: {', '.join(unknown)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as workdir:
        for server in args.servers:
            for attack in args.attacks:
                rows.append(measure(server, attack, args, Path(workdir)))
    table = Table(
        f"A master probing every {POLL_S:g} s (timeout {TIMEOUT_S:g} s, threshold {THRESHOLD})"
        f" through {args.attack_s:g} s of each attack; servers under `ulimit -n "
        f"{args.open_files}`",
        ["server", "attack", "probes", "failures", "downs", "p99 ms", "RSS MiB before/peak/after"],
    )
    for row in rows:
        rss = "/".join(str(value) for value in row["rss_mib"])  # type: ignore[attr-defined]
        table.add(
            row["server"],
            row["attack"],
            row["probes"],
            row["failures"],
            row["downs"],
            f"{row['p99_ms']:.1f}",
            rss,
        )
    safe_rows = [row for row in rows if row["server"] in SAFE]
    failing = [f"{row['server']} {row['attack']}" for row in safe_rows if row["failures"]]
    verdicts = [
        Verdict(
            "the servers the README calls safe (runner, gunicorn-uvicorn): no failed probe",
            (not failing) if safe_rows else None,
            ", ".join(failing) or f"{len(safe_rows)} runs, 0 failures",
        )
    ]
    return Report("hostile", command, [table], verdicts, {"rows": rows})
