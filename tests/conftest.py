"""Suite-wide guards: no FOREST_* setting of the caller leaks in, no library thread leaks out."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from rpc_agent.process import state as server_process
from tests.support import library_threads, wait_until
from tests.support.warehouse import Warehouse, running_warehouse

# Property tests check what holds, not how fast: no per-example deadline, which a loaded
# machine (parallel workers, a second suite beside this one) would miss by chance.
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")


@pytest.fixture(autouse=True)
def _no_forest_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings are given in code or set by the test: no FOREST_* variable of the caller
    may leak in."""
    for name in list(os.environ):
        if name.upper().startswith("FOREST_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _no_server_start_announced(monkeypatch: pytest.MonkeyPatch) -> None:
    """No `instance_id` announced by a gunicorn hook that an earlier test of this process
    called: each test starts as a process that no server has forked."""
    monkeypatch.setattr(server_process, "_latest_announced", mmap.mmap(-1, 32))


@pytest.fixture(autouse=True)
def _no_library_thread_left() -> Iterator[None]:
    """Every client and datasource is closed by the end of its test: none of the library's
    threads (rpc-health*, rpc-callback*) survives it."""
    yield
    assert wait_until(lambda: not library_threads(), 5.0), (
        f"library threads still alive: {library_threads()}"
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where a test's warehouse keeps its SQLite database."""
    return tmp_path / "warehouse.db"


@pytest.fixture
def warehouse(db_path: Path, tmp_path: Path) -> Iterator[Warehouse]:
    """A running `python -m examples.warehouse` process on a free port."""
    with running_warehouse(db_path, tmp_path / "logs") as running:
        yield running
