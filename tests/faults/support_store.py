"""What the store fault tests share: a small filesystem of their own, ingest wired to a real
store and actors with the HTTP API over them, and the count of what was lost and doubled.

The ingest under test reads from an :class:`~tests.ingest.inbox.Inbox` (what a broker would
deliver) and every acknowledgement is checked against the store at that moment: a message is
acknowledged only once its traversals are stored.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import event, select, tuple_
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

from headcount.actors import ActorSystem
from headcount.domain.events import Traversal
from headcount.domain.topology import Topology
from headcount.eventstore.engine import _WRITE, read_transaction
from headcount.eventstore.schema import traversals
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.ingest import wire
from headcount.ingest.dpus import DpuRegistry
from headcount.ingest.pipeline import Ingest, IngestSettings
from headcount.metrics import Metrics
from headcount.service import build_app
from tests.driver_statements import DriverStatements
from tests.ingest.inbox import Inbox, Msg
from tests.sim.reference import expected_counts

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "topology.toml"
NOW = 1_700_000_000_000
SPACES = ("A", "B")


@contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"2m"``) mounted at ``path`` for the test, unmounted after. Skips
    the test, saying why, where mounting is impossible (not root, no mount permission)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full or read-only filesystem is made with mount -t tmpfs, which needs root")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): no filesystem to fill")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@contextmanager
def ext4_filesystem(path: Path, size_mb: int) -> Iterator[Path]:
    """An ext4 filesystem of ``size_mb`` in a loop file, mounted at ``path`` for the test:
    ext4 enforces ``chattr +i`` on files already open for writing, tmpfs does not. Skips the
    test, saying why, where that is impossible."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("an ext4 loop filesystem needs root and mkfs.ext4")
    image = path.with_name(path.name + ".img")
    with image.open("wb") as out:
        out.truncate(size_mb * 1024 * 1024)
    path.mkdir(parents=True, exist_ok=True)
    for command in (
        ["mkfs.ext4", "-q", "-F", str(image)],
        ["mount", "-o", "loop", str(image), str(path)],
    ):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot make an ext4 loop filesystem here ({done.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-d", "-l", str(path)], check=True)
        image.unlink()


def fill(path: Path) -> Path:
    """Fill the filesystem of ``path`` with one file until it has no space left; the file."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65_536, 4096, 512, 1):  # down to the last bytes
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


def immutable(*paths: Path, on: bool) -> None:
    """Make files immutable (no write, even by root) or writable again, with ``chattr``.
    Skips the test where the filesystem does not support it."""
    done = subprocess.run(
        ["chattr", "+i" if on else "-i", *map(str, paths)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"chattr cannot make the store read-only here: {done.stderr.strip()}")


class SlowCommits:
    """Every COMMIT of a write transaction on ``engine`` takes ``latency_s`` longer (an async
    sleep inside SQLAlchemy's greenlet, so the event loop runs on meanwhile), until
    :meth:`remove`. ``commits`` counts them."""

    def __init__(self, engine: AsyncEngine, latency_s: float) -> None:
        self._sync = engine.sync_engine
        self.latency_s = latency_s
        self.commits = 0
        event.listen(self._sync, "commit", self._on_commit)
        self._driver = DriverStatements(self._before_driver)

    def remove(self) -> None:
        event.remove(self._sync, "commit", self._on_commit)
        self._driver.remove()

    async def _before_driver(self, _statement: str, _parameters: object) -> None:
        # SQLite's append of new traversals: one statement that commits on its own.
        self.commits += 1
        await asyncio.sleep(self.latency_s)

    def _on_commit(self, conn: Connection) -> None:
        if conn.get_execution_options().get(_WRITE, False):
            self.commits += 1
            await_only(asyncio.sleep(self.latency_s))


def traversal_messages(n: int, *, seed: int = 7, per_message: int = 1) -> list[list[Traversal]]:
    """``n`` traversals of DPUs 283 and 423 in the hour before :data:`NOW`, in messages of
    ``per_message`` events of one DPU each."""
    rng = random.Random(seed)
    seqs = {"283": 0, "423": 0}
    messages: list[list[Traversal]] = []
    while sum(map(len, messages)) < n:
        dpu = rng.choice(("283", "423"))
        events = []
        for _ in range(min(per_message, n - sum(map(len, messages)))):
            seqs[dpu] += 1
            ts = NOW - 3_600_000 + seqs[dpu] * 100 + rng.randrange(50)
            events.append(Traversal(dpu, seqs[dpu], ts, rng.choice((1, 1, -1))))
        messages.append(events)
    return messages


@dataclass
class Rig:
    """Ingest, the actors and the HTTP API over one store, fed through an inbox."""

    store: EventStore
    topology: Topology
    history: History
    actors: ActorSystem
    ingest: Ingest[Msg]
    inbox: Inbox
    http: TestClient[web.Request, web.Application]
    sent: list[Traversal] = field(default_factory=list)
    early: list[str] = field(default_factory=list)
    #: At each acknowledgement: the messages ingest held (received, not acknowledged; the
    #: most there are, since they are released after a batch's acks) and the mailboxes' depth.
    held: list[int] = field(default_factory=list)
    mailboxes: list[int] = field(default_factory=list)

    def send(self, batches: list[list[Traversal]]) -> list[Msg]:
        messages = []
        for events in batches:
            message = Msg(wire.traversals_topic(events[0].dpu_id), wire.encode(events))
            self._carried[id(message)] = events
            messages.append(message)
            self.sent.extend(events)
        self.inbox.put(*messages)
        return messages

    @property
    def acked(self) -> int:
        return len(self.inbox.acked)

    async def healthz(self) -> tuple[int, str]:
        """``/healthz``'s status and its ``detail`` (or status) text."""
        response = await self.http.get("/healthz")
        body = await response.json()
        return response.status, str(body.get("detail", body.get("status")))

    async def health_becomes(self, status: int, *, timeout: float = 30.0) -> str:
        """Poll ``/healthz`` until it answers ``status``; its detail then. Fails the test with
        the last answer after ``timeout`` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            got, detail = await self.healthz()
            if got == status:
                return detail
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"/healthz stayed {got} ({detail}), not {status}")
            await asyncio.sleep(0.01)

    async def check_durable_at_ack(self, message: Msg) -> None:
        self.held.append(self.ingest.health.waiting)
        self.mailboxes.append(self.actors.mailbox_depth())
        events = self._carried.get(id(message))
        if events is None:  # not a message of traversals
            return
        keys = {(t.dpu_id, t.seq) for t in events}
        stored = await stored_keys(self.store, keys)
        missing = keys - set(stored)
        if missing:
            self.early.append(f"acknowledged before stored: {sorted(missing)[:5]}")

    _carried: dict[int, list[Traversal]] = field(default_factory=dict)


async def stored_keys(
    store: EventStore, among: set[tuple[str, int]] | None = None
) -> list[tuple[str, int]]:
    """Every stored (dpu_id, seq), repeats included (there must be none); only those in
    ``among`` when given."""
    query = select(traversals.c.dpu_id, traversals.c.seq)
    if among is not None:
        query = query.where(tuple_(traversals.c.dpu_id, traversals.c.seq).in_(sorted(among)))
    async with read_transaction(store.engine) as conn:
        rows = (await conn.execute(query)).all()
    return [(r.dpu_id, r.seq) for r in rows]


@asynccontextmanager
async def rig(
    store: EventStore,
    settings: IngestSettings | None = None,
    *,
    monotonic: Callable[[], float] = time.monotonic,
    check_acks: bool = True,
) -> AsyncIterator[Rig]:
    """Ingest running over ``store`` with the seed topology, the clock frozen at :data:`NOW`
    (``monotonic`` is the rate limiter's). With ``check_acks``, every acknowledgement is
    checked against the store (a query per message: slow for tens of thousands)."""
    topology = Topology.from_toml(SEED.read_text())
    history = History(store, topology, snapshot_every=10**9)
    metrics = Metrics()
    holder: list[Rig] = []

    async def check(message: Msg) -> None:
        await holder[0].check_durable_at_ack(message)

    inbox = Inbox(check=check if check_acks else None)
    system = ActorSystem(history, clock=lambda: NOW)
    dpus = DpuRegistry()
    async with system.running():
        ingest = Ingest(
            inbox.messages(), inbox.ack, store=store, actors=system, dpus=dpus, metrics=metrics,
            settings=settings or IngestSettings(max_delay_s=0.001, dpu_rate=None),
            clock=lambda: NOW,
            monotonic=monotonic,
        )  # fmt: skip
        app = build_app(
            store=store, history=history, actors=system, dpus=dpus, metrics=metrics,
            ingest=ingest.health,
        )  # fmt: skip
        async with TestClient(TestServer(app)) as http:
            holder.append(Rig(store, topology, history, system, ingest, inbox, http))
            task = asyncio.create_task(ingest.run(), name="ingest under test")
            try:
                yield holder[0]
            finally:
                task.cancel()
                await asyncio.wait([task])


async def lost_and_doubled(r: Rig, fault: str) -> str:
    """Sent, stored, lost and doubled, and every live and historical count against the
    reference fold of what was sent, as one line; the counts must match for the test to pass.
    The line is printed after ``fault`` (what was injected, once), as the other fault tests
    print theirs (``pytest tests/faults -s``)."""
    stored = await stored_keys(r.store)
    sent = {(t.dpu_id, t.seq) for t in r.sent}
    lost = len(sent - set(stored))
    doubled = len(stored) - len(set(stored))
    extra = len(set(stored) - sent)
    await r.actors.drain()
    wrong = []
    times = [*sorted({t.ts for t in r.sent}), NOW]
    for space in SPACES:
        expected = expected_counts(r.topology, r.sent, space, times)
        live = r.actors.live(space).count
        if live != expected[-1]:
            wrong.append(f"live {space} {live} != {expected[-1]}")
        for ts, want in list(zip(times, expected, strict=True))[:: max(1, len(times) // 20)]:
            got = (await r.history.count_at(space, ts)).count
            if got != want:
                wrong.append(f"{space} at {ts}: {got} != {want}")
    line = (
        f"sent {len(sent)}, stored {len(stored)}, lost {lost}, doubled {doubled},"
        f" unknown {extra}, early acks {len(r.early)}, wrong counts {wrong[:5]}"
    )
    print(f"{fault}: faults injected 1, {line}")
    return line


def clean(sent: int) -> str:
    """The line :func:`lost_and_doubled` gives when nothing went wrong."""
    return (
        f"sent {sent}, stored {sent}, lost 0, doubled 0, unknown 0, early acks 0, wrong counts []"
    )
