"""`python -m bench.bare_aiohttp`: the floor for CPU per probe, a bare aiohttp polling loop.

The same agents, clients and interval as `bench.scale`, but each client is a few lines of
aiohttp: sleep, signed GET, read, sleep again. No policy, state machine, events or hooks.
Run it next to `bench.scale` (alternating, the machine is noisy) and compare the
`us per probe` lines: the difference is what the engine adds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import secrets
import sys
import tempfile
from pathlib import Path

import aiohttp

from bench._support import HEALTH_PATH, AgentFleet
from rpc_common.signing import signed_headers


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def poll_forever(
    session: aiohttp.ClientSession, url: str, secret: str, interval: float, done: list[int]
) -> None:
    """One bare client: a signed GET every `interval`, the first anywhere in the first one."""
    await asyncio.sleep(random.uniform(0.0, interval))
    while True:
        headers = signed_headers(secret, target=HEALTH_PATH)
        async with session.get(url, headers=headers, allow_redirects=False) as reply:
            await reply.read()
        done[0] += 1
        await asyncio.sleep(interval)


async def measure(
    urls: list[str], secret: str, clients: int, interval: float, duration: float
) -> str:
    done = [0]
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=8.0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [
            asyncio.create_task(poll_forever(session, urls[i % len(urls)], secret, interval, done))
            for i in range(clients)
        ]
        await asyncio.sleep(interval * 1.5)  # past every client's first probe
        probes_before, cpu_before = done[0], cpu_seconds()
        await asyncio.sleep(duration)
        probes, cpu = done[0] - probes_before, cpu_seconds() - cpu_before
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return (
        f"bare aiohttp: {clients} clients, interval {interval:g} s, {duration:g} s: "
        f"{probes} probes, {cpu / max(probes, 1) * 1e6:.1f} us per probe, "
        f"{cpu / duration * 100:.2f} % of one core"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_aiohttp", description=__doc__)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=20.0)
    args = parser.parse_args(argv)
    secret = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="bench-bare-") as workdir:
        fleet = AgentFleet(Path(workdir), secret)
        try:
            fleet.start(args.agents)
            urls = [agent.health_url for agent in fleet.agents]
            print(asyncio.run(measure(urls, secret, args.clients, args.interval, args.duration)))
        finally:
            fleet.terminate()
            fleet.kill_leftovers()
    return 0


if __name__ == "__main__":
    sys.exit(main())
