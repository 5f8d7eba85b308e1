"""Replay generations: snapshots carry the replay that wrote them, and a finished replay of a
space supersedes its older snapshots (``headcount replay``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column(
        "snapshots",
        sa.Column("generation", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.create_table(
        "replays",
        sa.Column("id", _position, primary_key=True, autoincrement=True),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("topology_digest", sa.String(64), nullable=False),
        sa.Column("from_ts", sa.BigInteger(), nullable=True),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("reset_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_replays"),
    )
    op.create_table(
        "replayed_spaces",
        sa.Column("id", _position, primary_key=True, autoincrement=True),
        sa.Column("replay_id", sa.BigInteger(), nullable=False),
        sa.Column("space_id", sa.String(64), nullable=False),
        sa.Column("from_ts", sa.BigInteger(), nullable=True),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("snapshots", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_replayed_spaces"),
        sa.ForeignKeyConstraint(
            ["replay_id"], ["replays.id"], name="fk_replayed_spaces_replay_id_replays"
        ),
        sa.UniqueConstraint("space_id", "replay_id", name="uq_replayed_spaces_space_id_replay_id"),
    )


def downgrade() -> None:
    op.drop_table("replayed_spaces")
    op.drop_table("replays")
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_column("generation")
