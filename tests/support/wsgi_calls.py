"""Calling the WSGI middleware in-process: a wrapped app and signed requests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.test import Client, TestResponse

from rpc_agent import AgentSettings
from rpc_agent.wsgi import RpcAgentMiddleware
from tests.support import TEST_SECRET, signed

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

SCHEMA = {"collections": [{"name": "products", "fields": []}], "charts": []}


HEALTH = "/forest/health"


SCHEMA_ROUTE = "/forest/rpc-schema"


def plain_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    echo = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']} {body.decode()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-From", "app")])
    return [echo]


def wrapped(**settings: Any) -> RpcAgentMiddleware:
    options: dict[str, Any] = {"auth_secret": TEST_SECRET, **settings}
    return RpcAgentMiddleware(plain_app, AgentSettings(**options), lambda: SCHEMA)


def get_signed(client: Client, target: str, **headers: str) -> TestResponse:
    return client.get(target, headers={**signed(target), **headers})
