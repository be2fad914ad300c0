"""When the datasource must re-read the schema, decided from probe events (pure)."""

from __future__ import annotations

from rpc_datasource.events import ProbeEvent
from rpc_datasource.health_state import HealthState


class SchemaRefreshDecision:
    """Tracks the loaded schema's ETag and says which successful probes call for a fetch.

    A fetch is due after a recovery, when the agent's `schema_etag` differs from the loaded
    one, when a restart (new `instance_id`) shows no `schema_etag` to compare, and again
    after a fetch that failed. A restart whose `schema_etag` is the loaded one needs none.
    """

    def __init__(self, loaded_etag: str | None) -> None:
        self.loaded_etag = loaded_etag
        self.retry_pending = False
        self._asked_for: str | None = None

    def wants_fetch(self, event: ProbeEvent) -> bool:
        """Whether this probe event calls for a schema fetch."""
        if not event.result.succeeded or event.state_after is not HealthState.UP:
            return False
        advertised = event.result.schema_etag
        wanted = (
            (advertised is not None and advertised != self.loaded_etag)
            or self.retry_pending
            or event.recovered
            or (event.restarted and advertised is None)
        )
        if wanted:
            self._asked_for = advertised
        return wanted

    def fetched(self, etag: str | None) -> None:
        """A fetch ended with the agent's schema at `etag` (200 or 304).

        An answer without an ETag is taken to be the one health advertised when the fetch
        was asked for, so an agent that leaves the header out is not fetched at every probe.
        """
        self.loaded_etag = etag or self._asked_for or self.loaded_etag
        self.retry_pending = False

    def ask_again(self) -> None:
        """A fetch failed, or one was due while another ran: fetch at the next success."""
        self.retry_pending = True
