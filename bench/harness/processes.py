"""What a process (and its children) holds, read from /proc: threads, sockets, memory; and
how much CPU this process has used."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Footprint:
    """What some processes hold at one moment."""

    processes: int
    threads: int
    sockets: int
    rss_bytes: int

    def __add__(self, other: Footprint) -> Footprint:
        return Footprint(
            self.processes + other.processes,
            self.threads + other.threads,
            self.sockets + other.sockets,
            self.rss_bytes + other.rss_bytes,
        )


EMPTY = Footprint(0, 0, 0, 0)


def footprint(pid: int) -> Footprint:
    """Threads, sockets and resident memory of one process (EMPTY if it is gone)."""
    proc = Path("/proc") / str(pid)
    try:
        status = dict(
            line.split(":", 1) for line in (proc / "status").read_text().splitlines() if ":" in line
        )
        threads = int(status["Threads"].strip())
        rss_bytes = int(status.get("VmRSS", "0 kB").split()[0]) * 1024
        sockets = 0
        for entry in (proc / "fd").iterdir():
            try:
                sockets += os.readlink(entry).startswith("socket:")
            except OSError:
                continue
    except (OSError, KeyError, ValueError):
        return EMPTY
    return Footprint(1, threads, sockets, rss_bytes)


def footprint_of(pids: list[int]) -> Footprint:
    """The sum over `pids` (a server's master and its workers)."""
    total = EMPTY
    for pid in pids:
        total = total + footprint(pid)
    return total


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
