"""The README's main command: the demo runs the whole story as real processes and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_tells_the_whole_story_and_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    story = [
        "warehouse up",
        "master connected: collections manufacturers, products",
        "warehouse killed",
        "outage detected in",
        "migration applied: products.weight_grams",
        "warehouse back up",
        "RECOVERED after",
        "SCHEMA RELOADED: +field products.weight_grams",
        "each event seen exactly once",
        "stopped cleanly",
        "demo passed",
    ]
    positions = [result.stdout.find(step) for step in story]
    assert all(position >= 0 for position in positions), result.stdout
    assert positions == sorted(positions), result.stdout
