"""A hook on the statements sent to the SQLite driver directly, outside SQLAlchemy and so out of
reach of its events: SQLite's append of new traversals (``appending.insert_new``), one
statement that commits on its own. The store fault helpers hook it beside SQLAlchemy's events
so that a fault reaches every write."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite

__all__ = ["DriverStatements"]

#: Called with the statement and its parameters before it is sent; may raise (the statement
#: then never runs) or wait.
Before = Callable[[str, Any], Awaitable[None]]
#: Called with the statement once it ran (and committed); may raise.
After = Callable[[str], Awaitable[None]]


class DriverStatements:
    """``before`` and ``after`` every ``aiosqlite.Connection.execute_insert`` (the call the
    append makes), until :meth:`remove`."""

    def __init__(self, before: Before, after: After | None = None) -> None:
        self._original = original = aiosqlite.Connection.execute_insert

        async def execute_insert(
            connection: aiosqlite.Connection, sql: str, parameters: Any = None
        ) -> Any:
            await before(sql, parameters)
            rows = await original(connection, sql, parameters)
            if after is not None:
                await after(sql)
            return rows

        aiosqlite.Connection.execute_insert = execute_insert  # type: ignore[method-assign,assignment]

    def remove(self) -> None:
        aiosqlite.Connection.execute_insert = self._original  # type: ignore[method-assign]
