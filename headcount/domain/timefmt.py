"""Timestamps at the edges: ISO-8601 text in, integer milliseconds (UTC) inside."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from headcount.errors import InvalidTimestampError

_EXAMPLE = "2018-02-26T17:00:00Z"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_iso(text: str) -> int:
    """ISO-8601 with a UTC offset (``Z`` or ``+01:00``) to milliseconds since the epoch.

    A time without an offset is refused: it would silently mean a different instant on
    every machine.
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
    return to_ms(moment)


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
