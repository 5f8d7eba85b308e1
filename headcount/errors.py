"""One error tree for headcount. Library errors are translated into these at the edge."""

from __future__ import annotations


class HeadcountError(Exception):
    """Root of every error headcount raises on purpose."""


class TopologyError(HeadcountError):
    """The topology is invalid. ``problems`` lists every problem found, each a full sentence
    naming the file, the entry and what is wrong."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class UnknownSpaceError(HeadcountError, LookupError):
    """A space id the topology does not define."""

    def __init__(self, space_id: str) -> None:
        self.space_id = space_id
        super().__init__(f"unknown space {space_id!r}: the topology defines no space with that id")


class InvalidTimestampError(HeadcountError, ValueError):
    """A timestamp a person or a client gave could not be read."""


class StoreError(HeadcountError):
    """The event store failed; the original driver error is chained as ``__cause__``."""


class StoreDataError(StoreError):
    """The store refused what it was given, not for being down: a value too long for its
    column, text its encoding cannot hold, a number out of range, a broken constraint. The
    same data fails again however often it is retried; the driver error is ``__cause__``."""


class StoreWritesRefusedError(StoreError):
    """The store is up but refuses every write, whatever the data: its disk is full, its file
    or database is read-only, the disk fails. Retrying succeeds once a person fixes the cause;
    ``why`` says it in a few words ("disk full", "read-only")."""

    def __init__(self, message: str, *, why: str) -> None:
        self.why = why
        super().__init__(message)


class ConflictError(StoreError):
    """An append that clashes with what is stored (same key, different content)."""


class ConfigError(HeadcountError):
    """The service's configuration cannot be used; the message names the cause and the flag
    (or file) to change."""


class PortTakenError(ConfigError):
    """A port the service must listen on is taken; the message names the flag to change."""


class StoreBusyError(StoreError):
    """The store's lease is held by another process (a replay, or a service while replaying):
    see ``headcount.eventstore.lease``."""
