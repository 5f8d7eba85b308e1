"""``GET /dpus/{id}/health`` and the ``headcount_dpu_*`` metrics over the seed topology, at the
suite's fixed moment (a Tuesday, 22:13 UTC)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from headcount.domain.events import Traversal
from headcount.domain.timefmt import format_ms
from headcount.errors import StoreError
from headcount.eventstore.sensors import SeqGaps
from headcount.eventstore.store import EventStore
from headcount.http.errors import STORE_DOWN
from headcount.ingest.dpus import Delivery
from tests.http.test_routes import MINUTE, MORNING, NOT_FOUND, NOW, Service, start

QUIET_AT_NIGHT = {
    "doorway": "X",
    "time_zone": "UTC",
    "hour_of_week": "Tue 22:00",
    "last_event": format_ms(NOW - 20 * MINUTE),
    "silent_for_s": 1200.0,
    "weeks": 4,
    "usual_per_hour": 0.0,
    "expected_gap_s": None,
    "busy_weeks": 0,
    "expected_events": 0.0,
    "p_silence": 1.0,
    "quiet": False,
}


@pytest.fixture
async def service(store: EventStore, aiohttp_client: AiohttpClient) -> Service:
    return await start(store, aiohttp_client)


async def test_health_of_a_dpu(service: Service) -> None:
    await service.feed([*MORNING, Traversal("283", 9, NOW - 10 * MINUTE, 1)])  # 6 to 8 lost
    service.dpus.set_online("283", True)
    service.dpus.seen("283", NOW - 10 * MINUTE + 150, 9)
    service.dpus.set_delivery("283", Delivery(1, 9, sent=9, stored=6, reported_at=NOW - 5000))
    assert await service.get("/dpus/283/health") == {
        "dpu_id": "283",
        "at": format_ms(NOW),
        "window_days": 7.0,
        "last_heard": {"at": format_ms(NOW - 10 * MINUTE + 150), "online": True, "last_seq": 9},
        "sequence_gaps": {
            "stored": 6,
            "first_seq": 1,
            "last_seq": 9,
            "gaps": 1,
            "missing": 3,
            "delivery": {
                "first": 1,
                "seq": 9,
                "sent": 9,
                "stored": 6,
                "missing": 3,
                "reported_at": format_ms(NOW - 5000),
            },
        },
        "quiet": {
            **QUIET_AT_NIGHT,
            "last_event": format_ms(NOW - 10 * MINUTE),
            "silent_for_s": 600.0,
        },
        "imbalance": [
            {
                "doorway": "X",
                "space_id": "A",
                "entrances": 5,
                "exits": 1,
                "ratio": 5.0,
                "verdict": None,  # too few to say
            }
        ],
    }


async def test_a_doorway_between_two_spaces_balances_each(service: Service) -> None:
    await service.feed(MORNING)
    answer = await service.get("/dpus/423/health")
    # 423 hangs inside A over Z, outside B: its two traversals away from it went from A to B.
    assert answer["imbalance"] == [
        {
            "doorway": "Z",
            "space_id": "A",
            "entrances": 0,
            "exits": 2,
            "ratio": 0.0,
            "verdict": None,
        },
        {
            "doorway": "Z",
            "space_id": "B",
            "entrances": 2,
            "exits": 0,
            "ratio": None,
            "verdict": None,
        },
    ]
    assert answer["last_heard"] == {"at": None, "online": None, "last_seq": None}
    assert answer["sequence_gaps"]["delivery"] is None


async def test_health_of_a_dpu_never_heard(service: Service) -> None:
    answer = await service.get("/dpus/283/health")
    assert answer["sequence_gaps"] == {
        "stored": 0,
        "first_seq": None,
        "last_seq": None,
        "gaps": 0,
        "missing": 0,
        "delivery": None,
    }
    assert answer["quiet"]["last_event"] is None
    assert answer["quiet"]["quiet"] is False
    assert answer["imbalance"][0]["ratio"] is None


async def test_unknown_dpu_is_404(service: Service) -> None:
    service.dpus.seen("999", NOW, 1)  # heard from, but no topology knows it
    assert await service.get("/dpus/999/health", status=404) == NOT_FOUND


async def test_metrics_say_when_each_known_dpu_was_last_heard(service: Service) -> None:
    service.dpus.seen("283", NOW - 1500, 4)
    service.dpus.seen("999", NOW, 1)  # unknown: no series of its own
    response = await service.client.get("/metrics")
    families = text_string_to_metric_families(await response.text())
    (family,) = (f for f in families if f.name == "headcount_dpu_last_heard_timestamp_seconds")
    assert [(s.labels, s.value) for s in family.samples] == [({"dpu": "283"}, (NOW - 1500) / 1000)]


async def test_a_store_that_is_down_is_503(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(*args: object, **kwargs: object) -> SeqGaps:
        raise StoreError("connection refused")

    monkeypatch.setattr(service.store.sensors, "seq_gaps", down)
    answer = await service.get("/dpus/283/health", status=503)
    assert answer == {"detail": STORE_DOWN}
