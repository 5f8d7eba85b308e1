"""Timestamps at the edges: ISO-8601 text in, integer milliseconds (UTC) inside."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final

from headcount.errors import InvalidTimestampError

#: The times headcount answers for and reads from people and clients: the years 2 to 9998 in
#: UTC, both ends included. ``datetime`` holds the years 1 to 9999, but the daily reset works
#: on local days: a time's local date is up to a day from its UTC date, the fold looks at the
#: local days before and after it, and a reset on one of those is up to another day away in
#: UTC (Python allows offsets up to 23:59; tzdata's widest, local mean times, about 15:56).
#: All of them must lie in the years 1 to 9999, so a few days' margin is needed at each end;
#: a whole year is as good and easier to state. Times before 1970 are fine: milliseconds are
#: signed throughout, the store's columns included.
EARLIEST_MS: Final = -62_104_060_800_000  # 0002-01-01T00:00:00.000Z
LATEST_MS: Final = 253_370_764_799_999  # 9998-12-31T23:59:59.999Z
#: The supported range as people read it, for error messages and the API's description.
SUPPORTED_RANGE: Final = "0002-01-01T00:00:00.000Z to 9998-12-31T23:59:59.999Z"

_EXAMPLE = "2018-02-26T17:00:00Z"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_iso(text: str, *, any_year: bool = False) -> int:
    """ISO-8601 with a UTC offset (``Z`` or ``+01:00``) to milliseconds since the epoch.

    A time without an offset is refused: it would silently mean a different instant on
    every machine. So is a time outside :data:`SUPPORTED_RANGE`, unless ``any_year``: then
    every time ``datetime`` reads is converted, for a caller that checks a range of its own
    (a topology's assignments, which are compared but never folded).
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidTimestampError(
            f"{text!r} is not an ISO-8601 timestamp; expected e.g. {_EXAMPLE!r}"
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidTimestampError(
            f"{text!r} has no UTC offset; add 'Z' or an offset such as '+01:00', e.g. {_EXAMPLE!r}"
        )
    ms = to_ms(moment)
    if not any_year and not EARLIEST_MS <= ms <= LATEST_MS:
        raise InvalidTimestampError(
            f"{text!r} is outside the supported range, {SUPPORTED_RANGE} (UTC)"
        )
    return ms


def to_ms(moment: datetime) -> int:
    """An aware datetime to integer milliseconds since the epoch (exact, no float rounding)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(ms: int) -> datetime:
    """Milliseconds since the epoch to an aware UTC datetime."""
    return _EPOCH + timedelta(milliseconds=ms)


def format_ms(ms: int) -> str:
    """Milliseconds since the epoch to ISO-8601 UTC with millisecond precision and ``Z``."""
    return from_ms(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_local(ms: int, zone: tzinfo) -> str:
    """Milliseconds since the epoch to ISO-8601 local time in ``zone`` with millisecond
    precision and the offset in force then (``+01:00``; ``+00:00`` for UTC itself)."""
    return from_ms(ms).astimezone(zone).isoformat(timespec="milliseconds")
