"""Readiness checks under measure: `python -m bench.readiness`.

Against the test suite's checks app (`tests.support.checks_app`, on the project's runner):

- health latency, 200 signed probes on one connection, p50 and p99: with every check
  passing, and with the critical check hung for 60 s (past its 0.5 s timeout): side by side,
  to show that a probe never waits on a check;
- in watch mode, from the check's failing result (its timestamp, written by the app) to the
  master's failing event (the held request answered), over several flips.

Every loop is bounded; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench._support import percentile
from rpc_common.signing import signed_headers
from rpc_datasource import HealthCheckClient, ProbeEvent
from rpc_datasource.instrumentation.in_flight import probes_in_flight

SECRET = "bench-only-secret-not-for-production-0123456789"  # a bench value, not a real secret
HEALTH = "/forest/health"
CHECK_INTERVAL_S = 0.1
CHECK_TIMEOUT_S = 0.5


def start_app(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FOREST_")}
    env["FOREST_AUTH_SECRET"] = SECRET
    log = (directory / "app.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            *("-m", "tests.support.checks_app", str(directory)),
            *(str(CHECK_INTERVAL_S), str(CHECK_TIMEOUT_S)),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = (directory / "app.log").read_text(errors="replace")
        if "serving on http://127.0.0.1:" in text:
            port = text.split("serving on http://127.0.0.1:", 1)[1].split()[0]
            return process, f"http://127.0.0.1:{port}"
        threading.Event().wait(0.05)
    process.kill()
    raise SystemExit("the checks app did not start")


def get_health(session: requests.Session, url: str) -> requests.Response:
    return session.get(url + HEALTH, headers=signed_headers(SECRET, target=HEALTH), timeout=5)


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting")
        threading.Event().wait(0.01)


def latencies(url: str, probes: int) -> list[float]:
    session = requests.Session()
    took = []
    for _ in range(probes):
        started = time.perf_counter()
        get_health(session, url)
        took.append(time.perf_counter() - started)
    session.close()
    return took


def one_flip(url: str, directory: Path) -> float:
    """From the check's failing result to the held request's failing answer."""
    (directory / "database.mode").write_text("ok")
    (directory / "runs.log").write_text("")
    failed = threading.Event()
    seen: list[float] = []

    def hook(event: ProbeEvent) -> None:
        if not event.result.succeeded and not seen:
            seen.append(time.time())
            failed.set()

    wait_for(lambda: get_health(requests.Session(), url).status_code == 200)
    client = HealthCheckClient(
        url, SECRET, polling_interval=0.5, timeout=2.0, mode="watch", watch_wait=20.0, hooks=(hook,)
    )
    client.start()
    try:
        wait_for(lambda: client.stats().probes >= 1 and probes_in_flight.value == 1)
        (directory / "database.mode").write_text("fail")
        if not failed.wait(10):
            raise SystemExit("the held request was not answered")
    finally:
        client.stop()
    runs = (directory / "runs.log").read_text().splitlines()
    first_fail = min(float(line.split()[0]) for line in runs if line.endswith("database fail"))
    return seen[0] - first_fail


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.readiness", description=__doc__)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--flips", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-readiness-") as workdir:
        directory = Path(workdir)
        process, url = start_app(directory)
        try:
            wait_for(lambda: get_health(requests.Session(), url).json()["status"] == "ok")
            passing = latencies(url, args.probes)
            flips = [one_flip(url, directory) for _ in range(args.flips)]
            (directory / "database.mode").write_text("hang")
            wait_for(
                lambda: (
                    get_health(requests.Session(), url).json()["checks"]["database"]["reason"]
                    == "timeout"
                )
            )
            hung = latencies(url, args.probes)
        finally:
            process.terminate()
            process.wait(10)
    print(f"health over {args.probes} probes, one connection (ms):")
    print(f"    {'checks':<22} {'p50':>7} {'p99':>7} {'max':>7}")
    for label, took in (("all passing", passing), ("database hung 60 s", hung)):
        print(
            f"    {label:<22} {percentile(took, 0.5) * 1000:7.2f} "
            f"{percentile(took, 0.99) * 1000:7.2f} {max(took) * 1000:7.2f}"
        )
    print(f"watch mode, check failing -> held request answered, over {len(flips)} flips (ms):")
    print(f"    p50 {percentile(flips, 0.5) * 1000:.1f}  max {max(flips) * 1000:.1f}")


if __name__ == "__main__":
    main()
