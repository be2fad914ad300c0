"""The previous engine for `master_scale`: the last tree before the asyncio engine.

That tree's `HealthCheckClient` (one `requests.Session` per client, probes run by a
scheduler thread on a pool of 16 worker threads) is unpacked from git (`git archive` of
the parent of the commit that deleted `rpc_datasource/scheduler.py`) into a temporary
directory, which goes first on the child's `PYTHONPATH`. Lateness is its scheduler's own:
when a worker began the job, less its due time (recorded by wrapping `ProbeScheduler._run`).
"""

from __future__ import annotations

import importlib
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

HEALTH_PATH = "/forest/health"
REPO_ROOT = Path(__file__).resolve().parents[2]
OLD_ENGINE_FILE = "rpc_datasource/scheduler.py"
PACKAGES = ("rpc_common", "rpc_datasource")


def previous_commit() -> str:
    """The last commit with the old engine: the parent of the one that deleted it."""
    found = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-list", "-1", "HEAD", "--", OLD_ENGINE_FILE],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    parent = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", f"{found}^"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return parent.stdout.strip()


def unpack_previous(commit: str, into: Path) -> Path:
    """The old packages of `commit`, unpacked under `into` (read-only on the repository)."""
    archive = Path(tempfile.mkstemp(suffix=".tar", dir=into)[1])
    subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", "-o", str(archive), commit, *PACKAGES],
        check=True,
        timeout=60,
    )
    tree = into / f"previous-{commit}"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    archive.unlink()
    return tree


class PreviousEngine:
    """The old clients, polling; their scheduler's lateness recorded."""

    def __init__(self) -> None:
        self.lateness: list[float] = []
        self.clients: list[Any] = []

    def start(self, cell: Any) -> None:
        # The old tree's modules: this tree has no `rpc_datasource.scheduler`.
        scheduler = importlib.import_module("rpc_datasource.scheduler")
        client_class = importlib.import_module("rpc_datasource").HealthCheckClient

        original = scheduler.ProbeScheduler._run
        lateness = self.lateness

        def timed_run(pool: Any, job: Any, due: float) -> None:
            lateness.append(time.monotonic() - due)
            original(pool, job, due)

        scheduler.ProbeScheduler._run = timed_run
        options = {
            "polling_interval": cell.interval,
            "failure_threshold": cell.threshold,
            "timeout": cell.timeout,
        }
        for url in [*cell.healthy_urls, *cell.hung_urls]:
            self.clients.append(client_class(url + HEALTH_PATH, cell.secret, **options))
        for client in self.clients:
            client.start()

    def stop(self) -> None:
        for client in self.clients:
            client.stop()

    def extra(self) -> dict[str, Any]:
        return {"engine_module": importlib.import_module("rpc_datasource").__file__}

    def profile_on_loop(self, action: str) -> None:
        raise NotImplementedError("only the current engine is profiled")
