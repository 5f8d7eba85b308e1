"""Every command test runs with no store or topology from the environment, in its own
directory."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No store, topology or tokens from the environment; the default store, if ever reached,
    lands in the test's own directory."""
    monkeypatch.delenv("HEADCOUNT_STORE", raising=False)
    monkeypatch.delenv("HEADCOUNT_TOPOLOGY", raising=False)
    monkeypatch.delenv("HEADCOUNT_TOKENS", raising=False)
    monkeypatch.delenv("HEADCOUNT_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def db(tmp_path: Path) -> str:
    """The URL of a new SQLite store in the test's directory."""
    return f"sqlite+aiosqlite:///{tmp_path / 's.db'}"
