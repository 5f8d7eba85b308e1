"""``headcount replay --shard I/N``: one shard's spaces replayed under that shard's lock while
the other shards keep serving (they hold the store shared)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from headcount.domain.shards import Shard
from headcount.eventstore.lease import lease, shard_lease
from headcount.eventstore.store import EventStore
from tests.cli.support import SEED_CSV, count, import_csv, run
from tests.cli.test_replay import FLIPPED

#: The seed's A is shard 1 of 2, B shard 0 (tests/domain/test_shards.py pins it).
AT = "2018-02-26T17:00:00Z"


def counts(capsys: pytest.CaptureFixture[str], db: str) -> dict[str, int]:
    return {s: count(capsys, db, s, AT).json()["count"] for s in ("A", "B")}


@pytest.fixture(autouse=True)
def seeded(capsys: pytest.CaptureFixture[str], db: str) -> None:
    assert import_csv(capsys, db, SEED_CSV).code == 0


async def test_a_shard_replays_beside_the_others_and_answers_the_same(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    before = await asyncio.to_thread(counts, capsys, db)
    async with (
        await EventStore.open(db) as store,
        lease(store, exclusive=False, holder="headcount serve"),  # shard 0 serving
        shard_lease(store, Shard(0, 2), wait=False, holder="headcount serve"),
    ):
        replayed = await asyncio.to_thread(
            run, capsys, "replay", "--store", db, "--shard", "1/2", "--snapshot-every", "7"
        )
    assert replayed.code == 0, replayed.err
    summary = replayed.json()
    assert summary["shard"] == "1/2"
    assert summary["spaces"] == 1  # A alone
    assert summary["snapshots written"] > 0
    assert await asyncio.to_thread(counts, capsys, db) == before
    verified = await asyncio.to_thread(run, capsys, "replay", "--store", db, "--verify")
    assert verified.code == 0, verified.out


async def test_a_shard_still_served_is_not_replayed(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    async with (
        await EventStore.open(db) as store,
        shard_lease(store, Shard(1, 2), wait=False, holder="headcount serve"),
    ):
        refused = await asyncio.to_thread(run, capsys, "replay", "--store", db, "--shard", "1/2")
    assert refused.code == 1
    assert refused.err == (
        "headcount replay: shard 1/2 is held by another process (its headcount serve --shard"
        " 1/2); stop it, and its standby, first\n"
    )


def test_a_shard_replays_under_the_stores_topology_only(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    corrected = tmp_path / "corrected.toml"
    corrected.write_text(FLIPPED)
    refused = run(capsys, "replay", "--store", db, "--shard", "1/2", "--topology", corrected)
    assert refused.code == 2
    assert "a corrected topology changes what every shard counts" in refused.err
    other = run(capsys, "replay", "--store", db, "--shard", "1/2", "--space", "B")
    assert other.code == 2
    assert "--space B is not in shard 1/2: it belongs to shard 0/2" in other.err
    with pytest.raises(SystemExit) as bad:
        run(capsys, "replay", "--store", db, "--shard", "2/2")
    assert bad.value.code == 2
    assert "the index must be at least 0 and below the count" in capsys.readouterr().err
