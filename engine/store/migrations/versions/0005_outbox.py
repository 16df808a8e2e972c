"""Transactional outbox: operations owed to the outside world, and their delivery history.

Revision ID: 0005
Revises: 0004

Sizes and names are literals on purpose: a migration records the schema as it was then,
not as engine/store/schema.py says today.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _id_column() -> sa.Column[int]:
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        autoincrement=True,
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "outbox",
        _id_column(),
        sa.Column("op_id", sa.String(200), nullable=False),
        sa.Column("payment_key", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(100), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.BigInteger(), nullable=False),
        sa.Column("available_at", sa.BigInteger(), nullable=False),
        sa.Column("claimed_by", sa.String(100), nullable=True),
        sa.Column("lease_until", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("op_id", name="uq_outbox_op_id"),
        sa.CheckConstraint(
            "status IN ('pending', 'in_flight', 'completed', 'dead')",
            name="ck_outbox_status_known",
        ),
        sa.CheckConstraint("attempts >= 0", name="ck_outbox_attempts_not_negative"),
        sa.CheckConstraint(
            "status <> 'in_flight' OR (claimed_by IS NOT NULL AND lease_until IS NOT NULL)",
            name="ck_outbox_in_flight_has_lease",
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_outbox_status_available_at", "outbox", ["status", "available_at"])
    op.create_index("ix_outbox_payment_key_id", "outbox", ["payment_key", "id"])
    op.create_table(
        "outbox_history",
        _id_column(),
        sa.Column("outbox_id", sa.BigInteger(), nullable=False),
        sa.Column("event", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(100), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_outbox_history"),
        sa.ForeignKeyConstraint(
            ["outbox_id"], ["outbox.id"], name="fk_outbox_history_outbox_id_outbox"
        ),
        sa.CheckConstraint(
            "event IN ('failed', 'dead_lettered', 'lease_expired', 'retried')",
            name="ck_outbox_history_event_known",
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_outbox_history_outbox_id", "outbox_history", ["outbox_id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_history_outbox_id", table_name="outbox_history")
    op.drop_table("outbox_history")
    op.drop_index("ix_outbox_payment_key_id", table_name="outbox")
    op.drop_index("ix_outbox_status_available_at", table_name="outbox")
    op.drop_table("outbox")
