"""Anonymous hostile load against each server, side by side: `python -m bench.hostile`.

For each server (the project's runner, gunicorn with the recommended ASGI workers, gunicorn
gthread, waitress), each started under `ulimit -n 1024`, and each attack (requests with
10,000 headers at 30/s, 2,000 connections that never send a request, 1,000 slowloris), a
legitimate master probes the warehouse every 0.5 s (timeout 2 s, threshold 3). Reported:
probes, failures, downs, the probes' p99, the server's RSS (all its processes) before, at
its peak, and after. Every loop is bounded; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import requests

from bench._support import free_port, percentile
from rpc_common.signing import signed_headers
from rpc_datasource import HealthCheckClient, ProbeEvent

SECRET = "bench-only-secret-not-for-production-0123456789"  # a bench value, not a real secret
ATTACK_S = 12.0  # past the runner's 10 s headers deadline
SOFT_OPEN_FILES = 1024

SERVERS: dict[str, Callable[[int, Path], list[str]]] = {
    "runner": lambda port, db: [
        *(sys.executable, "-m", "examples.warehouse", "--port", str(port), "--db", str(db)),
    ],
    "gunicorn-uvicorn": lambda port, db: [
        *(sys.executable, "-m", "gunicorn", "-c", "python:rpc_agent.gunicorn", "-w", "2"),
        *("-k", "rpc_agent.servers.uvicorn_worker.UvicornWorker", "-b", f"127.0.0.1:{port}"),
        f"examples.warehouse:create_asgi_app({str(db)!r})",
    ],
    "gunicorn-gthread": lambda port, db: [
        *(sys.executable, "-m", "gunicorn", "-c", "python:rpc_agent.gunicorn", "-w", "2"),
        *("-k", "gthread", "--threads", "8", "-b", f"127.0.0.1:{port}"),
        f"examples.warehouse:create_app({str(db)!r})",
    ],
    "waitress": lambda port, db: [
        *(sys.executable, "-m", "examples.warehouse", "--server", "waitress"),
        *("--port", str(port), "--db", str(db)),
    ],
}


def low_open_files() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT_OPEN_FILES, hard))


def tree_rss_kib(pid: int) -> int:
    """The resident memory of a process and its children, in KiB (Linux /proc)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            pending.extend(int(child) for child in children)
    return total


@contextlib.contextmanager
def serving(name: str, workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("FOREST_")}
    env["FOREST_AUTH_SECRET"] = SECRET
    process = subprocess.Popen(
        SERVERS[name](port, workdir / f"{name}.db"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        preexec_fn=low_open_files,
    )
    try:
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                headers = signed_headers(SECRET, target="/forest/health")
                url = f"http://127.0.0.1:{port}/forest/health"
                if requests.get(url, headers=headers, timeout=2).ok:
                    break
            time.sleep(0.1)
        yield process, port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def header_flood(port: int, stop: threading.Event) -> list[socket.socket]:
    request = b"GET /forest/health HTTP/1.1\r\nHost: x\r\n"
    request += b"".join(b"X-Filler-%d: %d\r\n" % (n, n) for n in range(10_000)) + b"\r\n"
    while not stop.wait(1 / 30):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 5) as s:
            s.sendall(request)
            s.recv(64)
    return []


def idle_connections(port: int, stop: threading.Event) -> list[socket.socket]:
    opened = []
    for _ in range(2_000):
        with contextlib.suppress(OSError):
            opened.append(socket.create_connection(("127.0.0.1", port), 5))
    stop.wait()
    return opened


def slowloris(port: int, stop: threading.Event) -> list[socket.socket]:
    opened = []
    for _ in range(1_000):
        with contextlib.suppress(OSError):
            sock = socket.create_connection(("127.0.0.1", port), 5)
            sock.sendall(b"GET /products HTTP/1.1\r\nHost: x\r\n")
            opened.append(sock)
    while not stop.wait(2.0):
        for sock in opened:
            with contextlib.suppress(OSError):
                sock.sendall(b"X-Still-There: 1\r\n")
    return opened


ATTACKS: dict[str, Callable[[int, threading.Event], list[socket.socket]]] = {
    "10k-headers": header_flood,
    "idle-2000": idle_connections,
    "slowloris-1000": slowloris,
}


def measure(server: str, attack: str, workdir: Path) -> dict[str, object]:
    latencies: list[float] = []
    downs: list[int] = []

    def record(event: ProbeEvent) -> None:
        latencies.append(event.latency_s if event.latency_s is not None else 2.0)

    with serving(server, workdir) as (process, port):
        before = tree_rss_kib(process.pid)
        client = HealthCheckClient(
            f"http://127.0.0.1:{port}",
            SECRET,
            0.5,
            3,
            2.0,
            on_server_down=lambda: downs.append(1),
            hooks=[record],
        )
        stop = threading.Event()
        held: list[socket.socket] = []
        attacker = threading.Thread(target=lambda: held.extend(ATTACKS[attack](port, stop)))
        client.start()
        attacker.start()
        peak = before
        deadline = time.monotonic() + ATTACK_S
        while time.monotonic() < deadline:
            peak = max(peak, tree_rss_kib(process.pid))
            time.sleep(0.5)
        stop.set()
        attacker.join(30)
        stats = client.stats()
        client.stop()
        for sock in held:
            sock.close()
        time.sleep(2.0)  # let the server release what the attack held
        after = tree_rss_kib(process.pid)
    return {
        "server": server,
        "attack": attack,
        "probes": stats.probes,
        "failures": stats.failures,
        "downs": len(downs),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1) if latencies else None,
        "rss_mib": [round(kib / 1024) for kib in (before, peak, after)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", nargs="*", default=list(SERVERS), choices=list(SERVERS))
    parser.add_argument("--attacks", nargs="*", default=list(ATTACKS), choices=list(ATTACKS))
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows = []
    print("| server | attack | probes | failures | downs | p99 ms | RSS MiB before/peak/after |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as workdir:
        for server in args.servers:
            for attack in args.attacks:
                row = measure(server, attack, Path(workdir))
                rows.append(row)
                rss = "/".join(str(value) for value in row["rss_mib"])  # type: ignore[attr-defined]
                print(
                    f"| {server} | {attack} | {row['probes']} | {row['failures']} | "
                    f"{row['downs']} | {row['p99_ms']} | {rss} |",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return 0


if __name__ == "__main__":
    sys.exit(main())
