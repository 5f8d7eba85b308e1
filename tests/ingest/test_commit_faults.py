"""Ingest when the store fails in the middle of a commit, at every step of it, on both backends:
the live counts still equal the fold of the log once the store is back, and no message is
acknowledged before what it carried is durable."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import func, select

from headcount.actors import ActorSystem
from headcount.domain.events import Traversal
from headcount.domain.topology import Topology
from headcount.eventstore.engine import read_transaction
from headcount.eventstore.schema import quarantine, traversals
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.ingest import wire
from headcount.ingest.dpus import DpuRegistry
from headcount.ingest.pipeline import Ingest, IngestSettings
from headcount.metrics import Metrics
from tests.ingest.faults import StoreFaults
from tests.ingest.inbox import Inbox, Msg
from tests.polling import eventually

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "topology.toml"
NOW = 1_700_000_000_000
HOUR = 3_600_000


def round_message(n: int, refusing: bool) -> tuple[Msg, Traversal, Traversal | None]:
    """Round ``n``'s message: someone entering A through 283, and (``refusing``) an event an
    hour in the future, which goes to quarantine. One message, so one commit holds a traversal
    insert and a quarantine insert; without the refused event, SQLite's commit is its one
    statement of new traversals (``appending.insert_new``)."""
    kept = Traversal("283", n, NOW - 100_000 + n, 1)
    if not refusing:
        return Msg(wire.traversals_topic("283"), wire.encode([kept])), kept, None
    refused = Traversal("283", 1_000_000 + n, NOW + HOUR, 1)
    return Msg(wire.traversals_topic("283"), wire.encode([kept, refused])), kept, refused


async def durable(store: EventStore, kept: Traversal, refused: Traversal | None) -> bool:
    """Whether the round's traversal is in the log and its refused event in quarantine."""
    async with read_transaction(store.engine) as conn:
        stored = await conn.scalar(
            select(func.count())
            .select_from(traversals)
            .where(traversals.c.dpu_id == kept.dpu_id, traversals.c.seq == kept.seq)
        )
        kept_aside = refused is None or await conn.scalar(
            select(func.count())
            .select_from(quarantine)
            .where(quarantine.c.payload == wire.encode(refused))
        )
    return bool(stored) and bool(kept_aside)


@pytest.mark.parametrize("refusing", [True, False], ids=["with-quarantine", "new-traversals"])
async def test_a_store_failure_at_any_step_of_a_commit_loses_nothing(
    store: EventStore, refusing: bool
) -> None:
    topology = Topology.from_toml(SEED.read_text())
    history = History(store, topology, snapshot_every=10**9)  # no snapshot writes in between
    carried: dict[int, tuple[Traversal, Traversal | None]] = {}
    early: list[str] = []

    async def durable_first(message: Msg) -> None:
        kept, refused = carried[id(message)]
        if not await durable(store, kept, refused):
            early.append(f"seq {kept.seq} acknowledged before it was durable")

    inbox = Inbox(check=durable_first)
    acked = inbox.acked

    async def live_equals_fold(what: str) -> None:
        await system.drain()
        for space in ("A", "B"):
            live = system.live(space).count
            folded = (await history.count_at(space, NOW)).count
            assert live == folded, f"{what}: space {space} live {live}, log folds to {folded}"

    faults = StoreFaults(store.engine)
    system = ActorSystem(history, clock=lambda: NOW)
    try:
        async with system.running():
            ingest = Ingest(
                inbox.messages(), inbox.ack, store=store, actors=system, dpus=DpuRegistry(),
                metrics=Metrics(),
                settings=IngestSettings(max_delay_s=0.001), clock=lambda: NOW,
            )  # fmt: skip
            task = asyncio.create_task(ingest.run())

            async def run_round(n: int, fail_step: int | None) -> None:
                message, kept, refused = round_message(n, refusing)
                carried[id(message)] = (kept, refused)
                if fail_step is not None:
                    faults.fail_steps(fail_step)
                inbox.put(message)
                await eventually(lambda: message in acked, what=f"round {n} acknowledged")

            # A clean commit first, to learn its steps on this backend.
            faults.clear()
            await run_round(0, None)
            steps = list(faults.steps)
            assert "INSERT INTO traversals" in steps, steps
            if refusing:
                assert "INSERT INTO quarantine" in steps, steps
                assert steps.index("INSERT INTO traversals") < steps.index("INSERT INTO quarantine")
            if refusing or store.engine.dialect.name == "postgresql":
                assert steps[-2:] == ["COMMIT", "COMMITTED"], steps
            else:  # one statement, committing on its own
                assert steps == ["INSERT INTO traversals", "COMMITTED"], steps
            await live_equals_fold("after a clean commit")

            # Then one round per step: before the append (its first statement), between the
            # traversal and the quarantine insert, at COMMIT and after it.
            for index, step in enumerate(steps, start=1):
                faults.clear()
                await run_round(index, index - 1)
                assert faults.failed == [step], (faults.failed, step)
                await live_equals_fold(f"after a failure at {step!r} (step {index})")

            task.cancel()
            await asyncio.wait([task])
    finally:
        faults.remove()
    assert early == []
    assert system.live("A").count == len(steps) + 1
    assert await store.log.count_traversals() == len(steps) + 1
