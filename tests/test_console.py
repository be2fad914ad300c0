"""The servers' log lines reach stderr by default, and only when nothing else would show them.

Each case runs in a fresh interpreter: pytest's own log capture is a handler of the root
logger, so logging inside the test process is never "not configured".
"""

from __future__ import annotations

import subprocess
import sys

import pytest

SERVE_LINE = "import logging; logging.getLogger('rpc_agent.servers.runner').info('serving on X')"


def _stderr_of(script: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stderr


def test_with_no_logging_configured_the_agent_logs_info_to_stderr() -> None:
    stderr = _stderr_of(
        "from rpc_agent.servers.console import log_to_stderr_unless_configured\n"
        "log_to_stderr_unless_configured()\n"
        "log_to_stderr_unless_configured()\n"  # a second server in the process adds nothing
        f"{SERVE_LINE}\n"
    )

    lines = stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(" INFO rpc_agent.servers.runner: serving on X")


@pytest.mark.parametrize(
    "configured",
    [
        "logging.basicConfig(format='app: %(message)s', level='INFO')",
        "logging.getLogger('rpc_agent').setLevel('WARNING')",
    ],
    ids=["app-handler", "app-level"],
)
def test_an_application_that_configured_logging_keeps_its_own(configured: str) -> None:
    stderr = _stderr_of(
        "import logging\n"
        f"{configured}\n"
        "from rpc_agent.servers.console import log_to_stderr_unless_configured\n"
        "log_to_stderr_unless_configured()\n"
        f"{SERVE_LINE}\n"
    )

    assert stderr.splitlines() == (["app: serving on X"] if "INFO" in configured else [])


def test_without_the_servers_the_library_adds_no_handler() -> None:
    assert _stderr_of(f"import rpc_agent, rpc_agent.servers.runner\n{SERVE_LINE}\n") == ""
