"""The simulator's errors: one root under :class:`~headcount.errors.HeadcountError`, each
message saying what was wrong and what to change."""

from __future__ import annotations

from headcount.errors import HeadcountError


class SimulatorError(HeadcountError):
    """The simulation cannot be planned or cannot go on (the broker refuses its connections,
    a flag asks for something impossible, ...)."""


class FloorPlanError(SimulatorError):
    """The topology gives people no way in: no usable doorway joins the outside to a space."""


class ScheduleError(SimulatorError):
    """The faults asked for cannot be arranged on this topology."""


class TruthFileError(SimulatorError):
    """A truth file that cannot be read; the message names the file and line."""
