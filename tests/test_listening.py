"""A taken port is one line naming host and port: the listening socket, the runner, waitress."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator

import pytest
from flask import Flask

from rpc_agent import AgentSettings, RpcAgent
from rpc_agent.servers import waitress
from rpc_agent.servers.listening import ListenError, listening_socket
from rpc_agent.servers.runner import serve_agent_until_signalled
from tests.support import TEST_SECRET


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def _flask_with_agent() -> tuple[Flask, RpcAgent]:
    app = Flask(__name__)
    agent = RpcAgent(
        app,
        settings=AgentSettings(auth_secret=TEST_SECRET),
        schema_provider=lambda: {"collections": [], "charts": []},
    )
    return app, agent


def _listen(port: int) -> None:
    listening_socket("127.0.0.1", port).close()


def _serve_on_runner(port: int) -> None:
    app, agent = _flask_with_agent()
    serve_agent_until_signalled(app, agent, "127.0.0.1", port)


def _serve_on_waitress(port: int) -> None:
    app, agent = _flask_with_agent()
    waitress.serve(app, agent=agent, host="127.0.0.1", port=port)


@pytest.mark.parametrize(
    "serve",
    [
        lambda port: listening_socket("127.0.0.1", port).close(),
        _serve_on_runner,
        _serve_on_waitress,
    ],
    ids=["socket", "runner", "waitress"],
)
def test_a_taken_port_is_a_listen_error_naming_host_and_port(
    taken_port: int, serve: Callable[[int], None]
) -> None:
    with pytest.raises(ListenError) as caught:
        serve(taken_port)

    assert str(caught.value) == f"cannot listen on 127.0.0.1:{taken_port}: Address already in use"
    assert caught.value.errno == errno.EADDRINUSE
    assert isinstance(caught.value, OSError)  # code that caught OSError still does
    assert caught.value.__suppress_context__
