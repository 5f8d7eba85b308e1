"""Times a person types on the command line: outside the supported range they are usage
errors naming the range, never an overflow's traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.support import SEED_CSV, SEED_TOPOLOGY, import_csv, run


@pytest.mark.parametrize(
    "at", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59Z"]
)
@pytest.mark.parametrize(
    ("command", "flag"),
    [(("count", "A"), "--at"), (("replay",), "--from"), (("replay", "--dry-run"), "--at")],
    ids=["count", "replay-from", "replay-dry-run"],
)
def test_times_outside_the_supported_range_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
    db: str,
    tmp_path: Path,
    command: tuple[str, ...],
    flag: str,
    at: str,
) -> None:
    """On a space with a daily reset, times whose local day datetime cannot hold: exit 2 with
    the supported range, not an OverflowError's traceback."""
    nightly = tmp_path / "nightly.toml"
    nightly.write_text(
        SEED_TOPOLOGY.read_text().replace(
            'name = "Space A"\n',
            'name = "Space A"\ntime_zone = "Pacific/Kiritimati"\ndaily_reset = "04:00"\n',
        )
    )
    assert import_csv(capsys, db, SEED_CSV, topology=nightly).code == 0
    result = run(capsys, *command, flag, at, "--store", db, "--topology", nightly)
    assert result.code == 2
    assert result.out == ""
    assert result.err.startswith(f"headcount {command[0]}: {flag}: {at!r} is outside")
    assert "0002-01-01T00:00:00.000Z to 9998-12-31T23:59:59.999Z" in result.err
    assert "Traceback" not in result.err
