"""The fold rule, piece by piece, and its daily reset across DST changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from headcount.domain.events import Delta, Reset, SpaceEvent, fold_key
from headcount.domain.fold import (
    EMPTY,
    Folder,
    SpaceState,
    advance,
    daily_reset_instant,
    daily_reset_window,
    fold,
    fold_all,
    last_daily_reset,
)
from headcount.domain.timefmt import EARLIEST_MS, LATEST_MS, to_ms
from headcount.domain.topology import Space

ROOM = Space("room", "Room")
SIGNED = Space("signed", "Signed", allow_negative=True)
NIGHTLY = Space("nightly", "Nightly", time_zone="America/New_York", daily_reset=time(4, 0))
DAY = 86_400_000


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return to_ms(datetime(year, month, day, hour, minute, tzinfo=UTC))


def d(ts: int, delta: int, seq: int = 0, dpu: str = "1") -> Delta:
    return Delta(ts, dpu, seq, 1 if delta > 0 else -1)


def test_deltas_add_and_count_entrances_and_exits() -> None:
    state = fold_all(ROOM, EMPTY, [d(1, 1), d(2, 1), d(3, -1)])
    assert state == SpaceState(as_of=3, count=1, entrances=2, exits=1)


def test_count_is_floored_at_zero_after_every_event() -> None:
    # Leave first: floored to 0, so the later entry makes 1, not 0.
    assert fold_all(ROOM, EMPTY, [d(1, -1), d(2, 1)]).count == 1
    assert fold_all(ROOM, EMPTY, [d(1, -1), d(2, -1)]).exits == 2


def test_allow_negative_keeps_the_sign() -> None:
    assert fold_all(SIGNED, EMPTY, [d(1, -1), d(2, 1), d(3, -1)]).count == -1


def test_reset_sets_the_count_and_keeps_totals() -> None:
    state = fold_all(ROOM, EMPTY, [d(1, 1), d(2, 1), Reset("room", 3, 7), d(4, -1)])
    assert (state.count, state.entrances, state.exits) == (6, 2, 1)


def test_out_of_order_event_is_a_bug() -> None:
    with pytest.raises(ValueError, match="out of order"):
        fold(ROOM, SpaceState(as_of=10), d(9, 1))


def test_resets_come_before_traversals_in_the_same_millisecond() -> None:
    events: list[SpaceEvent] = [d(5, 1, seq=2, dpu="b"), Reset("room", 5, 3), d(5, 1, seq=1)]
    assert [type(e).__name__ for e in sorted(events, key=fold_key)] == ["Reset", "Delta", "Delta"]
    assert sorted(events, key=fold_key)[1] == d(5, 1, seq=1)


def test_daily_reset_zeroes_the_count_at_local_time() -> None:
    before = utc(2026, 1, 10, 8, 59)  # 03:59 in New York (EST, -5)
    after = utc(2026, 1, 10, 9, 0)  # 04:00
    state = fold(NIGHTLY, EMPTY, d(before, 1))
    assert advance(NIGHTLY, state, after - 1).count == 1
    reset = advance(NIGHTLY, state, after)
    assert (reset.count, reset.entrances) == (0, 1)


@pytest.mark.parametrize(
    ("zone", "day", "at", "expected"),
    [
        pytest.param("Europe/Paris", date(2026, 6, 1), time(4), utc(2026, 6, 1, 2), id="summer"),
        pytest.param("Europe/Paris", date(2026, 1, 1), time(4), utc(2026, 1, 1, 3), id="winter"),
        # 02:30 never happens on 2026-03-08 in New York: the clock jumps 02:00 -> 03:00 EDT.
        pytest.param(
            "America/New_York", date(2026, 3, 8), time(2, 30), utc(2026, 3, 8, 7), id="gap"
        ),
        # 01:30 happens twice on 2026-11-01: the reset is at the first (EDT, -4).
        pytest.param(
            "America/New_York",
            date(2026, 11, 1),
            time(1, 30),
            utc(2026, 11, 1, 5, 30),
            id="fold",
        ),
        pytest.param("UTC", date(2026, 2, 1), time(0, 0), utc(2026, 2, 1), id="utc-midnight"),
    ],
)
def test_daily_reset_instant(zone: str, day: date, at: time, expected: int) -> None:
    assert daily_reset_instant(zone, day, at) == expected


ZONES = ["America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]


@given(
    zone=st.sampled_from(ZONES),
    day=st.dates(date(2020, 1, 1), date(2030, 12, 31)),
    at=st.times().map(lambda t: t.replace(second=0, microsecond=0)),
)
def test_daily_reset_happens_once_a_local_day(zone: str, day: date, at: time) -> None:
    today = daily_reset_instant(zone, day, at)
    tomorrow = daily_reset_instant(zone, day + timedelta(days=1), at)
    tz = ZoneInfo(zone)
    local = datetime.fromtimestamp(today / 1000, tz)
    before = datetime.fromtimestamp((today - 1) / 1000, tz)
    assert local.date() == day
    assert local.replace(tzinfo=None) >= datetime.combine(day, at)
    # The first instant of the day at or after the reset time: a millisecond earlier is before
    # it (or on the previous day).
    assert before.replace(tzinfo=None) < datetime.combine(day, at)
    assert tomorrow > today
    space = Space("s", "S", time_zone=zone, daily_reset=at)
    assert last_daily_reset(space, today) == today
    assert last_daily_reset(space, tomorrow - 1) == today


events = st.lists(
    st.one_of(
        st.builds(d, st.integers(0, 50), st.sampled_from([1, -1]), st.integers(0, 10**6)),
        st.builds(Reset, st.just("room"), st.integers(0, 50), st.integers(0, 9)),
    ),
    max_size=40,
).map(lambda es: sorted(es, key=fold_key))


@given(events=events, cut=st.integers(0, 50), space=st.sampled_from([ROOM, SIGNED, NIGHTLY]))
def test_fold_resumes_from_any_intermediate_state(
    events: list[SpaceEvent], cut: int, space: Space
) -> None:
    """fold(all) == fold(fold(events up to a millisecond), the rest): what snapshots rely on."""
    head = [e for e in events if e.ts <= cut]
    tail = [e for e in events if e.ts > cut]
    assert fold_all(space, fold_all(space, EMPTY, head), tail) == fold_all(space, EMPTY, events)


@given(events=events, space=st.sampled_from([ROOM, SIGNED, NIGHTLY]), days=st.integers(0, 3))
def test_folder_folds_as_fold_does(events: list[SpaceEvent], space: Space, days: int) -> None:
    """The in-place folder a replay uses is the same rule, daily resets included."""
    spread = [
        Delta(e.ts * 3_600_000 * (days or 1), e.dpu_id, e.seq, e.delta)
        if isinstance(e, Delta)
        else Reset(e.space_id, e.ts * 3_600_000 * (days or 1), e.count)
        for e in events
    ]
    folder = Folder(space)
    for i, event in enumerate(spread, start=1):
        if isinstance(event, Delta):
            folder.delta(event.ts, event.delta)
        else:
            folder.reset(event.ts, event.count)
        assert folder.state() == fold_all(space, EMPTY, spread[:i])


@given(
    events=events,
    space=st.sampled_from([ROOM, SIGNED, NIGHTLY]),
    start=st.sampled_from([EMPTY, SpaceState(as_of=0, count=2, entrances=5, exits=3)]),
)
def test_folder_folds_rows_as_fold_does(
    events: list[SpaceEvent], space: Space, start: SpaceState
) -> None:
    """A past answer's tail folded as rows ``(kind, ts, value)`` in one call."""
    spread = [
        Delta(e.ts * 3_600_000, e.dpu_id, e.seq, e.delta)
        if isinstance(e, Delta)
        else Reset(e.space_id, e.ts * 3_600_000, e.count)
        for e in events
    ]
    rows = [(7, e.ts, e.count) if isinstance(e, Reset) else (3, e.ts, e.delta) for e in spread]
    folder = Folder(space, start)
    assert folder.fold_rows(rows, reset_kind=7) == len(rows)
    assert folder.state() == fold_all(space, start, spread)


def test_folder_refuses_rows_out_of_order() -> None:
    folder = Folder(ROOM, SpaceState(as_of=10, count=1))
    with pytest.raises(ValueError, match="out of order"):
        folder.fold_rows([(3, 11, 1), (3, 9, 1)], reset_kind=7)
    assert folder.state() == SpaceState(as_of=11, count=2, entrances=1)


def test_folder_refuses_an_event_out_of_order() -> None:
    folder = Folder(ROOM, SpaceState(as_of=10, count=1))
    with pytest.raises(ValueError, match="out of order"):
        folder.delta(9, 1)


#: Zones at the ends of the offsets: +14 all year, -12 all year, one with DST, and the widest
#: offsets tzdata has (local mean times before 1900: Manila -15:56, Metlakatla +15:13).
EDGE_ZONES = [
    "Pacific/Kiritimati",
    "Etc/GMT+12",
    "Etc/GMT-14",
    "Europe/Berlin",
    "Asia/Manila",
    "America/Metlakatla",
]


@given(
    ts=st.integers(EARLIEST_MS, LATEST_MS),
    zone=st.sampled_from(EDGE_ZONES),
    at=st.times().map(lambda t: t.replace(second=0, microsecond=0)),
    before=st.integers(0, 3 * DAY),
)
@example(ts=EARLIEST_MS, zone="Etc/GMT+12", at=time(23, 59), before=0)
@example(ts=EARLIEST_MS, zone="Pacific/Kiritimati", at=time(23, 59), before=0)
@example(ts=EARLIEST_MS, zone="Asia/Manila", at=time(0, 0), before=0)
@example(ts=LATEST_MS, zone="Etc/GMT+12", at=time(23, 59), before=3 * DAY)
@example(ts=LATEST_MS, zone="Pacific/Kiritimati", at=time(0, 0), before=3 * DAY)
@example(ts=LATEST_MS, zone="Etc/GMT-14", at=time(0, 0), before=0)
def test_every_supported_time_folds_in_every_zone(
    ts: int, zone: str, at: time, before: int
) -> None:
    """Near the ends of the supported range the daily reset looks at local days beyond them:
    nothing overflows, and the reset window holds the time."""
    space = Space("edge", "Edge", time_zone=zone, daily_reset=at)
    last, upcoming = daily_reset_window(space, ts)
    assert last <= ts < upcoming
    assert last_daily_reset(space, ts) == last
    first = max(EARLIEST_MS, ts - before)
    events = [d(first, 1), d(first, 1, seq=1), d(ts, -1, seq=2)]
    state = fold_all(space, EMPTY, events)
    assert advance(space, state, ts) == state
    folder = Folder(space)
    for event in events:
        folder.delta(event.ts, event.delta)
    assert folder.state() == state
    reset = last > first
    assert state.count == (0 if reset else 1)
