"""When the datasource must re-read the schema, decided from probe events (pure)."""

from __future__ import annotations

from rpc_datasource.health.events import ProbeEvent
from rpc_datasource.health.state import HealthState


class SchemaRefreshDecision:
    """Tracks the loaded schema's ETag and says which successful probes call for a fetch.

    A fetch is due after a recovery, when the agent's `schema_etag` differs from the loaded
    one, when a restart (new `instance_id`) shows no `schema_etag` to compare, and again
    after a fetch that failed. A restart whose `schema_etag` is the loaded one needs none.

    Workers that disagree: when one `instance_id` advertises a `schema_etag` it had already
    advertised before another one (A, B, A: workers of one server serving two schemas),
    `disagreeing` names the two ETags, and from then on a changed ETag is fetched at most
    once per `min_fetch_gap_s` (the polling interval) under that `instance_id`. A recovery,
    a restart or a new `instance_id` is fetched at once, as ever.
    """

    def __init__(self, loaded_etag: str | None, min_fetch_gap_s: float = 0.0) -> None:
        self.loaded_etag = loaded_etag
        self.retry_pending = False
        self.min_fetch_gap_s = min_fetch_gap_s
        self.disagreeing: tuple[str, str] | None = None
        self._asked_for: str | None = None
        self._instance_id: str | None = None
        self._advertised: list[str] = []  # this instance's ETags, in the order last seen
        self._last_fetch_at: float | None = None

    def wants_fetch(self, event: ProbeEvent, now: float = 0.0) -> bool:
        """Whether this probe event (seen at `now`, on any monotonic clock) calls for a
        schema fetch."""
        if not event.result.succeeded or event.state_after is not HealthState.UP:
            return False
        advertised = event.result.schema_etag
        self._track(event.result.instance_id, advertised)
        wanted = (
            (advertised is not None and advertised != self.loaded_etag)
            or self.retry_pending
            or event.recovered
            or (event.restarted and advertised is None)
        )
        if wanted and self._held_back(event, now):
            return False
        if wanted:
            self._asked_for = advertised
            self._last_fetch_at = now
        return wanted

    def _track(self, instance_id: str | None, advertised: str | None) -> None:
        if instance_id != self._instance_id:
            self._instance_id, self._advertised, self.disagreeing = instance_id, [], None
        if advertised is None:
            return
        previous = self._advertised[-1] if self._advertised else None
        if previous is not None and advertised != previous and advertised in self._advertised:
            self.disagreeing = (previous, advertised)
        if advertised in self._advertised:
            self._advertised.remove(advertised)
        self._advertised.append(advertised)

    def _held_back(self, event: ProbeEvent, now: float) -> bool:
        """While workers disagree, a fetch for a moved ETag waits out the gap."""
        if self.disagreeing is None or event.recovered or event.restarted:
            return False
        last = self._last_fetch_at
        return last is not None and now - last < self.min_fetch_gap_s

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
