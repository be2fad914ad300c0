"""`AgentRequestEvent`: how the agent answered one request on its routes, handed to hooks.

Hooks (metrics, say) are process-wide, set with `set_request_hooks`; they run on the thread
or event loop that answered, so they must be quick and must not block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from rpc_common.hooks import Hooks


@dataclass(frozen=True)
class AgentRequestEvent:
    """One answer of an agent route: the route (`health`, `rpc-schema`, `sse`) and status."""

    route: str
    status: int
    refusal: str | None = None  # the reason of a 401


RequestHook = Callable[[AgentRequestEvent], None]

request_hooks: Hooks[AgentRequestEvent] = Hooks(
    "request", "delayed the answer on the server's thread or event loop"
)


def set_request_hooks(hooks: Iterable[RequestHook]) -> None:
    """Hooks that every agent in the process calls after answering a request on its routes."""
    request_hooks.replace(hooks)


def get_request_hooks() -> tuple[RequestHook, ...]:
    """The process-wide hooks set by `set_request_hooks`."""
    return request_hooks.registered


def deliver(event: AgentRequestEvent) -> None:
    """Hand `event` to each hook; one that raises is logged, and the answer goes out."""
    request_hooks.deliver(event, f"the {event.route} route")
