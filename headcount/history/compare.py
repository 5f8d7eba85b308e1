"""What a corrected topology would change: each space's count at chosen moments as the store
answers now (under the topology it records) and as the log folds under the correction
(``headcount replay --dry-run``). Nothing is written."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore
from headcount.history.counts import History
from headcount.history.replay import Replay, ReplaySummary
from headcount.progress import Progress


@dataclass(frozen=True, slots=True)
class CountChange:
    """A space's count at ``ts`` under the topology the store records (``before``, ``None``
    when that topology has no such space) and under the corrected one (``after``)."""

    space_id: str
    ts: int
    before: int | None
    after: int

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass(frozen=True, slots=True)
class TopologyComparison:
    """The counts compared, space by space and in time order, and ``unchanged``: the spaces
    of the corrected topology that fold the same under both (their counts cannot change).
    ``summary`` is the fold's."""

    counts: list[CountChange]
    unchanged: list[str]
    summary: ReplaySummary

    @property
    def changed(self) -> int:
        """How many of the counts change."""
        return sum(count.changed for count in self.counts)


def changed_spaces(before: Topology, after: Topology) -> list[str]:
    """The spaces of ``after`` that are new or fold differently than under ``before``."""
    return [
        space_id
        for space_id in after.spaces
        if space_id not in before.spaces
        or before.fingerprint(space_id) != after.fingerprint(space_id)
    ]


async def compare_topologies(
    store: EventStore,
    before: Topology,
    after: Topology,
    times: Iterable[int],
    *,
    space_ids: Iterable[str] | None = None,
    progress: Progress | None = None,
) -> TopologyComparison:
    """Each space's count at each of ``times`` as answered under ``before`` (snapshots and
    the log, as the store answers today) and as the log folds under ``after`` from scratch.
    ``space_ids``: the spaces to compare (default: :func:`changed_spaces`)."""
    moments = sorted(set(times))
    changed = changed_spaces(before, after)
    replay = Replay(
        store, after, space_ids=changed if space_ids is None else space_ids, progress=progress
    )
    summary, states = await replay.states_at(moments)
    history = History(store, before)
    counts: list[CountChange] = []
    for space_id in replay.space_ids:
        for ts, state in zip(moments, states[space_id], strict=True):
            old = None
            if space_id in before.spaces:
                old = (await history.count_at(space_id, ts)).count
            counts.append(CountChange(space_id, ts, old, state.count))
    unchanged = [space_id for space_id in after.spaces if space_id not in changed]
    return TopologyComparison(counts, unchanged, summary)
