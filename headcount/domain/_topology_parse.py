"""The topology file's shape: reading typed fields out of parsed TOML, and writing TOML back.

Private helpers for :mod:`headcount.domain.topology`: typed field reading, the semantic checks
behind the constructor, and the TOML writer. A :class:`Reader` never raises on bad input: it
records one sentence per problem and hands back ``None`` so that the caller can go on and
report every other problem in the same file.

Longer than most modules (about 530 lines) on purpose: every sentence a person reads about a
bad topology file is written here, and keeping the readers, the checks and their wording in
one place keeps those messages uniform.
"""

from __future__ import annotations

import datetime
import difflib
import json
import math
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from headcount.domain.timefmt import format_ms, parse_iso, to_ms
from headcount.errors import InvalidTimestampError, TopologyError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from headcount.domain.topology import Assignment, Doorway, Link, Space

_MIN_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z
_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_HH_MM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_TIMESTAMP_EXAMPLE = '"2018-01-01T00:00:00Z"'


def load_toml(text: str, source: str) -> dict[str, Any]:
    """Parse TOML text, turning a syntax error into a :class:`TopologyError` naming ``source``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(
            [f"{source}: is not valid TOML: {exc}; fix the syntax at that position."]
        ) from None


def quote(text: str) -> str:
    """``text`` in double quotes, escaped, for messages and labels."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'  # what json.dumps gives here, at a tenth of its cost
    return json.dumps(text, ensure_ascii=False)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``' (did you mean "x"?)'`` for the closest choice, or ``''`` if none is close."""
    candidates = list(choices)
    same = [choice for choice in candidates if choice.casefold() == word.casefold()]
    close = same or difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean {quote(close[0])}?)" if close else ""


def toml_string(text: str) -> str:
    """A TOML basic string holding ``text`` exactly (control characters escaped)."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def toml_timestamp(ms: int) -> str:
    """Milliseconds as a quoted ISO-8601 UTC string, without ``.000`` on whole seconds."""
    text = format_ms(ms)
    if text.endswith(".000Z"):
        text = text[: -len(".000Z")] + "Z"
    return toml_string(text)


def type_name(value: object) -> str:
    """The TOML word for the type of a parsed value."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, datetime.datetime):
        return "a date-time"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, datetime.time):
        return "a time"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    return type(value).__name__


def render(value: object) -> str:
    """A parsed value written roughly as TOML, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return repr(value)


class Reader:
    """Reads typed fields from parsed TOML tables, collecting problems instead of raising."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []
        self._times: dict[str, int] = {}

    def problem(self, where: str, text: str) -> None:
        """Record one problem: ``"<source>: <where>: <text>."``."""
        self.problems.append(f"{self.source}: {where}: {text}.")

    def keys(self, table: Mapping[str, Any], where: str, allowed: tuple[str, ...]) -> None:
        """Report every key of ``table`` that is not in ``allowed`` (typos must not pass)."""
        for key in table:
            if key not in allowed:
                self.problem(
                    where,
                    f"unknown key {quote(key)}{did_you_mean(key, allowed)}; "
                    f"the keys allowed here are {', '.join(allowed)}",
                )

    def tables(
        self, container: Mapping[str, Any], key: str, prefix: str, example: str
    ) -> list[tuple[int, Mapping[str, Any]]]:
        """The tables of the array ``container[key]`` with their positions; missing is empty."""
        value = container.get(key, [])
        if not isinstance(value, list):
            self.problem(
                f"{prefix}{key}",
                f"must be an array of tables, got {type_name(value)}; write it as {example}",
            )
            return []
        found: list[tuple[int, Mapping[str, Any]]] = []
        for index, entry in enumerate(value):
            if type(entry) is dict or isinstance(entry, Mapping):  # the ABC check is slow
                found.append((index, entry))
            else:
                self.problem(
                    f"{prefix}{key}[{index}]",
                    f"must be a table, got {type_name(entry)} {render(entry)}; "
                    f"write it as {example}",
                )
        return found

    def _missing(self, key: str, where: str, example: str) -> None:
        self.problem(where, f"{key} is missing; add a line such as {key} = {example}")

    def string(
        self, table: Mapping[str, Any], key: str, where: str, *, required: str | None = None
    ) -> str | None:
        """``table[key]`` if it is a string; ``required`` is an example value, if needed."""
        if key not in table:
            if required is not None:
                self._missing(key, where, toml_string(required))
            return None
        value = table[key]
        if isinstance(value, str):
            return value
        fix = (
            f"quote it: {key} = {toml_string(str(value))}"
            if isinstance(value, int) and not isinstance(value, bool)
            else f'write it in double quotes, e.g. {key} = "..."'
        )
        self.problem(
            where, f"{key} must be a string, got {type_name(value)} {render(value)}; {fix}"
        )
        return None

    def integer(
        self, table: Mapping[str, Any], key: str, where: str, *, example: int, required: bool
    ) -> int | None:
        """``table[key]`` if it is an integer (a boolean is not)."""
        if key not in table:
            if required:
                self._missing(key, where, str(example))
            return None
        value = table[key]
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        self.problem(
            where,
            f"{key} must be an integer, got {type_name(value)} {render(value)}; "
            f"write e.g. {key} = {example}",
        )
        return None

    def fraction(
        self, table: Mapping[str, Any], key: str, where: str, *, example: float
    ) -> float | None:
        """``table[key]`` as a number (an integer or a float, not a boolean)."""
        if key not in table:
            return None
        value = table[key]
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        self.problem(
            where,
            f"{key} must be a number, got {type_name(value)} {render(value)}; "
            f"write e.g. {key} = {example} (no quotes)",
        )
        return None

    def boolean(self, table: Mapping[str, Any], key: str, where: str) -> bool | None:
        """``table[key]`` if it is a boolean."""
        if key not in table:
            return None
        value = table[key]
        if isinstance(value, bool):
            return value
        self.problem(
            where,
            f"{key} must be true or false, got {type_name(value)} {render(value)}; "
            f"write e.g. {key} = true (no quotes)",
        )
        return None

    def time_of_day(self, table: Mapping[str, Any], key: str, where: str) -> datetime.time | None:
        """``table[key]`` as a wall-clock time, from ``"HH:MM"`` or a whole-minute TOML time."""
        if key not in table:
            return None
        value = table[key]
        if isinstance(value, str) and (match := _HH_MM.fullmatch(value)):
            return datetime.time(int(match[1]), int(match[2]))
        if isinstance(value, datetime.time) and value.second == value.microsecond == 0:
            return value.replace(tzinfo=None)
        self.problem(
            where,
            f'{key} {render(value)} is not a time of day written "HH:MM" between '
            f'"00:00" and "23:59"; write e.g. {key} = "04:00"',
        )
        return None

    def timestamp(
        self, table: Mapping[str, Any], key: str, where: str, *, required: bool
    ) -> int | None:
        """``table[key]`` as milliseconds: ISO-8601 text or a TOML date-time, with an offset."""
        if key not in table:
            if required:
                self._missing(key, where, _TIMESTAMP_EXAMPLE)
            return None
        value = table[key]
        if isinstance(value, str):
            known = self._times.get(value)  # a file repeats its dates (one per DPU, often)
            if known is not None:
                return known
            try:
                ms = self._times[value] = parse_iso(value, any_year=True)
            except InvalidTimestampError as exc:
                self.problem(where, f"{key} is not a timestamp: {exc}")
                return None
            return ms
        if isinstance(value, datetime.datetime) and value.utcoffset() is not None:
            return to_ms(value)
        if isinstance(value, datetime.datetime):
            text = f"{key} {render(value)} has no UTC offset, so it would mean a different instant"
            self.problem(where, f"{text} on every machine; add Z or an offset such as +01:00")
            return None
        self.problem(
            where,
            f"{key} must be a timestamp with a UTC offset, got {type_name(value)} "
            f"{render(value)}; write e.g. {key} = {_TIMESTAMP_EXAMPLE}",
        )
        return None


def _space_label(index: int, space: Space) -> str:
    return f"spaces[{index}] (id {quote(space.id)})"


def _doorway_label(index: int, doorway: Doorway) -> str:
    return f"doorways[{index}] (id {quote(doorway.id)})"


def _assignment_label(index: int, assignment: Assignment) -> str:
    return f"assignments[{index}] (dpu {quote(assignment.dpu_id)})"


def _span(assignment: Assignment) -> str:
    end = "open end" if assignment.valid_until is None else toml_timestamp(assignment.valid_until)
    return f"[{toml_timestamp(assignment.valid_from)}, {end})"


def _unknown(kind: str, ident: str, known: Iterable[str], table: str) -> str:
    hint = did_you_mean(ident, known)
    return f"{kind} {quote(ident)}{hint} is not defined; use the id of a {table} entry"


def check(
    spaces: Sequence[tuple[int, Space]],
    doorways: Sequence[tuple[int, Doorway]],
    assignments: Sequence[tuple[int, Assignment]],
    report: Reader,
) -> None:
    """Record every semantic problem of typed entries (``index`` is the entry's file position)."""
    by_id = _check_spaces(spaces, report)
    doorway_ids = _check_doorways(doorways, by_id, report)
    _check_assignments(assignments, doorway_ids, report)


def _check_spaces(
    spaces: Sequence[tuple[int, Space]], report: Reader
) -> dict[str, tuple[int, Space]]:
    by_id: dict[str, tuple[int, Space]] = {}
    for index, space in spaces:
        # The label is formatted only for an entry with a problem (most have none).
        for text in _space_problems(space, by_id):
            report.problem(_space_label(index, space), text)
        by_id.setdefault(space.id, (index, space))
    for index, space in spaces:
        if space.parent is not None and space.parent not in by_id:
            text = _unknown("parent", space.parent, by_id, "[[spaces]]")
            report.problem(_space_label(index, space), f"{text}, or remove parent")
    _check_cycles(by_id, report)
    return by_id


def _space_problems(space: Space, by_id: Mapping[str, tuple[int, Space]]) -> Iterator[str]:
    """What is wrong with one space (``by_id``: the spaces before it)."""
    if not space.id:
        yield 'id is empty; give the space a non-empty id such as "lobby"'
    if space.id in by_id:
        first = by_id[space.id][0]
        yield f"id is already used by spaces[{first}]; give each space its own id"
    try:
        ZoneInfo(space.time_zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        hint = did_you_mean(space.time_zone, available_timezones())
        yield (
            f"time_zone {quote(space.time_zone)}{hint} is not an IANA time zone; "
            'use a name such as "Europe/Paris" or "UTC"'
        )
    reset = space.daily_reset
    if reset is not None and (reset.second or reset.microsecond or reset.tzinfo):
        yield (
            f"daily_reset {reset.isoformat()} must be a whole minute of local wall-clock time "
            "without a time zone, e.g. datetime.time(4, 0)"
        )
    if space.capacity is not None and (type(space.capacity) is not int or space.capacity < 0):
        yield f"capacity {space.capacity!r} is not an integer >= 0; fix or omit it"
    yield from _alert_at_problems(space)


#: The largest ``alert_at``: an alert at ten times a space's capacity is surely a typo.
ALERT_AT_MAX = 10.0


def _alert_at_problems(space: Space) -> Iterator[str]:
    alert_at = space.alert_at
    if alert_at is None:
        return
    if not (math.isfinite(alert_at) and 0 < alert_at <= ALERT_AT_MAX):
        yield (
            f"alert_at {alert_at!r} is not a fraction of capacity above 0 and at most"
            f" {ALERT_AT_MAX:g}; write e.g. alert_at = 0.9 (alert at 90 % of capacity)"
        )
    elif space.capacity is None:
        yield "alert_at is a fraction of capacity, and the space has none; add capacity"


def _check_doorways(
    doorways: Sequence[tuple[int, Doorway]], spaces: Mapping[str, object], report: Reader
) -> dict[str, int]:
    doorway_ids: dict[str, int] = {}
    for index, doorway in doorways:
        # Labels are formatted only for an entry with a problem (most have none).
        for position, text in _doorway_problems(doorway, doorway_ids, spaces):
            where = _doorway_label(index, doorway)
            report.problem(where if position is None else f"{where} links[{position}]", text)
        doorway_ids.setdefault(doorway.id, index)
    return doorway_ids


def _doorway_problems(
    doorway: Doorway, doorway_ids: Mapping[str, int], spaces: Mapping[str, object]
) -> Iterator[tuple[int | None, str]]:
    """What is wrong with one doorway (``doorway_ids``: the doorways before it), each with the
    position of the link it is about (``None``: the doorway itself)."""
    if not doorway.id:
        yield None, 'id is empty; give the doorway a non-empty id such as "front"'
    if doorway.id in doorway_ids:
        first = doorway_ids[doorway.id]
        yield None, f"id is already used by doorways[{first}]; give each doorway its own id"
    linked: dict[str, int] = {}
    for position, link in enumerate(doorway.links):
        if link.space_id not in spaces:
            yield position, _unknown("space", link.space_id, spaces, "[[spaces]]")
        if link.space_id in linked:
            yield (
                position,
                f"links space {quote(link.space_id)} again (already in links"
                f"[{linked[link.space_id]}]); a doorway links each space at most once",
            )
        linked.setdefault(link.space_id, position)
        placement: object = link.sensor_placement
        if type(placement) is not int or placement not in (1, -1):
            yield (
                position,
                f"sensor_placement is {placement!r}; it must be 1 (the DPU hangs inside space "
                f"{quote(link.space_id)}) or -1 (it hangs outside)",
            )


def _check_assignments(
    assignments: Sequence[tuple[int, Assignment]], doorways: Mapping[str, int], report: Reader
) -> None:
    per_dpu: dict[str, list[tuple[int, Assignment]]] = {}
    for index, assignment in assignments:
        # The label is formatted only for an entry with a problem (most have none).
        usable = True
        for text, fatal in _assignment_problems(assignment, doorways):
            report.problem(_assignment_label(index, assignment), text)
            usable = usable and not fatal
        if usable:
            per_dpu.setdefault(assignment.dpu_id, []).append((index, assignment))
    for entries in per_dpu.values():
        if len(entries) == 1:
            continue
        entries.sort(key=lambda entry: (entry[1].valid_from, entry[0]))
        latest = entries[0]
        for entry in entries[1:]:
            end = latest[1].valid_until
            if end is None or end > entry[1].valid_from:
                report.problem(
                    _assignment_label(*entry),
                    f"{_span(entry[1])} overlaps {_assignment_label(*latest)} {_span(latest[1])}; "
                    "a DPU serves one doorway at a time, so end the earlier one (valid_until) "
                    "no later than the start of the later one",
                )
            if end is not None and (entry[1].valid_until is None or entry[1].valid_until > end):
                latest = entry


def _assignment_problems(
    assignment: Assignment, doorways: Mapping[str, int]
) -> Iterator[tuple[str, bool]]:
    """What is wrong with one assignment, each problem with whether it keeps the assignment
    out of the overlap check (its span is not one)."""
    if not assignment.dpu_id:
        yield 'dpu is empty; give the DPU id as a non-empty string such as "283"', False
    if assignment.doorway_id not in doorways:
        yield _unknown("doorway", assignment.doorway_id, doorways, "[[doorways]]"), False
    ends = [assignment.valid_from, assignment.valid_until]
    if any(ms is not None and not _MIN_MS <= ms <= _MAX_MS for ms in ends):
        yield "valid_from and valid_until must lie between the years 1 and 9999", True
        return
    until = assignment.valid_until
    if until is not None and until <= assignment.valid_from:
        yield (
            f"valid_until {toml_timestamp(until)} is not after valid_from "
            f"{toml_timestamp(assignment.valid_from)}; make it later, or omit it if the DPU "
            "is still there",
            True,
        )


def _check_cycles(by_id: Mapping[str, tuple[int, Space]], report: Reader) -> None:
    """Report each cycle of parent links once, on its member that comes first in the file."""
    done: set[str] = set()
    for start in by_id:
        path: list[str] = []
        current: str | None = start
        while current is not None and current in by_id and current not in done:
            if current in path:
                cycle = path[path.index(current) :]
                first = min(cycle, key=lambda ident: by_id[ident][0])
                turn = cycle.index(first)
                ring = [*cycle[turn:], *cycle[:turn], first]
                index, space = by_id[first]
                report.problem(
                    _space_label(index, space),
                    f"parent links form a cycle {' -> '.join(quote(i) for i in ring)}; a space "
                    "cannot contain itself, so remove or change one of these parents",
                )
                break
            path.append(current)
            current = by_id[current][1].parent
        done.update(path)


def _inline_link(link: Link) -> str:
    space = toml_string(link.space_id)
    return f"{{ space = {space}, sensor_placement = {link.sensor_placement} }}"


def write_toml(
    spaces: Iterable[Space], doorways: Iterable[Doorway], assignments: Iterable[Assignment]
) -> str:
    """The topology file for these entries, in the order given."""
    blocks: list[list[str]] = []
    for space in spaces:
        lines = [
            "[[spaces]]",
            f"id = {toml_string(space.id)}",
            f"name = {toml_string(space.name)}",
        ]
        if space.parent is not None:
            lines.append(f"parent = {toml_string(space.parent)}")
        if space.time_zone != "UTC":
            lines.append(f"time_zone = {toml_string(space.time_zone)}")
        if space.daily_reset is not None:
            lines.append(f'daily_reset = "{space.daily_reset.strftime("%H:%M")}"')
        if space.capacity is not None:
            lines.append(f"capacity = {space.capacity}")
        if space.alert_at is not None:
            lines.append(f"alert_at = {space.alert_at!r}")
        if space.allow_negative:
            lines.append("allow_negative = true")
        blocks.append(lines)
    for doorway in doorways:
        links = ", ".join(_inline_link(link) for link in doorway.links)
        blocks.append(
            [
                "[[doorways]]",
                f"id = {toml_string(doorway.id)}",
                f"name = {toml_string(doorway.name)}",
                f"links = [{links}]",
            ]
        )
    for a in assignments:
        lines = [
            "[[assignments]]",
            f"dpu = {toml_string(a.dpu_id)}",
            f"doorway = {toml_string(a.doorway_id)}",
            f"valid_from = {toml_timestamp(a.valid_from)}",
        ]
        if a.valid_until is not None:
            lines.append(f"valid_until = {toml_timestamp(a.valid_until)}")
        blocks.append(lines)
    return "\n".join("\n".join(lines) + "\n" for lines in blocks)
