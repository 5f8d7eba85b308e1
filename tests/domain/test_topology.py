"""Topology: loading, validation messages, resolution by time, sources and fingerprints."""

from __future__ import annotations

import copy
import datetime
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headcount.domain.timefmt import parse_iso
from headcount.domain.topology import Assignment, Doorway, Link, Source, Space, Topology
from headcount.errors import TopologyError, UnknownSpaceError

if TYPE_CHECKING:
    from collections.abc import Callable

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "topology.toml"
T2018 = parse_iso("2018-01-01T00:00:00Z")
T2019 = parse_iso("2019-01-01T00:00:00Z")
FEB = parse_iso("2018-02-26T17:00:00Z")


def seed() -> Topology:
    return Topology.from_toml(SEED.read_text(encoding="utf-8"), source=str(SEED))


def problems_of(text: str, source: str = "site.toml") -> list[str]:
    with pytest.raises(TopologyError) as caught:
        Topology.from_toml(text, source=source)
    problems = caught.value.problems
    assert problems, "a TopologyError must list at least one problem"
    assert all(problem.startswith(f"{source}: ") for problem in problems)
    return problems


# --- the seed file -----------------------------------------------------------------------------


def test_seed_loads_and_resolves() -> None:
    topology = seed()
    assert list(topology.spaces) == ["A", "B"]
    assert list(topology.doorways) == ["X", "Z"]
    assert topology.links_at("423", FEB) == (Link("A", 1), Link("B", -1))
    assert topology.links_at("283", FEB) == (Link("A", 1),)
    assert topology.links_at("423", T2018 - 1) == ()
    assert topology.links_at("283", T2018) == (Link("A", 1),)
    assert topology.links_at("999", FEB) == ()
    assert topology.assignment_at("423", FEB) == Assignment("423", "Z", T2018)
    assert topology.assignment_at("423", T2018 - 1) is None
    assert topology.knows_dpu("283")
    assert not topology.knows_dpu("999")
    assert topology.dpu_ids() == frozenset({"283", "423"})


def test_seed_to_toml_reproduces_the_file() -> None:
    assert seed().to_toml() == SEED.read_text(encoding="utf-8")


def test_space_lookup_and_children() -> None:
    topology = Topology.from_toml(
        """
        [[spaces]]
        id = "building"
        name = "Building"
        [[spaces]]
        id = "floor1"
        name = "Floor 1"
        parent = "building"
        time_zone = "Europe/Paris"
        daily_reset = "04:00"
        capacity = 50
        allow_negative = true
        [[spaces]]
        id = "floor2"
        name = "Floor 2"
        parent = "building"
        """
    )
    assert topology.space("floor1") == Space(
        "floor1", "Floor 1", "building", "Europe/Paris", datetime.time(4, 0), 50, True
    )
    assert topology.children("building") == ("floor1", "floor2")
    assert topology.children("floor1") == ()
    for lookup in (topology.space, topology.children, topology.sources, topology.fingerprint):
        with pytest.raises(UnknownSpaceError):
            lookup("cellar")


def test_alert_at_is_read_and_written_back() -> None:
    topology = Topology.from_toml(
        '[[spaces]]\nid = "A"\nname = "A"\ncapacity = 40\nalert_at = 0.75\n'
        '[[spaces]]\nid = "B"\nname = "B"\ncapacity = 40\nalert_at = 1\n'
    )
    assert topology.space("A").alert_at == 0.75
    assert topology.space("B").alert_at == 1.0
    assert Topology.from_toml(topology.to_toml()) == topology


def test_empty_file_is_an_empty_topology() -> None:
    topology = Topology.from_toml("")
    assert dict(topology.spaces) == {}
    assert topology.to_toml() == ""
    assert Topology.from_toml(topology.to_toml()) == topology


def test_toml_values_for_times_are_accepted() -> None:
    topology = Topology.from_toml(
        """
        [[spaces]]
        id = "A"
        name = "A"
        daily_reset = 04:30:00
        [[doorways]]
        id = "X"
        name = "X"
        [[assignments]]
        dpu = "1"
        doorway = "X"
        valid_from = 2018-01-01T01:00:00+01:00
        valid_until = 2019-01-01T00:00:00.250Z
        """
    )
    assert topology.space("A").daily_reset == datetime.time(4, 30)
    assert topology.doorways["X"].links == ()
    assert topology.assignments == (Assignment("1", "X", T2018, T2019 + 250),)
    assert Topology.from_toml(topology.to_toml()) == topology


def test_assignments_may_span_every_year_datetime_holds() -> None:
    """Assignments are compared, never folded: their range is the years 1 to 9999, wider than
    the times the service answers for, and to_toml (which writes strings) reads back."""
    text = """
        [[doorways]]
        id = "X"
        name = "X"
        [[assignments]]
        dpu = "1"
        doorway = "X"
        valid_from = "0001-01-01T00:00:00Z"
        valid_until = "9999-12-31T23:59:59.999Z"
        """
    topology = Topology.from_toml(text)
    assert topology.assignments == (Assignment("1", "X", -62_135_596_800_000, 253_402_300_799_999),)
    assert Topology.from_toml(topology.to_toml()) == topology


def test_mappings_are_read_only() -> None:
    topology = seed()
    with pytest.raises(TypeError):
        topology.spaces["C"] = Space("C", "C")  # type: ignore[index]


# --- validation --------------------------------------------------------------------------------

SPACE_A = '[[spaces]]\nid = "A"\nname = "A"\n'
DOOR_X = '[[doorways]]\nid = "X"\nname = "X"\nlinks = [{ space = "A", sensor_placement = 1 }]\n'


def assign(dpu: str = '"283"', start: str = "2018-01-01T00:00:00Z", end: str = "") -> str:
    until = f'valid_until = "{end}"\n' if end else ""
    return f'[[assignments]]\ndpu = {dpu}\ndoorway = "X"\nvalid_from = "{start}"\n{until}'


INVALID = [
    pytest.param(
        SPACE_A + SPACE_A,
        ['spaces[1] (id "A")', "already used by spaces[0]"],
        id="duplicate-space-id",
    ),
    pytest.param(
        SPACE_A + DOOR_X + DOOR_X,
        ['doorways[1] (id "X")', "already used by doorways[0]"],
        id="duplicate-doorway-id",
    ),
    pytest.param(
        SPACE_A + '[[spaces]]\nid = "B"\nname = "B"\nparent = "a"\n',
        ['spaces[1] (id "B")', 'parent "a"', 'did you mean "A"?', "is not defined"],
        id="unknown-parent",
    ),
    pytest.param(
        '[[spaces]]\nid = "lobby"\nname = "L"\n'
        '[[doorways]]\nid = "X"\nname = "X"\nlinks = [{ space = "loby", sensor_placement = 1 }]',
        ['doorways[0] (id "X") links[0]', 'space "loby"', 'did you mean "lobby"?'],
        id="unknown-link-space",
    ),
    pytest.param(
        SPACE_A + DOOR_X + assign().replace('doorway = "X"', 'doorway = "Y"'),
        ['assignments[0] (dpu "283")', 'doorway "Y"', "[[doorways]]"],
        id="unknown-doorway",
    ),
    pytest.param(
        SPACE_A + DOOR_X.replace("sensor_placement = 1", "sensor_placement = 0"),
        ['doorways[0] (id "X") links[0]', "sensor_placement is 0", "must be 1", "or -1"],
        id="placement-zero",
    ),
    pytest.param(
        SPACE_A + DOOR_X.replace("sensor_placement = 1", "sensor_placement = 2"),
        ["sensor_placement is 2", "must be 1"],
        id="placement-two",
    ),
    pytest.param(
        SPACE_A + DOOR_X.replace("sensor_placement = 1", "sensor_placement = true"),
        ["links[0]", "sensor_placement must be an integer", "got a boolean true"],
        id="placement-boolean",
    ),
    pytest.param(
        SPACE_A + DOOR_X.replace("sensor_placement = 1", 'sensor_placement = "+1"'),
        ["sensor_placement must be an integer", 'got a string "+1"'],
        id="placement-string",
    ),
    pytest.param(
        SPACE_A + '[[doorways]]\nid = "X"\nname = "X"\nlinks = [{ space = "A" }]\n',
        ["links[0]", "sensor_placement is missing"],
        id="placement-missing",
    ),
    pytest.param(
        SPACE_A
        + '[[doorways]]\nid = "X"\nname = "X"\n'
        + 'links = [{ space = "A", sensor_placement = 1 }, { space = "A", sensor_placement = -1 }]',
        ["links[1]", 'links space "A" again', "links[0]", "at most once"],
        id="same-space-twice",
    ),
    pytest.param(
        SPACE_A + '[[doorways]]\nid = "X"\nname = "X"\nlinks = { space = "A" }\n',
        ['doorways[0] (id "X") links', "must be an array of tables", "got a table"],
        id="links-not-array",
    ),
    pytest.param(
        SPACE_A + DOOR_X + assign(dpu="283"),
        ["assignments[0]: dpu must be a string, got an integer 283", 'dpu = "283"'],
        id="dpu-integer",
    ),
    pytest.param(
        SPACE_A + DOOR_X + assign(dpu='""'),
        ['assignments[0] (dpu "")', "dpu is empty"],
        id="dpu-empty",
    ),
    pytest.param(
        '[[spaces]]\nid = "A"\nname = "A"\ncapacity = true\n',
        ['spaces[0] (id "A")', "capacity must be an integer", "got a boolean true"],
        id="capacity-boolean",
    ),
    pytest.param(
        '[[spaces]]\nid = "A"\nname = "A"\ncapacity = 1.5\n',
        ["capacity must be an integer", "got a float 1.5"],
        id="capacity-float",
    ),
    pytest.param(
        '[[spaces]]\nid = "A"\nname = "A"\ncapacity = -1\n',
        ["capacity -1 is not an integer >= 0"],
        id="capacity-negative",
    ),
    pytest.param(
        '[[spaces]]\nid = "A"\nname = "A"\nallow_negative = "yes"\n',
        ["allow_negative must be true or false", 'got a string "yes"'],
        id="allow-negative-string",
    ),
    pytest.param(
        '[[spaces]]\nid = "A"\nname = "A"\ncapacity = 10\nalert_at = "90%"\n',
        ["alert_at must be a number", 'got a string "90%"', "alert_at = 0.9"],
        id="alert-at-string",
    ),
    pytest.param(
        '[[spaces]]\nid = "A"\nname = "A"\ncapacity = 10\nalert_at = 0\n',
        ["alert_at 0.0 is not a fraction of capacity above 0 and at most 10"],
        id="alert-at-zero",
    ),
    pytest.param(
        '[[spaces]]\nid = "A"\nname = "A"\ncapacity = 10\nalert_at = nan\n',
        ["alert_at nan is not a fraction of capacity"],
        id="alert-at-nan",
    ),
    pytest.param(
        '[[spaces]]\nid = "A"\nname = "A"\nalert_at = 0.9\n',
        ['spaces[0] (id "A")', "alert_at is a fraction of capacity", "add capacity"],
        id="alert-at-without-capacity",
    ),
    pytest.param(
        '[[spaces]]\nid = 7\nname = "A"\n',
        ["spaces[0]: id must be a string, got an integer 7", 'id = "7"'],
        id="id-integer",
    ),
    pytest.param(
        '[[spaces]]\nname = "A"\n',
        ["spaces[0]: id is missing", 'id = "lobby"'],
        id="id-missing",
    ),
    pytest.param(
        '[[spaces]]\nid = "A"\n',
        ['spaces[0] (id "A"): name is missing'],
        id="name-missing",
    ),
    pytest.param(
        '[[spaces]]\nid = "A"\nname = "A"\ntime_zon = "UTC"\n',
        ['spaces[0] (id "A")', 'unknown key "time_zon"', 'did you mean "time_zone"?'],
        id="unknown-space-key",
    ),
    pytest.param(
        SPACE_A + DOOR_X + assign() + 'valid_untill = "2019-01-01T00:00:00Z"\n',
        ['assignments[0] (dpu "283")', 'unknown key "valid_untill"', '"valid_until"'],
        id="unknown-assignment-key",
    ),
    pytest.param(
        '[[space]]\nid = "A"\nname = "A"\n',
        ['top level: unknown key "space"', 'did you mean "spaces"?'],
        id="unknown-top-level-key",
    ),
    pytest.param(
        'spaces = ["A"]\n',
        ["spaces[0]: must be a table", 'got a string "A"'],
        id="space-not-a-table",
    ),
    pytest.param(
        'spaces = "A"\n',
        ["spaces: must be an array of tables", "[[spaces]]"],
        id="spaces-not-an-array",
    ),
    pytest.param(
        '[[spaces]]\nid = "A"\nname = "A"\ntime_zone = "Europe/Pariss"\n',
        ['time_zone "Europe/Pariss"', 'did you mean "Europe/Paris"?', "not an IANA time zone"],
        id="bad-time-zone",
    ),
    pytest.param(
        '[[spaces]]\nid = "A"\nname = "A"\ntime_zone = "../etc"\n',
        ['time_zone "../etc"', "not an IANA time zone"],
        id="time-zone-path",
    ),
    pytest.param(
        '[[spaces]]\nid = "A"\nname = "A"\ndaily_reset = "24:00"\n',
        ['daily_reset "24:00" is not a time of day', '"00:00"', '"23:59"'],
        id="reset-hour-24",
    ),
    pytest.param(
        '[[spaces]]\nid = "A"\nname = "A"\ndaily_reset = "4:00"\n',
        ['daily_reset "4:00" is not a time of day written "HH:MM"'],
        id="reset-one-digit-hour",
    ),
    pytest.param(
        '[[spaces]]\nid = "A"\nname = "A"\ndaily_reset = 04:00:30\n',
        ["daily_reset 04:00:30 is not a time of day"],
        id="reset-with-seconds",
    ),
    pytest.param(
        '[[spaces]]\nid = "A"\nname = "A"\nparent = "B"\n'
        '[[spaces]]\nid = "B"\nname = "B"\nparent = "A"\n',
        ['spaces[0] (id "A")', 'parent links form a cycle "A" -> "B" -> "A"'],
        id="parent-cycle",
    ),
    pytest.param(
        '[[spaces]]\nid = "A"\nname = "A"\nparent = "A"\n',
        ['parent links form a cycle "A" -> "A"'],
        id="parent-self",
    ),
    pytest.param(
        SPACE_A + DOOR_X + assign(end="2018-01-01T00:00:00Z"),
        ['assignments[0] (dpu "283")', "valid_until", "is not after valid_from"],
        id="empty-interval",
    ),
    pytest.param(
        SPACE_A + DOOR_X + assign() + assign(start="2018-06-01T00:00:00Z"),
        ['assignments[1] (dpu "283")', "overlaps assignments[0]", "one doorway at a time"],
        id="overlap-open-ended",
    ),
    pytest.param(
        SPACE_A
        + DOOR_X
        + assign(start="2018-06-01T00:00:00Z", end="2019-06-01T00:00:00Z")
        + assign(start="2018-01-01T00:00:00Z", end="2018-06-01T00:00:01Z"),
        ['assignments[0] (dpu "283")', 'overlaps assignments[1] (dpu "283")'],
        id="overlap-out-of-file-order",
    ),
    pytest.param(
        SPACE_A + DOOR_X + assign(start="2018-13-01T00:00:00Z"),
        ["valid_from is not a timestamp", "2018-13-01"],
        id="bad-timestamp",
    ),
    pytest.param(
        SPACE_A + DOOR_X + assign(start="2018-01-01T00:00:00"),
        ["valid_from is not a timestamp", "has no UTC offset"],
        id="naive-timestamp",
    ),
    pytest.param(
        SPACE_A + DOOR_X + '[[assignments]]\ndpu = "1"\ndoorway = "X"\n'
        "valid_from = 2018-01-01T00:00:00\n",
        ["valid_from 2018-01-01T00:00:00 has no UTC offset", "add Z"],
        id="toml-local-datetime",
    ),
    pytest.param(
        SPACE_A + DOOR_X + '[[assignments]]\ndpu = "1"\ndoorway = "X"\nvalid_from = 2018-01-01\n',
        ["valid_from must be a timestamp with a UTC offset", "got a date 2018-01-01"],
        id="toml-date",
    ),
    pytest.param(
        SPACE_A + DOOR_X + '[[assignments]]\ndpu = "1"\ndoorway = "X"\n',
        ['assignments[0] (dpu "1"): valid_from is missing'],
        id="valid-from-missing",
    ),
    pytest.param(
        '[[spaces]]\nid = "A"\nname = \n',
        ["is not valid TOML", "line 3"],
        id="toml-syntax",
    ),
]


@pytest.mark.parametrize(("text", "fragments"), INVALID)
def test_invalid_topology_is_refused_with_a_precise_message(
    text: str, fragments: list[str]
) -> None:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    for fragment in fragments:
        assert fragment in problems[0], (fragment, problems[0])


def test_a_misspelt_key_is_named_along_with_the_key_it_should_have_been() -> None:
    text = SPACE_A + '[[doorways]]\nid = "X"\nname = "X"\nlinks = [{ space = "A", placement = 1 }]'
    problems = problems_of(text)
    assert len(problems) == 2, problems
    assert 'links[0]: unknown key "placement" (did you mean "sensor_placement"?)' in problems[0]
    assert "space, sensor_placement" in problems[0]
    assert "links[0]: sensor_placement is missing" in problems[1]


def test_every_problem_is_reported_at_once() -> None:
    text = (
        '[[spaces]]\nid = "A"\nname = "A"\ntime_zone = "Mars/Olympus"\n'
        '[[spaces]]\nid = "A"\nname = "again"\ncapacity = true\n'
        '[[doorways]]\nid = "X"\nname = "X"\n'
        'links = [{ space = "Q", sensor_placement = 3 }]\n'
        + assign(dpu="283")
        + assign(dpu='"9"')
        + assign(dpu='"9"', start="2018-03-01T00:00:00Z")
    )
    problems = problems_of(text)
    expected = [
        "Mars/Olympus",
        "capacity must be an integer",
        "already used by spaces[0]",
        'space "Q"',
        "sensor_placement is 3",
        "dpu must be a string",
        'assignments[2] (dpu "9")',
    ]
    assert len(problems) == len(expected), problems
    for fragment in expected:
        assert any(fragment in problem for problem in problems), fragment


def test_constructor_validates_too() -> None:
    with pytest.raises(TopologyError) as caught:
        Topology(
            [Space("A", "A"), Space("A", "A2", time_zone="Nowhere/Land")],
            [Doorway("X", "X", (Link("B", 1), Link("A", True)))],  # type: ignore[arg-type]
            [Assignment("1", "X", 10, 5), Assignment("2", "Y", 0)],
        )
    problems = caught.value.problems
    assert all(problem.startswith("<topology>: ") for problem in problems)
    for fragment in (
        'spaces[1] (id "A"): id is already used',
        '"Nowhere/Land"',
        'links[0]: space "B"',
        "links[1]: sensor_placement is True",
        'assignments[0] (dpu "1"): valid_until',
        'assignments[1] (dpu "2"): doorway "Y"',
    ):
        assert any(fragment in problem for problem in problems), (fragment, problems)
    assert len(problems) == 6, problems


def test_constructor_refuses_what_the_file_format_cannot_hold() -> None:
    with pytest.raises(TopologyError) as caught:
        Topology(
            [Space("A", "A", daily_reset=datetime.time(4, 0, 30)), Space("", "nameless")],
            [Doorway("X", "X", ())],
            [Assignment("1", "X", 10**16)],
            source="api",
        )
    problems = caught.value.problems
    assert len(problems) == 3, problems
    assert 'api: spaces[0] (id "A"): daily_reset 04:00:30 must be a whole minute' in problems[0]
    assert 'api: spaces[1] (id ""): id is empty' in problems[1]
    assert "between the years 1 and 9999" in problems[2]


# --- resolution over time ----------------------------------------------------------------------

MOVED = (
    SPACE_A
    + '[[spaces]]\nid = "B"\nname = "B"\n'
    + DOOR_X
    + '[[doorways]]\nid = "Z"\nname = "Z"\n'
    + 'links = [{ space = "A", sensor_placement = 1 }, { space = "B", sensor_placement = -1 }]\n'
    + '[[assignments]]\ndpu = "283"\ndoorway = "Z"\nvalid_from = "2019-01-01T00:00:00Z"\n'
    + assign(end="2019-01-01T00:00:00Z")
    + '[[assignments]]\ndpu = "7"\ndoorway = "Z"\nvalid_from = "2018-01-01T00:00:00Z"\n'
    + 'valid_until = "2018-02-01T00:00:00Z"\n'
)


def test_dpu_move_boundary_belongs_to_the_later_assignment() -> None:
    topology = Topology.from_toml(MOVED)
    assert topology.assignment_at("283", T2019 - 1) == Assignment("283", "X", T2018, T2019)
    assert topology.links_at("283", T2019 - 1) == (Link("A", 1),)
    assert topology.assignment_at("283", T2019) == Assignment("283", "Z", T2019)
    assert topology.links_at("283", T2019) == (Link("A", 1), Link("B", -1))
    assert topology.links_at("283", T2018 - 1) == ()
    end = parse_iso("2018-02-01T00:00:00Z")
    assert topology.links_at("7", end - 1) == (Link("A", 1), Link("B", -1))
    assert topology.links_at("7", end) == ()
    assert topology.assignment_at("7", end) is None


def test_links_span_holds_the_links_of_every_time_in_it() -> None:
    topology = Topology.from_toml(MOVED)
    end = parse_iso("2018-02-01T00:00:00Z")
    assert topology.links_span("283", T2018 - 1) == ((), -(2**63), T2018)
    assert topology.links_span("283", T2018) == ((Link("A", 1),), T2018, T2019)
    assert topology.links_span("283", T2019) == ((Link("A", 1), Link("B", -1)), T2019, 2**63)
    assert topology.links_span("7", end) == ((), end, 2**63)
    assert topology.links_span("999", T2018) == ((), -(2**63), 2**63)
    for dpu_id in ("283", "7", "999"):
        for ts in (T2018 - 5, T2018, end - 1, end, T2019 - 1, T2019, T2019 + 10**12):
            links, start, until = topology.links_span(dpu_id, ts)
            assert start <= ts < until
            assert links == topology.links_at(dpu_id, ts)
            for inside in (start, until - 1):
                if abs(inside) < 2**62:
                    assert topology.links_at(dpu_id, inside) == links


def test_dpu_key_is_the_topologys_own_copy_of_the_id() -> None:
    """A DPU's id as the topology holds it (what a long pass keeps instead of each row's
    copy): the same string, the topology's object; an unknown DPU's id as given."""
    topology = Topology.from_toml(MOVED)
    for dpu_id in ("283", "7"):  # "283" served two doorways, "7" one
        key = topology.dpu_key("".join(list(dpu_id)))  # an equal string made apart
        assert key == dpu_id
        assert key is topology.dpu_key(dpu_id)
        assert key is topology.assignment_at(dpu_id, T2018).dpu_id  # type: ignore[union-attr]
    unknown = "".join(["9", "99"])
    assert topology.dpu_key(unknown) is unknown


def test_sources() -> None:
    topology = Topology.from_toml(MOVED)
    assert topology.sources("A") == (
        Source("283", "X", 1, T2018, T2019),
        Source("283", "Z", 1, T2019, None),
        Source("7", "Z", 1, T2018, parse_iso("2018-02-01T00:00:00Z")),
    )
    assert topology.sources("B") == (
        Source("283", "Z", -1, T2019, None),
        Source("7", "Z", -1, T2018, parse_iso("2018-02-01T00:00:00Z")),
    )
    assert seed().sources("B") == (Source("423", "Z", -1, T2018, None),)


# --- fingerprints ------------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "spaces": [
        {"id": "A", "name": "A", "daily_reset": "04:00", "time_zone": "Europe/Paris"},
        {"id": "B", "name": "B"},
        {"id": "P", "name": "Parent"},
    ],
    "doorways": [
        {"id": "X", "name": "X", "links": [{"space": "A", "sensor_placement": 1}]},
        {"id": "Y", "name": "Y", "links": [{"space": "B", "sensor_placement": 1}]},
    ],
    "assignments": [
        {"dpu": "1", "doorway": "X", "valid_from": "2018-01-01T00:00:00Z"},
        {"dpu": "2", "doorway": "Y", "valid_from": "2018-01-01T00:00:00Z"},
    ],
}


def _set(path: tuple[str | int, ...], value: object) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        target: Any = data
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return change


def _unassign_2(data: dict[str, Any]) -> None:
    del data["assignments"][1]


def _link_y_to_b_and_a(data: dict[str, Any]) -> None:
    data["doorways"][1]["links"].append({"space": "A", "sensor_placement": -1})


def _capacity_alert_at(data: dict[str, Any]) -> None:
    data["spaces"][0].update(capacity=20, alert_at=0.5)


FINGERPRINT_CASES = [
    pytest.param(_set(("spaces", 0, "name"), "Renamed"), False, id="name"),
    pytest.param(_set(("spaces", 0, "parent"), "P"), False, id="parent"),
    pytest.param(_set(("spaces", 0, "capacity"), 10), False, id="capacity"),
    pytest.param(_capacity_alert_at, False, id="capacity-alert-at"),
    pytest.param(_set(("spaces", 1, "daily_reset"), "03:00"), False, id="other-space"),
    pytest.param(_set(("doorways", 0, "name"), "Front"), False, id="doorway-name"),
    pytest.param(_set(("doorways", 1, "links", 0, "sensor_placement"), -1), False, id="other-door"),
    pytest.param(_unassign_2, False, id="other-dpu"),
    pytest.param(_set(("doorways", 0, "links", 0, "sensor_placement"), -1), True, id="flip"),
    pytest.param(_set(("assignments", 0, "doorway"), "Y"), True, id="dpu-moved-away"),
    pytest.param(_set(("assignments", 1, "doorway"), "X"), True, id="dpu-moved-in"),
    pytest.param(_link_y_to_b_and_a, True, id="doorway-gains-link"),
    pytest.param(
        _set(("assignments", 0, "valid_from"), "2018-06-01T00:00:00Z"), True, id="dpu-moved-later"
    ),
    pytest.param(
        _set(("assignments", 0, "valid_until"), "2020-01-01T00:00:00Z"), True, id="dpu-removed"
    ),
    pytest.param(_set(("spaces", 0, "daily_reset"), "05:00"), True, id="daily-reset"),
    pytest.param(_set(("spaces", 0, "time_zone"), "UTC"), True, id="time-zone"),
    pytest.param(_set(("spaces", 0, "allow_negative"), True), True, id="allow-negative"),
]


@pytest.mark.parametrize(("change", "changes_a"), FINGERPRINT_CASES)
def test_fingerprint_tracks_exactly_what_decides_the_fold(
    change: Callable[[dict[str, Any]], None], changes_a: bool
) -> None:
    before = Topology.from_dict(BASE).fingerprint("A")
    data = copy.deepcopy(BASE)
    change(data)
    after = Topology.from_dict(data).fingerprint("A")
    assert (after != before) is changes_a


def test_fingerprint_is_stable_and_distinct() -> None:
    first, second = Topology.from_dict(BASE), Topology.from_dict(copy.deepcopy(BASE))
    assert first.fingerprint("A") == second.fingerprint("A")
    assert Topology.from_toml(first.to_toml()).fingerprint("A") == first.fingerprint("A")
    assert len(first.fingerprint("A")) == 64
    assert int(first.fingerprint("A"), 16) >= 0
    assert first.fingerprint("A") != first.fingerprint("B")


# --- equality and round trips ------------------------------------------------------------------


def test_equality_ignores_entry_order() -> None:
    data = copy.deepcopy(BASE)
    for key in ("spaces", "doorways", "assignments"):
        data[key].reverse()
    first, second = Topology.from_dict(BASE), Topology.from_dict(data)
    assert first == second
    assert hash(first) == hash(second)
    assert first != seed()
    assert first != "not a topology"


def test_round_trip_escapes_awkward_text() -> None:
    name = 'quote " backslash \\ newline \n tab \t del \x7f bell \x07 é 🚪'
    topology = Topology(
        [Space('sp"ace', name), Space("b\\", "B", parent='sp"ace', capacity=0)],
        [Doorway("d\n", name, (Link('sp"ace', -1), Link("b\\", 1)))],
        [Assignment("dpu ü", "d\n", -1_000_001, 1_500)],
    )
    text = topology.to_toml()
    again = Topology.from_toml(text)
    assert again == topology
    assert again.space('sp"ace').name == name


# --- properties --------------------------------------------------------------------------------

ids = st.text(
    alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=6
) | st.sampled_from(["A", "B", "lobby", "283"])
names = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12)
instants = st.integers(min_value=-(10**12), max_value=4 * 10**12)


@st.composite
def topologies(draw: st.DrawFn) -> Topology:
    space_ids = draw(st.lists(ids, min_size=1, max_size=5, unique=True))
    spaces = []
    for position, space_id in enumerate(space_ids):
        parent = draw(st.none() | st.sampled_from(space_ids[:position])) if position else None
        spaces.append(
            Space(
                space_id,
                draw(names),
                parent,
                draw(st.sampled_from(["UTC", "Europe/Paris", "America/New_York"])),
                draw(st.none() | st.times().map(lambda t: t.replace(second=0, microsecond=0))),
                draw(st.none() | st.integers(min_value=0, max_value=10**6)),
                draw(st.booleans()),
            )
        )
    doorway_ids = draw(st.lists(ids, min_size=1, max_size=4, unique=True))
    doorways = []
    for doorway_id in doorway_ids:
        linked = draw(st.lists(st.sampled_from(space_ids), max_size=3, unique=True))
        placements = [draw(st.sampled_from([1, -1])) for _ in linked]
        links = tuple(Link(s, p) for s, p in zip(linked, placements, strict=True))  # type: ignore[arg-type]
        doorways.append(Doorway(doorway_id, draw(names), links))
    assignments = []
    for dpu_id in draw(st.lists(ids, max_size=4, unique=True)):
        bounds = sorted(draw(st.lists(instants, min_size=1, max_size=7, unique=True)))
        open_end = draw(st.booleans())
        for start, end in zip(bounds, [*bounds[1:], None], strict=True):
            if end is None and not open_end:
                break
            if draw(st.booleans()) or end is None:
                doorway_id = draw(st.sampled_from(doorway_ids))
                assignments.append(Assignment(dpu_id, doorway_id, start, end))
    return Topology(spaces, doorways, draw(st.permutations(assignments)))


def brute_assignment(topology: Topology, dpu_id: str, ts: int) -> Assignment | None:
    for a in topology.assignments:
        if (
            a.dpu_id == dpu_id
            and a.valid_from <= ts
            and (a.valid_until is None or ts < a.valid_until)
        ):
            return a
    return None


@settings(max_examples=200, deadline=None)
@given(topology=topologies(), probes=st.lists(instants, max_size=10))
def test_random_topologies_round_trip_and_resolve_like_a_scan(
    topology: Topology, probes: list[int]
) -> None:
    again = Topology.from_toml(topology.to_toml())
    assert again == topology
    assert again.assignments == topology.assignments
    assert list(again.spaces) == list(topology.spaces)
    for space_id in topology.spaces:
        assert again.fingerprint(space_id) == topology.fingerprint(space_id)
    edges = [
        t for a in topology.assignments for t in (a.valid_from, a.valid_until) if t is not None
    ]
    moments = probes + edges + [t - 1 for t in edges]
    for dpu_id in [*topology.dpu_ids(), "never-assigned"]:
        for ts in moments:
            expected = brute_assignment(topology, dpu_id, ts)
            assert topology.assignment_at(dpu_id, ts) == expected
            links = () if expected is None else topology.doorways[expected.doorway_id].links
            assert topology.links_at(dpu_id, ts) == links


@settings(max_examples=200, deadline=None)
@given(
    topology=topologies(),
    capacity=st.none() | st.integers(0, 500),
    alert_at=st.none() | st.floats(0.1, 10),
)
def test_the_compact_form_gives_the_same_topology(
    topology: Topology, capacity: int | None, alert_at: float | None
) -> None:
    """What a cache keeps (as JSON) gives back an equal topology, in the same order, with the
    same fingerprints and the same resolution, without reading or checking anything."""
    first = next(iter(topology.spaces.values()))
    spaces = [
        Space(s.id, s.name, s.parent, s.time_zone, s.daily_reset, capacity, s.allow_negative,
              alert_at if capacity is not None else None) if s is first else s
        for s in topology.spaces.values()
    ]  # fmt: skip
    topology = Topology(spaces, topology.doorways.values(), topology.assignments)
    again = Topology.from_compact(json.loads(json.dumps(topology.to_compact())))
    assert again == topology
    assert list(again.spaces.values()) == list(topology.spaces.values())
    assert list(again.doorways.values()) == list(topology.doorways.values())
    assert again.assignments == topology.assignments
    for space_id in topology.spaces:
        assert again.fingerprint(space_id) == topology.fingerprint(space_id)
        assert again.sources(space_id) == topology.sources(space_id)
        assert again.children(space_id) == topology.children(space_id)
    for dpu_id in topology.dpu_ids():
        for a in topology.assignments:
            assert again.links_at(dpu_id, a.valid_from) == topology.links_at(dpu_id, a.valid_from)


def test_a_compact_form_of_another_format_is_refused() -> None:
    compact = Topology.from_toml(SEED.read_text(encoding="utf-8")).to_compact()
    with pytest.raises(ValueError, match="not a compact topology of format"):
        Topology.from_compact({**compact, "format": "headcount.topology.compact/0"})
