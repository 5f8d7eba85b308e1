"""``headcount replay`` end to end: retroactive corrections of the seed's topology (a DPU
mounted backwards, a move recorded late) reach every historical and live answer; dry runs and
verification write nothing; a replay refuses a store a service is using."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from headcount.eventstore.lease import lease
from headcount.eventstore.store import EventStore
from headcount.ingest.broker import free_port
from tests.cli.support import SEED_CSV, SEED_TOPOLOGY, import_csv, iso, ms, run, seed_events
from tests.serve_process import stop_serving, wait_healthy

#: Mounted backwards: DPU 423 hangs inside B, not A (Z's links flipped).
FLIPPED = SEED_TOPOLOGY.read_text().replace(
    '{ space = "A", sensor_placement = 1 }, { space = "B", sensor_placement = -1 }',
    '{ space = "A", sensor_placement = -1 }, { space = "B", sensor_placement = 1 }',
)
MOVED_AT = "2018-02-26T12:00:00Z"
#: DPU 283 moved from X to Z at noon on 2018-02-26, recorded late.
MOVED = SEED_TOPOLOGY.read_text().replace(
    'dpu = "283"\ndoorway = "X"\nvalid_from = "2018-01-01T00:00:00Z"\n',
    f'dpu = "283"\ndoorway = "X"\nvalid_from = "2018-01-01T00:00:00Z"\nvalid_until = "{MOVED_AT}"'
    f'\n\n[[assignments]]\ndpu = "283"\ndoorway = "Z"\nvalid_from = "{MOVED_AT}"\n',
)
Placement = Callable[[str, int], dict[str, int]]  # (dpu_id, ts) -> {space: placement}


def seed_placement(dpu: str, _ts: int) -> dict[str, int]:
    return {"283": {"A": 1}, "423": {"A": 1, "B": -1}}[dpu]


def flipped_placement(dpu: str, _ts: int) -> dict[str, int]:
    return {"283": {"A": 1}, "423": {"A": -1, "B": 1}}[dpu]


def moved_placement(dpu: str, ts: int) -> dict[str, int]:
    if dpu == "283" and ts >= ms(MOVED_AT):
        return {"A": 1, "B": -1}
    return seed_placement(dpu, ts)


def reference(placement: Placement, space: str, at: int) -> int:
    """The fold of the seed rows under a placement, floored at zero, written afresh."""
    total = 0
    for ts, dpu_id, _seq, direction in seed_events():
        if ts > at:
            break
        delta = placement(dpu_id, ts).get(space)
        if delta is not None:
            total = max(0, total + direction * delta)
    return total


TIMES = [iso(m) for m in (ms("2018-02-26T09:00:00Z"), ms("2018-02-26T17:00:00Z"))] + [
    iso(seed_events()[-1][0] + 1)
]


def counts(capsys: pytest.CaptureFixture[str], db: str) -> dict[tuple[str, str], int]:
    found = {}
    for at in TIMES:
        for space in ("A", "B"):
            answer = run(capsys, "count", space, "--at", at, "--store", db)
            assert answer.code == 0, answer.err
            found[(space, at)] = answer.json()["count"]
    return found


def expected(placement: Placement) -> dict[tuple[str, str], int]:
    return {(s, at): reference(placement, s, ms(at)) for at in TIMES for s in ("A", "B")}


@pytest.fixture
def db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """A SQLite store holding the seed rows under the seed topology, with snapshots."""
    url = f"sqlite+aiosqlite:///{tmp_path / 's.db'}"
    imported = import_csv(capsys, url, SEED_CSV, "--snapshot-every", "10")
    assert imported.code == 0, imported.err
    return url


def test_the_references_differ() -> None:
    assert expected(seed_placement) != expected(flipped_placement)
    assert expected(seed_placement) != expected(moved_placement)


def test_replay_under_the_same_topology_changes_no_answer(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    replayed = run(capsys, "replay", "--store", db, "--snapshot-every", "7")
    assert replayed.code == 0, replayed.err
    summary = replayed.json()
    assert summary["events read"] == 530
    assert summary["spaces"] == 2
    assert summary["generation"] == 1
    assert summary["snapshots written"] > 0
    assert "replaying: 530 of 530" in replayed.err
    assert counts(capsys, db) == expected(seed_placement)


@pytest.mark.parametrize(
    ("document", "placement"),
    [(FLIPPED, flipped_placement), (MOVED, moved_placement)],
    ids=["mounted-backwards", "moved-late"],
)
def test_a_retroactive_correction_reaches_every_answer(
    capsys: pytest.CaptureFixture[str],
    db: str,
    tmp_path: Path,
    document: str,
    placement: Placement,
) -> None:
    corrected = tmp_path / "corrected.toml"
    corrected.write_text(document)

    # The dry run shows the change and writes nothing: the store still answers as before.
    dry = run(capsys, "replay", "--store", db, "--topology", corrected, "--dry-run",
              *(a for at in TIMES for a in ("--at", at)))  # fmt: skip
    assert dry.code == 0, dry.err
    rows = [line.split() for line in dry.out.splitlines()[1:]]
    shown = {(r[0], r[1]): (int(r[2]), int(r[3])) for r in rows}
    before, after = expected(seed_placement), expected(placement)
    assert shown == {key: (before[key], after[key]) for key in before if key in shown}
    assert {key for key, (old, new) in shown.items() if old != new} == {
        key for key in before if before[key] != after[key]
    }
    assert "nothing written" in dry.err
    assert counts(capsys, db) == before

    replayed = run(capsys, "replay", "--store", db, "--topology", corrected)
    assert replayed.code == 0, replayed.err

    # The corrected topology is now the store's: every answer follows it.
    assert counts(capsys, db) == after
    verified = run(capsys, "replay", "--store", db, "--verify")
    assert verified.code == 0, verified.out
    assert verified.json()["mismatches"] == 0


def test_dry_run_needs_a_topology_file(capsys: pytest.CaptureFixture[str], db: str) -> None:
    dry = run(capsys, "replay", "--store", db, "--dry-run")
    assert dry.code == 2
    assert "--dry-run needs --topology FILE" in dry.err


def test_options_of_other_modes_are_refused(capsys: pytest.CaptureFixture[str], db: str) -> None:
    assert "--at is for --dry-run" in run(capsys, "replay", "--store", db, "--at", TIMES[0]).err
    refused = run(capsys, "replay", "--store", db, "--service", "http://127.0.0.1:1")
    assert refused.code == 2
    assert "--service is for --verify" in refused.err
    bad = run(capsys, "replay", "--store", db, "--from", "yesterday")
    assert bad.code == 2
    assert bad.err.startswith("headcount replay: --from:")


def test_verify_with_a_service_that_is_not_there(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    verified = run(capsys, "replay", "--store", db, "--verify", "--service", url)
    assert verified.code == 1
    # After the fold's progress, one line.
    said = verified.err.splitlines()[-1]
    assert said.startswith(f"headcount replay: cannot ask the service at {url} for its live")
    assert said.endswith("; check --service")
    assert "Traceback" not in verified.err
    bad = run(capsys, "replay", "--store", db, "--verify", "--service", "localhost:8080")
    assert bad.code == 2
    assert bad.err.startswith("headcount replay: --service: 'localhost:8080' is not a service URL")


async def test_a_refused_replay_says_headcount_replay_once(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    """The lease's refusal names its holder, 'headcount replay'; the command adds nothing."""
    async with (
        await EventStore.open(db) as store,
        lease(store, exclusive=False, holder="headcount serve"),
    ):
        refused = await asyncio.to_thread(run, capsys, "replay", "--store", db)
    assert refused.code == 1
    assert refused.err == (
        "headcount replay: a headcount service or import is using this store; stop it first"
        " (a replay must hold the store alone), then start it again afterwards\n"
    )


def test_the_service_url_variable_is_for_verify_alone(
    capsys: pytest.CaptureFixture[str], db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HEADCOUNT_SERVICE_URL set for --verify does not make every other replay a usage
    error, as --service given on the command line would."""
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HEADCOUNT_SERVICE_URL", url)
    assert run(capsys, "replay", "--store", db).code == 0
    verified = run(capsys, "replay", "--store", db, "--verify")
    assert verified.code == 1
    assert f"cannot ask the service at {url}" in verified.err


# -- beside a running service ------------------------------------------------------------------


@asynccontextmanager
async def service(db: str) -> AsyncIterator[str]:
    """``headcount serve`` on the store (its recorded topology); yields the HTTP URL."""
    http = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "headcount", "serve", "--store", db,
        "--http-port", str(http), "--mqtt-port", str(free_port()),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{http}"
    try:
        assert await wait_healthy(url, process, timeout_s=60)
        yield url
    finally:
        await stop_serving(process)


async def live_and_past(url: str) -> dict[tuple[str, str], int]:
    found = {}
    async with aiohttp.ClientSession() as session:
        for space in ("A", "B"):
            for at in TIMES:
                async with session.get(f"{url}/spaces/{space}/count?ts={at}") as response:
                    found[(space, at)] = (await response.json())["count"]
            async with session.get(f"{url}/spaces/{space}/count") as response:
                found[(space, "live")] = (await response.json())["count"]
    return found


def with_live(placement: Placement) -> dict[tuple[str, str], int]:
    answers = expected(placement)
    for space in ("A", "B"):
        answers[(space, "live")] = answers[(space, TIMES[-1])]
    return answers


async def test_replay_refuses_a_store_in_use_and_the_service_follows_it_after(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    corrected = tmp_path / "corrected.toml"
    corrected.write_text(FLIPPED)
    async with service(db) as url:
        assert await live_and_past(url) == with_live(seed_placement)
        refused = await asyncio.to_thread(
            run, capsys, "replay", "--store", db, "--topology", corrected
        )
        assert refused.code == 1
        assert "a headcount service or import is using this store; stop it first" in refused.err
        assert refused.err.count("headcount replay:") == 1
        # Verification reads only, and may compare the live counts.
        verified = await asyncio.to_thread(
            run, capsys, "replay", "--store", db, "--verify", "--service", url
        )
        assert verified.code == 0, verified.out
    # The refusal wrote nothing. (The command runs its own event loop: off this one.)
    assert await asyncio.to_thread(counts, capsys, db) == expected(seed_placement)

    replayed = await asyncio.to_thread(
        run, capsys, "replay", "--store", db, "--topology", corrected
    )
    assert replayed.code == 0, replayed.err
    async with service(db) as url:
        assert await live_and_past(url) == with_live(flipped_placement)
        # A service under the old topology would disagree: verify says so, per space.
        verified = await asyncio.to_thread(
            run, capsys, "replay", "--store", db, "--topology", SEED_TOPOLOGY, "--verify",
            "--service", url,
        )  # fmt: skip
        assert verified.code == 1
        assert "space A: live count" in verified.out
