"""``headcount partitions list|create|detach`` on the seed data (February 2018)."""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path

import pytest

from headcount.actors import ActorSystem
from headcount.domain.timefmt import to_ms
from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore
from headcount.history import History
from tests.cli.support import SEED_CSV, SEED_TOPOLOGY, Run, import_csv, run


async def in_thread(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> Run:
    """The command runs its own event loop: off this test's loop."""
    return await asyncio.to_thread(run, capsys, *argv)


def test_a_sqlite_store_has_no_partitions(capsys: pytest.CaptureFixture[str], db: str) -> None:
    result = run(capsys, "partitions", "list", "--store", db)

    assert result.code == 2
    assert "keeps its log in one table" in result.err


def test_a_month_must_be_written_as_one(capsys: pytest.CaptureFixture[str], db: str) -> None:
    result = run(capsys, "partitions", "detach", "--before", "2018/03", "--store", db)

    assert result.code == 2
    assert "--before: '2018/03' is not a month: write YYYY-MM" in result.err


async def test_detach_keeps_the_counts_from_the_boundary_on(
    capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    if not store_url.startswith("postgresql"):
        pytest.skip("partitions are PostgreSQL's")
    assert (await asyncio.to_thread(import_csv, capsys, store_url, SEED_CSV)).code == 0
    listed = await in_thread(capsys, "partitions", "list", "--store", store_url)
    assert [json.loads(line)["month"] for line in listed.out.splitlines()] == [None]

    made = await in_thread(
        capsys, "partitions", "create", "--from", "2018-02", "--to", "2018-03", "--store", store_url
    )
    assert made.json()["made"] == ["traversals_y2018m02", "traversals_y2018m03"], made.err
    at = "2018-03-01T00:00:00Z"
    counts = {s: await _count(capsys, store_url, s, at) for s in ("A", "B")}

    early = await in_thread(
        capsys, "partitions", "detach", "--before", "2999-01", "--store", store_url
    )
    assert early.code == 2
    assert "the current month and later ones stay in the log" in early.err
    detached = await in_thread(
        capsys, "partitions", "detach", "--before", "2018-03", "--store", store_url
    )

    assert detached.code == 0, detached.err
    assert detached.json() == {
        "closed_before": "2018-03",
        "snapshots": 2,
        "detached": ["traversals_y2018m02"],
    }
    assert "counts before it are no longer exact" in detached.err
    assert {s: await _count(capsys, store_url, s, at) for s in ("A", "B")} == counts
    listed = await in_thread(capsys, "partitions", "list", "--store", store_url)
    rows = [json.loads(line) for line in listed.out.splitlines()]
    assert [(r["table"], r["attached"]) for r in rows] == [
        ("traversals_y2018m02", False),
        ("traversals_y2018m03", True),
        ("traversals_default", True),
    ]
    assert "closed before 2018-03" in listed.err
    replay = await in_thread(capsys, "replay", "--store", store_url)
    assert replay.code == 2
    assert "replay with --from 2018-03-01T00:00:00.000Z or later" in replay.err
    # What is folded from the log starts at the snapshots written at the boundary.
    verify = await in_thread(capsys, "replay", "--verify", "--store", store_url)
    assert verify.code == 0, verify.out
    assert verify.json()["mismatches"] == 0
    await _check_recovery(store_url)


async def _check_recovery(store_url: str) -> None:
    """The live counts after a restart, by one pass over the log and space by space; each
    must be what the history answers, at a fixed time after the boundary."""
    now = to_ms(datetime.datetime(2018, 3, 3, tzinfo=datetime.UTC))  # after the last event
    topology = Topology.from_toml(SEED_TOPOLOGY.read_text())
    async with await EventStore.open(store_url) as store:
        history = History(store, topology)
        answers = {s: (await history.count_at(s, now)).count for s in topology.spaces}
        one_pass = ActorSystem(history, clock=lambda: now)
        await one_pass.recover()  # few events for two spaces: one pass over the log
        assert {s: one_pass.live(s).count for s in topology.spaces} == answers
        by_space = ActorSystem(history, clock=lambda: now)
        for actor in by_space.actors.values():
            await actor.recover()
        assert {s: by_space.live(s).count for s in topology.spaces} == answers


async def _count(capsys: pytest.CaptureFixture[str], store: str, space: str, at: str) -> int:
    result = await in_thread(capsys, "count", space, "--at", at, "--store", store)
    assert result.code == 0, result.err
    count: int = result.json()["count"]
    return count
