"""A DPU's health from the store, on SQLite and PostgreSQL, at fixed moments (never the wall
clock): lost reports, a doorway gone quiet in the middle of a working day (and not at night), a
DPU mounted backwards, and a brand new DPU that raises no alarm."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from headcount.domain.events import Direction, Traversal
from headcount.domain.timefmt import to_ms
from headcount.domain.topology import Assignment, Doorway, Link, Space, Topology
from headcount.errors import StoreError
from headcount.eventstore.sensors import SeqGaps
from headcount.eventstore.store import EventStore
from headcount.history.dpu_health import HealthWatch, Imbalance, dpu_health
from headcount.metrics import Metrics
from tests.polling import eventually

#: Tuesday 14 November 2023, 11:00 UTC: the middle of a working day.
TUESDAY_11 = datetime(2023, 11, 14, 11, 0, tzinfo=UTC)
TUESDAY_03 = datetime(2023, 11, 14, 3, 0, tzinfo=UTC)
SIX_WEEKS_BEFORE = to_ms(TUESDAY_11 - timedelta(weeks=6))
MINUTE = 60_000

#: Room R, with doorway "front" (its DPU "f" hangs inside R), "back" (its DPU "b" hangs outside
#: R) and "new" (DPU "n", installed an hour before the Tuesday 11:00 the tests look at).
TOPOLOGY = Topology(
    [Space("R", "Room")],
    [
        Doorway("front", "Front", (Link("R", 1),)),
        Doorway("back", "Back", (Link("R", -1),)),
        Doorway("new", "New", (Link("R", 1),)),
    ],
    [
        Assignment("f", "front", SIX_WEEKS_BEFORE),
        Assignment("b", "back", SIX_WEEKS_BEFORE),
        Assignment("n", "new", to_ms(TUESDAY_11) - 60 * MINUTE),
    ],
)


def working_hours(dpu_id: str, until: datetime) -> Iterator[Traversal]:
    """A traversal every 5 minutes, 08:00 to 18:00 on weekdays, from five weeks before the
    Tuesday up to ``until``; directions alternate (as many in as out)."""
    day = TUESDAY_11.replace(hour=0) - timedelta(weeks=5)
    seq = 0
    while day < until:
        if day.weekday() < 5:
            for minute in range(8 * 60, 18 * 60, 5):
                at = day + timedelta(minutes=minute)
                if at >= until:
                    break
                seq += 1
                yield Traversal(dpu_id, seq, to_ms(at), 1 if seq % 2 else -1)
        day += timedelta(days=1)


async def test_a_dpu_whose_seqs_jump(store: EventStore) -> None:
    now = to_ms(TUESDAY_11)
    seqs = [*range(1, 11), 14, 15, 40]  # 11-13 and 16-39 never arrived
    await store.log.append(
        Traversal("f", s, now - (50 - s) * MINUTE, 1 if s % 2 else -1) for s in seqs
    )
    health = await dpu_health(store, TOPOLOGY, "f", now)
    assert health.gaps == SeqGaps(stored=13, first=1, last=40, gaps=2, missing=3 + 24)


async def test_gaps_older_than_the_window_are_left_out(store: EventStore) -> None:
    now = to_ms(TUESDAY_11)
    eight_days = 8 * 24 * 60 * MINUTE
    await store.log.append(
        [
            Traversal("f", 1, now - eight_days, 1),
            Traversal("f", 5, now - eight_days + MINUTE, -1),  # a gap, but 8 days ago
            Traversal("f", 6, now - MINUTE, 1),
        ]
    )
    health = await dpu_health(store, TOPOLOGY, "f", now)
    assert health.gaps == SeqGaps(stored=1, first=6, last=6, gaps=0, missing=0)


async def test_quiet_in_the_middle_of_a_working_day(store: EventStore) -> None:
    # Four weeks of steady weekday traffic, then nothing since 10:00 on the Tuesday.
    await store.log.append(working_hours("f", until=TUESDAY_11 - timedelta(hours=1)))
    health = await dpu_health(store, TOPOLOGY, "f", to_ms(TUESDAY_11))
    quiet = health.quiet
    assert quiet.doorway == "front"
    assert quiet.hour_of_week == "Tue 11:00"
    assert quiet.weeks == 4
    assert quiet.busy_weeks == 4
    assert quiet.usual_per_hour == 12.0
    assert quiet.last_event == to_ms(TUESDAY_11 - timedelta(minutes=65))
    # 09:55 to 10:00 and 10:00 to 11:00 at 12 an hour: 1 + 12 expected, none came.
    assert quiet.expected == pytest.approx(13.0)
    assert quiet.p_silence == pytest.approx(math.exp(-13.0))
    assert quiet.quiet


async def test_not_quiet_while_traffic_flows(store: EventStore) -> None:
    await store.log.append(working_hours("f", until=TUESDAY_11))
    health = await dpu_health(store, TOPOLOGY, "f", to_ms(TUESDAY_11))
    assert health.quiet.expected == pytest.approx(1.0)  # five minutes since the last one
    assert not health.quiet.quiet


async def test_not_quiet_at_night(store: EventStore) -> None:
    # The same traffic, asked at 03:00 on the Tuesday: silent since 17:55 on Monday, as every
    # night. The usual rate from 18:00 to 03:00 is nil, so the silence is expected.
    await store.log.append(working_hours("f", until=TUESDAY_03))
    health = await dpu_health(store, TOPOLOGY, "f", to_ms(TUESDAY_03))
    quiet = health.quiet
    assert quiet.hour_of_week == "Tue 03:00"
    assert quiet.last_event == to_ms(TUESDAY_03 - timedelta(hours=9, minutes=5))
    assert quiet.usual_per_hour == 0.0
    assert quiet.busy_weeks == 0
    assert quiet.expected == pytest.approx(1.0)  # the five minutes to 18:00 on Monday
    assert not quiet.quiet


async def test_a_doorway_mounted_backwards(store: EventStore) -> None:
    now = to_ms(TUESDAY_11)
    # DPU b hangs outside R (placement -1): toward it (+1) is out of R. Backwards, it counts
    # 150 people going out and 10 coming in over the week.
    reports: list[Traversal] = []
    for i in range(160):
        direction: Direction = 1 if i < 150 else -1
        reports.append(Traversal("b", i + 1, now - (i + 1) * 30 * MINUTE, direction))
    await store.log.append(reports)
    health = await dpu_health(store, TOPOLOGY, "b", now)
    (found,) = health.imbalance
    assert (found.doorway, found.space_id, found.entrances, found.exits) == ("back", "R", 10, 150)
    assert found.ratio == pytest.approx(10 / 150)
    assert found.verdict is not None
    assert "far more out of 'R' than into it" in found.verdict
    assert "mounted backwards" in found.verdict
    assert health.imbalance_ratio == 15.0


async def test_a_balanced_doorway_and_a_lopsided_trickle_get_no_verdict(
    store: EventStore,
) -> None:
    now = to_ms(TUESDAY_11)
    await store.log.append(
        Traversal("f", i, now - i * 10 * MINUTE, 1 if i % 2 else -1) for i in range(1, 301)
    )
    # 30 in, none out: lopsided, but too few to say anything.
    await store.log.append(Traversal("b", i, now - i * 10 * MINUTE, -1) for i in range(1, 31))
    front = await dpu_health(store, TOPOLOGY, "f", now)
    back = await dpu_health(store, TOPOLOGY, "b", now)
    assert front.imbalance == (Imbalance("front", "R", 150, 150, None),)
    assert front.imbalance_ratio == 1.0
    assert back.imbalance == (Imbalance("back", "R", 30, 0, None),)
    assert back.imbalance[0].ratio is None
    assert back.imbalance_ratio == math.inf


async def test_a_brand_new_dpu_raises_no_alarm(store: EventStore) -> None:
    # The other doorways are busy; the new one has heard nothing in its first hour.
    await store.log.append(working_hours("f", until=TUESDAY_11))
    health = await dpu_health(store, TOPOLOGY, "n", to_ms(TUESDAY_11))
    assert health.gaps == SeqGaps(stored=0, first=None, last=None, gaps=0, missing=0)
    assert health.quiet.doorway == "new"
    assert health.quiet.weeks == 0
    assert health.quiet.last_event is None
    assert not health.quiet.quiet
    assert health.imbalance == (Imbalance("new", "R", 0, 0, None),)
    assert math.isnan(health.imbalance_ratio)


async def test_a_dpu_serving_no_doorway_now(store: EventStore) -> None:
    before = to_ms(TUESDAY_11 - timedelta(weeks=7))
    health = await dpu_health(store, TOPOLOGY, "f", before)
    assert health.quiet.doorway is None
    assert not health.quiet.quiet
    assert health.imbalance == ()


async def test_the_watch_sets_the_gauges(store: EventStore) -> None:
    await store.log.append(working_hours("f", until=TUESDAY_11 - timedelta(hours=1)))
    metrics = Metrics()
    watch = HealthWatch(store, TOPOLOGY, metrics, clock=lambda: to_ms(TUESDAY_11))
    for dpu_id in ("f", "b", "n"):
        assert await watch.refresh(dpu_id) is not None
    text = metrics.render().decode()
    assert 'headcount_dpu_quiet{dpu="f"} 1.0' in text
    assert 'headcount_dpu_quiet{dpu="n"} 0.0' in text
    assert 'headcount_dpu_sequence_gaps{dpu="f"} 0.0' in text
    assert 'headcount_dpu_imbalance_ratio{dpu="f"} 1.0' in text
    assert 'headcount_dpu_imbalance_ratio{dpu="b"} NaN' in text


async def test_hours_of_the_week_are_local_across_a_change_of_summer_time(
    store: EventStore,
) -> None:
    # A shop in Berlin open 10:00 to 12:00 local time on weekdays; summer time ended on 29
    # October 2023, inside the four weeks before the Tuesday. Local 10:00 was 08:00 UTC before
    # and 09:00 UTC after: the usual rate of "Tue 10:00" must still be the full 12 an hour.
    berlin = ZoneInfo("Europe/Berlin")
    topology = Topology(
        [Space("shop", "Shop", time_zone="Europe/Berlin")],
        [Doorway("door", "Door", (Link("shop", 1),))],
        [Assignment("s", "door", SIX_WEEKS_BEFORE)],
    )
    tuesday = datetime(2023, 11, 14, tzinfo=berlin)
    reports: list[Traversal] = []
    for day in range(35, -1, -1):
        date = tuesday - timedelta(days=day)
        if date.weekday() >= 5:
            continue
        for minute in range(10 * 60, 12 * 60, 5):
            at = datetime(date.year, date.month, date.day, tzinfo=berlin) + timedelta(
                minutes=minute
            )
            if day == 0 and at.hour >= 10:
                break  # silent from 10:00 on the Tuesday
            reports.append(Traversal("s", len(reports) + 1, to_ms(at), 1 if minute % 2 else -1))
    await store.log.append(reports)
    now = to_ms(datetime(2023, 11, 14, 10, 15, tzinfo=berlin))
    quiet = (await dpu_health(store, topology, "s", now)).quiet
    assert quiet.time_zone == "Europe/Berlin"
    assert quiet.hour_of_week == "Tue 10:00"
    assert (quiet.weeks, quiet.busy_weeks, quiet.usual_per_hour) == (4, 4, 12.0)
    # Silent since 11:55 on Monday: five minutes at 12 an hour, then a quarter of an hour.
    assert quiet.expected == pytest.approx(1.0 + 3.0)
    assert not quiet.quiet  # exp(-4) = 0.018: not yet
    later = (await dpu_health(store, topology, "s", now + 45 * MINUTE)).quiet
    assert later.expected == pytest.approx(1.0 + 12.0)
    assert later.quiet


async def test_the_watch_runs_over_every_dpu_until_cancelled(store: EventStore) -> None:
    metrics = Metrics()
    watch = HealthWatch(
        store, TOPOLOGY, metrics, clock=lambda: to_ms(TUESDAY_11), period_s=0, min_pause_s=0
    )

    def refreshed() -> bool:
        text = metrics.render().decode()
        return all(f'headcount_dpu_quiet{{dpu="{d}"}}' in text for d in ("f", "b", "n"))

    running = asyncio.create_task(watch.run(), name="dpu-health")
    await eventually(refreshed, what="every DPU's gauges set")
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_the_watch_leaves_the_figures_when_the_store_is_down(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = Metrics()
    watch = HealthWatch(store, TOPOLOGY, metrics, clock=lambda: to_ms(TUESDAY_11))
    assert await watch.refresh("f") is not None

    async def down(*args: object, **kwargs: object) -> SeqGaps:
        raise StoreError("the store is unavailable")

    monkeypatch.setattr(store.sensors, "seq_gaps", down)
    assert await watch.refresh("f") is None
    assert 'headcount_dpu_quiet{dpu="f"} 0.0' in metrics.render().decode()
