"""The API's one middleware: its checks in order before the handler, every error JSON."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from headcount.errors import UnknownSpaceError
from headcount.http.errors import JSON, NOT_FOUND, Check, guard

Client = TestClient[web.Request, web.Application]
#: What the checks and the handler saw, in order.
SEEN = web.AppKey("seen", list)


def refuse_when(flag: str, status: type[web.HTTPException], detail: str) -> Check:
    def check(request: web.Request) -> None:
        request.app[SEEN].append(flag)
        if flag in request.query:
            raise status(text=json.dumps({"detail": detail}), content_type=JSON)

    return check


async def handler(request: web.Request) -> web.Response:
    request.app[SEEN].append("handler")
    if "unknown" in request.query:
        raise UnknownSpaceError("Q")
    return web.json_response({"ok": True})


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    first = refuse_when("first", web.HTTPBadRequest, "the first check refused it")
    second = refuse_when("second", web.HTTPUnauthorized, "the second check refused it")
    app = web.Application(middlewares=[guard(first, second)])
    app[SEEN] = []
    app.router.add_get("/here", handler)
    return await aiohttp_client(app)


@pytest.mark.parametrize(
    ("query", "status", "detail", "seen"),
    [
        ("", 200, None, ["first", "second", "handler"]),
        ("first&second", 400, "the first check refused it", ["first"]),
        ("second", 401, "the second check refused it", ["first", "second"]),
        ("unknown", 404, NOT_FOUND, ["first", "second", "handler"]),
    ],
    ids=["let-in", "first-refuses", "second-refuses", "domain-error"],
)
async def test_checks_run_in_order_and_a_refusal_stops_the_request(
    client: Client, query: str, status: int, detail: str | None, seen: list[str]
) -> None:
    response = await client.get(f"/here?{query}")
    assert response.status == status
    assert response.content_type == JSON
    if detail is not None:
        assert await response.json() == {"detail": detail}
    assert client.app[SEEN] == seen


async def test_the_routers_own_errors_pass_the_checks_then_are_json(client: Client) -> None:
    missing = await client.get("/elsewhere")
    assert (missing.status, await missing.json()) == (404, {"detail": NOT_FOUND})
    wrong = await client.post("/here")
    assert wrong.status == 405
    assert await wrong.json() == {"detail": "Method POST is not allowed here; allowed: GET, HEAD."}
    assert client.app[SEEN] == ["first", "second"] * 2
