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
            f"[{mode}] database made unavailable",
            f"[{mode}] database outage seen as not ready: DOWN after 3 failed probe(s) "
            "[not_ready]: HTTP 503: agent not ready (database: unable to open database file)",
            f"[{mode}] master /status: 503, failing checks database",
            f"[{mode}] database back",
            f"[{mode}] master: RECOVERED after",
            f"[{mode}] master /metrics: agent_up 1; state_transitions_total{{state=up}} 4; "
            "state_transitions_total{state=down} 3; schema_reloads_total 1",
            f"[{mode}] each event seen exactly once per outage",
        ]
    story += ["time from the stop to the master's DOWN line", "stopped cleanly", "demo passed"]
    # Each step after the one before (a step may be told twice, as RECOVERED is).
    position = 0
    for step in story:
        found = result.stdout.find(step, position)
        assert found >= 0, f"{step!r} missing after position {position}:\n{result.stdout}"
        position = found + len(step)
