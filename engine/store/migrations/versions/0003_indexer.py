"""Escrow log indexer: checkpoints, scanned block hashes, logs, notices, consumer deliveries.

Revision ID: 0003
Revises: 0002

Sizes and names are literals on purpose: a migration records the schema as it was then,
not as engine/store/schema.py says today.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_STAGE_KNOWN = "stage IN ('pending', 'confirmed', 'removed')"


def _id_column() -> sa.Column[int]:
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        autoincrement=True,
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "indexer_checkpoints",
        _id_column(),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("escrow_address", sa.String(42), nullable=False),
        sa.Column("start_block", sa.BigInteger(), nullable=False),
        sa.Column("scanned_through", sa.BigInteger(), nullable=False),
        sa.Column("acknowledged_through", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_indexer_checkpoints"),
        sa.UniqueConstraint(
            "chain_id", "escrow_address", name="uq_indexer_checkpoints_chain_id_escrow_address"
        ),
        sa.CheckConstraint(
            "start_block >= 0", name="ck_indexer_checkpoints_start_block_not_negative"
        ),
        sa.CheckConstraint(
            "scanned_through >= start_block - 1",
            name="ck_indexer_checkpoints_scanned_from_start",
        ),
        sa.CheckConstraint(
            "acknowledged_through >= 0",
            name="ck_indexer_checkpoints_acknowledged_not_negative",
        ),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "indexer_blocks",
        sa.Column("checkpoint_id", sa.BigInteger(), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.Column("parent_hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("checkpoint_id", "number", name="pk_indexer_blocks"),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["indexer_checkpoints.id"],
            name="fk_indexer_blocks_checkpoint_id_indexer_checkpoints",
        ),
    )
    op.create_table(
        "indexer_logs",
        _id_column(),
        sa.Column("checkpoint_id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("block_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("tx_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(40), nullable=False),
        sa.Column("topics", sa.LargeBinary(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("stage", sa.String(10), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_indexer_logs"),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["indexer_checkpoints.id"],
            name="fk_indexer_logs_checkpoint_id_indexer_checkpoints",
        ),
        sa.UniqueConstraint(
            "checkpoint_id",
            "block_hash",
            "log_index",
            name="uq_indexer_logs_checkpoint_id_block_hash_log_index",
        ),
        sa.CheckConstraint(_STAGE_KNOWN, name="ck_indexer_logs_stage_known"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_indexer_logs_checkpoint_block", "indexer_logs", ["checkpoint_id", "block_number"]
    )
    op.create_table(
        "indexer_notices",
        _id_column(),
        sa.Column("checkpoint_id", sa.BigInteger(), nullable=False),
        sa.Column("log_id", sa.BigInteger(), nullable=False),
        sa.Column("stage", sa.String(10), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_indexer_notices"),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["indexer_checkpoints.id"],
            name="fk_indexer_notices_checkpoint_id_indexer_checkpoints",
        ),
        sa.ForeignKeyConstraint(
            ["log_id"], ["indexer_logs.id"], name="fk_indexer_notices_log_id_indexer_logs"
        ),
        sa.CheckConstraint(_STAGE_KNOWN, name="ck_indexer_notices_stage_known"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_indexer_notices_checkpoint_id", "indexer_notices", ["checkpoint_id", "id"])
    op.create_table(
        "indexer_deliveries",
        sa.Column("consumer", sa.String(100), nullable=False),
        sa.Column("stage", sa.String(10), nullable=False),
        sa.Column("block_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("tx_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            "consumer",
            "stage",
            "block_hash",
            "tx_hash",
            "log_index",
            name="pk_indexer_deliveries",
        ),
    )


def downgrade() -> None:
    op.drop_table("indexer_deliveries")
    op.drop_index("ix_indexer_notices_checkpoint_id", table_name="indexer_notices")
    op.drop_table("indexer_notices")
    op.drop_index("ix_indexer_logs_checkpoint_block", table_name="indexer_logs")
    op.drop_table("indexer_logs")
    op.drop_table("indexer_blocks")
    op.drop_table("indexer_checkpoints")
