"""Store failures on purpose, at a chosen step of a write: for tests of what ingest does when
the store fails in the middle of a commit, or refuses what it is given.

A *step* is one statement executed in a write transaction, or its COMMIT, which counts twice:
``COMMIT`` fails before the commit is sent (nothing is stored), ``COMMITTED`` after it
succeeded (all is stored, but the caller is told the connection was lost). Only steps of write
transactions count: reads (the actors', the test's own checks) are never failed.

SQLite's append of new traversals is one statement sent to the driver directly, outside any
SQLAlchemy transaction (``appending.insert_new``): it is hooked at the driver, as two steps,
the statement (nothing stored) and ``COMMITTED`` (it committed, the caller is told the
connection was lost).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from headcount.eventstore.engine import _WRITE
from tests.driver_statements import DriverStatements

__all__ = ["StoreFaults"]


def lost_connection(step: str) -> OperationalError:
    """What a driver raises when the server goes away: a transient error."""
    lost = ConnectionResetError(f"injected: connection lost at {step}")
    return OperationalError(step, None, lost)


class StoreFaults:
    """Hooks on ``engine`` that fail write steps as armed; :meth:`remove` takes them off."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sync = engine.sync_engine
        self._dialect = self._sync.dialect
        self._do_commit = self._dialect.do_commit
        #: Every write step since the hooks went on (or :meth:`clear`), by label.
        self.steps: list[str] = []
        #: Steps that failed, by label.
        self.failed: list[str] = []
        self._fail_at: set[int] = set()
        #: While true, every write step fails with a lost connection: the store is down.
        self.down = False
        self._refuse: Callable[[str, Any], bool] | None = None
        self._committing_write = False
        event.listen(self._sync, "before_cursor_execute", self._before_execute)
        event.listen(self._sync, "commit", self._on_commit)
        self._dialect.do_commit = self._commit  # type: ignore[method-assign]
        self._driver = DriverStatements(self._before_driver, self._after_driver)

    def remove(self) -> None:
        event.remove(self._sync, "before_cursor_execute", self._before_execute)
        event.remove(self._sync, "commit", self._on_commit)
        self._dialect.do_commit = self._do_commit  # type: ignore[method-assign]
        self._driver.remove()

    def clear(self) -> None:
        self.steps.clear()
        self.failed.clear()

    def fail_steps(self, *indexes: int) -> None:
        """Fail the write steps with these indexes, counted from now (0: the next one), each
        with a lost connection."""
        base = len(self.steps)
        self._fail_at = {base + i for i in indexes}

    def refuse(self, when: Callable[[str, Any], bool] | None) -> None:
        """From now on, refuse every statement for which ``when(statement, parameters)`` holds
        as the database refuses bad data (``DataError``); ``None`` stops refusing."""
        self._refuse = when

    # -- hooks -----------------------------------------------------------------------------

    def _step(self, label: str) -> bool:
        """Record a step; whether it must fail."""
        index = len(self.steps)
        self.steps.append(label)
        if self.down or index in self._fail_at:
            self._fail_at.discard(index)
            self.failed.append(label)
            return True
        return False

    def _before_execute(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        if not conn.get_execution_options().get(_WRITE, False):
            return
        label = " ".join(statement.split()[:3])
        if self._step(label):
            raise lost_connection(label)
        if self._refuse is not None and self._refuse(statement, parameters):
            self.failed.append(f"refused: {label}")
            raise DataError(statement, None, ValueError("injected: the store refuses this value"))

    async def _before_driver(self, statement: str, parameters: Any) -> None:
        label = "INSERT INTO traversals" if "INSERT INTO traversals" in statement else statement
        if self._step(label):
            raise sqlite3.OperationalError(f"injected: connection lost at {label}")
        if self._refuse is not None and self._refuse(statement, parameters):
            self.failed.append(f"refused: {label}")
            raise sqlite3.DataError("injected: the store refuses this value")

    async def _after_driver(self, _statement: str) -> None:
        if self._step("COMMITTED"):
            raise sqlite3.OperationalError("injected: connection lost at COMMITTED")

    def _on_commit(self, conn: Connection) -> None:
        # Runs just before the dialect's do_commit, in the same thread without a switch.
        self._committing_write = bool(conn.get_execution_options().get(_WRITE, False))

    def _commit(self, dbapi_connection: Any) -> None:
        write, self._committing_write = self._committing_write, False
        if write and self._step("COMMIT"):
            raise lost_connection("COMMIT")
        self._do_commit(dbapi_connection)
        if write and self._step("COMMITTED"):
            raise lost_connection("COMMITTED")
