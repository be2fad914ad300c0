"""The log lines of probe and schema events: hooks like any other.

An operator can grep them by level: one WARNING per outage (DOWN), one INFO per recovery,
per agent restart and per schema reload; each failed probe only at DEBUG.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from rpc_datasource.health.events import ProbeEvent, SchemaEvent, SchemaOutcome

logger = logging.getLogger(__name__)


class ProbeLog:
    """One client's probe events as log lines; remembers when the outage began."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._first_failure_at: float | None = None

    def __call__(self, event: ProbeEvent) -> None:
        result = event.result
        if not result.succeeded and event.consecutive_failures == 1:
            self._first_failure_at = self._clock()
        if event.went_down:
            logger.warning(
                "%s DOWN after %d failed probe(s) [%s]: %s",
                event.client,
                event.consecutive_failures,
                event.reason,
                result.cause,
            )
        elif not result.succeeded:
            logger.debug(
                "%s probe failed (%d in a row) [%s]: %s",
                event.client,
                event.consecutive_failures,
                event.reason,
                result.cause,
            )
        if event.recovered:
            began = self._first_failure_at
            length = f" after a {self._clock() - began:.1f} s outage" if began is not None else ""
            logger.info("%s RECOVERED%s", event.client, length)
        if event.restarted:
            logger.info("%s restarted: new instance_id %s", event.client, result.instance_id)


class SchemaLog:
    """One datasource's schema events as log lines: one WARNING per run of failed reads."""

    def __init__(self) -> None:
        self._failing = False

    def __call__(self, event: SchemaEvent) -> None:
        if event.outcome is SchemaOutcome.FAILED:
            level = logging.DEBUG if self._failing else logging.WARNING
            self._failing = True
            logger.log(level, "%s; will ask again at the next successful probe", event.error)
            return
        self._failing = False
        if event.outcome is SchemaOutcome.RELOADED:
            logger.info("%s SCHEMA RELOADED: %s (ETag %s)", event.client, event.change, event.etag)
        else:
            logger.debug("%s schema %s (ETag %s)", event.client, event.outcome, event.etag)
