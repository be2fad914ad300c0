"""One log line per datasource event: down (cause, probes), recovered (outage), schema reloaded."""

from __future__ import annotations

import copy
import logging
from typing import Any

from rpc_datasource import RpcDatasource
from rpc_datasource.schema_diff import diff_schemas

logger = logging.getLogger("examples.master")


class DatasourceEventLog:
    """Callbacks for one datasource that log what happened, with the figures an operator needs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._datasource: RpcDatasource | None = None
        self._schema: dict[str, Any] = {}

    def attach(self, datasource: RpcDatasource) -> None:
        """Start reporting on `datasource` (built with this object's callbacks)."""
        self._datasource = datasource
        self._schema = copy.deepcopy(datasource.schema)
        names = ", ".join(collection["name"] for collection in datasource.collections)
        logger.info(
            "%s connected: collections %s (schema ETag %s; outages detected within %.1f s)",
            self.name,
            names or "(none)",
            datasource.schema_etag,
            datasource.health.detection_bound_s,
        )

    def on_server_down(self) -> None:
        if self._datasource is None:
            logger.warning("%s DOWN", self.name)
            return
        stats = self._datasource.health.stats()
        logger.warning(
            "%s DOWN after %d failed probe(s): %s",
            self.name,
            stats.outage_probes,
            stats.last_error,
        )

    def on_server_recovered(self) -> None:
        outage = self._datasource.health.stats().last_outage_s if self._datasource else None
        length = f" after a {outage:.1f} s outage" if outage is not None else ""
        logger.warning("%s RECOVERED%s", self.name, length)

    def on_schema_change(self, schema: dict[str, Any]) -> None:
        change = diff_schemas(self._schema, schema).describe()
        self._schema = copy.deepcopy(schema)
        etag = self._datasource.schema_etag if self._datasource else None
        logger.warning("%s SCHEMA RELOADED: %s (ETag %s)", self.name, change, etag)
