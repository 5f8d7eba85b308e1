"""The route tables: query and body parsing answer 400 naming what was wrong, answers follow
their models, and the document says what each table registers."""

from __future__ import annotations

from typing import Literal

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import Field
from pytest_aiohttp import AiohttpClient

from headcount.http.api import Model, Query, Routes, answer, parse_body, parse_query
from headcount.http.errors import json_errors
from headcount.http.openapi import build
from tests.http.test_openapi import problems, resolve, response_schema

Client = TestClient[web.Request, web.Application]


class Window(Query):
    interval: Literal["1m", "5m", "15m", "1h", "1d", "1w"] = Field(
        default="1h", description="The bucket width."
    )
    space_id: list[str] = Field(default=[], description="Spaces to include; repeat for more.")
    limit: int | None = Field(default=None, description="At most this many buckets.")


class Echo(Model):
    """What the query became."""

    interval: str
    space_id: list[str]
    limit: int | None = Field(description="As given; null: none.")


class Note(Model):
    """A note to keep."""

    text: str = Field(description="What it says.")
    priority: int = Field(description="Higher first.")


class Kept(Model):
    """A note kept."""

    id: int
    note: Note


table = Routes()


@table.get("/echo", summary="The query, read.", query=Window, answer=Echo, errors=(404,))
async def echo(request: web.Request) -> web.Response:
    window = parse_query(request, Window)
    return answer(Echo(interval=window.interval, space_id=window.space_id, limit=window.limit))


@table.post("/notes", summary="Keep a note.", body=Note, answer=Kept, status=201)
async def keep(request: web.Request) -> web.Response:
    return answer(Kept(id=7, note=await parse_body(request, Note)), status=201)


@table.websocket("/live", summary="Counts as they change.", query=Window)
async def live(request: web.Request) -> web.StreamResponse:
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    await socket.close()
    return socket


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    app = web.Application(middlewares=[json_errors])
    app.add_routes(table.defs)
    return await aiohttp_client(app)


async def _detail(client: Client, method: str, url: str, **kwargs: object) -> str:
    response = await client.request(method, url, **kwargs)  # type: ignore[arg-type]
    assert response.status == 400
    body = await response.json()
    assert set(body) == {"detail"}
    detail: str = body["detail"]
    assert "pydantic" not in detail
    return detail


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("interval=2m", "interval: must be one of 1m, 5m, 15m, 1h, 1d, 1w (got '2m')"),
        ("interval=1m&interval=5m", "interval: give one value, not 2"),
        ("limit=many", "limit: must be a valid integer, unable to parse string as an integer"),
        ("limit=1.5", "limit: must be a valid integer, unable to parse string as an integer"),
        (f"interval={'x' * 5000}", "interval: must be one of 1m, 5m, 15m, 1h, 1d, 1w (got 'xxx"),
    ],
    ids=["not-one-of", "repeated", "not-an-integer", "fraction", "long"],
)
async def test_a_bad_query_value_is_a_400_naming_the_parameter(
    client: Client, query: str, detail: str
) -> None:
    found = await _detail(client, "GET", f"/echo?{query}")
    assert found.startswith(detail)
    assert len(found) < 200


async def test_a_get_answers_head_too(client: Client) -> None:
    response = await client.head("/echo")
    assert response.status == 200


async def test_a_list_parameter_takes_repeats_and_unknown_parameters_are_ignored(
    client: Client,
) -> None:
    response = await client.get("/echo?space_id=A&space_id=B&interval=5m&colour=red")
    assert response.status == 200
    assert await response.json() == {"interval": "5m", "space_id": ["A", "B"], "limit": None}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ("{not json", "body: not JSON"),
        ('{"text": "hi", "priority": "high"}', "priority: must be a valid integer"),
        ('{"text": "hi", "priority": 1, "colour": "red"}', "colour: not a field here"),
        ('{"text": "hi"}', "priority: required"),
        ("[1, 2]", "body: must be an object"),
    ],
    ids=["bad-json", "wrong-type", "extra-field", "missing-field", "not-an-object"],
)
async def test_a_bad_body_is_a_400_naming_the_field(client: Client, body: str, detail: str) -> None:
    headers = {"Content-Type": "application/json"}
    assert (await _detail(client, "POST", "/notes", data=body, headers=headers)).startswith(detail)


async def test_answers_match_their_models_schemas(client: Client) -> None:
    doc = build([table])
    response = await client.post("/notes", json={"text": "hi", "priority": 2})
    assert response.status == 201
    body = await response.json()
    assert body == {"id": 7, "note": {"text": "hi", "priority": 2}}
    assert problems(doc, response_schema(doc, "/notes", 201, "post"), body) == []
    response = await client.get("/echo?space_id=A")
    body = await response.json()
    assert problems(doc, response_schema(doc, "/echo", 200), body) == []


def test_the_document_has_the_post_body_the_query_and_the_websocket() -> None:
    doc = build([table])
    post = doc["paths"]["/notes"]["post"]
    request_body = post["requestBody"]["content"]["application/json"]["schema"]
    assert resolve(doc, request_body)["required"] == ["text", "priority"]
    assert {"201", "400", "401", "403", "413", "500"} <= set(post["responses"])
    params = {p["name"]: p for p in doc["paths"]["/echo"]["get"]["parameters"]}
    assert params["interval"]["schema"]["enum"] == ["1m", "5m", "15m", "1h", "1d", "1w"]
    assert params["interval"]["description"] == "The bucket width."
    assert params["space_id"]["schema"]["type"] == "array"
    assert params["limit"]["schema"] == {"type": "integer"}
    assert not any(p["required"] for p in params.values())
    live = doc["paths"]["/live"]["get"]
    assert "101" in live["responses"]
    assert "content" not in live["responses"]["101"]
    assert {p["name"] for p in live["parameters"]} == set(params)
