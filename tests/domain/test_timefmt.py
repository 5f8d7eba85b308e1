"""Timestamps at the edges: what is read, what is refused, and the supported range."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from headcount.domain.timefmt import (
    EARLIEST_MS,
    LATEST_MS,
    SUPPORTED_RANGE,
    format_ms,
    from_ms,
    parse_iso,
    to_ms,
)
from headcount.errors import InvalidTimestampError

#: The largest offsets an aware datetime may have (Python refuses a whole day or more).
WIDEST = timedelta(hours=23, minutes=59)


def test_the_range_is_the_years_2_to_9998_utc() -> None:
    assert to_ms(datetime(2, 1, 1, tzinfo=UTC)) == EARLIEST_MS
    assert to_ms(datetime(9999, 1, 1, tzinfo=UTC)) - 1 == LATEST_MS
    assert f"{format_ms(EARLIEST_MS)} to {format_ms(LATEST_MS)}" == SUPPORTED_RANGE
    assert SUPPORTED_RANGE == "0002-01-01T00:00:00.000Z to 9998-12-31T23:59:59.999Z"


@pytest.mark.parametrize(
    "text",
    [
        "0001-01-01T00:00:00+14:00",
        "0001-01-01T00:00:00Z",
        "0001-12-31T23:59:59.999Z",
        "0002-01-01T13:59:59.999+14:00",
        "9998-12-31T23:59:59.999-00:01",
        "9999-01-01T00:00:00Z",
        "9999-12-31T23:59:59-14:00",
        "9999-12-31T23:59:59Z",
    ],
)
def test_a_time_outside_the_range_is_refused_naming_the_range(text: str) -> None:
    with pytest.raises(InvalidTimestampError) as caught:
        parse_iso(text)
    assert f"{text!r} is outside the supported range, {SUPPORTED_RANGE} (UTC)" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0002-01-01T00:00:00Z", EARLIEST_MS),
        ("0002-01-01T14:00:00+14:00", EARLIEST_MS),
        ("0001-12-31T12:00:00-12:00", EARLIEST_MS),
        ("9998-12-31T23:59:59.999Z", LATEST_MS),
        ("9998-12-31T09:59:59.999-14:00", LATEST_MS),
        ("9999-01-01T11:59:59.999+12:00", LATEST_MS),
    ],
)
def test_the_ends_of_the_range_are_read_from_any_offset(text: str, expected: int) -> None:
    assert parse_iso(text) == expected


@given(
    ms=st.integers(EARLIEST_MS, LATEST_MS),
    offset=st.timedeltas(-WIDEST, WIDEST).map(
        lambda t: timedelta(minutes=t // timedelta(minutes=1))
    ),
)
@example(ms=EARLIEST_MS, offset=-WIDEST)
@example(ms=EARLIEST_MS, offset=WIDEST)
@example(ms=LATEST_MS, offset=-WIDEST)
@example(ms=LATEST_MS, offset=WIDEST)
def test_every_supported_time_round_trips(ms: int, offset: timedelta) -> None:
    """What headcount writes it reads back, and so is the same instant at any UTC offset."""
    assert parse_iso(format_ms(ms)) == ms
    shown = from_ms(ms).astimezone(timezone(offset)).isoformat(timespec="milliseconds")
    assert parse_iso(shown) == ms
