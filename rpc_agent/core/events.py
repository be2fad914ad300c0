"""`AgentRequestEvent`: how the agent answered one request on its routes, handed to hooks.

Hooks (metrics, say) are process-wide, set with `set_request_hooks`; they run on the thread
or event loop that answered, so they must be quick and must not block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentRequestEvent:
    """One answer of an agent route: the route (`health`, `rpc-schema`, `sse`) and status."""

    route: str
    status: int
    refusal: str | None = None  # the reason of a 401


RequestHook = Callable[[AgentRequestEvent], None]

_hooks: tuple[RequestHook, ...] = ()


def set_request_hooks(hooks: Iterable[RequestHook]) -> None:
    """Hooks that every agent in the process calls after answering a request on its routes."""
    global _hooks
    _hooks = tuple(hooks)


def get_request_hooks() -> tuple[RequestHook, ...]:
    """The process-wide hooks set by `set_request_hooks`."""
    return _hooks


def deliver(event: AgentRequestEvent) -> None:
    """Hand `event` to each hook; one that raises is logged, and the answer goes out."""
    for hook in _hooks:
        try:
            hook(event)
        except Exception:
            logger.exception("request hook %r raised on %s; carrying on", hook, event)
