"""Closed-loop HTTP load on one route, in a process of its own: wrk, or this module's asyncio
generator where wrk is not installed.

`run_load` runs one cell: `connections` keep-alive connections, each sending the next request
as soon as the answer to the last one is read, for `duration` seconds, and returns the
requests answered, the errors, requests/s and latency percentiles. A signed route gets fresh
headers: wrk gets them on its command line at the start of a cell (a cell lasts seconds, the
agent accepts a timestamp for 300 s); the asyncio generator signs again every second.

`python -m bench.scenarios._load --port P --path /x --connections N --duration S` is the
asyncio generator itself; it reads the secret (if the route is signed) from the environment
variable `AGENT_COST_SECRET` and prints its result as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from rpc_common.signing import signed_headers

SECRET_VARIABLE = "AGENT_COST_SECRET"
RESIGN_EVERY_S = 1.0
EXTRA_DEADLINE_S = 30.0  # past a cell's own length, before the generator is killed
ERROR_PAUSE_S = 0.01  # after a failed connection, so a refusing server is not spun on
HEAD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class LoadResult:
    """What one cell of load measured."""

    generator: str
    requests: int  # answered within the measured window
    errors: int  # socket errors and timeouts
    bad_status: int  # answers other than 2xx
    seconds: float
    p50_ms: float
    p99_ms: float
    generator_cpu_s: float  # user + system CPU of the generator process

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else math.nan

    def as_dict(self) -> dict[str, float | int | str]:
        return {**asdict(self), "rate": self.rate}


def wrk_path() -> str | None:
    return shutil.which("wrk")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_load(
    generator: str,
    port: int,
    path: str,
    *,
    secret: str | None,
    connections: int,
    duration: float,
) -> LoadResult:
    """One closed-loop run of `generator` ("wrk" or "python") against 127.0.0.1:`port`."""
    before = _children_cpu_s()
    if generator == "wrk":
        result = _run_wrk(port, path, secret, connections, duration)
    else:
        result = _run_python(port, path, secret, connections, duration)
    cpu = _children_cpu_s() - before
    return LoadResult(**{**asdict(result), "generator_cpu_s": cpu})


# ------------------------------------------------------------------------------ wrk

_WRK_TOTAL = re.compile(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m)", re.MULTILINE)
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_PERCENTILE = r"^\s*{}%\s+([0-9.]+)(us|ms|s|m)\s*$"
_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _wrk_percentile(output: str, percent: int) -> float:
    found = re.search(_WRK_PERCENTILE.format(percent), output, re.MULTILINE)
    return float(found.group(1)) * _UNIT_MS[found.group(2)] if found else math.nan


def _run_wrk(
    port: int, path: str, secret: str | None, connections: int, duration: float
) -> LoadResult:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    if secret is not None:
        for name, value in signed_headers(secret, target=path).items():
            command += ["-H", f"{name}: {value}"]
    command.append(f"http://127.0.0.1:{port}{path}")
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=duration + EXTRA_DEADLINE_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    total = _WRK_TOTAL.search(done.stdout)
    if done.returncode != 0 or total is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
    errors = _WRK_ERRORS.search(done.stdout)
    non2xx = _WRK_NON2XX.search(done.stdout)
    return LoadResult(
        generator="wrk",
        requests=int(total.group(1)),
        errors=sum(int(value) for value in errors.groups()) if errors else 0,
        bad_status=int(non2xx.group(1)) if non2xx else 0,
        seconds=float(total.group(2)) * _UNIT_MS[total.group(3)] / 1e3,
        p50_ms=_wrk_percentile(done.stdout, 50),
        p99_ms=_wrk_percentile(done.stdout, 99),
        generator_cpu_s=0.0,
    )


# ------------------------------------------------------------------ asyncio generator


def _run_python(
    port: int, path: str, secret: str | None, connections: int, duration: float
) -> LoadResult:
    env = {key: value for key, value in os.environ.items() if key != SECRET_VARIABLE}
    if secret is not None:
        env[SECRET_VARIABLE] = secret
    command = [
        sys.executable,
        "-m",
        "bench.scenarios._load",
        "--port",
        str(port),
        "--path",
        path,
        "--connections",
        str(connections),
        "--duration",
        str(duration),
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        timeout=duration + EXTRA_DEADLINE_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    return LoadResult(**json.loads(done.stdout.strip().splitlines()[-1]))


class Requests:
    """The request's bytes, signed again every second when the route is signed."""

    def __init__(self, path: str, secret: str | None) -> None:
        self.path = path
        self.secret = secret
        self._made = -math.inf
        self._bytes = b""

    def current(self, now: float) -> bytes:
        if self.secret is None and self._bytes:
            return self._bytes
        if now - self._made >= RESIGN_EVERY_S:
            headers = signed_headers(self.secret, target=self.path) if self.secret else {}
            lines = [f"GET {self.path} HTTP/1.1", "Host: 127.0.0.1"]
            lines += [f"{name}: {value}" for name, value in headers.items()]
            self._bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
            self._made = now
        return self._bytes


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """The status of one answer, read whole, and whether the server closes the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status = lines[0].split(" ", 2)[:2]
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip().lower()
    if "chunked" in fields.get("transfer-encoding", ""):
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(int(fields.get("content-length", "0")))
    connection = fields.get("connection", "")
    closes = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
    return int(status), closes


@dataclass
class _Tally:
    start: float
    end: float
    latencies: list[float]
    errors: int = 0
    bad_status: int = 0


async def _one_connection(port: int, requests: Requests, tally: _Tally) -> None:
    """Request after request until the window ends, reconnecting when the server closes."""
    loop = asyncio.get_running_loop()
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    try:
        while loop.time() < tally.end:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", port, limit=HEAD_LIMIT
                    )
                assert reader is not None
                sent = loop.time()
                writer.write(requests.current(sent))
                status, closes = await _read_answer(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                tally.errors += 1
                if writer is not None:
                    writer.close()
                writer = None
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            answered = loop.time()
            if tally.start <= answered <= tally.end:
                tally.latencies.append(answered - sent)
                tally.bad_status += not 200 <= status < 300
            if closes:
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()


async def _generate(args: argparse.Namespace) -> LoadResult:
    loop = asyncio.get_running_loop()
    requests = Requests(args.path, os.environ.get(SECRET_VARIABLE))
    start = loop.time()
    tally = _Tally(start, start + args.duration, [])
    tasks = [
        asyncio.create_task(_one_connection(args.port, requests, tally))
        for _ in range(args.connections)
    ]
    await asyncio.wait_for(asyncio.gather(*tasks), args.duration + EXTRA_DEADLINE_S / 2)
    ordered = sorted(tally.latencies)

    def percentile_ms(fraction: float) -> float:
        if not ordered:
            return math.nan
        return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)] * 1e3

    return LoadResult(
        generator="python",
        requests=len(ordered),
        errors=tally.errors,
        bad_status=tally.bad_status,
        seconds=args.duration,
        p50_ms=percentile_ms(0.50),
        p99_ms=percentile_ms(0.99),
        generator_cpu_s=time.process_time(),
    )


def main(argv: list[str] | None = None) -> int:
    """The asyncio generator: one cell of load, its result as one JSON line on stdout."""
    parser = argparse.ArgumentParser(prog="python -m bench.scenarios._load")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args(argv)
    result = asyncio.run(_generate(args))
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
