"""Time series: buckets on the local wall clock across DST, pages, and the buckets of a small
store spelled out (the random search against a naive fold is in test_counts_property.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from headcount.domain.events import Reset, Traversal
from headcount.domain.timefmt import format_local, parse_iso
from headcount.domain.topology import Topology
from headcount.eventstore import answers
from headcount.eventstore.store import EventStore
from headcount.history import History, SpaceView
from headcount.history.series import Bucket, boundaries, bucket_page, day_start, series

SEED_TOPOLOGY = Path(__file__).resolve().parents[2] / "examples" / "seed" / "topology.toml"
BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
HOUR = 3_600_000


def local(text: str) -> int:
    return parse_iso(text)


def hours_that_day(time_zone: str, day: date) -> int:
    start = day_start(time_zone, day)
    end = day_start(time_zone, date.fromordinal(day.toordinal() + 1))
    return len(bucket_page("1h", time_zone, start, end, 100).bounds) - 1


@pytest.mark.parametrize(
    ("time_zone", "day", "hours"),
    [
        (BERLIN, date(2026, 3, 29), 23),
        (BERLIN, date(2026, 10, 25), 25),
        (BERLIN, date(2026, 10, 26), 24),
        (NEW_YORK, date(2026, 3, 8), 23),
        (NEW_YORK, date(2026, 11, 1), 25),
        ("UTC", date(2026, 3, 29), 24),
    ],
    ids=["berlin-spring", "berlin-fall", "berlin-plain", "ny-spring", "ny-fall", "utc"],
)
def test_hourly_buckets_of_a_dst_day(time_zone: str, day: date, hours: int) -> None:
    assert hours_that_day(time_zone, day) == hours


def test_hourly_buckets_follow_the_wall_clock_across_the_change() -> None:
    zone = ZoneInfo(BERLIN)
    start, end = local("2026-10-25T00:00:00+02:00"), local("2026-10-25T05:00:00+01:00")
    bounds = bucket_page("1h", BERLIN, start, end, 100).bounds
    assert [format_local(b, zone) for b in bounds] == [
        "2026-10-25T00:00:00.000+02:00",
        "2026-10-25T01:00:00.000+02:00",
        "2026-10-25T02:00:00.000+02:00",
        "2026-10-25T02:00:00.000+01:00",  # the hour the clock repeats is a bucket again
        "2026-10-25T03:00:00.000+01:00",
        "2026-10-25T04:00:00.000+01:00",
        "2026-10-25T05:00:00.000+01:00",
    ]
    spring = bucket_page(
        "1h", BERLIN, local("2026-03-29T01:00:00+01:00"), local("2026-03-29T04:00:00+02:00"), 9
    )
    assert [b - a for a, b in pairwise(spring.bounds)] == [HOUR] * 2


def test_daily_buckets_run_midnight_to_midnight_23_or_25_hours() -> None:
    page = bucket_page(
        "1d", NEW_YORK, local("2026-03-07T12:00:00-05:00"), local("2026-03-09T00:00:01-04:00"), 9
    )
    zone = ZoneInfo(NEW_YORK)
    assert [format_local(b, zone)[:10] for b in page.bounds] == [
        "2026-03-07",
        "2026-03-08",
        "2026-03-09",
        "2026-03-10",
    ]
    lengths = [(b - a) // HOUR for a, b in pairwise(page.bounds)]
    assert lengths == [24, 23, 24]
    fall = bucket_page(
        "1d", NEW_YORK, local("2026-11-01T00:00:00-04:00"), local("2026-11-01T23:00:00-05:00"), 9
    )
    assert [(b - a) // HOUR for a, b in pairwise(fall.bounds)] == [25]


def test_weekly_buckets_start_monday_midnight_local() -> None:
    start = local("2026-03-05T10:00:00Z")  # a Thursday
    page = bucket_page("1w", BERLIN, start, local("2026-03-31T00:00:00Z"), 9)
    zone = ZoneInfo(BERLIN)
    starts = [datetime.fromtimestamp(b / 1000, zone) for b in page.bounds]
    assert all(s.weekday() == 0 and s.time() == time(0) for s in starts)
    assert starts[0].date() == date(2026, 3, 2)
    assert page.bounds[4] - page.bounds[3] == 7 * 24 * HOUR - HOUR  # the week of 2026-03-29


def test_first_bucket_at_or_before_start_and_last_holds_end_minus_one() -> None:
    start, end = local("2026-01-01T10:07:00Z"), local("2026-01-01T10:30:00Z")
    page = bucket_page("15m", "UTC", start, end, 100)
    assert page.bounds == (
        local("2026-01-01T10:00:00Z"),
        local("2026-01-01T10:15:00Z"),
        local("2026-01-01T10:30:00Z"),
    )
    assert page.next_start is None
    one_more = bucket_page("15m", "UTC", start, end + 1, 100)
    assert one_more.bounds[-1] == local("2026-01-01T10:45:00Z")


def test_pages_join_up_exactly() -> None:
    start, end = local("2026-03-28T22:10:00Z"), local("2026-03-29T05:00:00Z")
    whole = bucket_page("5m", BERLIN, start, end, 10_000).bounds
    joined: list[int] = []
    cursor: int | None = start
    while cursor is not None:
        page = bucket_page("5m", BERLIN, cursor, end, 7)
        assert len(page.bounds) <= 8
        joined += page.bounds[:-1]
        cursor = page.next_start
        assert cursor is None or cursor == page.bounds[-1]
    assert [*joined, whole[-1]] == list(whole)


def test_minute_boundaries_are_local_in_a_half_hour_zone() -> None:
    start = local("2026-01-01T00:00:00Z")
    bounds = boundaries("1h", "Asia/Kolkata", start)
    first = next(bounds)
    assert format_local(first, ZoneInfo("Asia/Kolkata")) == "2026-01-01T05:00:00.000+05:30"


def test_bad_pages_are_refused() -> None:
    with pytest.raises(ValueError, match="start < end"):
        bucket_page("1h", "UTC", 5, 5, 10)
    with pytest.raises(ValueError, match="page_size"):
        bucket_page("1h", "UTC", 5, 6, 10_001)


# -- the fold over a small store -----------------------------------------------------------

T = int(datetime(2026, 1, 5, 9, tzinfo=UTC).timestamp() * 1000)  # a Monday, 10:00 in Berlin
MIN = 60_000


@pytest.fixture
def seed() -> Topology:
    return Topology.from_toml(SEED_TOPOLOGY.read_text(), source=str(SEED_TOPOLOGY))


async def test_buckets_of_a_small_store(store: EventStore, seed: Topology) -> None:
    # Space A through DPU 283 (placement +1): in, in, out, out, out (floored), reset to 4.
    await store.log.append(
        [
            Traversal("283", 1, T - MIN, 1),  # before the window
            Traversal("283", 2, T + 5 * MIN, 1),
            Traversal("283", 3, T + 5 * MIN, -1),
            Traversal("283", 4, T + 20 * MIN, -1),
            Traversal("283", 5, T + 21 * MIN, -1),  # the floor holds the count at 0
        ]
    )
    await store.log.append_reset(Reset("A", T + 40 * MIN, 4))
    history = History(store, seed, snapshot_every=1, snapshot_lag_ms=0)
    await history.refresh_snapshots(now=T + 10 * HOUR)
    page = bucket_page("15m", BERLIN, T, T + 60 * MIN, 100)
    got = await series(history, "A", page.bounds)
    q = 15 * MIN
    assert got == [
        Bucket(T, T + q, 1, 1, 2, 1, 1, 2),
        Bucket(T + q, T + 2 * q, 0, 0, 1, 0, 2, 2),
        Bucket(T + 2 * q, T + 3 * q, 4, 0, 4, 0, 0, 1),
        Bucket(T + 3 * q, T + 4 * q, 4, 4, 4, 0, 0, 0),
    ]
    for bucket in got:  # each bucket's count is the past answer 1 ms before its end
        assert (await history.count_at("A", bucket.end - 1)).count == bucket.count


async def test_daily_reset_is_an_event_of_its_bucket(store: EventStore) -> None:
    topology = Topology.from_dict(
        {
            "spaces": [
                {"id": "R", "name": "R", "time_zone": BERLIN, "daily_reset": "04:00"},
            ],
            "doorways": [
                {"id": "D", "name": "D", "links": [{"space": "R", "sensor_placement": 1}]}
            ],
            "assignments": [{"dpu": "p", "doorway": "D", "valid_from": "2000-01-01T00:00:00Z"}],
        },
        source="test",
    )
    night = local("2026-01-06T00:00:00+01:00")
    await store.log.append([Traversal("p", 1, night, 1), Traversal("p", 2, night + 1, 1)])
    page = bucket_page("1h", BERLIN, night, local("2026-01-06T06:00:00+01:00"), 100)
    got = await series(History(store, topology), "R", page.bounds)
    assert [(b.count, b.min, b.max, b.events) for b in got] == [
        (2, 0, 2, 2),
        (2, 2, 2, 0),
        (2, 2, 2, 0),
        (2, 2, 2, 0),
        (0, 0, 2, 1),  # 04:00: the daily reset
        (0, 0, 0, 0),
    ]


async def test_a_window_longer_than_a_batch_is_read_in_batches(
    store: EventStore, seed: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-statement read in several batches (and on PostgreSQL, past the one-trip read,
    through a cursor) gives the buckets of one batch."""
    await store.log.append(
        [
            Traversal("283" if i % 3 else "423", i, T + i * MIN, 1 if i % 4 else -1)
            for i in range(90)
        ]
    )
    await store.log.append_reset(Reset("A", T + 45 * MIN, 7))
    history = History(store, seed, snapshot_every=10, snapshot_lag_ms=0)
    await history.refresh_snapshots(now=T + 10 * HOUR)
    page = bucket_page("5m", BERLIN, T + 20 * MIN, T + 90 * MIN, 100)
    view = SpaceView.of(seed, "A")
    async with store.answers.snapshot_window(
        "A", view.fingerprint, view.sources, before=page.bounds[0], end=page.bounds[-1]
    ) as window:
        assert window is not None  # the one-statement path answers this one
    whole = await series(history, "A", page.bounds)
    monkeypatch.setattr(answers, "_WINDOW_BATCH", 7)
    monkeypatch.setattr(answers, "_PG_ONE_TRIP", 11)
    assert await series(history, "A", page.bounds) == whole
    for bucket in whole:
        assert (await history.count_at("A", bucket.end - 1)).count == bucket.count
