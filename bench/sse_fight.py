"""`python -m bench.sse_fight [--tree PATH] [--duration 60] [--masters 2]`: how often masters
on one agent's legacy SSE route take its one stream from each other.

It starts the warehouse of `--tree` (default: this checkout; give a `git worktree` of an
older commit for the "before" figure) on 127.0.0.1, then `--masters` legacy `SseClient`s of
the same tree on its `/forest/sse`, one second apart, and counts for `--duration` seconds the
streams each opens and the `superseded` events each gets. A kick is a stream the agent ended
because another took its place: every stream a client opens after its first. It prints kicks
per minute for the whole run. Self-contained (no `bench._support`), so that the project's
modules all come from `--tree`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
READY_DEADLINE_S = 20.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            threading.Event().wait(0.05)
    raise RuntimeError("the warehouse did not start")


class Master:
    """One legacy client and what it saw."""

    def __init__(self, client_class: Any, url: str, secret: str) -> None:
        self.superseded = 0
        self.client = client_class(url, secret, on_event=self._seen, heartbeat_interval=1.0)

    def _seen(self, event: Any) -> None:
        if event.event == "superseded":
            self.superseded += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sse_fight", description=__doc__)
    parser.add_argument("--tree", type=Path, default=HERE)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--masters", type=int, default=2)
    args = parser.parse_args(argv)
    tree = args.tree.resolve()
    sys.path.insert(0, str(tree))
    client_class = importlib.import_module("rpc_datasource.legacy.sse_client").SseClient
    secret = secrets.token_urlsafe(32)
    port = free_port()
    env = {**os.environ, "FOREST_AUTH_SECRET": secret, "FOREST_SSE_HEARTBEAT_INTERVAL": "1"}
    env["PYTHONPATH"] = str(tree)
    with tempfile.TemporaryDirectory(prefix="bench-sse-fight-") as workdir:
        command = [sys.executable, "-m", "examples.warehouse", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--db", str(Path(workdir) / "w.db")]
        command += ["--log-level", "WARNING"]
        process = subprocess.Popen(
            command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        masters: list[Master] = []
        try:
            wait_listening(port, process)
            url = f"http://127.0.0.1:{port}/forest/sse"
            started = time.monotonic()
            for _ in range(args.masters):
                master = Master(client_class, url, secret)
                master.client.start()
                masters.append(master)
                threading.Event().wait(1.0)
            threading.Event().wait(max(0.0, args.duration - (time.monotonic() - started)))
            elapsed = time.monotonic() - started
        finally:
            for master in masters:
                master.client.close()
            process.send_signal(signal.SIGTERM)
            process.wait(10)
    streams = [master.client.connection_attempts for master in masters]
    kicks = sum(streams) - len(masters)
    print(f"tree: {tree}")
    print(f"masters: {args.masters}, duration: {elapsed:.1f} s")
    print(f"streams opened per master: {streams}")
    print(f"superseded events per master: {[master.superseded for master in masters]}")
    print(f"kicks: {kicks}, {kicks / elapsed * 60:.1f} per minute")
    return 0


if __name__ == "__main__":
    sys.exit(main())
