"""What one server process shares across its agents: the server's `instance_id`, the live
agents a server hook stops, and the worker's liveness heartbeat."""

from __future__ import annotations

import mmap
import os
import re
import threading
import uuid
import weakref
from collections.abc import Callable
from typing import Protocol


class ServedAgent(Protocol):
    """What a server hook needs of an agent to stop it (an `ServedAgent`)."""

    @property
    def instance_id(self) -> str: ...

    @property
    def shutdown_drain_seconds(self) -> float: ...

    def begin_shutdown(self) -> None: ...

    def step_aside(self) -> None: ...

    def adopt_instance_id(self, instance_id: str) -> None: ...

    def cap_held_requests(self, most: int) -> None: ...


# Set by a server's master process (the gunicorn hooks) before it forks its workers, so that
# every worker's agent answers the same `instance_id`. Not a setting: a hand-off.
INSTANCE_ID_ENV = "FOREST_INSTANCE_ID"
_INSTANCE_ID_SHAPE = re.compile(r"[0-9a-f]{32}")

# The latest announced id, in memory the master shares with the workers it forks: a worker
# told to stop sees whether the server lives on under a newer id (a reload replacing it).
_latest_announced = mmap.mmap(-1, 32)
_live_agents: weakref.WeakSet[ServedAgent] = weakref.WeakSet()
_lock = threading.Lock()
_heartbeat: Callable[[], None] | None = None


def new_instance_id() -> str:
    """A random id for one start of a server."""
    return uuid.uuid4().hex


def announce_instance_id() -> str:
    """Make a new server `instance_id` that agents created later in this process and its
    children (forked workers) answer; called by a server's master at each start."""
    instance_id = new_instance_id()
    os.environ[INSTANCE_ID_ENV] = instance_id
    _latest_announced[:] = instance_id.encode()
    return instance_id


def replaced_by_a_newer_start(agent: ServedAgent) -> bool:
    """Whether the server announced a newer `instance_id` than this agent's since it was
    forked: its workers are being replaced (a reload), not the server stopped."""
    latest = _latest_announced[:].decode()
    return bool(_INSTANCE_ID_SHAPE.fullmatch(latest)) and latest != agent.instance_id


def server_instance_id() -> str:
    """The server's announced `instance_id`, or a new one when no server announced one."""
    announced = os.environ.get(INSTANCE_ID_ENV, "")
    return announced if _INSTANCE_ID_SHAPE.fullmatch(announced) else new_instance_id()


def register_agent(agent: ServedAgent) -> None:
    """Record a live agent, so that a server hook can begin its shutdown."""
    with _lock:
        _live_agents.add(agent)


def live_agents() -> list[ServedAgent]:
    """The agents alive in this process."""
    with _lock:
        return list(_live_agents)


def set_worker_heartbeat(heartbeat: Callable[[], None] | None) -> None:
    """A call that tells the server this worker is alive (gunicorn's `worker.notify`): long
    SSE streams make it at each heartbeat, so a sync worker is not killed at `--timeout`."""
    global _heartbeat
    _heartbeat = heartbeat


def worker_heartbeat() -> None:
    """Tell the server this worker is alive, when it asked to be told."""
    heartbeat = _heartbeat
    if heartbeat is not None:
        heartbeat()
