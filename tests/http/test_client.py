"""The service client against the real HTTP API: live counts, and every failure one
:class:`ServiceError` naming the service."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from headcount.eventstore.store import EventStore
from headcount.http.client import ServiceClient, ServiceError
from headcount.ingest.broker import free_port
from tests.http.test_routes import MORNING, start


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
