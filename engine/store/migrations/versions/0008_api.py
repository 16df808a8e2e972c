"""The HTTP API: merchants, API keys, idempotency records, payment details, settlements, dev
deployments; outbox rows grouped into atomic batches.

Revision ID: 0008
Revises: 0007

Sizes and names are literals on purpose: a migration records the schema as it was then,
not as engine/store/schema.py says today.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _row_id() -> sa.Column[int]:
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True)


def upgrade() -> None:
    op.create_table(
        "merchants",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("address", sa.String(42), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_merchants"),
        sa.UniqueConstraint("name", name="uq_merchants_name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("role", sa.String(10), nullable=False),
        sa.Column("merchant_id", sa.String(40), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("secret_hash", name="uq_api_keys_secret_hash"),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name="fk_api_keys_merchant_id_merchants"
        ),
        sa.CheckConstraint("role IN ('merchant', 'operator')", name="ck_api_keys_role_known"),
        sa.CheckConstraint(
            "(role = 'merchant' AND merchant_id IS NOT NULL) "
            "OR (role = 'operator' AND merchant_id IS NULL)",
            name="ck_api_keys_merchant_keys_have_a_merchant",
        ),
    )
    op.create_table(
        "idempotency_records",
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("api_key_id", sa.String(40), nullable=False),
        sa.Column("route", sa.String(100), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("request_id", sa.String(40), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("locked_until", sa.BigInteger(), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("payment_id", sa.String(40), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("scope", name="pk_idempotency_records"),
        sa.CheckConstraint(
            "state IN ('started', 'completed')", name="ck_idempotency_records_state_known"
        ),
    )
    op.create_index("ix_idempotency_records_created_at", "idempotency_records", ["created_at"])
    op.create_index("ix_idempotency_records_payment_id", "idempotency_records", ["payment_id"])
    op.create_table(
        "payment_details",
        _row_id(),
        sa.Column("payment_id", sa.String(40), nullable=False),
        sa.Column("merchant_id", sa.String(40), nullable=False),
        sa.Column("capture_method", sa.String(10), nullable=False),
        sa.Column("authorization_method", sa.String(10), nullable=False),
        sa.Column("fee_bps", sa.Integer(), nullable=False),
        sa.Column("splits", sa.Text(), nullable=False),
        sa.Column("metadata", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_payment_details"),
        sa.UniqueConstraint("payment_id", name="uq_payment_details_payment_id"),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name="fk_payment_details_merchant_id_merchants"
        ),
        sa.CheckConstraint(
            "capture_method IN ('automatic', 'manual')",
            name="ck_payment_details_capture_method_known",
        ),
        sa.CheckConstraint(
            "authorization_method IN ('allowance', 'permit', 'erc3009')",
            name="ck_payment_details_authorization_method_known",
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_payment_details_merchant_id_id", "payment_details", ["merchant_id", "id"])
    op.create_table(
        "settlements",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("merchant_id", sa.String(40), nullable=True),
        sa.Column("atomic", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_settlements"),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name="fk_settlements_merchant_id_merchants"
        ),
        sa.CheckConstraint("atomic IN (0, 1)", name="ck_settlements_atomic_boolean"),
    )
    op.create_table(
        "settlement_operations",
        sa.Column("settlement_id", sa.String(40), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("payment_id", sa.String(40), nullable=False),
        sa.Column("op", sa.String(10), nullable=False),
        sa.Column(
            "amount", sa.Numeric(78, 0).with_variant(sa.String(79), "sqlite"), nullable=False
        ),
        sa.Column("command_key", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("settlement_id", "position", name="pk_settlement_operations"),
        sa.ForeignKeyConstraint(
            ["settlement_id"],
            ["settlements.id"],
            name="fk_settlement_operations_settlement_id_settlements",
        ),
        sa.CheckConstraint(
            "op IN ('capture', 'void', 'refund')", name="ck_settlement_operations_op_known"
        ),
    )
    op.create_table(
        "dev_deployments",
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("escrow", sa.String(42), nullable=False),
        sa.Column("token", sa.String(42), nullable=False),
        sa.Column("payers", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("chain_id", name="pk_dev_deployments"),
    )
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("batch_group", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("batch_group")
    op.drop_table("dev_deployments")
    op.drop_table("settlement_operations")
    op.drop_table("settlements")
    op.drop_index("ix_payment_details_merchant_id_id", table_name="payment_details")
    op.drop_table("payment_details")
    op.drop_index("ix_idempotency_records_payment_id", table_name="idempotency_records")
    op.drop_index("ix_idempotency_records_created_at", table_name="idempotency_records")
    op.drop_table("idempotency_records")
    op.drop_table("api_keys")
    op.drop_table("merchants")
