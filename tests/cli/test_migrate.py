"""``headcount migrate``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.support import run, store_contents


def test_migrate_a_fresh_store(capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path) -> None:
    assert not (tmp_path / "s.db").exists()
    result = run(capsys, "migrate", "--store", db)
    assert result.code == 0, result.err
    assert (tmp_path / "s.db").is_file()
    assert "current schema" in result.err
    assert store_contents(db) == (0, [])
    # Twice is harmless.
    assert run(capsys, "migrate", "--store", db).code == 0
