"""A real nginx on 127.0.0.1, run as a child process of the test, in front of real servers.

`running_nginx({"name": "<server block directives>", ...})` writes one config with a
`server` block per name, each listening on its own free 127.0.0.1 port, starts
`nginx -p DIR -c nginx.conf -g 'daemon off;'` (one worker), waits until every port accepts,
and on exit stops it (SIGQUIT: a graceful stop, then SIGKILL if it lingers) and reaps it.
Everything nginx writes (pid, logs, temp files) stays in its own temporary directory.
Nothing here imports pytest: failures are `NginxError`s quoting nginx's error log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support import free_port

NGINX_FALLBACK = Path("/usr/sbin/nginx")
DEBIAN_PACKAGE = "nginx-light"
READY_DEADLINE_S = 10.0
EXIT_DEADLINE_S = 5.0
START_ATTEMPTS = 3
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


class NginxError(AssertionError):
    """nginx is missing, or did not start or stop as expected (the message quotes its log)."""


def nginx_binary() -> str:
    """The nginx executable on PATH, else /usr/sbin/nginx (not on a non-root user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    if os.access(NGINX_FALLBACK, os.X_OK):
        return str(NGINX_FALLBACK)
    raise NginxError(
        f"nginx not found on PATH nor at {NGINX_FALLBACK}: install the Debian package "
        f"{DEBIAN_PACKAGE} (apt-get install {DEBIAN_PACKAGE}; scripts/system-packages does)"
    )


def render_config(directory: Path, servers: Mapping[str, tuple[int, str]]) -> str:
    """nginx.conf: one worker, every path inside `directory`, a server block per entry."""
    blocks = "\n".join(
        f"    server {{  # {name}\n"
        f"        listen 127.0.0.1:{port};\n"
        f"{textwrap.indent(textwrap.dedent(body).strip(), ' ' * 8)}\n"
        f"    }}"
        for name, (port, body) in servers.items()
    )
    temp_paths = "\n".join(
        f"    {kind}_temp_path {directory / (kind + '_temp')};" for kind in TEMP_PATHS
    )
    return (
        "worker_processes 1;\n"
        f"pid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} info;\n"
        "events {\n    worker_connections 128;\n}\n"
        "http {\n"
        f"    access_log {directory / 'access.log'};\n"
        f"{temp_paths}\n"
        f"{blocks}\n"
        "}\n"
    )


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Nginx:
    """One running nginx (master and worker) and its directory."""

    process: subprocess.Popen[bytes]
    directory: Path
    ports: dict[str, int]

    def port(self, name: str) -> int:
        return self.ports[name]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def _read(self, file_name: str) -> str:
        path = self.directory / file_name
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def error_log(self) -> str:
        """nginx's error log, and what it printed before it had opened that log."""
        return self._read("error.log") + self._read("nginx.out")

    def pid_written(self) -> bool:
        return self._read("nginx.pid").strip() == str(self.process.pid)

    def end(self) -> None:
        """SIGQUIT (graceful: open requests finish), SIGKILL after EXIT_DEADLINE_S; reap.
        The group (master and worker) is killed only while the master is unreaped."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(EXIT_DEADLINE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def start_nginx(directory: Path, servers: Mapping[str, str]) -> Nginx:
    """Write the config, start nginx, wait until every server's port accepts."""
    binary = nginx_binary()
    ports = {name: free_port() for name in servers}
    config = directory / "nginx.conf"
    config.write_text(render_config(directory, {n: (ports[n], b) for n, b in servers.items()}))
    with (directory / "nginx.out").open("wb") as output:
        process = subprocess.Popen(
            [
                binary,
                "-p",
                str(directory),
                "-c",
                str(config),
                "-e",
                str(directory / "error.log"),
                "-g",
                "daemon off;",
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    nginx = Nginx(process, directory, ports)
    deadline = time.monotonic() + READY_DEADLINE_S
    pause = threading.Event()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise NginxError(
                f"nginx exited with {process.returncode} before it listened; config:\n"
                f"{config.read_text()}\nerror log:\n{nginx.error_log()}"
            )
        # nginx writes its pid file only once it has bound every port (it retries a taken
        # one for ~2 s, then exits): before that, what accepts may be someone else.
        if nginx.pid_written() and all(accepts(port) for port in ports.values()):
            return nginx
        pause.wait(0.02)
    nginx.end()
    raise NginxError(
        f"nginx did not listen on {sorted(ports.values())} within {READY_DEADLINE_S} s; "
        f"error log:\n{nginx.error_log()}"
    )


@contextmanager
def running_nginx(servers: Mapping[str, str]) -> Iterator[Nginx]:
    """nginx with one server block per entry (name: the directives inside the block, without
    `listen`); retried on new ports when one was taken meanwhile; always stopped afterwards.

    Its own directory, not pytest's tmp_path: run as root, nginx's worker switches to the
    user `nobody`, which must reach the *_temp directories (nginx makes them and gives them
    to that user) through every parent, and pytest's base directory is private (0700). This
    one is traversable (0711) but not listable, and is removed on exit; failures quote the
    error log instead.
    """
    directory = Path(tempfile.mkdtemp(prefix="rpc-nginx-"))
    directory.chmod(0o711)
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                nginx = start_nginx(directory, servers)
                break
            except NginxError as error:
                in_use = "Address already in use" in str(error)
                if not in_use or attempt == START_ATTEMPTS:
                    raise
                for log in ("error.log", "nginx.out", "nginx.pid"):
                    (directory / log).unlink(missing_ok=True)
        try:
            yield nginx
        finally:
            nginx.end()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
