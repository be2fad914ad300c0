"""The agent as WSGI middleware around a plain WSGI callable (no framework)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import requests
from werkzeug.serving import make_server
from werkzeug.test import Client

from rpc_agent.wsgi import RpcAgentMiddleware
from tests.support import signed, wait_until
from tests.support.wsgi_calls import (
    HEALTH,
    SCHEMA,
    SCHEMA_ROUTE,
    get_signed,
    wrapped,
)


@pytest.fixture
def client() -> Client:
    return Client(wrapped())


def test_health_is_answered_by_the_agent(client: Client) -> None:
    response = get_signed(client, HEALTH)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["status"] == "ok"
    assert response.headers["ETag"] and len(response.data) < 400
    assert "X-From" not in response.headers


def test_schema_and_its_conditional_answer(client: Client) -> None:
    response = get_signed(client, SCHEMA_ROUTE)
    assert response.status_code == 200
    assert response.get_json() == SCHEMA
    etag = response.headers["ETag"]
    assert get_signed(client, HEALTH).get_json()["schema_etag"] == etag
    again = get_signed(client, SCHEMA_ROUTE, **{"If-None-Match": etag})
    assert again.status_code == 304
    assert again.data == b""


@pytest.mark.parametrize(
    "path", ["/", "/products", "/forest", "/forest/unknown", "/forest/health/"]
)
def test_other_paths_reach_the_app_untouched(client: Client, path: str) -> None:
    response = client.post(path, data=b"payload")
    assert response.status_code == 200
    assert response.headers["X-From"] == "app"
    assert response.data == f"POST {path} payload".encode()


def test_agent_routes_need_a_signature(client: Client) -> None:
    response = client.get(HEALTH)
    assert response.status_code == 401
    assert response.get_json() == {"error": "Unauthorized", "reason": "missing_headers"}


def test_head_gets_the_headers_without_a_body(client: Client) -> None:
    response = client.head(HEALTH, headers=signed(HEALTH, method="HEAD"))
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) > 0
    assert response.data == b""


def test_another_method_is_a_405_json(client: Client) -> None:
    response = client.post(HEALTH, headers=signed(HEALTH, method="POST"))
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"
    assert response.get_json()["error"] == "method_not_allowed"


def test_a_body_over_the_cap_is_a_413_json(client: Client) -> None:
    response = client.get(HEALTH, data=b"x" * (64 * 1024 + 1), headers=signed(HEALTH))
    assert response.status_code == 413
    assert response.get_json()["error"] == "payload_too_large"


def test_a_signed_body_is_verified(client: Client) -> None:
    body = b'{"ping": 1}'
    headers = signed(HEALTH, body=body)
    assert client.get(HEALTH, data=body, headers=headers).status_code == 200
    assert client.get(HEALTH, data=b'{"ping": 2}', headers=headers).status_code == 401


def test_begin_shutdown_through_the_middleware_agent(client: Client) -> None:
    middleware = client.application
    assert isinstance(middleware, RpcAgentMiddleware)
    middleware.agent.begin_shutdown()
    response = get_signed(client, HEALTH)
    assert response.status_code == 503
    assert response.get_json()["status"] == "shutting_down"


def test_a_single_threaded_server_answers_a_watch_at_once(client: Client) -> None:
    # werkzeug's test client says wsgi.multithread False: holding would block the server.
    etag = get_signed(client, HEALTH).headers["ETag"]
    response = get_signed(client, f"{HEALTH}?wait=30", **{"If-None-Match": etag})
    assert response.status_code == 200
    assert response.headers["ETag"] == etag


@pytest.fixture
def served() -> Iterator[tuple[RpcAgentMiddleware, str]]:
    middleware = wrapped()
    server = make_server("127.0.0.1", 0, middleware, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield middleware, f"http://127.0.0.1:{server.server_port}"
    finally:
        middleware.agent.begin_shutdown()
        server.shutdown()
        thread.join()
        server.server_close()


def test_a_threaded_server_holds_a_watch_until_shutdown(
    served: tuple[RpcAgentMiddleware, str],
) -> None:
    middleware, url = served
    etag = requests.get(url + HEALTH, headers=signed(HEALTH), timeout=5).headers["ETag"]
    target = f"{HEALTH}?wait=30"
    answers: list[requests.Response] = []

    def watch() -> None:
        headers = {**signed(target), "If-None-Match": etag}
        answers.append(requests.get(url + target, headers=headers, timeout=35))

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert wait_until(lambda: middleware.agent.held_requests.held == 1, 5)
    assert not answers
    middleware.agent.begin_shutdown()
    watcher.join(5)
    assert [answer.status_code for answer in answers] == [503]
    assert requests.get(url + "/products", timeout=5).text == "GET /products "


def test_a_bare_question_mark_is_no_query(client: Client) -> None:
    # As in ASGI's scope and the clients' signed target: `/forest/health?` is `/forest/health`.
    response = client.get(
        HEALTH, headers=signed(HEALTH), environ_overrides={"RAW_URI": HEALTH + "?"}
    )
    assert response.status_code == 200


def test_held_watches_take_one_thread_at_most_of_a_pool_of_unknown_size() -> None:
    from rpc_agent.wsgi import hold_bound

    assert hold_bound({"SERVER_SOFTWARE": "SomeServer/1.0"}, capped_by_server=False) == 1
    assert hold_bound({}, capped_by_server=False) == 1
    # The server's glue gave its share (gunicorn gthread, waitress): the setting and the cap.
    assert hold_bound({"SERVER_SOFTWARE": "waitress"}, capped_by_server=True) is None
    # A thread per request: a held watch takes no thread from the app.
    assert hold_bound({"SERVER_SOFTWARE": "Werkzeug/3.1.3"}, capped_by_server=False) is None


def test_the_waitress_share_is_half_its_threads() -> None:
    from rpc_agent.servers.waitress import held_watch_share

    assert [held_watch_share(threads) for threads in (1, 2, 4, 16)] == [0, 1, 2, 8]
