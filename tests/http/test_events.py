"""``/spaces/{id}/events`` and ``/spaces/{id}/resets`` against a real store and running actors:
the pages and their cursors, resets that the live count shows at once, bad input refused with
the parameter named, the write scope for a reset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from headcount.domain.events import Reset, Traversal
from headcount.domain.timefmt import format_ms
from headcount.eventstore.store import EventStore
from headcount.http.auth import AUTH, Auth
from headcount.http.events import decode_cursor, encode_cursor
from headcount.http.tokens import Scope, Tokens, add_token
from tests.http.test_routes import MINUTE, MORNING, NOW, Service, service_app, start


@pytest.fixture
async def service(store: EventStore, aiohttp_client: AiohttpClient) -> Service:
    return await start(store, aiohttp_client)


START = format_ms(NOW - 60 * MINUTE)
END = format_ms(NOW)
WINDOW = {"start_time": START, "end_time": END}

DAILY = """
[[spaces]]
id = "L"
name = "Lobby"
time_zone = "Europe/Paris"
daily_reset = "03:00"

[[doorways]]
id = "D"
name = "Door"
links = [{ space = "L", sensor_placement = 1 }]

[[assignments]]
dpu = "d"
doorway = "D"
valid_from = "2018-01-01T00:00:00Z"
"""


async def events(service: Service, space: str = "A", **params: Any) -> Any:
    response = await service.client.get(f"/spaces/{space}/events", params={**WINDOW, **params})
    assert response.status == 200, await response.text()
    return await response.json()


async def all_pages(service: Service, first: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    url: str | None = first
    while url is not None:
        body = await service.get(url)
        found += body["results"]
        url = body["next"]
    return found


async def test_events_newest_first_with_the_count_each_left(service: Service) -> None:
    await service.feed(MORNING)
    body = await events(service)
    assert body["space_id"] == "A"
    assert body["next"] is None
    got = [
        (e["kind"], e["dpu_id"], e["seq"], e["direction"], e["delta"], e["count_after"])
        for e in body["results"]
    ]
    # 283 over X (outside to A, +1 in), 423 over Z (B to A): its -1 leaves A. Floor at zero.
    assert got == [
        ("traversal", "283", 5, -1, -1, 1),
        ("traversal", "423", 2, -1, -1, 2),
        ("traversal", "423", 1, -1, -1, 3),
        ("traversal", "283", 4, 1, 1, 4),
        ("traversal", "283", 3, 1, 1, 3),
        ("traversal", "283", 2, 1, 1, 2),
        ("traversal", "283", 1, 1, 1, 1),
    ]
    assert body["results"][0] == {
        "ts": format_ms(NOW - 20 * MINUTE),
        "kind": "traversal",
        "dpu_id": "283",
        "seq": 5,
        "doorway": "X",
        "direction": -1,
        "delta": -1,
        "count_after": 1,
    }
    # B sees 423 only, through Z, the other way round.
    b = await events(service, "B", order="asc")
    assert [(e["doorway"], e["delta"], e["count_after"]) for e in b["results"]] == [
        ("Z", 1, 1),
        ("Z", 1, 2),
    ]


async def test_pages_follow_next_and_resets_show_with_their_change(service: Service) -> None:
    await service.feed(MORNING)
    await service.actors.reset(Reset("A", NOW - 35 * MINUTE, 10))
    whole = (await events(service, page_size=1000))["results"]
    assert ("reset", None, 10 - 3, 10) in [
        (e["kind"], e["dpu_id"], e["delta"], e["count_after"]) for e in whole
    ]
    query = f"start_time={START.replace('+', '%2B')}&end_time={END}"
    for order in ("desc", "asc"):
        paged = await all_pages(service, f"/spaces/A/events?{query}&order={order}&page_size=3")
        assert paged == (whole if order == "desc" else whole[::-1])


async def test_a_listing_stays_right_while_events_arrive(service: Service) -> None:
    await service.feed(MORNING)
    first = await events(service, page_size=3)
    assert first["next"] is not None
    # A late one among the pages still to come, one among those shown, one newer than all.
    await service.feed(
        [
            Traversal("283", 100, NOW - 45 * MINUTE, 1),
            Traversal("283", 101, NOW - 25 * MINUTE, 1),
            Traversal("283", 102, NOW - 10 * MINUTE, 1),
        ]
    )
    rest = await all_pages(service, first["next"])
    seen = [(e["dpu_id"], e["seq"]) for e in first["results"] + rest]
    assert len(seen) == len(set(seen))
    assert {(t.dpu_id, t.seq) for t in MORNING} <= set(seen)
    assert ("283", 100) in seen  # it lies beyond the cursor
    # Each page's count_after is the fold of the log as it was when it was read.
    now = {
        (e["dpu_id"], e["seq"]): e["count_after"]
        for e in (await events(service, page_size=1000))["results"]
    }
    assert all(now[(e["dpu_id"], e["seq"])] == e["count_after"] for e in rest)


def test_cursors_round_trip_and_anything_else_is_refused() -> None:
    for key in [(NOW, 1, "283", 5), (NOW, 0, "", 0), (-5, -1, "", 0)]:
        assert decode_cursor(encode_cursor(key)) == key
    for bad in ["", "x", encode_cursor((NOW, 2, "", 0)), encode_cursor((NOW, 0, "283", 0)), "W10"]:
        with pytest.raises(ValueError, match="not a cursor of this API"):
            decode_cursor(bad)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"next": "garbage"}, "next"),
        ({"page_size": "0"}, "page_size"),
        ({"page_size": "1001"}, "page_size"),
        ({"order": "sideways"}, "order"),
        ({"start_time": "2018-02-26T17:00:00"}, "start_time"),
        ({"end_time": START}, "end_time"),
        ({"end_time": "yesterday"}, "end_time"),
    ],
)
async def test_bad_parameters_are_400_naming_them(
    service: Service, params: dict[str, str], named: str
) -> None:
    response = await service.client.get("/spaces/A/events", params={**WINDOW, **params})
    assert response.status == 400
    assert named in (await response.json())["detail"]


async def test_a_missing_window_and_an_unknown_space(service: Service) -> None:
    response = await service.client.get("/spaces/A/events", params={"start_time": START})
    assert response.status == 400
    assert "end_time" in (await response.json())["detail"]
    for path in ("/spaces/Q/events", "/spaces/Q/resets"):
        assert await service.get(f"{path}?start_time={START}&end_time={END}", 404) == {
            "detail": "Not found."
        }


# -- resets --------------------------------------------------------------------------------


async def post_reset(service: Service, space: str, body: Any, status: int = 201) -> Any:
    response = await service.client.post(f"/spaces/{space}/resets", json=body)
    assert response.status == status, await response.text()
    return await response.json()


async def test_a_reset_is_live_when_answered_and_past_answers_follow(service: Service) -> None:
    await service.feed(MORNING)
    assert await post_reset(service, "A", {"count": 6}) == {
        "space_id": "A",
        "ts": format_ms(NOW),
        "count": 6,
        "kind": "reset",
    }
    assert (await service.get("/spaces/A/count"))["count"] == 6  # no drain: already live
    # In the past: a late event like any other.
    at = format_ms(NOW - 45 * MINUTE)
    assert (await post_reset(service, "A", {"count": 20, "ts": at}))["ts"] == at
    assert (await service.get(f"/spaces/A/count?ts={at}"))["count"] == 20
    later = (await service.get(f"/spaces/A/count?ts={format_ms(NOW - 21 * MINUTE)}"))["count"]
    assert later == 20 - 2  # 423 seq 1 and 2 leave A after it
    assert (await service.get("/spaces/A/count"))["count"] == 6
    assert (await service.get("/spaces/B/count"))["count"] == 2  # another space, untouched
    # The same reset again is harmless; another count at that millisecond is a conflict.
    await post_reset(service, "A", {"count": 20, "ts": at})
    conflict = await post_reset(service, "A", {"count": 21, "ts": at}, 409)
    assert conflict["detail"].startswith("ts: space 'A' already has a reset to 20")


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"count": -1}, "count"),
        ({"count": 2**31}, "count"),
        ({"count": "many"}, "count"),
        ({}, "count"),
        ({"count": 1, "ts": "2018-02-26T17:00:00"}, "ts"),
        ({"count": 1, "ts": "0001-01-01T00:00:00Z"}, "ts"),
        ({"count": 1, "ts": format_ms(NOW + 6 * MINUTE)}, "ts"),
        ({"count": 1, "extra": True}, "extra"),
        ({"count": 1, "ts": -(10**17)}, "ts: give ISO-8601 text"),
        ({"count": 1, "ts": NOW}, "ts: give ISO-8601 text"),
    ],
)
async def test_bad_resets_are_400_naming_the_field_and_change_nothing(
    service: Service, body: Any, named: str
) -> None:
    await service.feed(MORNING)
    refused = await post_reset(service, "A", body, 400)
    assert named in refused["detail"]
    assert (await service.get("/spaces/A/count"))["count"] == 1
    assert (
        await service.get(f"/spaces/A/resets?start_time={START}&end_time={format_ms(NOW + 1)}")
    )["results"] == []


async def test_a_reset_to_an_unknown_space_is_404(service: Service) -> None:
    assert await post_reset(service, "Q", {"count": 1}, 404) == {"detail": "Not found."}


async def test_a_reset_needs_a_write_token(
    store: EventStore, aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.toml"
    reader = add_token(path, "reader", Scope.READ)
    writer = add_token(path, "writer", Scope.WRITE)
    app = service_app(store)
    app[AUTH] = Auth(Tokens.load(path))
    client = await aiohttp_client(app)

    async def post(token: str | None) -> int:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        response = await client.post("/spaces/A/resets", json={"count": 3}, headers=headers)
        return response.status

    assert await post(None) == 401
    assert await post(reader) == 403
    assert await post(writer) == 201
    response = await client.get("/spaces/A/count", headers={"Authorization": f"Bearer {reader}"})
    assert (await response.json())["count"] == 3


async def test_resets_list_manual_and_daily_across_dst(
    store: EventStore, aiohttp_client: AiohttpClient
) -> None:
    service = await start(store, aiohttp_client, topology_text=DAILY)
    # Paris: summer time begins 2023-03-26 at 02:00, so 03:00 is an hour after midnight UTC.
    start_, end = "2023-03-25T00:00:00Z", "2023-03-28T00:00:00Z"
    await service.store.log.append([Traversal("d", 1, 1_679_745_600_000, 1)])  # 03-25 12:00Z
    made = await post_reset(service, "L", {"count": 4, "ts": "2023-03-26T10:00:00Z"})
    assert made["count"] == 4
    body = await service.get(f"/spaces/L/resets?start_time={start_}&end_time={end}")
    assert body == {
        "space_id": "L",
        "results": [
            {"ts": "2023-03-25T02:00:00.000Z", "count": 0, "kind": "daily_reset"},
            {"ts": "2023-03-26T01:00:00.000Z", "count": 0, "kind": "daily_reset"},
            {"ts": "2023-03-26T10:00:00.000Z", "count": 4, "kind": "reset"},
            {"ts": "2023-03-27T01:00:00.000Z", "count": 0, "kind": "daily_reset"},
        ],
    }
    listed = await service.get(f"/spaces/L/events?start_time={start_}&end_time={end}&order=asc")
    assert [(e["kind"], e["delta"], e["count_after"]) for e in listed["results"]] == [
        ("daily_reset", 0, 0),
        ("traversal", 1, 1),
        ("daily_reset", -1, 0),
        ("reset", 4, 4),
        ("daily_reset", -4, 0),
    ]


async def test_a_daily_space_lists_resets_over_ten_years_at_most(
    store: EventStore, aiohttp_client: AiohttpClient
) -> None:
    service = await start(store, aiohttp_client, topology_text=DAILY)
    path = "/spaces/L/resets?start_time=2000-01-01T00:00:00Z&end_time="
    assert len((await service.get(path + "2010-01-08T00:00:00Z"))["results"]) == 3660
    refused = await service.get(path + "9998-01-01T00:00:00Z", 400)
    assert refused["detail"].startswith("end_time: space 'L' resets daily")
