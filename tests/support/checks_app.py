"""A data server whose readiness checks fail on demand, for tests: `python -m
tests.support.checks_app DIR INTERVAL TIMEOUT` serves it on the project's runner, on port 0.

Two checks read their mode from files in DIR at each run: `database` (critical) from
`database.mode`, `cache` (non-critical) from `cache.mode`; a mode is `ok`, `fail` or `hang`
(60 s). Each run appends `<unix time> <check> <mode>` to `DIR/runs.log`, so a test can count
the runs and see when a result came."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from flask import Flask

from rpc_agent import RpcAgent
from rpc_agent.servers.runner import serve_agent_until_signalled


def check_reading(directory: Path, name: str) -> Callable[[], None]:
    mode_file, log = directory / f"{name}.mode", directory / "runs.log"

    def check() -> None:
        mode = mode_file.read_text().strip() if mode_file.exists() else "ok"
        if mode == "hang":
            threading.Event().wait(60)
        with log.open("a") as runs:
            runs.write(f"{time.time():.6f} {name} {mode}\n")
        if mode == "fail":
            raise ConnectionError(f"{name} refused the connection")

    return check


def main() -> None:
    directory, interval, timeout = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = Flask("checks_app")
    agent = RpcAgent(app)
    agent.add_check(
        "database", check_reading(directory, "database"), interval=interval, timeout=timeout
    )
    agent.add_check(
        "cache",
        check_reading(directory, "cache"),
        interval=interval,
        timeout=timeout,
        critical=False,
    )
    serve_agent_until_signalled(app, agent, "127.0.0.1", 0)


if __name__ == "__main__":
    main()
