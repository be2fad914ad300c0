"""The count of this process's probes awaiting their answer, for the metrics."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class InFlightCount:
    """How many probes of this process await their answer, on any loop (for metrics)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    @property
    def value(self) -> int:
        return self._count

    @contextmanager
    def counting(self) -> Iterator[None]:
        with self._lock:
            self._count += 1
        try:
            yield
        finally:
            with self._lock:
                self._count -= 1


probes_in_flight = InFlightCount()
