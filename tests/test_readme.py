"""Every Python block of the README runs as written (tests/support/readme.py says how)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import TEST_SECRET, running_process
from tests.support.readme import ReadmeExample, readme_examples
from tests.support.warehouse import REPO_ROOT, running_warehouse

README = REPO_ROOT / "README.md"
EXAMPLES = readme_examples(README.read_text(encoding="utf-8"))
RUN_DEADLINE_S = 60.0


def _environment() -> dict[str, str]:
    """A user's shell: the secret exported, nothing else of ours set, the checkout importable."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("FOREST_")}
    env["FOREST_AUTH_SECRET"] = TEST_SECRET
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def _run(example: ReadmeExample, directory: Path, port: int | None = None) -> None:
    script = directory / f"readme_line_{example.line}.py"
    script.write_text(example.script(port), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, script.name],
        cwd=directory,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=RUN_DEADLINE_S,
        check=False,
    )
    assert done.returncode == 0, f"README line {example.line}:\n{script.read_text()}\n{done.stderr}"


def _serve_and_stop(example: ReadmeExample, directory: Path) -> None:
    script = directory / f"readme_line_{example.line}.py"
    script.write_text(example.script(port=0), encoding="utf-8")  # it says where it serves
    command = [sys.executable, str(script)]
    with running_process(command, _environment(), directory / "served.log") as (process, _):
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=RUN_DEADLINE_S) == 0, (directory / "served.log").read_text()


def test_the_readme_has_python_examples() -> None:
    assert len(EXAMPLES) >= 10


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=[f"line-{each.line}" for each in EXAMPLES])
def test_a_readme_example_runs(example: ReadmeExample, tmp_path: Path) -> None:
    if example.serves_port is not None:
        _serve_and_stop(example, tmp_path)
    elif example.agent_port is not None:
        with running_warehouse(tmp_path / "warehouse.db", tmp_path / "logs") as agent:
            _run(example, tmp_path, port=agent.port)
    else:
        _run(example, tmp_path)
