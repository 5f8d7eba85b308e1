"""Schema versions, kept by Alembic: a later release upgrades an existing store in place."""

from __future__ import annotations

import asyncio
import re
import weakref
from collections.abc import Callable
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from headcount.errors import StoreError
from headcount.eventstore.engine import translate_errors, write_transaction
from headcount.eventstore.schema import on_backend

_PG_MIGRATE_LOCK = 0x68636D67  # "hcmg": one process migrates at a time


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for headcount's migrations, without an ini file."""
    config = Config()
    config.set_main_option("script_location", "headcount.eventstore:migrations")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


#: Tables a migrated PostgreSQL store holds that the metadata does not describe: the monthly
#: and DEFAULT partitions of ``traversals`` (``partitions.py`` makes them as time goes on).
_PARTITION = re.compile(r"^traversals_(default|y[0-9]{4}m[0-9]{2})$")


def include_object(dialect: str) -> Callable[[Any, str | None, str, bool, Any], bool]:
    """Alembic's ``include_object`` for comparing a store on ``dialect`` with the metadata:
    what the metadata keeps for the other backend is left out, and so are the partitions."""

    def include(item: Any, name: str | None, type_: str, reflected: bool, _other: Any) -> bool:
        if reflected:
            return not (type_ == "table" and name is not None and _PARTITION.match(name))
        return on_backend(item, dialect)

    return include


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise StoreError("headcount ships no schema migrations; the installation is broken")
    return head


#: Alembic's ``op`` and ``context`` are process-wide: two migrations interleaved on one event
#: loop would run each other's operations. One at a time per loop.
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


async def upgrade(engine: AsyncEngine) -> None:
    """Create the schema in an empty store, or upgrade an older one to this release's."""
    if await current_revision(engine) == head_revision():
        return

    def run(connection: Connection) -> None:
        command.upgrade(alembic_config(connection), "head")

    lock = _locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with (
        lock,
        write_transaction(engine, exclusive=True, pg_lock=_PG_MIGRATE_LOCK) as conn,
    ):
        await conn.run_sync(run)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The schema version the store is at (``None``: no headcount schema)."""

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with translate_errors(), engine.connect() as conn:
        return await conn.run_sync(read)


async def check_current(engine: AsyncEngine) -> None:
    """Refuse a store whose schema is not this release's, saying what to run."""
    current, wanted = await current_revision(engine), head_revision()
    if current != wanted:
        raise StoreError(
            f"the store's schema is at version {current or 'none'}, this release needs {wanted};"
            " run 'headcount migrate --store URL' to upgrade it"
        )
