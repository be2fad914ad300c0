"""gunicorn server hooks for an app with an embedded agent: `gunicorn -c
python:rpc_agent.gunicorn app:app`, or import them into your own config module.

- `on_starting` / `on_reload`: the master makes the server's `instance_id` before it forks,
  so every worker answers the same one, and a new one at each start (or reload).
- `post_worker_init`: in each worker, SIGTERM begins the agent's shutdown at once (health
  503, held watches answered, SSE `RpcServerStop`) and reaches gunicorn's own handler after
  `FOREST_SHUTDOWN_DRAIN_SECONDS`; but a worker replaced by a reload only steps aside, as the
  server lives on. Long SSE streams tell the worker's watchdog they are alive, and a gthread
  worker holds watches on at most half its threads.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

from rpc_agent.process import state as server_process
from rpc_agent.process import stop_signal

logger = logging.getLogger(__name__)


def on_starting(server: Any) -> None:
    """Make the server's `instance_id` in the master, before any worker is forked."""
    instance_id = server_process.announce_instance_id()
    for agent in server_process.live_agents():  # an app loaded already: --preload
        agent.adopt_instance_id(instance_id)
    server.log.info("rpc_agent: server instance_id %s", instance_id)


def on_reload(server: Any) -> None:
    """A reload (SIGHUP) starts new workers on new code: a new `instance_id`."""
    on_starting(server)


def post_worker_init(worker: Any) -> None:
    """In each worker: graceful agent shutdown on SIGTERM, the SSE liveness heartbeat, and
    a watcher bound that leaves threads for the app."""
    server_process.set_worker_heartbeat(worker.notify)
    if isinstance(worker, ThreadWorker):
        for agent in server_process.live_agents():
            agent.cap_held_requests(worker.cfg.threads // 2)
    stop_signal.install((signal.SIGTERM,), stop_or_step_aside)


def stop_or_step_aside() -> float:
    """Begin the agents' shutdown, or, when a reload is replacing this worker, step aside;
    the seconds to keep serving before the worker stops."""
    agents = server_process.live_agents()
    if agents and all(server_process.replaced_by_a_newer_start(agent) for agent in agents):
        for agent in agents:
            agent.step_aside()
        return 0.0
    return stop_signal.begin_all_shutdowns()
