"""``headcount reset``: straight into a store no service uses, through a running service with
``--service`` (its live count follows at once), and refused when a service holds the store
and no ``--service`` was given."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import pytest

from headcount.eventstore.lease import lease
from headcount.eventstore.store import EventStore
from headcount.http.tokens import Scope, add_token
from headcount.ingest.broker import free_port
from tests.cli.support import SEED_CSV, SEED_TOPOLOGY, count, import_csv, run
from tests.cli.test_replay import service
from tests.serve_process import stop_serving, wait_healthy

#: Inside the seed export's span: the seed's own counts differ from 7 before and after.
AT = "2018-02-26T17:00:00Z"
LATER = "2018-02-26T17:00:00.001Z"


def _imported(capsys: pytest.CaptureFixture[str], db: str) -> None:
    imported = import_csv(capsys, db, SEED_CSV)
    assert imported.code == 0, imported.err


def test_a_reset_into_the_store_is_what_later_answers_fold(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    _imported(capsys, db)
    made = run(
        capsys, "reset", "A", "--count", "7", "--at", "2018-02-26T18:00:00+01:00", "--store", db
    )
    assert made.code == 0, made.err
    assert made.json() == {
        "space_id": "A",
        "ts": "2018-02-26T17:00:00.000Z",
        "count": 7,
        "kind": "reset",
    }
    assert count(capsys, db, "A", AT).json()["count"] == 7
    # The same reset again changes nothing; another count at that millisecond is refused.
    assert run(capsys, "reset", "A", "--count", "7", "--at", AT, "--store", db).code == 0
    other = run(capsys, "reset", "A", "--count", "8", "--at", AT, "--store", db)
    assert other.code == 1
    assert other.err.startswith("headcount reset: space 'A' already has a reset to 7")
    assert count(capsys, db, "A", AT).json()["count"] == 7


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["A", "--count", "-1"], "argument --count: -1 cannot be negative"),
        (["A", "--count", "x"], "argument --count: 'x' is not a whole number"),
    ],
)
def test_bad_flags_are_usage_errors(
    capsys: pytest.CaptureFixture[str], db: str, argv: list[str], says: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        run(capsys, "reset", *argv, "--store", db)
    assert exited.value.code == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["Q", "--count", "1"], "unknown space"),
        (
            ["A", "--count", "1", "--at", "2018-02-26T17:00:00"],
            "--at: '2018-02-26T17:00:00' has no UTC offset",
        ),
        (
            ["A", "--count", "1", "--at", "9998-12-31T00:00:00Z"],
            "--at: 9998-12-31T00:00:00Z is in the future",
        ),
    ],
)
def test_what_cannot_be_a_reset_is_refused_and_nothing_is_written(
    capsys: pytest.CaptureFixture[str], db: str, argv: list[str], says: str
) -> None:
    _imported(capsys, db)
    refused = run(capsys, "reset", *argv, "--store", db)
    assert refused.code == 2
    assert says in refused.err.lower() or says in refused.err
    assert count(capsys, db, "A", AT).json()["count"] != 1


async def test_a_store_a_service_holds_is_refused_without_service(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    await asyncio.to_thread(_imported, capsys, db)
    async with (
        await EventStore.open(db) as store,
        lease(store, exclusive=False, holder="headcount serve"),
    ):
        refused = await asyncio.to_thread(
            run, capsys, "reset", "A", "--count", "7", "--at", AT, "--store", db
        )
    assert refused.code == 2
    assert refused.err.startswith("headcount reset: a headcount service")
    assert "give --service URL of the running service" in refused.err
    assert refused.err.count("\n") == 1
    # Nothing was written.
    assert await asyncio.to_thread(lambda: count(capsys, db, "A", AT).json()["count"]) != 7


async def _live(url: str, space: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/spaces/{space}/count") as response,
    ):
        return int((await response.json())["count"])


async def test_through_a_running_service_the_live_count_follows_at_once(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    await asyncio.to_thread(_imported, capsys, db)
    async with service(db) as url:
        made = await asyncio.to_thread(run, capsys, "reset", "A", "--count", "5", "--service", url)
        assert made.code == 0, made.err
        assert made.json()["count"] == 5
        assert made.json()["kind"] == "reset"
        assert await _live(url, "A") == 5
        # A past one is a late event like any other: the past answer follows it.
        past = await asyncio.to_thread(
            run, capsys, "reset", "A", "--count", "9", "--at", AT, "--service", url
        )
        assert past.code == 0, past.err
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/spaces/A/count", params={"ts": AT}) as response,
        ):
            assert (await response.json())["count"] == 9
        assert await _live(url, "A") == 5
        unknown = await asyncio.to_thread(
            run, capsys, "reset", "Q", "--count", "1", "--service", url
        )
        assert unknown.code == 1
        assert "404" in unknown.err
    assert await asyncio.to_thread(lambda: count(capsys, db, "A", LATER).json()["count"]) == 9


async def test_through_a_service_with_tokens_it_takes_a_write_token(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    await asyncio.to_thread(_imported, capsys, db)
    tokens = tmp_path / "tokens.toml"
    reader = add_token(tokens, "reader", Scope.READ)
    writer = add_token(tokens, "writer", Scope.WRITE)
    http = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "headcount", "serve", "--store", db, "--tokens", str(tokens),
        "--http-port", str(http), "--mqtt-port", str(free_port()),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{http}"
    try:
        assert await wait_healthy(url, process, timeout_s=60)
        argv = ("reset", "A", "--count", "4", "--service", url)
        refused = await asyncio.to_thread(run, capsys, *argv, "--token", reader)
        assert refused.code == 1
        assert "403" in refused.err
        made = await asyncio.to_thread(run, capsys, *argv, "--token", writer)
        assert made.code == 0, made.err
    finally:
        await stop_serving(process)


def test_topology_given_names_the_spaces(capsys: pytest.CaptureFixture[str], db: str) -> None:
    made = run(
        capsys, "reset", "B", "--count", "2", "--at", AT, "--store", db, "--topology", SEED_TOPOLOGY
    )
    assert made.code == 0, made.err
