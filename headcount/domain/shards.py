"""Which shard owns a space: a stable hash of its id, the same in every process and release.

``headcount serve --shard I/N`` runs the spaces whose id hashes to ``I``. The hash is the first
8 bytes of the SHA-256 digest of the id's UTF-8 bytes, read as a big-endian unsigned integer,
modulo ``N``. It depends on nothing but the id and ``N`` (not on Python's ``hash``, which is
salted per process), and tests pin some of its values: changing it would move spaces between
shards of a running deployment, so it must never change.

A shard subscribes to the traversals of every DPU that was ever assigned to a doorway linked to
one of its spaces (:func:`shard_dpus`): a DPU moved between doorways reaches every shard it
ever served, and a doorway between two shards' spaces reaches both.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from headcount.domain.topology import Topology

__all__ = ["ONE_SHARD", "Shard", "ShardSpecError", "ShardStatus", "shard_dpus", "shard_of"]

_SPEC = re.compile(r"(\d{1,4})/(\d{1,4})")


class ShardSpecError(ValueError):
    """A ``--shard`` value that is not ``I/N`` with ``0 <= I < N``."""


def shard_of(space_id: str, count: int) -> int:
    """The index of the shard (of ``count``) that owns ``space_id``."""
    if count < 1:
        raise ValueError(f"a deployment has at least one shard, not {count}")
    digest = hashlib.sha256(space_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count``; ``Shard(0, 1)`` owns every space (no sharding)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ShardSpecError(
                f"shard {self.index}/{self.count}: the index must be at least 0 and below the"
                " count of shards (0/3, 1/3 and 2/3 make three)"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``I/N``, e.g. ``1/3``."""
        match = _SPEC.fullmatch(text.strip())
        if match is None:
            raise ShardSpecError(
                f"{text!r} is not a shard: give I/N, this process's index and the count of"
                " shards, e.g. 0/3"
            )
        return cls(int(match[1]), int(match[2]))

    @property
    def sharded(self) -> bool:
        """Whether other shards exist (``count`` above 1)."""
        return self.count > 1

    def owns(self, space_id: str) -> bool:
        return self.count == 1 or shard_of(space_id, self.count) == self.index

    def owner_of(self, space_id: str) -> int:
        """The index of the shard (of this deployment's ``count``) that owns ``space_id``."""
        return 0 if self.count == 1 else shard_of(space_id, self.count)

    def spaces(self, topology: Topology) -> list[str]:
        """The ids of the topology's spaces this shard owns, in the topology's order."""
        return [space_id for space_id in topology.spaces if self.owns(space_id)]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True, slots=True)
class ShardStatus:
    """What a process is to its shard: its ``owner`` (it runs the shard's spaces) or a
    ``standby`` waiting to take over when the owner stops."""

    shard: Shard
    role: Literal["owner", "standby"]

    def describe(self) -> str:
        return f"{self.role} of shard {self.shard}"


#: The one shard of an unsharded deployment.
ONE_SHARD = Shard(0, 1)


def shard_dpus(topology: Topology, shard: Shard) -> list[str]:
    """The DPUs whose traversals ``shard`` needs, sorted: every DPU that was ever (in any
    assignment of the topology's history) over a doorway linked to a space the shard owns."""
    doorways = {
        doorway.id
        for doorway in topology.doorways.values()
        if any(shard.owns(link.space_id) for link in doorway.links)
    }
    return sorted({a.dpu_id for a in topology.assignments if a.doorway_id in doorways})
