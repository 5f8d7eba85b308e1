"""Synthetic topologies: valid at any size, nested, one DPU per doorway."""

from __future__ import annotations

import pytest

from headcount.domain.topology import Topology
from headcount.sim.floorplan import OUTSIDE, FloorPlan
from headcount.sim.synthetic import BUILDING_SIZE, synthetic_topology


@pytest.mark.parametrize(("spaces", "dpus"), [(1, 1), (2, 2), (8, 8), (20, 5), (9, 40), (300, 900)])
def test_any_size_is_a_valid_topology_that_reads_back(spaces: int, dpus: int) -> None:
    topology = synthetic_topology(spaces, dpus, dpu_prefix="t-")
    assert len(topology.spaces) == spaces
    assert len(topology.doorways) == dpus
    assert topology.dpu_ids() == {f"t-dpu{i}" for i in range(dpus)}
    assert Topology.from_toml(topology.to_toml()) == topology
    floor = FloorPlan(topology)
    assert not floor.unusable


def test_the_front_door_leads_into_the_lobby_of_the_building() -> None:
    topology = synthetic_topology(BUILDING_SIZE + 1, 2 * BUILDING_SIZE)
    floor = FloorPlan(topology)
    assert floor.openings["B0-front"].dpu_side == "B0-lobby"
    assert floor.openings["B0-front"].far_side is OUTSIDE
    assert floor.containing("B0-lobby") == ("B0-lobby", "B0")
    assert floor.openings["B0-lobby-door"].far_side == "B0-lobby"
    assert floor.openings["B0-lobby-door"].dpu_side == "B0"  # the corridor
    # Every space of the complete first building is reachable; the second building (one space)
    # has its front door too.
    assert set(floor.reachable) == set(topology.spaces)
    assert {s.time_zone for s in topology.spaces.values()} == {"UTC", "Europe/Berlin"}


def test_with_fewer_dpus_than_doors_the_first_buildings_come_first() -> None:
    topology = synthetic_topology(2 * BUILDING_SIZE, BUILDING_SIZE)
    floor = FloorPlan(topology)
    assert set(floor.reachable) == {s for s in topology.spaces if s.startswith("B0")}
    assert len(floor.reachable) == BUILDING_SIZE


def test_sizes_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one space and one DPU"):
        synthetic_topology(0, 1)
