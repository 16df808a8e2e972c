"""Sagas: instances, steps, timers and received signals.

Revision ID: 0007
Revises: 0006

Sizes and names are literals on purpose: a migration records the schema as it was then,
not as engine/store/schema.py says today.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sagas",
        sa.Column("id", sa.String(150), nullable=False),
        sa.Column("flow", sa.String(40), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("outcome", sa.String(40), nullable=True),
        sa.Column("payment_id", sa.String(40), nullable=True),
        sa.Column("context", sa.Text(), nullable=False),
        sa.Column("observed_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sagas"),
        sa.CheckConstraint(
            "status IN ('running', 'compensating', 'completed', 'compensated', 'manual_review')",
            name="ck_sagas_status_known",
        ),
    )
    op.create_index("ix_sagas_status", "sagas", ["status"])
    op.create_index("ix_sagas_payment_id", "sagas", ["payment_id"])
    op.create_table(
        "saga_steps",
        sa.Column("saga_id", sa.String(150), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("args", sa.Text(), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.BigInteger(), nullable=False),
        sa.Column("command_key", sa.String(200), nullable=True),
        sa.Column("error_code", sa.String(100), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("saga_id", "seq", name="pk_saga_steps"),
        sa.CheckConstraint("role IN ('forward', 'compensation')", name="ck_saga_steps_role_known"),
        sa.CheckConstraint(
            "status IN ('pending', 'submitted', 'done', 'failed', 'canceled')",
            name="ck_saga_steps_status_known",
        ),
    )
    op.create_index("ix_saga_steps_status_due_at", "saga_steps", ["status", "due_at"])
    op.create_table(
        "saga_timers",
        sa.Column("saga_id", sa.String(150), nullable=False),
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("due_at", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.PrimaryKeyConstraint("saga_id", "name", name="pk_saga_timers"),
        sa.CheckConstraint(
            "status IN ('pending', 'fired', 'canceled')", name="ck_saga_timers_status_known"
        ),
    )
    op.create_index("ix_saga_timers_status_due_at", "saga_timers", ["status", "due_at"])
    op.create_table(
        "saga_signals",
        sa.Column("signal_id", sa.String(200), nullable=False),
        sa.Column("saga_id", sa.String(150), nullable=False),
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("signal_id", name="pk_saga_signals"),
    )


def downgrade() -> None:
    op.drop_table("saga_signals")
    op.drop_index("ix_saga_timers_status_due_at", table_name="saga_timers")
    op.drop_table("saga_timers")
    op.drop_index("ix_saga_steps_status_due_at", table_name="saga_steps")
    op.drop_table("saga_steps")
    op.drop_index("ix_sagas_payment_id", table_name="sagas")
    op.drop_index("ix_sagas_status", table_name="sagas")
    op.drop_table("sagas")
