"""Large benchmark stores, built once and kept in ``bench/.data/`` (git-ignored) until the
schema or what the benchmark asks for changes.

A store is named by the benchmark, a hash of the parameters the benchmark built it from (its
size, say) and a hash of the store's schema (schema.py and every migration). Building one
deletes the same store kept under an older schema. The kept file is never served: each run
works on a copy (the service appends events and writes snapshots).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from _harness import ROOT

DATA = ROOT / "bench" / ".data"
_SCHEMA = ROOT / "headcount" / "eventstore"


def schema_digest() -> str:
    """A hash of what decides the store's tables: schema.py and the migrations."""
    digest = hashlib.sha256()
    for path in [
        _SCHEMA / "schema.py",
        *sorted((_SCHEMA / "migrations" / "versions").glob("*.py")),
    ]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


async def cached_sqlite(
    name: str, params: dict[str, object], build: Callable[[str], Awaitable[None]]
) -> Path:
    """The path of the SQLite store ``name`` built by ``build(url)`` from ``params``; built now
    (and timed on stdout) unless a store with the same schema and parameters is kept. ``build``
    must close the store (SQLite then folds its WAL into the file)."""
    wanted = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    path = DATA / f"{name}-{wanted}-{schema_digest()[:12]}.db"
    if path.exists():
        print(f"store: reusing {path.relative_to(ROOT)}", flush=True)
        return path
    DATA.mkdir(exist_ok=True)
    for stale in DATA.glob(f"{name}-{wanted}-*.db*"):  # the same store, an older schema
        if ".building" not in stale.name:  # another run's, under way
            stale.unlink()
    building = path.with_name(f"{path.name}.{os.getpid()}.building")
    print(f"store: building {path.relative_to(ROOT)} ({params})", flush=True)
    started = time.perf_counter()
    try:
        await build(f"sqlite+aiosqlite:///{building}")
        os.replace(building, path)
    finally:
        for leftover in building.parent.glob(f"{building.name}*"):
            leftover.unlink()
    print(f"store: built in {time.perf_counter() - started:.0f}s", flush=True)
    return path


def working_copy(kept: Path, workdir: Path) -> str:
    """Copy a kept store into ``workdir``; the copy's store URL."""
    copy = workdir / kept.name
    shutil.copyfile(kept, copy)
    return f"sqlite+aiosqlite:///{copy}"


#: Where PostgreSQL benchmark stores live; each is a database of its own on this server.
POSTGRES_ENV = "HEADCOUNT_BENCH_POSTGRES_URL"
DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


async def cached_postgres(
    name: str, params: dict[str, object], build: Callable[[str], Awaitable[None]]
) -> str:
    """The URL of the PostgreSQL store ``name`` built by ``build(url)`` from ``params``, kept
    as a database of its own (``hc_bench_<name>_<params>_<schema>``) until the schema or the
    parameters change. A database whose build did not finish is built again."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    admin = make_url(os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES))
    wanted = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    prefix = f"hc_bench_{name}_{wanted}_"
    database = f"{prefix}{schema_digest()[:10]}"
    url = admin.set(database=database).render_as_string(hide_password=False)
    engine = create_async_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            existing = set((await conn.execute(text("SELECT datname FROM pg_database"))).scalars())
            if database in existing and await _finished(url):
                print(f"store: reusing PostgreSQL database {database}", flush=True)
                return url
            for stale in existing:
                if stale.startswith(prefix):  # this store, unfinished or an older schema
                    await conn.execute(text(f'DROP DATABASE "{stale}" WITH (FORCE)'))
            await conn.execute(text(f'CREATE DATABASE "{database}"'))
    finally:
        await engine.dispose()
    print(f"store: building PostgreSQL database {database} ({params})", flush=True)
    started = time.perf_counter()
    await build(url)
    await _mark_finished(url)
    print(f"store: built in {time.perf_counter() - started:.0f}s", flush=True)
    return url


async def _finished(url: str) -> bool:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return bool(await conn.scalar(text("SELECT to_regclass('bench_finished') IS NOT NULL")))
    finally:
        await engine.dispose()


async def _mark_finished(url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE bench_finished (at TIMESTAMPTZ DEFAULT now())"))
    finally:
        await engine.dispose()
