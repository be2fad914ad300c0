"""A child process whose output lines are collected with their arrival time, for the demo."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OutputLine:
    """One line a child printed and when (monotonic) the demo read it."""

    at: float
    text: str


class ChildProcess:
    """Runs `python -m MODULE ...`, reading its merged stdout/stderr on a thread."""

    def __init__(self, name: str, module: str, args: list[str], env: Mapping[str, str]) -> None:
        self.name = name
        self.lines: list[OutputLine] = []
        self._changed = threading.Condition()
        self._process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=Path(__file__).resolve().parents[2],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name=f"{name}-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for text in self._process.stdout:
            with self._changed:
                self.lines.append(OutputLine(time.monotonic(), text.rstrip("\n")))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, pattern: str, timeout: float, after: float = 0.0) -> OutputLine | None:
        """The first line read after `after` that matches `pattern`, waiting up to `timeout`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if line.at >= after and regex.search(line.text):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (
                    self._process.poll() is not None and not self._reader.is_alive()
                ):
                    return None
                self._changed.wait(remaining)

    def count_lines(self, pattern: str) -> int:
        """How many lines so far match `pattern`."""
        regex = re.compile(pattern)
        with self._changed:
            return sum(1 for line in self.lines if regex.search(line.text))

    def tail(self, count: int = 15) -> list[str]:
        with self._changed:
            return [line.text for line in self.lines[-count:]]

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def kill_hard(self) -> None:
        """SIGKILL: a crash, with no chance to say goodbye."""
        self._process.kill()
        self._process.wait()
        self._reader.join()

    def terminate(self) -> None:
        """SIGTERM, without waiting: a graceful stop under way."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 15.0) -> int | None:
        """The exit code, or None if it had to be killed after `timeout` seconds."""
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            self._reader.join()
            return None
        self._reader.join()
        return self._process.returncode

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; the exit code, or None if it had to be killed."""
        self.terminate()
        return self.wait(timeout)
