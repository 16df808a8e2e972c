"""Payment projection and payment commands.

Revision ID: 0006
Revises: 0005

Sizes and names are literals on purpose: a migration records the schema as it was then,
not as engine/store/schema.py says today.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_AMOUNTS = ("amount", "authorized", "captured", "voided", "reclaimed", "refunded", "disputed")


def _amount_column(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.Numeric(78, 0).with_variant(sa.String(79), "sqlite"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "payments",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("chain_payment_id", sa.LargeBinary(32), nullable=False),
        sa.Column("terms_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("terms", sa.Text(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        *(_amount_column(name) for name in _AMOUNTS),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("chain_seq", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_payments"),
        sa.UniqueConstraint("chain_payment_id", name="uq_payments_chain_payment_id"),
    )
    op.create_index("ix_payments_status", "payments", ["status"])
    op.create_table(
        "payment_commands",
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("payment_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("op_id", sa.String(200), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("idempotency_key", name="pk_payment_commands"),
        sa.UniqueConstraint("op_id", name="uq_payment_commands_op_id"),
        sa.CheckConstraint(
            "status IN ('accepted', 'applied', 'failed')",
            name="ck_payment_commands_status_known",
        ),
    )
    op.create_index(
        "ix_payment_commands_payment_id_status", "payment_commands", ["payment_id", "status"]
    )


def downgrade() -> None:
    op.drop_index("ix_payment_commands_payment_id_status", table_name="payment_commands")
    op.drop_table("payment_commands")
    op.drop_index("ix_payments_status", table_name="payments")
    op.drop_table("payments")
