"""The HTTP API against a real store and a running actor system, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from headcount.actors import ActorSystem
from headcount.domain.events import Traversal
from headcount.domain.timefmt import SUPPORTED_RANGE, format_ms
from headcount.domain.topology import Topology
from headcount.errors import StoreDataError, StoreError
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.http.errors import STORE_DOWN
from headcount.http.keys import (
    ACTORS,
    CHANGES,
    CLOCK,
    DPUS,
    HISTORY,
    INGEST,
    METRICS,
    RESETS,
    STORE,
)
from headcount.http.routes import add_routes
from headcount.ingest import wire
from headcount.ingest.dpus import Delivery, DpuRegistry
from headcount.ingest.health import IngestHealth
from headcount.ingest.pipeline import Ingest, IngestSettings
from headcount.metrics import Metrics
from tests.ingest.faults import StoreFaults
from tests.ingest.inbox import Inbox, Msg
from tests.polling import eventually

SEED_TOPOLOGY = Path(__file__).resolve().parents[2] / "examples" / "seed" / "topology.toml"
NOW = 1_700_000_000_000
MINUTE = 60_000
NOT_FOUND = {"detail": "Not found."}

#: A morning at the seed's two doorways. 283 hangs inside A over X (outside to A); 423 hangs
#: inside A over Z (B to A). Counts after it: A 1 (4 in, 3 out), B 2 (2 in, 0 out).
MORNING = [
    *(Traversal("283", seq, NOW - (51 - seq) * MINUTE, 1) for seq in range(1, 5)),
    Traversal("423", 1, NOW - 40 * MINUTE, -1),
    Traversal("423", 2, NOW - 30 * MINUTE, -1),
    Traversal("283", 5, NOW - 20 * MINUTE, -1),
]


def clock() -> int:
    return NOW


#: The actor system behind ``ACTORS``, for feeding it events as ingest does.
SYSTEM = web.AppKey[ActorSystem]("test_actor_system")


@dataclass
class Service:
    client: TestClient[web.Request, web.Application]
    store: EventStore
    history: History
    actors: ActorSystem
    dpus: DpuRegistry

    async def feed(self, events: Iterable[Traversal]) -> None:
        """Store, route and wait for the actors, as ingest does."""
        result = await self.store.log.append(events)
        await self.actors.route(result.new)
        await self.actors.drain()

    async def get(self, path: str, status: int = 200) -> Any:
        response = await self.client.get(path)
        assert response.status == status, await response.text()
        assert response.content_type == "application/json"
        return await response.json()


def service_app(
    store: EventStore,
    *,
    spaces: list[str] | None = None,
    run: bool = True,
    topology_text: str | None = None,
    ingest: IngestHealth | None = None,
) -> web.Application:
    """The API over the seed topology, or ``topology_text``; ``run=False`` leaves the actors
    unrecovered; with ``ingest``, ``/healthz`` reports on it too."""

    async def resources(app: web.Application) -> AsyncIterator[None]:
        text = SEED_TOPOLOGY.read_text() if topology_text is None else topology_text
        topology = Topology.from_toml(text, source=str(SEED_TOPOLOGY))
        history = History(store, topology, snapshot_every=3, snapshot_lag_ms=0)
        system = ActorSystem(history, space_ids=spaces, clock=clock)
        app[STORE] = store
        app[HISTORY] = history
        app[ACTORS] = system
        app[RESETS] = system
        app[CHANGES] = system.changes
        app[SYSTEM] = system
        app[CLOCK] = clock
        app[DPUS] = DpuRegistry()
        app[METRICS] = Metrics()
        if ingest is not None:
            app[INGEST] = ingest
        if not run:
            yield
            return
        async with system.running():
            yield

    app = web.Application()
    app.cleanup_ctx.append(resources)
    add_routes(app)
    return app


async def start(store: EventStore, client: AiohttpClient, **options: Any) -> Service:
    app = service_app(store, **options)
    started = await client(app)
    return Service(started, store, app[HISTORY], app[SYSTEM], app[DPUS])


@pytest.fixture
async def service(store: EventStore, aiohttp_client: AiohttpClient) -> Service:
    return await start(store, aiohttp_client)


# -- counts --------------------------------------------------------------------------------


async def test_seed_count_now_is_the_live_count(service: Service) -> None:
    await service.feed(MORNING)
    assert await service.get("/space/A/count") == {
        "space_id": "A",
        "ts": format_ms(NOW),
        "count": 1,
    }
    assert await service.get("/space/B/count") == {
        "space_id": "B",
        "ts": "2023-11-14T22:13:20.000Z",
        "count": 2,
    }


async def test_the_live_answer_is_timed_at_the_answer_not_at_an_event_ahead(
    service: Service,
) -> None:
    """A DPU whose clock runs 4 minutes ahead (within the accepted skew) must not move the
    live answer's ``ts`` into the future."""
    await service.feed([Traversal("283", 1, NOW + 4 * 60_000, 1)])
    for path in ("/space/A/count", "/spaces/A/count"):
        answer = await service.get(path)
        assert answer["ts"] == format_ms(NOW), path
        assert answer["count"] == 1, path


@pytest.mark.parametrize(
    ("minutes_ago", "a", "b"),
    [
        pytest.param(55, 0, 0, id="before"),
        pytest.param(45, 4, 0, id="full"),
        pytest.param(35, 3, 1, id="between"),
        pytest.param(0, 1, 2, id="now"),
    ],
)
async def test_seed_count_at_ts_answers_from_history(
    service: Service, minutes_ago: int, a: int, b: int
) -> None:
    await service.feed(MORNING)
    ts = NOW - minutes_ago * MINUTE
    for space_id, expected in (("A", a), ("B", b)):
        body = await service.get(f"/space/{space_id}/count?ts={format_ms(ts)}")
        assert body == {"space_id": space_id, "ts": format_ms(ts), "count": expected}
        assert body["count"] == (await service.history.count_at(space_id, ts)).count


async def test_detailed_count_live_and_past_agree_with_history(service: Service) -> None:
    await service.feed(MORNING)
    # A report uploaded late, from before most of the morning: every later answer changes.
    await service.feed([Traversal("423", 0, NOW - 50 * MINUTE, 1)])
    live = await service.get("/spaces/A/count")
    expected = await service.history.count_at("A", NOW)
    assert live == {
        "space_id": "A",
        "ts": format_ms(NOW),
        "count": expected.count,
        "entrances": expected.state.entrances,
        "exits": expected.state.exits,
    }
    assert (live["count"], live["entrances"], live["exits"]) == (2, 5, 3)
    assert await service.get(f"/spaces/A/count?ts={format_ms(NOW)}") == live
    # B: the late report was someone leaving it while it was empty; the floor holds it at 0.
    past = await service.get(f"/spaces/B/count?ts={format_ms(NOW - 45 * MINUTE)}")
    assert (past["count"], past["entrances"], past["exits"]) == (0, 0, 1)


async def test_ts_with_an_offset_is_answered_in_utc(service: Service) -> None:
    await service.feed(MORNING)
    # NOW - 45 minutes is 21:28:20Z, i.e. 22:28:20+01:00; '+' sent percent-encoded.
    body = await service.get("/space/A/count?ts=2023-11-14T22:28:20%2B01:00")
    assert body == {"space_id": "A", "ts": "2023-11-14T21:28:20.000Z", "count": 4}


EXAMPLE = "e.g. '2018-02-26T17:00:00Z'"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param(
            "ts=yesterday", ["'yesterday' is not an ISO-8601 timestamp", EXAMPLE], id="not-iso"
        ),
        pytest.param("ts=", ["'' is not an ISO-8601 timestamp", EXAMPLE], id="empty"),
        pytest.param(
            "ts=2018-02-27T00:00:00",
            ["'2018-02-27T00:00:00' has no UTC offset; add 'Z'", EXAMPLE],
            id="no-offset",
        ),
        pytest.param(
            "ts=2018-02-27T00:00:00+01:00",
            ["is not an ISO-8601 timestamp", "send the offset as %2B01:00"],
            id="plus-unencoded",
        ),
        pytest.param(
            "ts=0001-01-01T00:00:00+14:00",
            ["is not an ISO-8601 timestamp", "send the offset as %2B14:00"],
            id="plus-unencoded-out-of-range",
        ),
        pytest.param(
            "ts=2018-02-27T00:00:00Z&ts=2018-02-28T00:00:00Z",
            ["give one timestamp, not 2"],
            id="twice",
        ),
    ],
)
@pytest.mark.parametrize("path", ["/space/A/count", "/spaces/A/count"], ids=["seed", "detail"])
async def test_unreadable_ts_is_400(
    service: Service, path: str, query: str, expected: list[str]
) -> None:
    body = await service.get(f"{path}?{query}", 400)
    assert list(body) == ["detail"]
    assert body["detail"].startswith("ts: ")
    for fragment in expected:
        assert fragment in body["detail"]


#: The seed's topology with a daily reset at 04:00 in the zone 14 hours ahead of UTC.
NIGHTLY_SEED = SEED_TOPOLOGY.read_text().replace(
    'name = "Space A"\n',
    'name = "Space A"\ntime_zone = "Pacific/Kiritimati"\ndaily_reset = "04:00"\n',
)


@pytest.mark.parametrize(
    "ts",
    [
        "0001-01-01T00:00:00%2B14:00",
        "9999-12-31T23:59:59-14:00",
        "9999-12-31T23:59:59Z",
        "0001-12-31T23:59:59.999Z",
        "9999-01-01T00:00:00Z",
    ],
)
@pytest.mark.parametrize("path", ["/space/A/count", "/spaces/A/count"], ids=["seed", "detail"])
async def test_ts_outside_the_supported_range_is_400(
    store: EventStore, aiohttp_client: AiohttpClient, path: str, ts: str
) -> None:
    """Times whose local day, or the day after, datetime cannot hold: a 400 naming the range,
    not a 500 from deep in the daily reset."""
    service = await start(store, aiohttp_client, topology_text=NIGHTLY_SEED)
    await service.feed(MORNING)
    body = await service.get(f"{path}?ts={ts}", 400)
    assert list(body) == ["detail"]
    assert body["detail"].startswith(f"ts: '{ts.replace('%2B', '+')}' is outside the supported")
    assert SUPPORTED_RANGE in body["detail"]


@pytest.mark.parametrize(
    ("ts", "shown"),
    [
        ("0002-01-01T00:00:00Z", "0002-01-01T00:00:00.000Z"),
        ("0002-01-01T14:00:00%2B14:00", "0002-01-01T00:00:00.000Z"),
        ("9998-12-31T23:59:59.999Z", "9998-12-31T23:59:59.999Z"),
        ("9998-12-31T09:59:59.999-14:00", "9998-12-31T23:59:59.999Z"),
    ],
)
async def test_ts_at_the_ends_of_the_supported_range_is_answered(
    store: EventStore, aiohttp_client: AiohttpClient, ts: str, shown: str
) -> None:
    service = await start(store, aiohttp_client, topology_text=NIGHTLY_SEED)
    await service.feed(MORNING)
    body = await service.get(f"/spaces/A/count?ts={ts}")
    # Before the morning nothing has happened; long after it, a daily reset has emptied A.
    assert body == {"space_id": "A", "ts": shown, "count": 0, **_totals(shown)}


def _totals(shown: str) -> dict[str, int]:
    return (
        {"entrances": 0, "exits": 0} if shown.startswith("0002") else {"entrances": 4, "exits": 3}
    )


@pytest.mark.parametrize(
    "path",
    [
        "/space/Q/count",
        "/space/Q/count?ts=2018-02-27T00:00:00Z",
        "/spaces/Q/count",
        "/spaces/Q/count?ts=2018-02-27T00:00:00Z",
        "/spaces/Q",
        "/dpus/999",
        "/nowhere",
        "/space/A",
    ],
    ids=["seed", "seed-ts", "count", "count-ts", "space", "dpu", "no-route", "no-route-seed"],
)
async def test_not_found_is_exactly_the_seed_body(service: Service, path: str) -> None:
    assert await service.get(path, 404) == NOT_FOUND


async def test_space_served_by_another_shard_is_answered_from_the_log(
    store: EventStore, aiohttp_client: AiohttpClient
) -> None:
    service = await start(store, aiohttp_client, spaces=["A"])
    await service.feed(MORNING)
    body = await service.get("/spaces/B/count")
    assert (body["count"], body["entrances"], body["exits"]) == (2, 2, 0)
    assert await service.get("/healthz") == {
        "status": "ok",
        "spaces": 1,
        "actor_restarts": 0,
        "shard": None,
    }


# -- spaces and DPUs -----------------------------------------------------------------------


async def test_spaces_lists_every_space_with_its_live_count(service: Service) -> None:
    await service.feed(MORNING)
    assert await service.get("/spaces") == {
        "spaces": [
            {"id": "A", "name": "Space A", "parent": None, "capacity": None, "count": 1},
            {"id": "B", "name": "Space B", "parent": None, "capacity": None, "count": 2},
        ]
    }


#: The seed, with a parent, a capacity and names that JSON must escape.
NAMED_SEED = (
    SEED_TOPOLOGY.read_text()
    .replace('name = "Space A"', 'name = "Hall \\"A\\" \\\\ caf\u00e9 \u2603"\ncapacity = 40')
    .replace('name = "Space B"', 'name = "Room\\tB"\nparent = "A"')
)


async def test_spaces_encodes_every_name_and_asks_another_shard_through_the_log(
    store: EventStore, aiohttp_client: AiohttpClient
) -> None:
    """``/spaces`` is written from parts encoded once per topology: they must be the JSON of
    the names as given, and a space another shard serves answers from the log."""
    service = await start(store, aiohttp_client, spaces=["A"], topology_text=NAMED_SEED)
    await service.feed(MORNING)
    response = await service.client.get("/spaces")
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert await response.json() == {
        "spaces": [
            {"id": "A", "name": 'Hall "A" \\ caf\u00e9 \u2603', "parent": None, "capacity": 40,
             "count": 1},
            {"id": "B", "name": "Room\tB", "parent": "A", "capacity": None, "count": 2},
        ]
    }  # fmt: skip
    assert await service.get("/spaces") == await service.get("/spaces")  # from the parts kept


async def test_space_detail(service: Service) -> None:
    await service.feed(MORNING)
    assert await service.get("/spaces/A") == {
        "id": "A",
        "name": "Space A",
        "parent": None,
        "children": [],
        "time_zone": "UTC",
        "daily_reset": None,
        "capacity": None,
        "allow_negative": False,
        "doorways": [
            {"id": "X", "name": "Doorway X", "sensor_placement": 1, "dpus": ["283"]},
            {"id": "Z", "name": "Doorway Z", "sensor_placement": 1, "dpus": ["423"]},
        ],
        "count": 1,
        "entrances": 4,
        "exits": 3,
    }
    b = await service.get("/spaces/B")
    assert b["doorways"] == [
        {"id": "Z", "name": "Doorway Z", "sensor_placement": -1, "dpus": ["423"]}
    ]
    assert (b["count"], b["entrances"], b["exits"]) == (2, 2, 0)


async def test_dpus_show_topology_and_what_was_heard(service: Service) -> None:
    service.dpus.set_online("283", True)
    service.dpus.seen("283", NOW - 1000, 5)
    service.dpus.set_online("423", False)
    service.dpus.set_delivery("283", Delivery(first=1, seq=7, sent=7, stored=5, reported_at=NOW))
    assert await service.get("/dpus") == {
        "dpus": [
            {
                "id": "283",
                "doorway": "X",
                "online": True,
                "last_seen": "2023-11-14T22:13:19.000Z",
                "last_seq": 5,
                "delivery": {
                    "first": 1,
                    "seq": 7,
                    "sent": 7,
                    "stored": 5,
                    "missing": 2,
                    "reported_at": "2023-11-14T22:13:20.000Z",
                },
            },
            {
                "id": "423",
                "doorway": "Z",
                "online": False,
                "last_seen": None,
                "last_seq": None,
                "delivery": None,
            },
        ]
    }
    assert await service.get("/dpus/423") == {
        "id": "423",
        "doorway": "Z",
        "online": False,
        "last_seen": None,
        "last_seq": None,
        "delivery": None,
        "assignments": [
            {"doorway": "Z", "valid_from": "2018-01-01T00:00:00.000Z", "valid_until": None}
        ],
    }


async def test_dpu_not_in_the_topology_is_404_even_when_heard_from(service: Service) -> None:
    """Anyone can publish under any DPU id: a DPU only the topology makes real."""
    service.dpus.seen("777", NOW, 3)
    service.dpus.set_online("777", True)
    assert await service.get("/dpus/777", 404) == NOT_FOUND
    assert [d["id"] for d in (await service.get("/dpus"))["dpus"]] == ["283", "423"]


# -- operations and errors -----------------------------------------------------------------


async def test_healthz(service: Service) -> None:
    assert await service.get("/healthz") == {
        "status": "ok",
        "spaces": 2,
        "actor_restarts": 0,
        "shard": None,
    }


async def test_healthz_is_503_while_ingest_is_stalled_and_says_why(
    store: EventStore, aiohttp_client: AiohttpClient
) -> None:
    """A store that is down holds ingest: messages wait, nothing is committed. The API still
    answers counts, but /healthz says ingest is stalled and why, until the store is back."""
    topology = Topology.from_toml(SEED_TOPOLOGY.read_text())
    inbox = Inbox()
    ingesting = ActorSystem(History(store, topology), clock=clock)
    faults = StoreFaults(store.engine)
    try:
        async with ingesting.running():
            ingest = Ingest(
                inbox.messages(), inbox.ack, store=store, actors=ingesting, dpus=DpuRegistry(),
                metrics=Metrics(), settings=IngestSettings(stall_after_s=0.3), clock=clock,
            )  # fmt: skip
            app = service_app(store, ingest=ingest.health)
            client = await aiohttp_client(app)
            service = Service(client, store, app[HISTORY], app[SYSTEM], app[DPUS])
            task = asyncio.create_task(ingest.run())
            healthy = {"status": "ok", "spaces": 2, "actor_restarts": 0, "shard": None}
            assert await service.get("/healthz") == healthy

            faults.down = True
            message = Msg(wire.traversals_topic("283"), wire.encode(MORNING[0]))
            inbox.put(message)
            await eventually(lambda: ingest.health.problem() is not None, what="a stall")
            body = await service.get("/healthz", 503)
            assert list(body) == ["detail"]
            assert body["detail"].startswith("ingest is stalled: 1 message(s) have waited")
            assert "without a commit (the limit is 0.3 s)" in body["detail"]
            assert "injected: connection lost" in body["detail"]
            assert (await service.get("/space/A/count"))["count"] == 0  # still answering

            faults.down = False
            await eventually(lambda: inbox.acked == [message], what="the held message acknowledged")
            assert await service.get("/healthz") == healthy
            task.cancel()
            await asyncio.wait([task])
    finally:
        faults.remove()


async def test_recovering_actors_are_503_but_the_past_is_answered(
    store: EventStore, aiohttp_client: AiohttpClient
) -> None:
    service = await start(store, aiohttp_client, run=False)
    await service.store.log.append(MORNING)
    health = await service.get("/healthz", 503)
    assert health == {"detail": "2 of 2 spaces are still recovering: A, B"}
    assert "still recovering" in (await service.get("/space/A/count", 503))["detail"]
    past = await service.get(f"/space/A/count?ts={format_ms(NOW)}")
    assert past["count"] == 1


async def test_metrics(service: Service) -> None:
    service.dpus.set_online("283", True)
    response = await service.client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = await response.text()
    assert "\nheadcount_mailbox_depth 0.0\n" in text
    assert "\nheadcount_dpus_online 1.0\n" in text


async def test_wrong_method_is_405_json(service: Service) -> None:
    response = await service.client.post("/spaces")
    assert response.status == 405
    assert response.headers["Allow"] == "GET,HEAD"
    assert await response.json() == {
        "detail": "Method POST is not allowed here; allowed: GET, HEAD."
    }


async def test_crash_is_500_logged_not_shown(
    service: Service, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def crash(space_id: str, ts: int) -> None:
        raise RuntimeError("secret connection string")

    monkeypatch.setattr(service.history, "count_at", crash)
    with caplog.at_level(logging.ERROR, logger="headcount.http"):
        response = await service.client.get("/space/A/count?ts=2018-02-27T00:00:00Z")
        body = await response.text()
    assert response.status == 500
    assert response.content_type == "application/json"
    assert await response.json() == {"detail": "Internal server error; it has been logged."}
    assert "secret" not in body
    assert "Traceback" not in body
    [record] = [r for r in caplog.records if r.name == "headcount.http.errors"]
    assert record.exc_info is not None
    assert "GET /space/A/count?ts=2018-02-27T00:00:00Z failed" in record.getMessage()


async def test_a_store_that_is_down_is_503_for_the_past_while_live_counts_answer(
    service: Service, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The past needs the store, the live count does not. The driver's text (hosts, ports)
    goes to the log, not to the client, who is told to come back."""
    await service.feed(MORNING)

    async def down(space_id: str, ts: int) -> None:
        raise StoreError("cannot reach the event store: connect to 10.1.2.3:5432 refused")

    monkeypatch.setattr(service.history, "count_at", down)
    with caplog.at_level(logging.WARNING, logger="headcount.http"):
        response = await service.client.get(f"/space/A/count?ts={format_ms(NOW)}")
        body = await response.text()
    assert response.status == 503
    assert response.content_type == "application/json"
    assert response.headers["Retry-After"] == "5"
    assert await response.json() == {"detail": STORE_DOWN}
    assert "10.1.2.3" not in body
    [record] = [r for r in caplog.records if r.name == "headcount.http.errors"]
    assert record.levelno == logging.WARNING
    assert "10.1.2.3:5432 refused" in record.getMessage()
    assert (await service.get("/space/A/count"))["count"] == 1
    assert (await service.get("/spaces/A/count"))["count"] == 1


async def test_a_store_that_refuses_a_read_is_500(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not down: waiting will not help, so it is not 503."""

    async def refuses(space_id: str, ts: int) -> None:
        raise StoreDataError("the event store cannot hold a value")

    monkeypatch.setattr(service.history, "count_at", refuses)
    body = await service.get(f"/space/A/count?ts={format_ms(NOW)}", 500)
    assert body == {"detail": "Internal server error; it has been logged."}
