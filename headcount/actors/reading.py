"""What the rest of the service may read of the actors: the narrow interface the HTTP API
uses, which a shard in another process can implement as well as the local actor system."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from headcount.domain.events import Reset
from headcount.domain.fold import SpaceState
from headcount.domain.topology import Topology
from headcount.errors import HeadcountError
from headcount.eventstore.records import StoredReset

__all__ = ["LiveCounts", "Readiness", "ResetTaker", "SpaceRecoveringError"]


class SpaceRecoveringError(HeadcountError):
    """A space's live state is not there yet: its actor is still recovering from the store."""

    def __init__(self, space_id: str) -> None:
        self.space_id = space_id
        super().__init__(
            f"space {space_id!r} is still recovering from the store; try again shortly"
        )


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether live answers can be served: ``spaces`` served here, those still
    ``recovering``, and how many actor ``restarts`` the supervisor made."""

    spaces: int
    recovering: tuple[str, ...]
    restarts: int

    @property
    def ready(self) -> bool:
        return not self.recovering


class LiveCounts(Protocol):
    """Live state of the spaces, read without touching the store."""

    @property
    def topology(self) -> Topology: ...

    def live_state(self, space_id: str) -> SpaceState | None:
        """The space's live state now; ``None`` when this process does not serve the space
        (another shard does). Raises ``UnknownSpaceError`` for a space the topology does not
        define, :class:`SpaceRecoveringError` while the space is recovering."""
        ...

    def readiness(self) -> Readiness: ...

    def mailbox_depth(self) -> int:
        """Events stored but not yet folded into live state."""
        ...


class ResetTaker(Protocol):
    """Where the API hands a reset: it is stored, then applied to the live count."""

    async def reset(self, reset: Reset) -> StoredReset:
        """Store ``reset`` and return once the space's live count shows it. Raises
        ``UnknownSpaceError``, and ``ConflictError`` for another count at the same millisecond."""
        ...
