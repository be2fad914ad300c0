"""docs/kubernetes.md's exec probes, run as kubelet runs them (the commands read from the doc,
`forest-rpc` from this environment): readiness fails on a stopping agent, liveness doesn't;
both fail on an agent that is gone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import TEST_SECRET, agent_app, closed_port, live_server
from tests.support.warehouse import REPO_ROOT

pytestmark = pytest.mark.slow

DOC = (REPO_ROOT / "docs" / "kubernetes.md").read_text(encoding="utf-8")
# kubelet's timeoutSeconds in the doc; doubled for a loaded machine's Python start-up.
PROBE_DEADLINE_S = 10.0


def _doc_command(probe: str) -> list[str]:
    """The exec command of the data server's `probe` (readinessProbe, livenessProbe)."""
    found = re.search(rf"{probe}:\n\s+exec:\n\s+command: (\[.*?\])\n\s+periodSeconds", DOC, re.S)
    assert found, f"no exec {probe} in docs/kubernetes.md"
    return list(json.loads(re.sub(r"\s*\n\s*", " ", found.group(1))))


def _kubelet_runs(command: list[str], port: int) -> int:
    """The exit code of `command` aimed at `port`, with the container's environment."""
    aimed = [part.replace("127.0.0.1:5001", f"127.0.0.1:{port}") for part in command]
    environment = {name: value for name, value in os.environ.items() if "FOREST_" not in name}
    environment["FOREST_AUTH_SECRET"] = TEST_SECRET
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
    done = subprocess.run(
        aimed, env=environment, capture_output=True, timeout=PROBE_DEADLINE_S, check=False
    )
    return done.returncode


def test_the_doc_has_both_probes_aimed_at_the_agent() -> None:
    for probe in ("readinessProbe", "livenessProbe"):
        assert "http://127.0.0.1:5001" in " ".join(_doc_command(probe))


def test_a_serving_agent_is_ready_and_alive() -> None:
    app, _ = agent_app()
    with live_server(app) as server:
        assert _kubelet_runs(_doc_command("readinessProbe"), server.port) == 0
        assert _kubelet_runs(_doc_command("livenessProbe"), server.port) == 0


def test_a_stopping_agent_is_not_ready_but_alive() -> None:
    app, agent = agent_app()
    with live_server(app) as server:
        agent.begin_shutdown()
        assert _kubelet_runs(_doc_command("readinessProbe"), server.port) != 0
        assert _kubelet_runs(_doc_command("livenessProbe"), server.port) == 0


def test_an_agent_that_is_gone_is_neither() -> None:
    port = closed_port()
    assert _kubelet_runs(_doc_command("readinessProbe"), port) != 0
    assert _kubelet_runs(_doc_command("livenessProbe"), port) != 0
