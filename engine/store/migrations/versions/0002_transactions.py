"""Transaction manager: signer lanes, transactions, broadcast attempts, status history.

Revision ID: 0002
Revises: 0001

Sizes and names are literals on purpose: a migration records the schema as it was then,
not as engine/store/schema.py says today.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
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
        "tx_lanes",
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("next_nonce", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("chain_id", "address", name="pk_tx_lanes"),
        sa.CheckConstraint("next_nonce >= 0", name="ck_tx_lanes_next_nonce_not_negative"),
    )
    op.create_table(
        "txs",
        _id_column(),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("sender", sa.String(42), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("to_address", sa.String(42), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column(
            "value",
            sa.Numeric(78, 0).with_variant(sa.String(79), "sqlite"),
            nullable=False,
        ),
        sa.Column("gas_limit", sa.BigInteger(), nullable=False),
        sa.Column("max_fee_per_gas", sa.BigInteger(), nullable=True),
        sa.Column("max_priority_fee_per_gas", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("tx_hash", sa.LargeBinary(32), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("block_hash", sa.LargeBinary(32), nullable=True),
        sa.Column("receipt_status", sa.Integer(), nullable=True),
        sa.Column("gas_used", sa.BigInteger(), nullable=True),
        sa.Column("error_code", sa.String(100), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("sent_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_txs"),
        sa.ForeignKeyConstraint(
            ["chain_id", "sender"],
            ["tx_lanes.chain_id", "tx_lanes.address"],
            name="fk_txs_chain_id_tx_lanes",
        ),
        sa.UniqueConstraint("idempotency_key", name="uq_txs_idempotency_key"),
        sa.UniqueConstraint("chain_id", "sender", "nonce", name="uq_txs_chain_id_sender_nonce"),
        sa.CheckConstraint(
            "status IN ('queued', 'sent', 'mined', 'confirmed', 'failed', 'replaced')",
            name="ck_txs_status_known",
        ),
        sa.CheckConstraint("nonce >= 0", name="ck_txs_nonce_not_negative"),
        sa.CheckConstraint("attempts >= 0", name="ck_txs_attempts_not_negative"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_txs_lane_status", "txs", ["chain_id", "sender", "status"])
    op.create_table(
        "tx_attempts",
        _id_column(),
        sa.Column("tx_id", sa.BigInteger(), nullable=False),
        sa.Column("tx_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("max_fee_per_gas", sa.BigInteger(), nullable=False),
        sa.Column("max_priority_fee_per_gas", sa.BigInteger(), nullable=False),
        sa.Column("signed_at", sa.BigInteger(), nullable=False),
        sa.Column("broadcast_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tx_attempts"),
        sa.ForeignKeyConstraint(["tx_id"], ["txs.id"], name="fk_tx_attempts_tx_id_txs"),
        sa.UniqueConstraint("tx_hash", name="uq_tx_attempts_tx_hash"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_tx_attempts_tx_id", "tx_attempts", ["tx_id"])
    op.create_table(
        "tx_history",
        _id_column(),
        sa.Column("tx_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("event", sa.String(40), nullable=False),
        sa.Column("tx_hash", sa.LargeBinary(32), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tx_history"),
        sa.ForeignKeyConstraint(["tx_id"], ["txs.id"], name="fk_tx_history_tx_id_txs"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_tx_history_tx_id", "tx_history", ["tx_id"])


def downgrade() -> None:
    op.drop_index("ix_tx_history_tx_id", table_name="tx_history")
    op.drop_table("tx_history")
    op.drop_index("ix_tx_attempts_tx_id", table_name="tx_attempts")
    op.drop_table("tx_attempts")
    op.drop_index("ix_txs_lane_status", table_name="txs")
    op.drop_table("txs")
    op.drop_table("tx_lanes")
