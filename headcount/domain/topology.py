"""Topology: spaces, the doorways between them, and which DPU served which doorway when.

A :class:`Topology` is immutable and valid by construction: its constructor checks every entry
and raises :class:`~headcount.errors.TopologyError` listing *all* problems at once, so nothing
starts on a broken file. Resolution (:meth:`Topology.links_at`) is on the per-event hot path and
is a dictionary lookup plus a bisect.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import time as dt_time
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar, cast

from headcount.domain._topology_parse import Reader, check, load_toml, quote, write_toml
from headcount.errors import TopologyError, UnknownSpaceError

if TYPE_CHECKING:
    import datetime

Placement = Literal[1, -1]
_Entry = TypeVar("_Entry")

_SPACE_KEYS = (
    "id",
    "name",
    "parent",
    "time_zone",
    "daily_reset",
    "capacity",
    "alert_at",
    "allow_negative",
)
_DOORWAY_KEYS = ("id", "name", "links")
_LINK_KEYS = ("space", "sensor_placement")
_ASSIGNMENT_KEYS = ("dpu", "doorway", "valid_from", "valid_until")
_LINKS_EXAMPLE = 'links = [{ space = "A", sensor_placement = 1 }]'
_FINGERPRINT_VERSION = "headcount.topology.fingerprint/1"
#: The format of :meth:`Topology.to_compact`: changed whenever what it holds changes.
COMPACT_FORMAT = "headcount.topology.compact/1"


@dataclass(frozen=True, slots=True)
class Space:
    """An area whose occupancy is counted. ``daily_reset`` is local wall-clock time.
    ``alert_at`` is the fraction of ``capacity`` at which a capacity alert fires (``None``:
    at ``capacity`` itself); it decides no count."""

    id: str
    name: str
    parent: str | None = None
    time_zone: str = "UTC"
    daily_reset: datetime.time | None = None
    capacity: int | None = None
    allow_negative: bool = False
    alert_at: float | None = None


@dataclass(frozen=True, slots=True)
class Link:
    """A doorway's tie to one space: +1 if the DPU hangs inside that space, -1 if outside."""

    space_id: str
    sensor_placement: Placement


@dataclass(frozen=True, slots=True)
class Doorway:
    """An opening between areas; each link says which space a traversal under it changes."""

    id: str
    name: str
    links: tuple[Link, ...]


@dataclass(frozen=True, slots=True)
class Assignment:
    """DPU ``dpu_id`` served ``doorway_id`` during ``[valid_from, valid_until)`` (ms, UTC)."""

    dpu_id: str
    doorway_id: str
    valid_from: int
    valid_until: int | None = None


@dataclass(frozen=True, slots=True)
class Source:
    """One stretch of time in which one DPU's traversals reach one space."""

    dpu_id: str
    doorway_id: str
    sensor_placement: Placement
    valid_from: int
    valid_until: int | None


class _Timeline(NamedTuple):
    """A DPU's assignments in time order (it served several doorways, or one more than once)
    and the start of each."""

    starts: list[int]
    assignments: tuple[Assignment, ...]


class Topology:
    """Validated, immutable topology with indexes for per-event resolution."""

    __slots__ = (
        "_assignments",
        "_by_dpu",
        "_canonical",
        "_children",
        "_doorways",
        "_fingerprints",
        "_sources",
        "_spaces",
    )

    def __init__(
        self,
        spaces: Iterable[Space],
        doorways: Iterable[Doorway],
        assignments: Iterable[Assignment],
        *,
        source: str = "<topology>",
    ) -> None:
        """Check everything and build the indexes; raise :class:`TopologyError` if invalid."""
        space_list, doorway_list = tuple(spaces), tuple(doorways)
        self._assignments = tuple(assignments)
        report = Reader(source)
        check(
            list(enumerate(space_list)),
            list(enumerate(doorway_list)),
            list(enumerate(self._assignments)),
            report,
        )
        if report.problems:
            raise TopologyError(report.problems)
        self._index(space_list, doorway_list)

    @classmethod
    def _checked(
        cls,
        spaces: tuple[Space, ...],
        doorways: tuple[Doorway, ...],
        assignments: tuple[Assignment, ...],
        fingerprints: Mapping[str, str] | None = None,
    ) -> Topology:
        """A topology of entries :func:`check` has already found valid (it is not cheap: a
        file of 100,000 spaces is checked once, not twice)."""
        topology = cls.__new__(cls)
        topology._assignments = assignments
        topology._index(spaces, doorways, fingerprints)
        return topology

    def to_compact(self) -> dict[str, Any]:
        """This topology as plain data (lists of strings and numbers, a column per field;
        JSON as it is) that :meth:`from_compact` makes an equal topology of without reading
        TOML or checking anything again: what a cache of checked topologies keeps (a file of
        100,000 spaces takes seconds to read and check, its compact form a fraction of that,
        and columns leave no object per entry behind)."""
        spaces = list(self._spaces.values())
        doorways = list(self._doorways.values())
        return {
            "format": COMPACT_FORMAT,
            "spaces": [
                [s.id for s in spaces],
                [s.name for s in spaces],
                [s.parent for s in spaces],
                [s.time_zone for s in spaces],
                [
                    None if s.daily_reset is None else s.daily_reset.strftime("%H:%M")
                    for s in spaces
                ],
                [s.capacity for s in spaces],
                [s.allow_negative for s in spaces],
                [s.alert_at for s in spaces],
                [self._fingerprints[s.id] for s in spaces],
            ],
            "doorways": [
                [d.id for d in doorways],
                [d.name for d in doorways],
                [len(d.links) for d in doorways],
                [link.space_id for d in doorways for link in d.links],
                [link.sensor_placement for d in doorways for link in d.links],
            ],
            "assignments": [
                [a.dpu_id for a in self._assignments],
                [a.doorway_id for a in self._assignments],
                [a.valid_from for a in self._assignments],
                [a.valid_until for a in self._assignments],
            ],
        }

    @classmethod
    def from_compact(cls, data: Mapping[str, Any]) -> Topology:
        """The topology :meth:`to_compact` gave ``data`` for. Nothing is checked: ``data``
        must be what it gave, unchanged (a cache keyed by the document's digest); another
        format is a ``ValueError``."""
        if data.get("format") != COMPACT_FORMAT:
            raise ValueError(f"not a compact topology of format {COMPACT_FORMAT}")
        ids, names, parents, zones, resets, capacities, negatives, alerts, prints = data["spaces"]
        # JSON gives every occurrence of a value its own object: one of each is kept (an id,
        # a zone, a time), as a file read once holds (a fifth less memory at 100,000 spaces).
        same: dict[Any, Any] = {}
        one = same.setdefault
        times: dict[str, datetime.time] = {}
        spaces = tuple(
            Space(one(id_, id_), name, parent, one(zone, zone),
                  None if at is None else times.setdefault(at, _hh_mm(at)),
                  capacity, negative, alert_at)
            for id_, name, parent, zone, at, capacity, negative, alert_at in zip(
                ids, names, parents, zones, resets, capacities, negatives, alerts, strict=True
            )
        )  # fmt: skip
        door_ids, door_names, counts, linked, placements = data["doorways"]
        links = [
            Link(one(space_id, space_id), p) for space_id, p in zip(linked, placements, strict=True)
        ]
        doorways: list[Doorway] = []
        start = 0
        for id_, name, count in zip(door_ids, door_names, counts, strict=True):
            doorways.append(Doorway(one(id_, id_), name, tuple(links[start : start + count])))
            start += count
        dpu_ids, doorway_ids, starts, ends = data["assignments"]
        assignments = tuple(
            Assignment(dpu_id, one(doorway_id, doorway_id), one(valid_from, valid_from),
                       None if valid_until is None else one(valid_until, valid_until))
            for dpu_id, doorway_id, valid_from, valid_until in zip(
                dpu_ids, doorway_ids, starts, ends, strict=True
            )
        )  # fmt: skip
        return cls._checked(
            spaces, tuple(doorways), assignments, dict(zip(ids, prints, strict=True))
        )

    def _index(
        self,
        space_list: tuple[Space, ...],
        doorway_list: tuple[Doorway, ...],
        fingerprints: Mapping[str, str] | None = None,
    ) -> None:
        """Build the indexes of valid entries (``self._assignments`` set); ``fingerprints``
        where they are known already (:meth:`from_compact`)."""
        self._spaces = MappingProxyType({space.id: space for space in space_list})
        self._doorways = MappingProxyType({doorway.id: doorway for doorway in doorway_list})
        self._canonical = tuple(sorted(self._assignments, key=lambda a: (a.dpu_id, a.valid_from)))

        children: dict[str, list[str]] = {space_id: [] for space_id in self._spaces}
        for space in space_list:
            if space.parent is not None:
                children[space.parent].append(space.id)
        self._children = {space_id: tuple(kids) for space_id, kids in children.items()}

        timelines: dict[str, list[Assignment]] = {}
        sources: dict[str, list[Source]] = {space_id: [] for space_id in self._spaces}
        for a in self._canonical:
            timelines.setdefault(a.dpu_id, []).append(a)
            for link in self._doorways[a.doorway_id].links:
                placement = link.sensor_placement
                found = Source(a.dpu_id, a.doorway_id, placement, a.valid_from, a.valid_until)
                sources[link.space_id].append(found)
        # Most DPUs only ever served one doorway: their assignment is their whole timeline
        # (an index of four objects per DPU would be a fifth of a large topology's memory).
        self._by_dpu = {
            dpu_id: timeline[0]
            if len(timeline) == 1
            else _Timeline([a.valid_from for a in timeline], tuple(timeline))
            for dpu_id, timeline in timelines.items()
        }
        self._sources = {space_id: tuple(found) for space_id, found in sources.items()}
        self._fingerprints = (
            {
                space_id: _fingerprint(space, self._sources[space_id])
                for space_id, space in self._spaces.items()
            }
            if fingerprints is None
            else dict(fingerprints)
        )

    @property
    def spaces(self) -> Mapping[str, Space]:
        """Spaces by id, in file order (read-only)."""
        return self._spaces

    @property
    def doorways(self) -> Mapping[str, Doorway]:
        """Doorways by id, in file order (read-only)."""
        return self._doorways

    @property
    def assignments(self) -> tuple[Assignment, ...]:
        """Assignments in the order given."""
        return self._assignments

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<topology>") -> Topology:
        """Parse and validate a topology file; every problem is reported in one TopologyError."""
        return cls.from_dict(load_toml(text, source), source=source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<topology>") -> Topology:
        """Build from parsed TOML (or JSON) data with ``spaces``, ``doorways``, ``assignments``."""
        if not isinstance(data, Mapping):
            raise TopologyError(
                [f"{source}: the topology must be a table, not {type(data).__name__}."]
            )
        report = Reader(source)
        report.keys(data, "top level", ("spaces", "doorways", "assignments"))
        spaces = _read_all(report, data, "spaces", _read_space)
        doorways = _read_all(report, data, "doorways", _read_doorway)
        assignments = _read_all(report, data, "assignments", _read_assignment)
        check(spaces, doorways, assignments, report)
        if report.problems:
            raise TopologyError(report.problems)
        return cls._checked(
            tuple(space for _, space in spaces),
            tuple(doorway for _, doorway in doorways),
            tuple(assignment for _, assignment in assignments),
        )

    def to_toml(self) -> str:
        """This topology as TOML text that :meth:`from_toml` reads back to an equal topology."""
        return write_toml(self._spaces.values(), self._doorways.values(), self._assignments)

    def space(self, space_id: str) -> Space:
        """The space with this id; :class:`UnknownSpaceError` if there is none."""
        try:
            return self._spaces[space_id]
        except KeyError:
            raise UnknownSpaceError(space_id) from None

    def assignment_at(self, dpu_id: str, ts: int) -> Assignment | None:
        """The assignment of ``dpu_id`` in force at ``ts`` (ms), or None."""
        found = self._by_dpu.get(dpu_id)
        if found is None:
            return None
        if isinstance(found, _Timeline):
            i = bisect_right(found.starts, ts) - 1
            if i < 0:
                return None
            found = found.assignments[i]
        elif ts < found.valid_from:
            return None
        if found.valid_until is not None and ts >= found.valid_until:
            return None
        return found

    def links_at(self, dpu_id: str, ts: int) -> tuple[Link, ...]:
        """The links a traversal of ``dpu_id`` at ``ts`` reaches; ``()`` if unassigned then."""
        found = self.assignment_at(dpu_id, ts)
        return () if found is None else self._doorways[found.doorway_id].links

    def links_span(self, dpu_id: str, ts: int) -> tuple[tuple[Link, ...], int, int]:
        """:meth:`links_at` and the span ``[start, end)`` around ``ts`` in which the DPU's links
        stay the same (bounded by ``±2**63``): a long pass in time order routes a DPU's
        traversals without looking them up while they fall in it."""
        found = self._by_dpu.get(dpu_id)
        if found is None:
            return (), -(2**63), 2**63
        if isinstance(found, _Timeline):
            starts = found.starts
            i = bisect_right(starts, ts) - 1
            if i < 0:
                return (), -(2**63), starts[0]
            start, following = starts[i], starts[i + 1] if i + 1 < len(starts) else 2**63
            found = found.assignments[i]
        else:
            start, following = found.valid_from, 2**63
            if ts < start:
                return (), -(2**63), start
        links = self._doorways[found.doorway_id].links
        until = found.valid_until
        if until is None:
            return links, start, following
        if ts >= until:
            return (), until, following
        return links, start, min(until, following)

    def dpu_key(self, dpu_id: str) -> str:
        """The topology's own copy of ``dpu_id`` (``dpu_id`` itself for a DPU it does not
        know): what keeps a DPU's id for long keeps this one, not the copy of a row read."""
        found = self._by_dpu.get(dpu_id)
        if found is None:
            return dpu_id
        return (found.assignments[0] if isinstance(found, _Timeline) else found).dpu_id

    def knows_dpu(self, dpu_id: str) -> bool:
        """Whether ``dpu_id`` appears in any assignment."""
        return dpu_id in self._by_dpu

    def dpu_ids(self) -> frozenset[str]:
        """Every DPU id that appears in an assignment."""
        return frozenset(self._by_dpu)

    def sources(self, space_id: str) -> tuple[Source, ...]:
        """Every (DPU, interval, placement) reaching the space, sorted by (dpu_id, valid_from)."""
        try:
            return self._sources[space_id]
        except KeyError:
            raise UnknownSpaceError(space_id) from None

    def fingerprint(self, space_id: str) -> str:
        """Hex SHA-256 of everything that decides the space's fold (not name/parent/capacity)."""
        try:
            return self._fingerprints[space_id]
        except KeyError:
            raise UnknownSpaceError(space_id) from None

    def children(self, space_id: str) -> tuple[str, ...]:
        """Ids of the spaces whose parent is ``space_id``, in file order."""
        try:
            return self._children[space_id]
        except KeyError:
            raise UnknownSpaceError(space_id) from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Topology):
            return NotImplemented
        return (
            dict(self._spaces) == dict(other._spaces)
            and dict(self._doorways) == dict(other._doorways)
            and self._canonical == other._canonical
        )

    def __hash__(self) -> int:
        return hash(
            (frozenset(self._spaces.items()), frozenset(self._doorways.items()), self._canonical)
        )

    def __repr__(self) -> str:
        return (
            f"<Topology: {len(self._spaces)} spaces, {len(self._doorways)} doorways, "
            f"{len(self._assignments)} assignments>"
        )


@dataclass(slots=True)
class TopologyChoice:
    """The topology a command works under, with the document to record as the store's current
    one (when it came from a file; ``None`` when it came from the store, or once recorded by
    a command that runs on: ``serve`` drops it, 32 MB at 100,000 spaces) and where it came
    from, for messages."""

    topology: Topology
    document: str | None
    origin: str


def document_text(data: bytes, *, source: str) -> str:
    """A topology file's bytes as the text :meth:`Topology.from_toml` reads: UTF-8, or a
    :class:`TopologyError` saying where it is not (TOML files are UTF-8 by definition)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TopologyError(
            [
                f"{source}: is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start});"
                " save the file as UTF-8."
            ]
        ) from None


def _hh_mm(text: str) -> datetime.time:
    hours, minutes = text.split(":")
    return dt_time(int(hours), int(minutes))


def document_digest(document: str) -> str:
    """The digest that names a topology document (its exact text) in the store and in
    replays: SHA-256 of its UTF-8 bytes, in hex."""
    return hashlib.sha256(document.encode()).hexdigest()


def _fingerprint(space: Space, sources: tuple[Source, ...]) -> str:
    reset = None if space.daily_reset is None else space.daily_reset.strftime("%H:%M")
    payload = [
        _FINGERPRINT_VERSION,
        [space.id, space.time_zone, reset, space.allow_negative],
        [
            [s.dpu_id, s.doorway_id, s.sensor_placement, s.valid_from, s.valid_until]
            for s in sources
        ],
    ]
    encoded = json.dumps(payload, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(encoded.encode("ascii")).hexdigest()


def _read_all(
    report: Reader,
    data: Mapping[str, Any],
    key: str,
    read: Callable[[Reader, int, Mapping[str, Any]], _Entry | None],
) -> list[tuple[int, _Entry]]:
    """Every readable entry of the array of tables ``data[key]``, with its position."""
    found: list[tuple[int, _Entry]] = []
    for index, table in report.tables(data, key, "", f"[[{key}]] tables, one per entry"):
        entry = read(report, index, table)
        if entry is not None:
            found.append((index, entry))
    return found


def _read_space(report: Reader, index: int, entry: Mapping[str, Any]) -> Space | None:
    space_id = report.string(entry, "id", f"spaces[{index}]", required="lobby")
    if space_id is None:
        return None
    where = f"spaces[{index}] (id {quote(space_id)})"
    report.keys(entry, where, _SPACE_KEYS)
    capacity = report.integer(entry, "capacity", where, example=50, required=False)
    return Space(
        id=space_id,
        name=report.string(entry, "name", where, required="Lobby") or "",
        parent=report.string(entry, "parent", where),
        time_zone=report.string(entry, "time_zone", where) or "UTC",
        daily_reset=report.time_of_day(entry, "daily_reset", where),
        capacity=capacity,
        allow_negative=report.boolean(entry, "allow_negative", where) or False,
        alert_at=report.fraction(entry, "alert_at", where, example=0.9),
    )


def _read_doorway(report: Reader, index: int, entry: Mapping[str, Any]) -> Doorway | None:
    doorway_id = report.string(entry, "id", f"doorways[{index}]", required="front")
    if doorway_id is None:
        return None
    where = f"doorways[{index}] (id {quote(doorway_id)})"
    report.keys(entry, where, _DOORWAY_KEYS)
    name = report.string(entry, "name", where, required="Front door") or ""
    links: list[Link] = []
    for position, table in report.tables(entry, "links", f"{where} ", _LINKS_EXAMPLE):
        at = f"{where} links[{position}]"
        report.keys(table, at, _LINK_KEYS)
        space_id = report.string(table, "space", at, required="A")
        placement = report.integer(table, "sensor_placement", at, example=1, required=True)
        if space_id is not None and placement is not None:
            links.append(Link(space_id, cast("Placement", placement)))
    return Doorway(doorway_id, name, tuple(links))


def _read_assignment(report: Reader, index: int, entry: Mapping[str, Any]) -> Assignment | None:
    dpu_id = report.string(entry, "dpu", f"assignments[{index}]", required="283")
    where = f"assignments[{index}]" + ("" if dpu_id is None else f" (dpu {quote(dpu_id)})")
    report.keys(entry, where, _ASSIGNMENT_KEYS)
    doorway_id = report.string(entry, "doorway", where, required="front")
    valid_from = report.timestamp(entry, "valid_from", where, required=True)
    valid_until = report.timestamp(entry, "valid_until", where, required=False)
    if dpu_id is None or doorway_id is None or valid_from is None:
        return None
    if valid_until is None and "valid_until" in entry:
        return None
    return Assignment(dpu_id, doorway_id, valid_from, valid_until)
