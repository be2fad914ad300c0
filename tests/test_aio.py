"""`AsyncHealthCheckClient` on the caller's loop against a real agent on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
import pytest

from rpc_datasource.aio import AsyncHealthCheckClient
from tests.support import HEALTH_PATH, TEST_SECRET, agent_app, closed_port, free_port, live_server

DEADLINE_S = 10.0


def test_outage_and_recovery_with_async_and_plain_callbacks() -> None:
    app, _ = agent_app()
    port = free_port()
    url = f"http://127.0.0.1:{port}{HEALTH_PATH}"
    recovered_on: list[str] = []

    async def scenario() -> list[str]:
        down = asyncio.Event()
        recovered = threading.Event()
        calls: list[str] = []

        async def on_down() -> None:
            calls.append("down")
            down.set()

        def on_recovered() -> None:  # a plain function: runs in a worker thread
            calls.append("recovered")
            recovered_on.append(threading.current_thread().name)
            recovered.set()

        async with AsyncHealthCheckClient(
            url,
            TEST_SECRET,
            polling_interval=0.05,
            failure_threshold=2,
            timeout=1.0,
            on_server_down=on_down,
            on_server_recovered=on_recovered,
        ) as client:
            await asyncio.wait_for(down.wait(), DEADLINE_S)
            assert client.stats().state == "down"
            assert client.stats().last_reason == "refused"
            with live_server(app, port=port):
                assert await asyncio.to_thread(recovered.wait, DEADLINE_S)
                assert client.stats().state == "up"
        assert client.closed
        return calls

    assert asyncio.run(scenario()) == ["down", "recovered"]
    assert recovered_on and recovered_on[0] != threading.main_thread().name


def test_a_given_session_is_used_and_left_open() -> None:
    app, _ = agent_app()

    async def scenario() -> None:
        with live_server(app) as server:
            async with aiohttp.ClientSession() as session:
                client = AsyncHealthCheckClient(
                    server.url + HEALTH_PATH, TEST_SECRET, polling_interval=0.05, session=session
                )
                await client.start()
                await client.start()  # idempotent
                for _ in range(200):
                    if client.stats().probes >= 3:
                        break
                    await asyncio.sleep(0.02)
                await client.stop()
                await client.start()  # a stopped client stays stopped
                assert client.stats().probes >= 3
                assert client.stats().state == "up"
                assert not session.closed

    asyncio.run(scenario())


def test_a_raising_callback_is_logged_and_watching_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> int:
        async def explode() -> None:
            raise RuntimeError("async callback exploded on purpose")

        async with AsyncHealthCheckClient(
            f"http://127.0.0.1:{closed_port()}{HEALTH_PATH}",
            TEST_SECRET,
            polling_interval=0.05,
            failure_threshold=1,
            on_server_down=explode,
        ) as client:
            for _ in range(200):
                if client.stats().probes >= 5 and "exploded" in caplog.text:
                    break
                await asyncio.sleep(0.02)
            return client.stats().probes

    assert asyncio.run(scenario()) >= 5
    assert "async callback exploded on purpose" in caplog.text
