"""What a scenario reports: summaries (percentiles; medians and spread over repeats), tables
in Markdown, verdict lines against a goal, the machine, and the whole as JSON."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` (0..1) percentile by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Summary:
    """The distribution of one measure over trials."""

    n: int
    median: float
    p95: float
    max: float
    min: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary:
        values = list(values)
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        return cls(
            len(values),
            statistics.median(values),
            percentile(values, 0.95),
            max(values),
            min(values),
        )


@dataclass(frozen=True)
class Spread:
    """One figure measured in several repeats: its median and its range."""

    median: float
    low: float
    high: float
    repeats: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        values = [value for value in values if not math.isnan(value)]
        if not values:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(statistics.median(values), min(values), max(values), len(values))

    def render(self, digits: int = 1, unit: str = "") -> str:
        """`12.3 [11.9, 12.8]`: the median and, over more than one repeat, the range."""
        if self.repeats == 0:
            return "n/a"
        median = f"{self.median:.{digits}f}{unit}"
        if self.repeats == 1 or self.low == self.high:
            return median
        return f"{median} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass(frozen=True)
class Verdict:
    """One goal and whether the figures met it (None: not judged in this run)."""

    goal: str
    passed: bool | None
    detail: str

    def line(self) -> str:
        mark = {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]
        return f"{mark}  {self.goal}: {self.detail}"


@dataclass
class Table:
    """A table for `docs/benchmarks.md`: a title, column names, rows of rendered cells."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(cell) for cell in cells])

    def markdown(self) -> str:
        lines = [
            f"**{self.title}**",
            "",
            "| " + " | ".join(self.columns) + " |",
            "|" + "---|" * len(self.columns),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_line(described: dict[str, Any]) -> str:
    return (
        f"{described['cores']} cores ({described['cpu']}), Python {described['python']}, "
        f"Linux {described['kernel']}, {described['date']}"
    )


@dataclass
class Report:
    """Everything one run of a scenario found."""

    scenario: str
    command: str
    tables: list[Table] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=machine)

    @property
    def passed(self) -> bool:
        return all(verdict.passed is not False for verdict in self.verdicts)

    def markdown(self) -> str:
        parts = [f"Machine: {machine_line(self.machine)}.", f"Command: `{self.command}`."]
        parts += [table.markdown() for table in self.tables]
        parts += ["\n".join(verdict.line() for verdict in self.verdicts)]
        return "\n\n".join(part for part in parts if part)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str, allow_nan=True)


def command_line(argv: Sequence[str] | None = None) -> str:
    """How this run was started, as the doc gives it."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m bench", *arguments])
