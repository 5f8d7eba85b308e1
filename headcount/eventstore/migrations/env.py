"""Alembic environment: headcount always hands it an open connection (see ``migrate.py``)."""

from __future__ import annotations

from alembic import context

from headcount.eventstore.migrate import include_object
from headcount.eventstore.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through headcount.eventstore.migrate, not the alembic CLI")
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,
    include_object=include_object(connection.dialect.name),
)
with context.begin_transaction():
    context.run_migrations()
