"""Which two places each doorway joins, read from links and parents."""

from __future__ import annotations

import itertools
import random

import pytest

from headcount.domain.topology import Topology
from headcount.sim.errors import FloorPlanError
from headcount.sim.floorplan import OUTSIDE, FloorPlan, Opening
from tests.conftest import SEED
from tests.sim.reference import headquarters


def plan(toml: str) -> FloorPlan:
    return FloorPlan(Topology.from_toml(toml))


def test_seed_topology_x_leads_in_from_outside_and_z_joins_a_and_b() -> None:
    floor = plan((SEED / "topology.toml").read_text())
    assert floor.openings == {"X": Opening("X", "A", OUTSIDE), "Z": Opening("Z", "A", "B")}
    assert floor.reachable == ("A", "B")


def test_nested_spaces_give_the_innermost_location_on_each_side() -> None:
    floor = plan(headquarters())
    assert dict(floor.openings) == {
        "front": Opening("front", "L", OUTSIDE),  # links HQ, G and L: outside <-> lobby
        "cafe": Opening("cafe", "L", "C"),
        "terrace": Opening("terrace", "C", OUTSIDE),
        "stairs": Opening("stairs", "F1", "L"),
        "office": Opening("office", "O1", "F1"),  # the far side is the floor's corridor
        "meeting": Opening("meeting", "M", "F1"),
        "office-meeting": Opening("office-meeting", "M", "O1"),
        "annex": Opening("annex", "ANNEX", OUTSIDE),
    }
    assert floor.containing("L") == ("L", "G", "HQ")
    assert floor.containing(OUTSIDE) == ()
    # F1 alone is a place (the first floor outside its rooms); HQ and G alone are not: every
    # doorway into them leads into one of their rooms.
    assert floor.reachable == ("L", "C", "F1", "O1", "M", "ANNEX")


def test_walking_toward_the_dpu_changes_each_linked_space_by_its_placement() -> None:
    topology = Topology.from_toml(headquarters())
    floor = FloorPlan(topology)
    for doorway in topology.doorways.values():
        opening = floor.openings[doorway.id]
        entered = set(floor.containing(opening.dpu_side)) - set(floor.containing(opening.far_side))
        left = set(floor.containing(opening.far_side)) - set(floor.containing(opening.dpu_side))
        assert opening.direction(opening.dpu_side) == 1
        assert {link.space_id for link in doorway.links if link.sensor_placement == 1} == entered
        assert {link.space_id for link in doorway.links if link.sensor_placement == -1} == left


def test_doorways_people_cannot_use_are_left_out_with_the_reason() -> None:
    toml = (
        headquarters()
        + """
[[doorways]]
id = "skips-floor"
name = "links the building and the lobby but not the ground floor between them"
links = [{ space = "HQ", sensor_placement = 1 }, { space = "L", sensor_placement = 1 }]

[[doorways]]
id = "not-nested"
name = "puts the annex and the lobby on one side"
links = [{ space = "ANNEX", sensor_placement = 1 }, { space = "L", sensor_placement = 1 }]

[[doorways]]
id = "empty"
name = "links nothing"
links = []
"""
    )
    floor = plan(toml)
    assert set(floor.unusable) == {"skips-floor", "not-nested", "empty"}
    assert "do not match the spaces' parents" in floor.unusable["skips-floor"]
    assert "not nested by parent" in floor.unusable["not-nested"]
    assert "links no space" in floor.unusable["empty"]
    topology = Topology.from_toml(toml)
    only_front = FloorPlan(topology, usable=["front"])
    assert only_front.unusable["annex"] == "no DPU serves it for the whole run"
    assert only_front.reachable == ("L",)


def test_a_topology_nobody_can_enter_is_refused_with_what_to_do() -> None:
    toml = """
[[spaces]]
id = "A"
name = "A"

[[spaces]]
id = "B"
name = "B"

[[doorways]]
id = "Z"
name = "between A and B only"
links = [{ space = "A", sensor_placement = 1 }, { space = "B", sensor_placement = -1 }]
"""
    with pytest.raises(FloorPlanError, match="nobody can enter: link a doorway"):
        plan(toml)


def test_routes_are_shortest_and_spread_over_equal_exits() -> None:
    floor = plan(headquarters())
    rng = random.Random(1)
    assert {floor.route_out("C", rng)[0].opening.doorway_id for _ in range(20)} == {"terrace"}
    route_in = floor.route_in("O1", rng)
    assert [hop.opening.doorway_id for hop in route_in] == ["front", "stairs", "office"]
    assert [hop.destination for hop in route_in] == ["L", "F1", "O1"]
    for _ in range(20):
        nearby = floor.nearby("O1", rng)
        assert nearby[0].origin == "O1"
        for before, after in itertools.pairwise(nearby):
            assert before.destination == after.origin
        assert nearby[-1].destination not in (OUTSIDE, "O1")
    two_doors = (
        (SEED / "topology.toml").read_text()
        + """
[[doorways]]
id = "Y"
name = "A second door from outside into A"
links = [{ space = "A", sensor_placement = 1 }]
"""
    )
    floor = plan(two_doors)
    assert {floor.route_out("B", rng)[1].opening.doorway_id for _ in range(30)} == {"X", "Y"}
