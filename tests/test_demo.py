"""The README's main command: the demo runs the whole story as real processes and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("server", "module"), [("flask", "examples.warehouse"), ("asgi", "examples.warehouse_asgi")]
)
def test_demo_tells_the_whole_story_and_exits_zero(server: str, module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.demo", "--server", server],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    story = [f"warehouse ({module}) up"]
    for mode, column in (("poll", "weight_grams"), ("watch", "color")):
        story += [
            f"[{mode}] master connected: collections manufacturers, products",
            f"[{mode}] warehouse stopping gracefully (SIGTERM)",
            f"[{mode}] graceful stop detected in",
            f"[{mode}] warehouse restarted",
            f"[{mode}] master: RECOVERED after",
            f"[{mode}] warehouse killed (SIGKILL)",
            f"[{mode}] outage detected in",
            f"[{mode}] master /status: 503, state down",
            f"[{mode}] master /metrics: agent_up 0; probe_failures_total{{reason=refused}}",
            f"[{mode}] migration applied: products.{column}",
            f"[{mode}] warehouse back up",
            f"[{mode}] master: SCHEMA RELOADED: +field products.{column}",
            f"[{mode}] master /metrics: agent_up 1; state_transitions_total{{state=up}} 3; "
            "state_transitions_total{state=down} 2; schema_reloads_total 1",
            f"[{mode}] each event seen exactly once per outage",
        ]
    story += ["time from the stop to the master's DOWN line", "stopped cleanly", "demo passed"]
    positions = [result.stdout.find(step) for step in story]
    assert all(position >= 0 for position in positions), result.stdout
    assert positions == sorted(positions), result.stdout
