"""A gunicorn worker for apps with an embedded agent that face untrusted clients:
`gunicorn -c python:rpc_agent.gunicorn -k rpc_agent.servers.uvicorn_worker.UvicornWorker ...`.

It is the `uvicorn-worker` package's ASGI worker with the runner's guards: the httptools
parser with a header-count cap and a deadline for a request's headers, the open files limit
raised, and uvicorn's invalid-request warnings rate-limited. A WSGI app (Flask, Django) runs
on it through `rpc_agent.servers.runner.asgi_app(app, agent)`.
"""

from __future__ import annotations

from typing import Any

from uvicorn_worker import UvicornWorker as PlainUvicornWorker

from rpc_agent.servers.http_protocol import GuardedHttpToolsProtocol
from rpc_agent.servers.runner import KEEP_ALIVE_S, quiet_invalid_requests, raise_open_files_limit


class UvicornWorker(PlainUvicornWorker):  # type: ignore[misc]
    """uvicorn-worker's worker on the guarded httptools protocol."""

    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 - the base class's own convention
        "loop": "auto",
        "http": GuardedHttpToolsProtocol,
        "timeout_keep_alive": KEEP_ALIVE_S,
    }

    def init_process(self) -> None:
        raise_open_files_limit()
        quiet_invalid_requests()
        super().init_process()
