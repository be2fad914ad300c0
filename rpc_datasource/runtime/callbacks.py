"""Running the application's callbacks: off the event loop, in order per client, never fatal."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor


def call_logged(
    logger: logging.Logger, what: str, callback: Callable[..., object] | None, *args: object
) -> bool:
    """Call `callback(*args)` if there is one; False, with the traceback logged, if it raised.

    `SystemExit` and `KeyboardInterrupt` are contained too (logged at ERROR): raised on one of
    the library's worker threads, they could not stop the process, only the callbacks.
    """
    if callback is None:
        return True
    try:
        callback(*args)
    except Exception:
        logger.exception("%s raised; carrying on", what)
        return False
    except (SystemExit, KeyboardInterrupt) as error:
        logger.error(
            "%s raised %s on a worker thread: contained, carrying on",
            what,
            type(error).__name__,
            exc_info=True,
        )
        return False
    return True


class OrderedCallbacks:
    """One client's callbacks, run one at a time in the order asked, on a shared executor.

    A slow callback delays only the later callbacks of its own client. After `close()` no
    callback starts; one already running is left to finish (nothing ever waits for it).
    """

    def __init__(self, logger: logging.Logger, name: str) -> None:
        self._logger = logger
        self._name = name
        self._lock = threading.Lock()
        self._pending: deque[tuple[str, Callable[..., object], tuple[object, ...]]] = deque()
        self._draining = False
        self._closed = False

    def submit(
        self, executor: Executor, what: str, callback: Callable[..., object] | None, *args: object
    ) -> None:
        """Queue `callback(*args)`; `what` names it in the log if it raises."""
        if callback is None:
            return
        with self._lock:
            if self._closed:
                return
            self._pending.append((what, callback, args))
            if self._draining:
                return
            self._draining = True
        try:
            executor.submit(self._drain)
        except RuntimeError:  # the executor was shut down: the client is stopping
            with self._lock:
                self._draining = False
                self._pending.clear()

    def close(self) -> None:
        """Drop what has not started; nothing starts from now on."""
        with self._lock:
            self._closed = True
            self._pending.clear()

    def _drain(self) -> None:
        while True:
            with self._lock:
                if self._closed or not self._pending:
                    self._draining = False
                    return
                what, callback, args = self._pending.popleft()
            call_logged(self._logger, f"{what} callback for {self._name}", callback, *args)
