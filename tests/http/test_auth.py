"""Bearer tokens on the API: who gets in, what they may do, what they are told, and that the
token never reaches a log line."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, TCPConnector, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from headcount.eventstore.store import EventStore
from headcount.http.auth import AUTH, OPEN_ALWAYS, Auth
from headcount.http.openapi import document
from headcount.http.server import make_runner
from headcount.http.tokens import Scope, Tokens, add_token
from tests.http.test_openapi import problems, response_schema
from tests.http.test_routes import service_app
from tests.http.test_server import send

Client = TestClient[web.Request, web.Application]

#: A concrete URL for every GET route, by its template.
URLS = {
    "/space/{space_id}/count": "/space/A/count",
    "/spaces": "/spaces",
    "/spaces/{space_id}": "/spaces/A",
    "/spaces/{space_id}/count": "/spaces/A/count?ts=2023-11-14T22:00:00Z",
    "/spaces/{space_id}/counts": (
        "/spaces/A/counts?start_time=2023-11-14T21:00:00Z&end_time=2023-11-14T22:00:00Z"
    ),
    "/counts": "/counts?space_id=A&start_time=2023-11-14T21:00:00Z&end_time=2023-11-14T22:00:00Z",
    "/dpus": "/dpus",
    "/dpus/{dpu_id}": "/dpus/283",
    "/dpus/{dpu_id}/health": "/dpus/283/health",
    "/healthz": "/healthz",
    "/metrics": "/metrics",
    "/openapi.json": "/openapi.json",
    "/spaces/{space_id}/events": "/spaces/A/events?start_time=2023-11-14T00:00:00Z"
    "&end_time=2023-11-15T00:00:00Z",
    "/spaces/{space_id}/resets": "/spaces/A/resets?start_time=2023-11-14T00:00:00Z"
    "&end_time=2023-11-15T00:00:00Z",
    "/live": "/live",
    "/live/sse": "/live/sse",
}
#: What a read token gets where it is not 200: a plain GET of the WebSocket route is no upgrade.
READ_STATUS = {"/live": 400}


async def write_here(request: web.Request) -> web.Response:
    """A route that changes something, as the API's POST routes will."""
    return web.json_response({"written": (await request.read()).decode()})


def secured_app(store: EventStore, tokens: Tokens, **auth: Any) -> web.Application:
    """The API with ``tokens`` required, and a POST route beside its GET routes."""
    app = service_app(store)
    app.router.add_post("/test-write", write_here)
    app.router.add_route("*", "/test-any", write_here)
    app[AUTH] = Auth(tokens, **auth)
    return app


class Keys:
    """A tokens file with a read and a write token; the tokens themselves."""

    def __init__(self, folder: Path) -> None:
        self.file = folder / "tokens.toml"
        self.read = add_token(self.file, "grafana", Scope.READ)
        self.write = add_token(self.file, "ops", Scope.WRITE)
        self.tokens = Tokens.load(self.file)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


@pytest.fixture
async def client(store: EventStore, keys: Keys, aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(secured_app(store, keys.tokens))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_test_urls_cover_every_route() -> None:
    assert set(URLS) == set(document()["paths"])


@pytest.mark.parametrize("template", sorted(set(URLS) - OPEN_ALWAYS))
async def test_every_route_but_healthz_needs_a_token(client: Client, template: str) -> None:
    response = await client.get(URLS[template])
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="headcount"'
    body = await response.json()
    assert body == {"detail": body["detail"]}
    assert "needs a token" in body["detail"]
    assert "Authorization: Bearer" in body["detail"]
    doc = document()
    assert problems(doc, response_schema(doc, template, 401), body) == []


async def test_healthz_needs_none(client: Client) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert (await response.json())["status"] == "ok"


@pytest.mark.parametrize("template", sorted(URLS))
async def test_a_read_token_reads_every_route(client: Client, keys: Keys, template: str) -> None:
    response = await client.get(URLS[template], headers=bearer(keys.read))
    assert response.status == READ_STATUS.get(template, 200), await response.text()
    response.close()  # /live/sse streams until the client leaves


async def test_a_read_token_cannot_post_a_write_token_can(client: Client, keys: Keys) -> None:
    refused = await client.post("/test-write", data=b"reset", headers=bearer(keys.read))
    assert refused.status == 403
    assert refused.headers["WWW-Authenticate"] == (
        'Bearer realm="headcount", error="insufficient_scope", scope="write"'
    )
    assert await refused.json() == {
        "detail": "Token 'grafana' has scope read; POST needs a token with scope write."
    }
    allowed = await client.post("/test-write", data=b"reset", headers=bearer(keys.write))
    assert allowed.status == 200
    assert await allowed.json() == {"written": "reset"}


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_every_method_but_get_and_head_needs_write(
    client: Client, keys: Keys, method: str
) -> None:
    """By method, whatever the route: routes added later are covered as they come."""
    refused = await client.request(method, "/test-any", headers=bearer(keys.read))
    assert refused.status == 403
    assert f"{method} needs a token with scope write" in (await refused.json())["detail"]
    let_in = await client.request(method, "/test-any", headers=bearer(keys.write))
    assert let_in.status == 200


@pytest.mark.parametrize("method", ["PUT", "TRACE"])
async def test_a_method_no_route_has_is_405_to_any_token(
    client: Client, keys: Keys, method: str
) -> None:
    """The scope decides what a route allows; a method the route lacks is the router's 405
    (the document's answer for an undeclared method), not a scope refusal."""
    for token in (keys.read, keys.write):
        answer = await client.request(method, "/spaces/A", headers=bearer(token))
        assert answer.status == 405


async def test_head_is_a_read(client: Client, keys: Keys) -> None:
    assert (await client.head("/spaces", headers=bearer(keys.read))).status == 200
    assert (await client.head("/spaces")).status == 401


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no-header"),
        pytest.param("Bearer", id="no-token"),
        pytest.param("Bearer   ", id="blank-token"),
        pytest.param("Basic Z3JhZmFuYTpwdw==", id="basic"),
    ],
)
async def test_no_bearer_token_is_a_401_saying_one_is_needed(
    client: Client, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await client.get("/spaces", headers=headers)
    assert response.status == 401
    assert "needs a token" in (await response.json())["detail"]


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("hc_not-a-token-of-this-service", id="unknown"),
        pytest.param("cut", id="short"),
        pytest.param("hc_é", id="not-ascii"),
    ],
)
async def test_a_wrong_token_is_a_401_saying_it_is_unknown(
    store: EventStore, keys: Keys, aiohttp_client: AiohttpClient, token: str
) -> None:
    client = await aiohttp_client(secured_app(store, keys.tokens))
    response = await client.get("/spaces", headers=bearer(token))
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="headcount", error="invalid_token"'
    )
    body = await response.json()
    assert "not one this service knows" in body["detail"]


async def test_a_token_of_another_file_or_a_near_miss_is_refused(
    client: Client, keys: Keys, tmp_path: Path
) -> None:
    other = add_token(tmp_path / "other.toml", "grafana", Scope.WRITE)
    for token in (other, keys.read[:-1], keys.read + "x", keys.read.upper()):
        assert (await client.get("/spaces", headers=bearer(token))).status == 401, token
    lower = {"Authorization": f"bearer {keys.read}"}  # the scheme is case-insensitive
    assert (await client.get("/spaces", headers=lower)).status == 200


async def test_metrics_may_be_left_open(
    store: EventStore, keys: Keys, aiohttp_client: AiohttpClient
) -> None:
    app = secured_app(store, keys.tokens, open_paths=OPEN_ALWAYS | {"/metrics"})
    client = await aiohttp_client(app)
    assert (await client.get("/metrics")).status == 200
    assert (await client.get("/spaces")).status == 401


async def test_without_auth_every_request_is_let_in(
    store: EventStore, aiohttp_client: AiohttpClient
) -> None:
    app = service_app(store)
    app.router.add_post("/test-write", write_here)
    client = await aiohttp_client(app)
    assert (await client.get("/spaces")).status == 200
    assert (await client.post("/test-write", data=b"x")).status == 200


# -- the token in no log --------------------------------------------------------------------


@pytest.fixture
async def served(store: EventStore, keys: Keys) -> AsyncIterator[str]:
    """The secured API on a real socket with aiohttp's access log on; yields its URL."""
    runner = make_runner(secured_app(store, keys.tokens), handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_no_token_reaches_a_log_line(
    served: str, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "hc_" + "w" * 43
    async with ClientSession(served) as session:
        for token, path, method, status in [
            (keys.read, "/spaces", "GET", 200),
            (keys.read, "/test-write", "POST", 403),
            (keys.write, "/test-write", "POST", 200),
            (keys.write, "/nowhere", "GET", 404),
            (wrong, "/spaces", "GET", 401),
        ]:
            async with session.request(method, path, headers=bearer(token)) as response:
                assert response.status == status
    access = [r for r in caplog.records if r.name == "aiohttp.access"]
    assert len(access) == 5  # the access log is on, one line per request
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "grafana" in logged  # the refusal names the token by its name
    for secret in (keys.read, keys.write, wrong):
        assert secret not in logged
        assert secret[3:20] not in logged


async def test_a_token_that_is_not_utf8_is_a_401_not_a_crash(
    served: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = int(served.rsplit(":", 1)[1])
    answer = await send(
        port,
        b"GET /spaces HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
        b"Authorization: Bearer \xff\xfe\r\n\r\n",
    )
    assert answer.status == 401
    assert "not one this service knows" in answer.json()["detail"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- a connection remembers its token -------------------------------------------------------


async def test_a_connection_remembers_its_token_but_checks_every_request(
    served: str, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On one kept-alive connection, a token that let a request in is not hashed again for
    the next requests that present it; any other header is checked in full, and the scope of
    the token remembered still counts."""
    hashed: list[str] = []
    find = Tokens.find

    def counting(tokens: Tokens, presented: str) -> Any:
        hashed.append(presented)
        return find(tokens, presented)

    monkeypatch.setattr(Tokens, "find", counting)
    near_miss = keys.read[:-1] + ("A" if keys.read[-1] != "A" else "B")
    async with (
        TCPConnector(limit=1) as one_connection,
        ClientSession(served, connector=one_connection, connector_owner=False) as session,
    ):
        for headers, method, path, status in [
            (bearer(keys.read), "GET", "/spaces", 200),
            (bearer(keys.read), "GET", "/spaces/A/count", 200),
            (bearer(keys.read), "POST", "/test-write", 403),
            (bearer(near_miss), "GET", "/spaces", 401),
            ({}, "GET", "/spaces", 401),
            (bearer(keys.read), "GET", "/spaces", 200),
            (bearer(keys.write), "POST", "/test-write", 200),
            (bearer(keys.read), "POST", "/test-write", 403),
        ]:
            async with session.request(method, path, headers=headers) as response:
                assert response.status == status, (headers, method, path)
                await response.read()
    assert hashed == [keys.read, near_miss, keys.write, keys.read]
