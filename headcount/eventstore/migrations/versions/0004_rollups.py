"""Rollups: what each space's events of a five-minute bucket do to any count it starts with,
so that a series reads one row per bucket instead of every event (``domain.rollups``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "rollups",
        sa.Column("id", _position, primary_key=True, autoincrement=True),
        sa.Column("space_id", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("bucket_start", sa.BigInteger(), nullable=False),
        sa.Column("bucket_end", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("reset_id", sa.BigInteger(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        *(
            sa.Column(name, sa.BigInteger(), nullable=False)
            for name in ("events", "entrances", "exits", "shift", "rise", "dip")
        ),
        sa.Column("floor_end", sa.BigInteger(), nullable=False),
        sa.Column("floor_high", sa.BigInteger(), nullable=False),
        sa.Column("reset_end", sa.BigInteger(), nullable=True),
        sa.Column("reset_low", sa.BigInteger(), nullable=True),
        sa.Column("reset_high", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_rollups"),
    )
    op.create_index(
        "ix_rollups_space_id_fingerprint_bucket_start",
        "rollups",
        ["space_id", "fingerprint", "bucket_start"],
    )


def downgrade() -> None:
    op.drop_index("ix_rollups_space_id_fingerprint_bucket_start", table_name="rollups")
    op.drop_table("rollups")
