"""DPU firmware simulator with ground truth: ``headcount simulate``.

Two halves, each usable alone. The pure half, exported here, plans a run: :class:`FloorPlan`
reads which doorway joins which places from a topology, :func:`walk` moves people through them
over simulated days, :func:`true_counts` tells how many were really in each space, and
:func:`build_schedule` turns the moves into the events DPUs send, with faults. The asyncio half,
:func:`headcount.sim.firmware.run_firmware`, publishes a schedule over MQTT the way DPU firmware
does; it is not imported here, so that planning (and ``headcount``'s other commands) need no
MQTT client.
"""

from headcount.sim.errors import FloorPlanError, ScheduleError, SimulatorError, TruthFileError
from headcount.sim.floorplan import OUTSIDE, FloorPlan, Location, Opening
from headcount.sim.pace import Pace, Rate, Speed
from headcount.sim.people import Population, Step, true_counts, walk
from headcount.sim.schedule import (
    Faults,
    Schedule,
    Send,
    build_schedule,
    changes_toml,
    served_doorways,
)
from headcount.sim.synthetic import synthetic_topology
from headcount.sim.truth import Truth

__all__ = [
    "OUTSIDE",
    "Faults",
    "FloorPlan",
    "FloorPlanError",
    "Location",
    "Opening",
    "Pace",
    "Population",
    "Rate",
    "Schedule",
    "ScheduleError",
    "Send",
    "SimulatorError",
    "Speed",
    "Step",
    "Truth",
    "TruthFileError",
    "build_schedule",
    "changes_toml",
    "served_doorways",
    "synthetic_topology",
    "true_counts",
    "walk",
]
