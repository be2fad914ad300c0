"""The log lines of probe events: a probe hook like any other."""

from __future__ import annotations

import logging

from rpc_datasource.events import ProbeEvent

logger = logging.getLogger(__name__)


def log_probe_event(event: ProbeEvent) -> None:
    """One WARNING per down, one per recovery, INFO per failed probe and per agent restart."""
    result = event.result
    if event.went_down:
        logger.warning(
            "%s is down after %d failed probe(s) [%s]: %s",
            event.client,
            event.consecutive_failures,
            event.reason,
            result.cause,
        )
    elif not result.succeeded:
        logger.info(
            "%s probe failed (%d in a row) [%s]: %s",
            event.client,
            event.consecutive_failures,
            event.reason,
            result.cause,
        )
    if event.recovered:
        logger.warning("%s recovered", event.client)
    if event.restarted:
        logger.info("%s restarted (instance_id %s)", event.client, result.instance_id)
