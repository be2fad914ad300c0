"""Begin the agents' shutdown on a server's stop signal, before the server's own handler
runs: health answers 503 and held watches and SSE streams end at once, the server keeps
serving for the drain, then the signal goes on to the server (uvicorn, a gunicorn worker)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType

from rpc_agent.process import state as server_process
from rpc_agent.process.state import ServedAgent

logger = logging.getLogger(__name__)

Handler = Callable[[int, FrameType | None], object] | int | None

# The signals that stop a server the agent runs under.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def shutdown_of(agent: ServedAgent) -> Callable[[], float]:
    """A `begin` for one agent: begins its shutdown and gives its drain; or, when a reload
    replaces this worker while the server lives on, steps aside at once."""

    def begin() -> float:
        if server_process.replaced_by_a_newer_start(agent):
            agent.step_aside()
            return 0.0
        agent.begin_shutdown()
        return agent.shutdown_drain_seconds

    return begin


def begin_all_shutdowns() -> float:
    """Begin the shutdown of every live agent in this process; their longest drain."""
    agents = server_process.live_agents()
    for agent in agents:
        agent.begin_shutdown()
    return max((agent.shutdown_drain_seconds for agent in agents), default=0.0)


class DrainingStopHandler:
    """A signal handler in front of the server's: the first signal begins the shutdown (on
    a thread, never inside the handler) and re-sends the signal after the drain; that one,
    or any later one, goes to the server's handler."""

    def __init__(self, signum: int, previous: Handler, begin: Callable[[], float]) -> None:
        self._signum = signum
        self._previous = previous
        self._begin = begin
        self._lock = threading.Lock()
        self._draining = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        with self._lock:
            first, self._draining = not self._draining, True
        if first:
            logger.info("received %s: shutting the agent down", signal.Signals(signum).name)
            threading.Thread(target=self._drain, name="rpc-agent-drain", daemon=True).start()
        else:
            self._pass_on(signum, frame)

    def _drain(self) -> None:
        drain_seconds = self._begin()
        threading.Event().wait(drain_seconds)
        os.kill(os.getpid(), self._signum)

    def _pass_on(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous
        if callable(previous):
            previous(signum, frame)
            return
        # The default action (or none): put it back and let the signal take it.
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        if previous != signal.SIG_IGN:
            signal.raise_signal(signum)


def install(
    signals: Iterable[int] = (signal.SIGTERM,),
    begin: Callable[[], float] = begin_all_shutdowns,
) -> bool:
    """Put a `DrainingStopHandler` in front of the current handler of each signal; False,
    doing nothing, off the main thread (where Python cannot set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        logger.debug("not on the main thread: the agent's shutdown waits for the server's")
        return False
    for signum in signals:
        previous = signal.getsignal(signum)
        signal.signal(signum, DrainingStopHandler(signum, previous, begin))
    return True
