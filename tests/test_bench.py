"""The benchmark harness stays runnable: a smoke run of every scenario (seconds each), and
`bench/` never imports from the tests (the tests import its launcher instead)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import scenario_modules
from tests.support.warehouse import REPO_ROOT

SCENARIOS = sorted(scenario_modules())
SMOKE_DEADLINE_S = 90.0


def test_python_m_bench_lists_every_scenario() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=SMOKE_DEADLINE_S,
        check=True,
    )
    assert [line.split()[0] for line in done.stdout.splitlines()] == SCENARIOS


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_smoke_run_of_each_scenario_runs_to_its_report(scenario: str, tmp_path: Path) -> None:
    """The scenario runs, fills its tables and judges every goal. Whether a goal passes is the
    benchmark's business, not the suite's: a timing goal on a loaded test machine is not."""
    report_path = tmp_path / "report.json"
    env = {name: value for name, value in os.environ.items() if not name.startswith("FOREST_")}
    done = subprocess.run(
        [sys.executable, "-m", "bench", scenario, "--smoke", "--json", str(report_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SMOKE_DEADLINE_S,
        check=False,
    )
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["scenario"] == scenario
    assert report["tables"] and all(table["rows"] for table in report["tables"])
    assert report["verdicts"]
    assert all(verdict["passed"] in (True, False, None) for verdict in report["verdicts"])
    judged = "\n".join(
        line for line in done.stdout.splitlines() if line.startswith(("PASS", "FAIL"))
    )
    assert (done.returncode == 1) == ("FAIL" in judged), done.stdout[-3000:]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_file_of_bench_imports_from_the_tests() -> None:
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(
            name for name in _imported_modules(path) if name.split(".")[0] == "tests"
        )
        for path in (REPO_ROOT / "bench").rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}
