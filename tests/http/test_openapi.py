"""The OpenAPI document matches the registered routes, and real responses match the document."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from headcount.actors import ActorSystem
from headcount.domain.events import Traversal
from headcount.domain.timefmt import SUPPORTED_RANGE
from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.http.keys import ACTORS, DPUS, HISTORY, METRICS, STORE
from headcount.http.openapi import document
from headcount.http.routes import add_routes
from headcount.ingest.dpus import Delivery, DpuRegistry
from headcount.metrics import Metrics

SEED_TOPOLOGY = Path(__file__).resolve().parents[2] / "examples" / "seed" / "topology.toml"
NOW = 1_700_000_000_000
_JSON_TYPES = {
    type(None): "null",
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow ``$ref`` pointers inside the document."""
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def problems(
    doc: dict[str, Any], schema: dict[str, Any], value: Any, where: str = "$"
) -> list[str]:
    """Where ``value`` departs from ``schema``: types, enums, and for documented objects, keys
    exactly the required properties (the document requires every property it lists)."""
    schema = resolve(doc, schema)
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    kind = _JSON_TYPES[type(value)]
    if kind not in kinds and not (kind == "integer" and "number" in kinds):
        return [f"{where}: {kind}, documented as {kinds}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} not one of {schema['enum']}"]
    if kind == "array":
        items = schema.get("items", {"type": list(_JSON_TYPES.values())})
        return [
            p for i, item in enumerate(value) for p in problems(doc, items, item, f"{where}[{i}]")
        ]
    if kind != "object" or "properties" not in schema:
        return []
    found = []
    if set(value) != set(schema["required"]) or set(value) != set(schema["properties"]):
        found.append(f"{where}: keys {sorted(value)}, documented {sorted(schema['required'])}")
    for key, item in value.items():
        if key in schema["properties"]:
            found += problems(doc, schema["properties"][key], item, f"{where}.{key}")
    return found


def response_schema(
    doc: dict[str, Any], template: str, status: int, method: str = "get"
) -> dict[str, Any]:
    response = resolve(doc, doc["paths"][template][method]["responses"][str(status)])
    schema: dict[str, Any] = response["content"]["application/json"]["schema"]
    return schema


def test_every_route_is_documented_and_every_documented_operation_is_routed() -> None:
    """Every method on every path, GET, POST, a WebSocket's GET: (aiohttp adds HEAD to GET)."""
    app = web.Application()
    add_routes(app)
    routed = {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    doc = document()
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert routed == documented
    for template, item in doc["paths"].items():
        for method, operation in item.items():
            declared = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert declared == set(re.findall(r"\{(\w+)\}", template)), (template, method)


def test_every_reference_resolves() -> None:
    doc = document()

    def refs(node: Any) -> list[dict[str, Any]]:
        if isinstance(node, dict):
            own = [node] if "$ref" in node else []
            return own + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    found = refs(doc)
    assert len(found) > 20
    for ref in found:
        assert resolve(doc, ref), ref["$ref"]


def test_every_operation_documents_the_400_and_500_any_request_may_get() -> None:
    """aiohttp refuses a request line or header it cannot read on any path (see
    headcount.http.server); any handler may fail."""
    for template, item in document()["paths"].items():
        for method, operation in item.items():
            assert {"400", "500"} <= set(operation["responses"]), (template, method)


def test_every_schema_is_closed_and_requires_every_property() -> None:
    """What lets a test hold a real answer to the document: no property it may leave out, none
    it does not list."""

    def objects(node: Any) -> list[dict[str, Any]]:
        if isinstance(node, dict):
            own = [node] if "properties" in node else []
            return own + [o for value in node.values() for o in objects(value)]
        if isinstance(node, list):
            return [o for value in node for o in objects(value)]
        return []

    found = objects(document()["components"]["schemas"])
    assert len(found) > 10
    for schema in found:
        assert schema["additionalProperties"] is False, schema
        assert schema["required"] == list(schema["properties"]), schema


def test_the_ts_parameter_states_the_supported_range() -> None:
    for template in ("/space/{space_id}/count", "/spaces/{space_id}/count"):
        [ts] = [p for p in document()["paths"][template]["get"]["parameters"] if p["name"] == "ts"]
        assert SUPPORTED_RANGE in ts["description"]


def test_the_checker_notices_a_departure() -> None:
    doc = document()
    count = resolve(doc, {"$ref": "#/components/schemas/Count"})
    good = {"space_id": "A", "ts": "2018-02-27T00:00:00.000Z", "count": 1}
    assert problems(doc, count, good) == []
    assert problems(doc, count, {**good, "extra": 1}) != []
    assert problems(doc, count, {"space_id": "A", "ts": None, "count": 1}) != []


@pytest.fixture
async def client(
    store: EventStore, aiohttp_client: AiohttpClient
) -> TestClient[web.Request, web.Application]:
    async def resources(app: web.Application) -> AsyncIterator[None]:
        topology = Topology.from_toml(SEED_TOPOLOGY.read_text(), source=str(SEED_TOPOLOGY))
        history = History(store, topology)
        system = ActorSystem(history, clock=lambda: NOW)
        app[STORE], app[HISTORY], app[ACTORS] = store, history, system
        app[DPUS], app[METRICS] = DpuRegistry(), Metrics()
        async with system.running():
            events = [Traversal("283", 1, NOW - 60_000, 1), Traversal("423", 1, NOW - 1000, -1)]
            await system.route((await store.log.append(events)).new)
            await system.drain()
            app[DPUS].seen("283", NOW, 1)
            app[DPUS].set_delivery("283", Delivery(1, 3, 3, 1, NOW))
            app[DPUS].set_delivery("423", Delivery(None, None, 0, 0, NOW))
            yield

    app = web.Application()
    app.cleanup_ctx.append(resources)
    add_routes(app)
    return await aiohttp_client(app)


async def test_served_document(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    served = await response.json()
    assert served["openapi"] == "3.1.0"
    assert served["info"]["title"] == "headcount"
    assert served["info"]["version"]
    assert set(served["paths"]) >= {"/space/{space_id}/count", "/healthz"}
    assert served == document()


@pytest.mark.parametrize(
    ("template", "url", "status"),
    [
        ("/space/{space_id}/count", "/space/A/count", 200),
        ("/space/{space_id}/count", "/space/A/count?ts=2023-11-14T22:00:00Z", 200),
        ("/space/{space_id}/count", "/space/Q/count", 404),
        ("/space/{space_id}/count", "/space/A/count?ts=noon", 400),
        ("/spaces/{space_id}/count", "/spaces/A/count?ts=9999-12-31T23:59:59Z", 400),
        ("/spaces/{space_id}/count", "/spaces/B/count", 200),
        ("/spaces", "/spaces", 200),
        ("/spaces/{space_id}", "/spaces/A", 200),
        ("/spaces/{space_id}", "/spaces/Q", 404),
        ("/dpus", "/dpus", 200),
        ("/dpus/{dpu_id}", "/dpus/283", 200),
        ("/dpus/{dpu_id}", "/dpus/999", 404),
        ("/dpus/{dpu_id}/health", "/dpus/283/health", 200),
        ("/dpus/{dpu_id}/health", "/dpus/999/health", 404),
        ("/healthz", "/healthz", 200),
    ],
    ids=[
        "seed-now",
        "seed-ts",
        "seed-404",
        "seed-400",
        "count-400-range",
        "count",
        "spaces",
        "space",
        "space-404",
        "dpus",
        "dpu",
        "dpu-404",
        "dpu-health",
        "dpu-health-404",
        "healthz",
    ],
)
async def test_real_responses_match_the_document(
    client: TestClient[web.Request, web.Application], template: str, url: str, status: int
) -> None:
    response = await client.get(url)
    assert response.status == status
    body = await response.json()
    doc = document()
    assert problems(doc, response_schema(doc, template, status), body) == []


def test_every_path_but_healthz_needs_the_bearer_scheme_and_documents_its_401() -> None:
    doc = document()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["security"] == [{"bearer": []}]
    for template, item in doc["paths"].items():
        for method, operation in item.items():
            if template == "/healthz":
                assert operation["security"] == []
                assert "401" not in operation["responses"]
            else:
                assert "security" not in operation, template  # the document's: bearer
                assert "401" in operation["responses"], (template, method)
                if method != "get":  # every method but GET needs the write scope
                    assert "403" in operation["responses"], (template, method)
