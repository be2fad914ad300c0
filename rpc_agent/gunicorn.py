"""gunicorn server hooks for an app with an embedded agent: `gunicorn -c
python:rpc_agent.gunicorn app:app`, or import them into your own config module.

- `on_starting` / `on_reload`: the master makes the server's `instance_id` before it forks,
  so every worker answers the same one, and a new one at each start (or reload).
- `post_worker_init`: in each worker, SIGTERM begins the agent's shutdown at once (health
  503, held watches answered, SSE `RpcServerStop`) and reaches gunicorn's own handler after
  `FOREST_SHUTDOWN_DRAIN_SECONDS`; long SSE streams tell the worker's watchdog they are alive.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from rpc_agent import server_process, stop_signal

logger = logging.getLogger(__name__)


def on_starting(server: Any) -> None:
    """Make the server's `instance_id` in the master, before any worker is forked."""
    instance_id = server_process.announce_instance_id()
    server.log.info("rpc_agent: server instance_id %s", instance_id)


def on_reload(server: Any) -> None:
    """A reload (SIGHUP) starts new workers on new code: a new `instance_id`."""
    on_starting(server)


def post_worker_init(worker: Any) -> None:
    """In each worker: graceful agent shutdown on SIGTERM, and the SSE liveness heartbeat."""
    server_process.set_worker_heartbeat(worker.notify)
    stop_signal.install((signal.SIGTERM,))
