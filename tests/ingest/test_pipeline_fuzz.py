"""Ingest under fuzzing, against a real (SQLite) store: generated messages, good and bad, go
through the whole pipeline; every refused one is quarantined with its reason, nothing else is
stored, and the counts are those of the good traversals alone.

The wire verdicts are the oracle here (``test_wire_fuzz`` holds them to the contract); this
test holds the pipeline to them. Each example opens a fresh store, so examples are few.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from pathlib import Path
from typing import Final

from hypothesis import example, given
from hypothesis import strategies as st

from headcount.actors import ActorSystem
from headcount.domain.events import Traversal
from headcount.domain.timefmt import parse_iso
from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.ingest import wire
from headcount.ingest.dpus import DpuRegistry
from headcount.ingest.pipeline import Ingest, IngestSettings
from headcount.metrics import Metrics
from tests.conftest import SEED
from tests.fuzzing import fuzz
from tests.ingest.inbox import Inbox, Msg
from tests.ingest.payloads import pack, payload_objects, status_payloads, topics, unpacked_payloads
from tests.polling import eventually
from tests.sim.reference import expected_count
from tests.store_readers import quarantined

#: Generated runs per test run, each of 5 to 12 messages: about 250 messages through the store.
RUNS: Final = 30
TOPOLOGY = Topology.from_toml((SEED / "topology.toml").read_text(encoding="utf-8"))
NOW = parse_iso("2018-02-26T17:00:00Z")
START = parse_iso("2018-01-01T00:00:00Z")  # the seed's assignments begin here

#: Traversals that may be stored: known DPUs, times the topology covers, seqs that repeat and
#: collide now and then (duplicates and conflicts).
good_traversals = st.builds(
    Traversal,
    st.sampled_from(["283", "423"]),
    st.integers(0, 40),
    st.integers(START - 1000, NOW + wire.DEFAULT_MAX_SKEW_MS + 1000),
    st.sampled_from([1, -1]),
)
good = st.builds(
    lambda batch: Msg(wire.traversals_topic(batch[0].dpu_id), wire.encode(batch)),
    st.lists(good_traversals, min_size=1, max_size=4).map(
        lambda batch: [t for t in batch if t.dpu_id == batch[0].dpu_id]
    ),
)
bad_payload = st.builds(
    Msg,
    st.sampled_from(["283", "423", "999"]).map(wire.traversals_topic),
    payload_objects.map(pack) | unpacked_payloads,
)
bad_topic = st.builds(Msg, topics, payload_objects.map(pack) | st.binary(max_size=16))
status = st.builds(Msg, st.sampled_from(["283", "999"]).map(wire.status_topic), status_payloads)
messages = st.lists(good | bad_payload | bad_topic | status, min_size=5, max_size=12)


def verdict(message: Msg) -> tuple[list[Traversal], list[str]]:
    """What the wire module says of one message: the traversals to store, the reasons of what
    it refuses (statuses are never quarantined)."""
    try:
        dpu_id, kind = wire.parse_topic(message.topic)
        if kind == "status":
            wire.decode_status(message.payload)
            return [], []
        events = wire.decode(dpu_id, message.payload)
    except wire.WireError as error:
        return [], [error.rejection.reason.value]
    kept, refused = wire.screen(events, TOPOLOGY, now=NOW)
    return kept, [rejection.reason.value for rejection in refused]


async def ingest_all(sent: list[Msg], folder: Path) -> None:
    async with await EventStore.open(f"sqlite+aiosqlite:///{folder / 'store.db'}") as store:
        inbox = Inbox()
        inbox.put(*sent)
        metrics = Metrics()
        system = ActorSystem(History(store, TOPOLOGY), clock=lambda: NOW)
        async with system.running():
            ingest = Ingest(
                inbox.messages(), inbox.ack, store=store, actors=system, dpus=DpuRegistry(),
                metrics=metrics, settings=IngestSettings(max_events=4), clock=lambda: NOW,
            )  # fmt: skip
            task = asyncio.create_task(ingest.run())
            await eventually(lambda: len(inbox.acked) == len(sent), what="every message acked")
            await system.drain()
            task.cancel()
            await asyncio.wait([task])
            live = {space: system.live(space).count for space in ("A", "B")}

        # What the wire says should happen: the first report of each (dpu_id, seq) stored, a
        # later one with other content a conflict, every refusal quarantined with its reason.
        stored: dict[tuple[str, int], Traversal] = {}
        reasons: list[str] = []
        for message in sent:
            kept, refused = verdict(message)
            reasons += refused
            for t in kept:
                if stored.setdefault(t.key, t) != t:
                    reasons.append("seq_conflict")

        assert inbox.acked == sent
        head = await store.log.head()
        rows = [row async for part in store.log.scan_log(after=None, head=head) for row in part]
        assert sorted(tuple(row) for row in rows) == sorted(
            (t.dpu_id, t.seq, t.ts, t.direction) for t in stored.values()
        )
        entries = await quarantined(store, limit=1000)
        found = [
            "seq_conflict" if e.origin.startswith("append:") else e.reason.split(":")[0]
            for e in entries
        ]
        assert Counter(found) == Counter(reasons)
        assert all(e.reason.partition(": ")[2].strip() for e in entries if e.origin[:5] == "mqtt:")
        for reason, times in Counter(reasons).items():
            assert metrics.registry.get_sample_value(
                "headcount_quarantined_total", {"reason": reason}
            ) == float(times)
        for space, count in live.items():
            assert count == expected_count(TOPOLOGY, stored.values(), space, NOW)


@fuzz(RUNS)
@given(messages)
@example(
    [
        Msg(wire.traversals_topic("283"), wire.encode(Traversal("283", 1, NOW - 5000, 1))),
        Msg(wire.traversals_topic("283"), wire.encode(Traversal("283", 1, NOW - 4000, -1))),
        Msg(b"dpus/\xff/traversals".decode("utf-8", "surrogateescape"), b"\x80"),
        Msg(wire.traversals_topic("283"), b"\x91" * 5000),
        Msg(wire.traversals_topic("999"), wire.encode(Traversal("999", 1, NOW, 1))),
    ]
)
def test_every_message_is_stored_or_quarantined_and_nothing_else(sent: list[Msg]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(ingest_all(sent, Path(folder)))
