"""The first schema: traversals, resets, snapshots, quarantine, topologies.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "traversals",
        sa.Column("position", _position, primary_key=True, autoincrement=True),
        sa.Column("dpu_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("direction", sa.SmallInteger(), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.Column("late", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("position", name="pk_traversals"),
        sa.UniqueConstraint("dpu_id", "seq", name="uq_traversals_dpu_id_seq"),
        sa.CheckConstraint("direction IN (1, -1)", name="ck_traversals_direction"),
    )
    op.create_index("ix_traversals_dpu_id_ts", "traversals", ["dpu_id", "ts"])
    late = sa.text("late = true")
    op.create_index(
        "ix_traversals_late",
        "traversals",
        ["dpu_id", "ts"],
        sqlite_where=late,
        postgresql_where=late,
    )
    op.create_table(
        "resets",
        sa.Column("id", _position, primary_key=True, autoincrement=True),
        sa.Column("space_id", sa.String(64), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("recorded_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_resets"),
        sa.UniqueConstraint("space_id", "ts", name="uq_resets_space_id_ts"),
    )
    op.create_table(
        "snapshots",
        sa.Column("id", _position, primary_key=True, autoincrement=True),
        sa.Column("space_id", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("as_of", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("entrances", sa.BigInteger(), nullable=False),
        sa.Column("exits", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("reset_id", sa.BigInteger(), nullable=False),
        sa.Column("taken_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_snapshots"),
    )
    op.create_index(
        "ix_snapshots_space_id_fingerprint_as_of",
        "snapshots",
        ["space_id", "fingerprint", "as_of"],
    )
    op.create_index("ix_snapshots_as_of", "snapshots", ["as_of"])
    op.create_table(
        "quarantine",
        sa.Column("id", _position, primary_key=True, autoincrement=True),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.Column("origin", sa.String(300), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_quarantine"),
    )
    op.create_table(
        "topologies",
        sa.Column("id", _position, primary_key=True, autoincrement=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("origin", sa.String(500), nullable=False),
        sa.Column("recorded_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_topologies"),
    )


def downgrade() -> None:
    for table in ("topologies", "quarantine", "snapshots", "resets", "traversals"):
        op.drop_table(table)
