"""The append-only event store, opened from a URL: one engine, and a part for each job.

- :attr:`EventStore.log` the traversal and reset logs, the truth (``eventstore.log``);
- :attr:`EventStore.snapshots` folded states and whether one may be used
  (``eventstore.snapshots``);
- :attr:`EventStore.replays` replay generations (``eventstore.replays``);
- :attr:`EventStore.topologies` the topology documents used (``eventstore.topologies``);
- :attr:`EventStore.quarantine` refused input with its reason (``eventstore.quarantine``);
- :attr:`EventStore.answers` past answers' reads in one statement (``eventstore.answers``);
- :attr:`EventStore.sensors` what the log says of the DPUs' health (``eventstore.sensors``).
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncEngine

from headcount.clock import Clock, now_ms
from headcount.eventstore import migrate
from headcount.eventstore.answers import Answers
from headcount.eventstore.engine import DEFAULT_URL, create_engine
from headcount.eventstore.log import EventLog
from headcount.eventstore.quarantine import Quarantine
from headcount.eventstore.replays import Replays
from headcount.eventstore.sensors import SensorReads
from headcount.eventstore.snapshots import Snapshots
from headcount.eventstore.topologies import Topologies

__all__ = ["EventStore"]


class EventStore:
    """An open event store. Use :meth:`open` (an async context manager) to get one."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = now_ms) -> None:
        self.engine = engine
        self.log = EventLog(engine, clock=clock)
        self.snapshots = Snapshots(engine, clock=clock)
        self.replays = Replays(engine, clock=clock)
        self.topologies = Topologies(engine, clock=clock)
        self.quarantine = Quarantine(engine, clock=clock)
        self.answers = Answers(engine)
        self.sensors = SensorReads(engine)

    @classmethod
    async def open(
        cls, url: str = DEFAULT_URL, *, upgrade: bool = True, clock: Clock = now_ms
    ) -> EventStore:
        """Connect to the store at ``url`` and, unless ``upgrade`` is false, bring its schema
        to the current version (creating it in an empty database). ``clock`` stamps what is
        recorded (arrival times, snapshot times)."""
        engine = create_engine(url)
        try:
            if upgrade:
                await migrate.upgrade(engine)
            else:
                await migrate.check_current(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, clock=clock)

    async def close(self) -> None:
        await self.answers.close()
        await self.engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name
