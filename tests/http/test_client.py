"""The service client against the real HTTP API: live counts, and every failure one
:class:`ServiceError` naming the service."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from headcount.eventstore.store import EventStore
from headcount.http.auth import AUTH, Auth
from headcount.http.client import ServiceClient, ServiceError
from headcount.http.tokens import Scope, Tokens, add_token
from headcount.ingest.broker import free_port
from tests.http.test_routes import MORNING, service_app, start


async def test_live_counts_of_every_space_and_of_one(
    store: EventStore, aiohttp_client: AiohttpClient
) -> None:
    service = await start(store, aiohttp_client)
    await service.feed(MORNING)
    url = str(service.client.make_url(""))
    async with ServiceClient(url) as client:
        assert await client.counts() == {"A": 1, "B": 2}
        assert await client.count("B") == 2


async def test_an_unknown_space_is_a_service_error(
    store: EventStore, aiohttp_client: AiohttpClient
) -> None:
    service = await start(store, aiohttp_client)
    url = str(service.client.make_url("/"))
    async with ServiceClient(url) as client:
        with pytest.raises(ServiceError, match=r"space 'C/D'.*404"):
            await client.count("C/D")


async def test_a_service_that_does_not_answer_is_a_service_error_in_time(
    aiohttp_server: Any,
) -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_get("/spaces", hang)
    server = await aiohttp_server(app)
    url = str(server.make_url("/"))
    async with ServiceClient(url, timeout_s=0.2) as client, asyncio.timeout(10):
        with pytest.raises(ServiceError, match=r"did not answer for its live counts within 0.2 s"):
            await client.counts()


async def test_a_service_that_is_not_there() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with ServiceClient(url) as client:
        with pytest.raises(ServiceError, match=f"cannot ask the service at {url} for its live"):
            await client.counts()


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://host/", "http://", "http://host:port"])
async def test_a_url_that_is_not_a_service_url(url: str) -> None:
    with pytest.raises(ServiceError, match="is not a service URL"):
        async with ServiceClient(url):
            pass


async def test_a_token_is_sent_and_a_refusal_says_what_to_give(
    store: EventStore, aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.toml"
    token = add_token(path, "checker", Scope.READ)
    app = service_app(store)
    app[AUTH] = Auth(Tokens.load(path))
    url = str((await aiohttp_client(app)).make_url("/"))
    async with ServiceClient(url, token=token) as client:
        assert await client.counts() == {"A": 0, "B": 0}
    async with ServiceClient(url) as client:
        with pytest.raises(ServiceError) as refused:
            await client.counts()
    assert "refused its live counts with no token (401: This API needs a token" in str(
        refused.value
    )
    assert str(refused.value).endswith("give a token with --token or HEADCOUNT_TOKEN")
    wrong = "hc_" + "x" * 43
    async with ServiceClient(url, token=wrong) as client:
        with pytest.raises(
            ServiceError, match="with the token given \\(401: The bearer token is not"
        ):
            await client.count("A")
    assert wrong not in str(refused.value)


@pytest.mark.parametrize("token", ["two words", "line\nbreak", "é"])
def test_a_token_that_cannot_be_sent_is_refused_without_showing_it(token: str) -> None:
    with pytest.raises(ServiceError, match="characters an API token cannot have") as refused:
        ServiceClient("http://127.0.0.1:8080", token=token)
    assert token not in str(refused.value)
