"""Event store and chain binding.

Revision ID: 0001
Revises:

Sizes and names are literals on purpose: a migration records the schema as it was then,
not as engine/store/schema.py says today.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "streams",
        sa.Column("stream_id", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("head_hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("stream_id", name="pk_streams"),
        sa.CheckConstraint("version >= 1", name="ck_streams_version_positive"),
    )
    op.create_table(
        "events",
        sa.Column(
            "position",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("stream_id", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(100), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("occurred_at", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("position", name="pk_events"),
        sa.ForeignKeyConstraint(
            ["stream_id"], ["streams.stream_id"], name="fk_events_stream_id_streams"
        ),
        sa.UniqueConstraint("stream_id", "version", name="uq_events_stream_id_version"),
        sa.CheckConstraint("version >= 1", name="ck_events_version_positive"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "chain_binding",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("genesis_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("escrow_address", sa.String(42), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_chain_binding"),
        sa.CheckConstraint("id = 1", name="ck_chain_binding_single_row"),
    )


def downgrade() -> None:
    op.drop_table("chain_binding")
    op.drop_table("events")
    op.drop_table("streams")
