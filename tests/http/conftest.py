"""The HTTP suite runs on SQLite alone: it checks routes, JSON shapes and the OpenAPI document,
which do not depend on the backend. What does (the store, past answers, replay) is tested on
SQLite and PostgreSQL in tests/eventstore and tests/history."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A new, empty SQLite store."""
    return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
