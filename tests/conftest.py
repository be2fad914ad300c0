"""Suite-wide guards: no FOREST_* setting of the caller leaks in, no library thread leaks out."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import library_threads, wait_until


@pytest.fixture(autouse=True)
def _no_forest_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings are given in code or set by the test: no FOREST_* variable of the caller
    may leak in."""
    for name in list(os.environ):
        if name.upper().startswith("FOREST_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _no_library_thread_left() -> Iterator[None]:
    """Every client and datasource is closed by the end of its test: none of the library's
    threads (rpc-health*, rpc-sse*) survives it."""
    yield
    assert wait_until(lambda: not library_threads(), 5.0), (
        f"library threads still alive: {library_threads()}"
    )
