"""Fixtures shared by the whole suite: real stores on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from headcount.cli.topology_cache import CACHE_ENV
from headcount.eventstore.engine import create_engine
from headcount.eventstore.store import EventStore

pytest_plugins = ["tests.mqtt_fixtures"]

POSTGRES_ENV = "HEADCOUNT_TEST_POSTGRES_URL"
ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "examples" / "seed"


@pytest.fixture
def auth_dir() -> Iterator[Path]:
    """A directory for DPU credentials that a Mosquitto started by a test can read once it
    has dropped root (pytest's ``tmp_path`` is root's alone)."""
    directory = Path(tempfile.mkdtemp(prefix="headcount-test-auth-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


@pytest.fixture(autouse=True, scope="session")
def _topology_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The suite's checked topologies (and those of the services it starts) are kept in a
    directory of its own, never in the user's cache."""
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("topology-cache"))


def postgres_admin_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(
            f"PostgreSQL store tests need {POSTGRES_ENV}, e.g."
            " postgresql+asyncpg://postgres@127.0.0.1:5432/test (CI sets it)"
        )
    return url


async def _create_postgres_database() -> str:
    """A new, empty database on the test server; its URL."""
    admin = make_url(postgres_admin_url()).set(drivername="postgresql+asyncpg")
    name = f"headcount_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin.render_as_string(hide_password=False))
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE template0'))
    await engine.dispose()
    return admin.set(database=name).render_as_string(hide_password=False)


async def _drop_postgres_database(url: str) -> None:
    admin = make_url(postgres_admin_url()).set(drivername="postgresql+asyncpg")
    name = make_url(url).database
    engine = create_engine(admin.render_as_string(hide_password=False))
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a new, empty store on each backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        return
    url = await _create_postgres_database()
    try:
        yield url
    finally:
        await _drop_postgres_database(url)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[EventStore]:
    """An open, empty store on each backend."""
    async with await EventStore.open(store_url) as opened:
        yield opened
