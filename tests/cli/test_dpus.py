"""``headcount dpus credentials``: passwords printed once, broker files in --out."""

from __future__ import annotations

from pathlib import Path

import pytest

from headcount.ingest.credentials import SERVICE_USERNAME, load
from tests.cli.support import SEED_CSV, SEED_TOPOLOGY, import_csv, run


def lines(out: str) -> dict[str, str]:
    return dict(line.split("\t") for line in out.splitlines())


def test_prints_a_password_per_dpu_and_the_service_once(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    out = tmp_path / "auth"
    first = run(
        capsys, "dpus", "credentials", "--store", db, "--topology", SEED_TOPOLOGY, "--out", out
    )
    assert first.code == 0, first.err
    passwords = lines(first.out)
    assert sorted(passwords) == ["283", "423", SERVICE_USERNAME]
    assert load(out).service_password == passwords[SERVICE_USERNAME]
    assert "3 password(s) made, 0 account(s) kept" in first.err
    hashes_only = "".join(p.read_text() for p in out.iterdir() if p.name != "service.password")
    for password in passwords.values():
        assert password not in hashes_only
    again = run(
        capsys, "dpus", "credentials", "--store", db, "--topology", SEED_TOPOLOGY, "--out", out
    )
    assert (again.code, again.out) == (0, "")
    rotated = run(
        capsys, "dpus", "credentials", "--topology", SEED_TOPOLOGY, "--store", db,
        "--out", out, "--rotate", "423",
    )  # fmt: skip
    assert sorted(lines(rotated.out)) == ["423"]
    assert lines(rotated.out)["423"] != passwords["423"]


def test_uses_the_stores_topology_by_default(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    assert import_csv(capsys, db, SEED_CSV).code == 0
    result = run(capsys, "dpus", "credentials", "--store", db, "--out", tmp_path / "auth")
    assert result.code == 0, result.err
    assert sorted(lines(result.out)) == ["283", "423", SERVICE_USERNAME]


def test_an_unknown_dpu_to_rotate_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    result = run(
        capsys, "dpus", "credentials", "--store", db, "--topology", SEED_TOPOLOGY,
        "--out", tmp_path / "auth", "--rotate", "999",
    )  # fmt: skip
    assert result.code == 2
    assert "--rotate 999: no such DPU in the topology" in result.err
    assert result.out == ""


def test_without_a_topology_it_says_how_to_give_one(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    result = run(capsys, "dpus", "credentials", "--store", db, "--out", tmp_path / "auth")
    assert result.code == 2
    assert "no topology: pass --topology FILE" in result.err
