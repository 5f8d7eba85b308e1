"""The core routes' answers and parameters as models: what validates, shapes and documents
them (the document's ``components/schemas`` are named after these classes)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema

from headcount.domain.timefmt import SUPPORTED_RANGE, parse_iso
from headcount.errors import InvalidTimestampError
from headcount.http.api import Model, Query

TS_EXAMPLE = "2018-02-27T00:00:00.000Z"


#: A moment in an answer: ISO-8601 UTC with milliseconds.
Stamp = Annotated[
    str, WithJsonSchema({"type": "string", "format": "date-time", "examples": [TS_EXAMPLE]})
]


def _plus_hint(text: str) -> str:
    """A ``+`` in a URL query reads as a space: say so when that is what went wrong."""
    head, space, offset = text.strip().rpartition(" ")
    if not space:
        return ""
    try:
        parse_iso(f"{head}+{offset}", any_year=True)  # out of range or not, the '+' is the news
    except InvalidTimestampError:
        return ""
    return f" (a '+' in a URL query means a space: send the offset as %2B{offset})"


def _parse_ts(value: object) -> object:
    if not isinstance(value, str):
        return value
    try:
        return parse_iso(value)
    except InvalidTimestampError as e:
        raise ValueError(f"{e}{_plus_hint(value)}") from None


#: A moment given as ISO-8601 with an offset, read as milliseconds since the epoch (UTC).
Moment = Annotated[
    int,
    BeforeValidator(_parse_ts),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            # The supported range, as far as a pattern can say it: not the years 0000, 0001 or
            # 9999 (their edges are out of range in some offset or other).
            "pattern": "^(?!000[01]-|9999-)",
            "examples": [TS_EXAMPLE],
        }
    ),
]


class AtQuery(Query):
    """``?ts=``: a count at a past moment."""

    ts: Moment | None = Field(
        default=None,
        description=(
            "The moment to answer for, ISO-8601 with a UTC offset (`Z` or `+01:00`; a `+` must"
            f" be sent as `%2B`), from {SUPPORTED_RANGE} (UTC). Without it: now, from the live"
            " state."
        ),
        json_schema_extra={"x-one": "timestamp"},
    )


_SPACE_ID = "The space's id in the topology."
_COUNT = "People in the space (below zero only if it allows negatives)."
_PARENT = "The id of the enclosing space."
_CAPACITY = "How many people the space is meant to hold."
_ENTRANCES = "Traversals into the space, ever (a reset does not clear them)."
_EXITS = "Traversals out of the space, ever (a reset does not clear them)."


class Error(Model):
    """Every error."""

    detail: str = Field(description="What went wrong, for a person.")


class Count(Model):
    """A space's count at a moment."""

    space_id: str = Field(description=_SPACE_ID, examples=["A"])
    ts: Stamp = Field(description="The moment (UTC, milliseconds).")
    count: int = Field(description=_COUNT)


class CountDetail(Count):
    """A space's count at a moment, with the entrances and exits behind it."""

    entrances: int = Field(description=_ENTRANCES)
    exits: int = Field(description=_EXITS)


class SpaceSummary(Model):
    """A space and its live count."""

    id: str = Field(description=_SPACE_ID, examples=["A"])
    name: str = Field(description="The space's name.")
    parent: str | None = Field(description=_PARENT)
    capacity: int | None = Field(description=_CAPACITY)
    count: int = Field(description=_COUNT)


class SpaceList(Model):
    """Every space of the topology."""

    spaces: list[SpaceSummary]


class SpaceDoorway(Model):
    """A doorway that links the space."""

    id: str = Field(description="The doorway's id.")
    name: str = Field(description="The doorway's name.")
    sensor_placement: Literal[1, -1] = Field(
        description="+1: the DPU hangs inside this space; -1: outside it."
    )
    dpus: list[str] = Field(description="The DPUs assigned to the doorway now.")


class Space(Model):
    """A space's settings, its doorways and its live counts."""

    id: str = Field(description=_SPACE_ID, examples=["A"])
    name: str = Field(description="The space's name.")
    parent: str | None = Field(description=_PARENT)
    children: list[str] = Field(description="Ids of the spaces inside it.")
    time_zone: str = Field(
        description="IANA time zone of its daily reset.", examples=["Europe/Paris"]
    )
    daily_reset: str | None = Field(
        description="Local time of the daily reset to zero.", examples=["04:00"]
    )
    capacity: int | None = Field(description=_CAPACITY)
    allow_negative: bool = Field(description="Whether the count may go below zero.")
    doorways: list[SpaceDoorway]
    count: int = Field(description=_COUNT)
    entrances: int = Field(description=_ENTRANCES)
    exits: int = Field(description=_EXITS)


class Delivery(Model):
    """The DPU's last delivery report (its status map) against the store; null: no report yet,
    or firmware that sends none. `missing` above 0 means traversals the broker acknowledged to
    the DPU never reached the store, or were refused into quarantine."""

    first: int | None = Field(description="The seq its count starts at; null when sent is 0.")
    seq: int | None = Field(description="The highest seq it counted; null when sent is 0.")
    sent: int = Field(description="Distinct traversals with seq in [first, seq] it sent.")
    stored: int = Field(description="How many of those are in the store.")
    missing: int = Field(description="sent - stored (never below 0).")
    reported_at: Stamp = Field(description="When its report was compared with the store.")


class Dpu(Model):
    """A DPU: where it is now and what was last heard from it."""

    id: str = Field(description="The DPU's id.", examples=["283"])
    doorway: str | None = Field(description="The doorway it serves now.")
    online: bool | None = Field(description="Its last status message; null: never heard.")
    last_seen: Stamp | None = Field(description="When its last traversal message arrived.")
    last_seq: int | None = Field(description="The highest seq it reported.")
    delivery: Delivery | None


class DpuList(Model):
    """Every DPU the topology knows."""

    dpus: list[Dpu]


class Assignment(Model):
    """A period in which the DPU served a doorway: [valid_from, valid_until)."""

    doorway: str = Field(description="The doorway's id.")
    valid_from: Stamp = Field(description="Start (inclusive).")
    valid_until: Stamp | None = Field(description="End (exclusive); null: still in force.")


class DpuDetail(Dpu):
    """A DPU with every assignment it had."""

    assignments: list[Assignment]


class ShardHealth(Model):
    """The shard this process owns, or waits for as its standby (``serve --shard I/N``)."""

    index: int = Field(description="The shard's index I, from 0.")
    count: int = Field(description="How many shards the deployment has (N).")
    role: Literal["owner", "standby"] = Field(
        description="owner: it runs the shard's spaces; standby: it waits to take the shard"
        " over when its owner stops, and answers from the store and the owners' states."
    )


class Health(Model):
    """The service is serving."""

    status: Literal["ok"] = Field(description="Always ok.")
    spaces: int = Field(description="Spaces this process serves.")
    actor_restarts: int = Field(description="Space actors restarted after a crash since start.")
    shard: ShardHealth | None = Field(
        description="The shard this process owns or stands by for (null: a service built"
        " without shards, as in tests)."
    )
