"""PostgreSQL: traversals partitioned by month of ``ts``, their keys in ``traversal_keys``.

The rows are kept: a partitioned table is made beside the old one, a partition for every
month that holds rows (and a DEFAULT partition for the rest), the rows copied with their log
positions, the names swapped, then the keys, indexes, constraints and triggers made. The log
position sequence is kept, so positions go on where they were. SQLite: nothing changes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

from headcount.eventstore import partitions

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_COLUMNS = "position, dpu_id, seq, ts, direction, received_at, late"

#: A unique key of a partitioned table must hold the partition key ``ts``.
_PARTITIONED_DDL = (
    "ALTER TABLE traversals ADD CONSTRAINT pk_traversals PRIMARY KEY (position, ts)",
    "ALTER TABLE traversals ADD CONSTRAINT uq_traversals_dpu_id_seq_ts UNIQUE (dpu_id, seq, ts)",
    "ALTER TABLE traversals ADD CONSTRAINT ck_traversals_direction CHECK (direction IN (1, -1))",
    "CREATE INDEX ix_traversals_dpu_id_ts ON traversals (dpu_id, ts)",
    "CREATE INDEX ix_traversals_late ON traversals (dpu_id, ts) WHERE late = true",
)

#: ``traversals_one_per_seq``: a traversal whose ``(dpu_id, seq)`` was ever stored is skipped
#: (the append then finds what is stored and reports a duplicate or a conflict, as with
#: ``UNIQUE(dpu_id, seq)``). ``headcount_archived_before()`` is the time before which the log
#: was detached (NULL: never; ``partitions.detach_before`` replaces it), and the ``*_archived``
#: triggers refuse a traversal or reset before it. The DEFAULT partition's trigger is named to
#: run before the cloned ``traversals_one_per_seq`` (PostgreSQL runs them by name).
_TRIGGER_DDL = (
    "CREATE FUNCTION headcount_archived_before() RETURNS bigint LANGUAGE sql STABLE"
    " AS 'SELECT CAST(NULL AS BIGINT)'",
    """CREATE FUNCTION headcount_one_per_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO traversal_keys (dpu_id, seq) VALUES (NEW.dpu_id, NEW.seq) ON CONFLICT DO NOTHING;
  IF FOUND THEN
    RETURN NEW;
  END IF;
  RETURN NULL;
END $$""",
    "CREATE TRIGGER traversals_one_per_seq BEFORE INSERT ON traversals"
    " FOR EACH ROW EXECUTE FUNCTION headcount_one_per_seq()",
    """CREATE FUNCTION headcount_refuse_archived() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  boundary bigint := headcount_archived_before();
BEGIN
  IF boundary IS NOT NULL AND NEW.ts < boundary THEN
    RAISE EXCEPTION USING
      ERRCODE = 'check_violation',
      MESSAGE = format('%s at ts=%s lies before %s, where the log was archived', TG_TABLE_NAME,
        NEW.ts, boundary),
      HINT = 'events before the archive boundary are no longer stored;'
        ' see headcount partitions list';
  END IF;
  RETURN NEW;
END $$""",
    f"CREATE TRIGGER traversals_archived BEFORE INSERT ON {partitions.DEFAULT}"
    " FOR EACH ROW EXECUTE FUNCTION headcount_refuse_archived()",
    "CREATE TRIGGER resets_archived BEFORE INSERT ON resets"
    " FOR EACH ROW EXECUTE FUNCTION headcount_refuse_archived()",
)

_DROP_FUNCTIONS = (
    "DROP TRIGGER resets_archived ON resets",
    "DROP FUNCTION headcount_refuse_archived()",
    "DROP FUNCTION headcount_one_per_seq()",
    "DROP FUNCTION headcount_archived_before()",
)


def _create(table: str, partitioning: str = "") -> str:
    """The traversals table's columns as both schemas have them, under the name ``table``."""
    return (
        f"CREATE TABLE {table} ("
        " position BIGINT NOT NULL DEFAULT nextval('traversals_position_seq'),"
        " dpu_id VARCHAR(64) NOT NULL, seq BIGINT NOT NULL, ts BIGINT NOT NULL,"
        " direction SMALLINT NOT NULL, received_at BIGINT NOT NULL, late BOOLEAN NOT NULL"
        f") {partitioning}"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("LOCK TABLE traversals IN ACCESS EXCLUSIVE MODE")
    op.execute(_create("traversals_partitioned", "PARTITION BY RANGE (ts)"))
    op.execute(f"CREATE TABLE {partitions.DEFAULT} PARTITION OF traversals_partitioned DEFAULT")
    months = op.get_bind().exec_driver_sql(partitions.MONTHS_HELD.format(table="traversals"))
    for year, month in months:
        m = partitions.Month(int(year), int(month))
        op.execute(
            f"CREATE TABLE {m.table} PARTITION OF traversals_partitioned"
            f" FOR VALUES FROM ({m.start}) TO ({m.end})"
        )
    op.execute(f"INSERT INTO traversals_partitioned ({_COLUMNS}) SELECT {_COLUMNS} FROM traversals")
    op.execute("ALTER SEQUENCE traversals_position_seq OWNED BY traversals_partitioned.position")
    op.execute("DROP TABLE traversals")
    op.execute("ALTER TABLE traversals_partitioned RENAME TO traversals")
    for statement in _PARTITIONED_DDL:
        op.execute(statement)
    op.execute(
        "CREATE TABLE traversal_keys (dpu_id VARCHAR(64) NOT NULL, seq BIGINT NOT NULL,"
        " CONSTRAINT pk_traversal_keys PRIMARY KEY (dpu_id, seq))"
    )
    op.execute("INSERT INTO traversal_keys (dpu_id, seq) SELECT dpu_id, seq FROM traversals")
    for statement in _TRIGGER_DDL:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("LOCK TABLE traversals IN ACCESS EXCLUSIVE MODE")
    op.execute(_create("traversals_plain"))
    op.execute(f"INSERT INTO traversals_plain ({_COLUMNS}) SELECT {_COLUMNS} FROM traversals")
    op.execute("ALTER SEQUENCE traversals_position_seq OWNED BY traversals_plain.position")
    op.execute("DROP TABLE traversals")
    op.execute("DROP TABLE traversal_keys")
    for statement in _DROP_FUNCTIONS:
        op.execute(statement)
    op.execute("ALTER TABLE traversals_plain RENAME TO traversals")
    op.execute("ALTER TABLE traversals ADD CONSTRAINT pk_traversals PRIMARY KEY (position)")
    op.execute(
        "ALTER TABLE traversals ADD CONSTRAINT uq_traversals_dpu_id_seq UNIQUE (dpu_id, seq)"
    )
    op.execute(
        "ALTER TABLE traversals ADD CONSTRAINT ck_traversals_direction CHECK (direction IN (1, -1))"
    )
    op.execute("CREATE INDEX ix_traversals_dpu_id_ts ON traversals (dpu_id, ts)")
    op.execute("CREATE INDEX ix_traversals_late ON traversals (dpu_id, ts) WHERE late = true")
