"""``GET /spaces/{id}/counts`` and ``GET /counts``: shapes, pages, errors, against a real store
(the buckets' figures against a naive fold are in tests/history/test_counts_property.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from headcount.domain.timefmt import format_ms, parse_iso
from headcount.eventstore.store import EventStore
from tests.http.test_routes import MORNING, NOT_FOUND, NOW, SEED_TOPOLOGY, Service, start

# NOW is 2023-11-14T22:13:20Z; the morning runs from 21:23:20 to 21:53:20.
WINDOW = "start_time=2023-11-14T21:00:00Z&end_time=2023-11-14T22:00:00Z"


@pytest.fixture
async def service(store: EventStore, aiohttp_client: AiohttpClient) -> Service:
    started = await start(store, aiohttp_client)
    await started.feed(MORNING)
    return started


async def test_buckets_of_a_space(service: Service) -> None:
    body = await service.get(f"/spaces/A/counts?{WINDOW}&interval=15m")
    assert body["space_id"] == "A"
    assert (body["time_zone"], body["interval"], body["next"]) == ("UTC", "15m", None)
    assert body["results"] == [
        {
            "start": "2023-11-14T21:00:00.000+00:00",
            "end": "2023-11-14T21:15:00.000+00:00",
            **{
                "count": 0,
                "min": 0,
                "max": 0,
                "entrances": 0,
                "exits": 0,
                "events": 0,
                "utilization": None,
            },
        },
        {
            "start": "2023-11-14T21:15:00.000+00:00",
            "end": "2023-11-14T21:30:00.000+00:00",
            **{
                "count": 4,
                "min": 0,
                "max": 4,
                "entrances": 4,
                "exits": 0,
                "events": 4,
                "utilization": None,
            },
        },
        {
            "start": "2023-11-14T21:30:00.000+00:00",
            "end": "2023-11-14T21:45:00.000+00:00",
            **{
                "count": 2,
                "min": 2,
                "max": 4,
                "entrances": 0,
                "exits": 2,
                "events": 2,
                "utilization": None,
            },
        },
        {
            "start": "2023-11-14T21:45:00.000+00:00",
            "end": "2023-11-14T22:00:00.000+00:00",
            **{
                "count": 1,
                "min": 1,
                "max": 2,
                "entrances": 0,
                "exits": 1,
                "events": 1,
                "utilization": None,
            },
        },
    ]
    for bucket in body["results"]:  # each count is the past answer 1 ms before its end
        past = await service.history.count_at("A", parse_iso(bucket["end"]) - 1)
        assert bucket["count"] == past.count


async def test_local_buckets_in_another_zone(service: Service) -> None:
    body = await service.get(
        "/spaces/B/counts?start_time=2023-11-14T22:00:00%2B01:00"
        "&end_time=2023-11-15T00:00:00%2B01:00&interval=1h&time_zone=Europe/Berlin"
    )
    assert body["time_zone"] == "Europe/Berlin"
    assert [(b["start"], b["count"]) for b in body["results"]] == [
        ("2023-11-14T22:00:00.000+01:00", 2),
        ("2023-11-14T23:00:00.000+01:00", 2),
    ]


async def test_pages_follow_next_to_the_whole_series(service: Service) -> None:
    whole = await service.get(f"/spaces/A/counts?{WINDOW}&interval=5m")
    assert len(whole["results"]) == 12
    assert whole["next"] is None
    path: str | None = f"/spaces/A/counts?{WINDOW}&interval=5m&page_size=5"
    pages: list[dict[str, Any]] = []
    while path is not None:
        page = await service.get(path)
        assert len(page["results"]) <= 5
        pages += page["results"]
        path = page["next"]
    assert pages == whole["results"]


async def test_several_spaces_at_once(service: Service) -> None:
    body = await service.get(f"/counts?space_id=B&space_id=A&{WINDOW}&interval=1h")
    assert [s["space_id"] for s in body["spaces"]] == ["B", "A"]
    assert [s["results"][0]["count"] for s in body["spaces"]] == [2, 1]
    one = await service.get(f"/spaces/A/counts?{WINDOW}&interval=1h")
    assert body["spaces"][1] == one
    paged = await service.get(f"/counts?space_id=A&{WINDOW}&interval=15m&page_size=2")
    assert paged["spaces"][0]["next"].startswith("/spaces/A/counts?start_time=")


async def test_unknown_spaces_are_404(service: Service) -> None:
    assert await service.get(f"/spaces/Q/counts?{WINDOW}", 404) == NOT_FOUND
    body = await service.get(f"/counts?space_id=A&space_id=Q&{WINDOW}", 404)
    assert "'Q'" in body["detail"]


@pytest.mark.parametrize(
    ("query", "named"),
    [
        pytest.param("end_time=2023-11-14T22:00:00Z", "start_time", id="no-start"),
        pytest.param("start_time=2023-11-14T21:00:00Z", "end_time", id="no-end"),
        pytest.param(
            "start_time=2023-11-14T21:00:00&end_time=2023-11-14T22:00:00Z",
            "start_time",
            id="no-offset",
        ),
        pytest.param(
            "start_time=2023-11-14T22:00:00+01:00&end_time=2023-11-14T22:00:00Z",
            "start_time",
            id="plus-as-space",
        ),
        pytest.param(f"{WINDOW}&interval=2h", "interval", id="interval"),
        pytest.param(f"{WINDOW}&time_zone=Mars/Olympus", "time_zone", id="zone"),
        pytest.param(f"{WINDOW}&time_zone=../../etc/passwd", "time_zone", id="zone-path"),
        pytest.param(f"{WINDOW}&page_size=0", "page_size", id="page-0"),
        pytest.param(f"{WINDOW}&page_size=10001", "page_size", id="page-big"),
        pytest.param(f"{WINDOW}&page_size=ten", "page_size", id="page-text"),
        pytest.param(f"{WINDOW}&interval=1h&interval=1d", "interval", id="twice"),
    ],
)
async def test_bad_parameters_are_400_naming_them(service: Service, query: str, named: str) -> None:
    for path in (f"/spaces/A/counts?{query}", f"/counts?space_id=A&{query}"):
        body = await service.get(path, 400)
        assert body["detail"].startswith(f"{named}: "), body
    assert (await service.history.count_at("A", NOW)).count == 1  # nothing changed


async def test_an_empty_window_has_no_buckets(service: Service) -> None:
    for window in (
        "start_time=2023-11-14T22:00:00Z&end_time=2023-11-14T22:00:00Z",
        "start_time=2023-11-14T22:00:00Z&end_time=2023-11-14T21:00:00Z",
    ):
        body = await service.get(f"/spaces/A/counts?{window}")
        assert (body["results"], body["next"]) == ([], None)


async def test_at_most_eight_spaces_at_once(service: Service) -> None:
    body = await service.get(f"/counts?{WINDOW}" + "&space_id=A" * 9, 400)
    assert body["detail"].startswith("space_id: ")
    eight = await service.get(f"/counts?{WINDOW}" + "&space_id=A" * 8)
    assert len(eight["spaces"]) == 1  # each space once


async def test_counts_without_a_space_is_400(service: Service) -> None:
    body = await service.get(f"/counts?{WINDOW}", 400)
    assert body["detail"].startswith("space_id: ")


async def test_utilization_where_the_space_has_a_capacity_else_null(
    store: EventStore, aiohttp_client: AiohttpClient
) -> None:
    text = SEED_TOPOLOGY.read_text().replace('name = "Space A"', 'name = "Space A"\ncapacity = 8')
    service = await start(store, aiohttp_client, topology_text=text)
    await service.feed(MORNING)
    a = await service.get(f"/spaces/A/counts?{WINDOW}&interval=1h")
    b = await service.get(f"/spaces/B/counts?{WINDOW}&interval=1h")
    assert a["results"][0]["utilization"] == 0.5  # max 4 of 8
    assert b["results"][0]["utilization"] is None


async def test_the_same_window_asked_at_its_edges(service: Service) -> None:
    """start_time inside a bucket starts at that bucket; the last bucket holds end - 1 ms."""
    start_time, end_time = format_ms(NOW - 49 * 60_000), format_ms(NOW - 19 * 60_000 + 1)
    body = await service.get(
        f"/spaces/A/counts?start_time={start_time}&end_time={end_time}&interval=15m"
    )
    assert [b["start"][11:16] for b in body["results"]] == ["21:15", "21:30", "21:45"]
