"""The token bucket that keeps refused requests from flooding the agent's log."""

from __future__ import annotations

import logging

import pytest
from werkzeug.test import Client

from rpc_agent import AgentSettings
from rpc_agent.wsgi import RpcAgentMiddleware
from rpc_common.log_limit import LogRateLimiter
from tests.support import TEST_SECRET


class Clock:
    """Seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_a_burst_goes_through_then_the_rest_is_counted() -> None:
    clock = Clock()
    limiter = LogRateLimiter(burst=3, per_second=1.0, clock=clock)
    assert [limiter.admit() for _ in range(5)] == [0, 0, 0, None, None]
    clock.advance(1.0)
    assert limiter.admit() == 2  # one line, saying two were dropped
    assert limiter.admit() is None


def test_the_bucket_refills_at_the_rate_up_to_the_burst() -> None:
    clock = Clock()
    limiter = LogRateLimiter(burst=2, per_second=0.5, clock=clock)
    assert [limiter.admit() for _ in range(2)] == [0, 0]
    clock.advance(1.0)
    assert limiter.admit() is None  # half a token
    clock.advance(1.0)
    assert limiter.admit() == 1
    clock.advance(100.0)
    assert [limiter.admit() for _ in range(3)] == [0, 0, None]


@pytest.mark.parametrize(("burst", "rate"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_a_bound_out_of_range_is_refused(burst: int, rate: float) -> None:
    with pytest.raises(ValueError, match="burst"):
        LogRateLimiter(burst=burst, per_second=rate)


def test_a_flood_of_unsigned_requests_logs_a_few_lines(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rpc_common import log_limit

    # The process's one bucket, fresh: other tests in this process may have drawn on it.
    monkeypatch.setattr(log_limit, "ANONYMOUS_CLIENT_LINES", LogRateLimiter(10, 1.0))
    middleware = RpcAgentMiddleware(
        lambda environ, start_response: [], AgentSettings(auth_secret=TEST_SECRET)
    )
    client = Client(middleware)
    with caplog.at_level(logging.WARNING, logger="rpc_agent.core.routes"):
        statuses = {client.get("/forest/health").status_code for _ in range(1000)}
    assert statuses == {401}
    lines = [record for record in caplog.records if record.name == "rpc_agent.core.routes"]
    assert 10 <= len(lines) <= 20, len(lines)
    assert all("missing_headers" in line.getMessage() for line in lines)


def test_clipped_bounds_what_a_peer_sent_and_says_how_long_it_was() -> None:
    from rpc_common.log_limit import clipped

    assert clipped("GET", 16) == "'GET'"
    assert clipped("G" * 70_000, 16) == "'GGGGGGGGGGGGGGGG'... (70000 characters)"


def test_a_servers_invalid_request_lines_share_the_anonymous_bucket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rpc_common import log_limit

    clock = Clock()
    monkeypatch.setattr(
        log_limit, "ANONYMOUS_CLIENT_LINES", LogRateLimiter(burst=2, per_second=1.0, clock=clock)
    )
    line_filter = log_limit.AnonymousLinesFilter(["Invalid HTTP request received."])

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.WARNING, "", 0, message, (), None)

    assert line_filter.filter(record("something else")) is True
    let_through = [line_filter.filter(record("Invalid HTTP request received.")) for _ in range(5)]
    assert let_through == [True, True, False, False, False]
    clock.now += 1.0
    later = record("Invalid HTTP request received.")
    assert line_filter.filter(later) is True
    assert later.getMessage().endswith("(3 more lines caused by clients not logged)")
