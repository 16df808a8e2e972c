"""Double-entry ledger: accounts with running totals, journal entries, postings.

Revision ID: 0004
Revises: 0003

Sizes and names are literals on purpose: a migration records the schema as it was then,
not as engine/store/schema.py says today.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ACCOUNT_KIND_KNOWN = (
    "kind IN ('payer', 'escrow_held', 'merchant_settled', 'fees', 'leg', 'disputes', 'refunds', "
    "'escrow_credits', 'deferred_payouts')"
)
_ENTRY_STATE_TIMES = (
    "(state = 'pending' AND posted_at IS NULL AND voided_at IS NULL)"
    " OR (state = 'posted' AND posted_at IS NOT NULL AND voided_at IS NULL)"
    " OR (state = 'voided' AND posted_at IS NULL AND voided_at IS NOT NULL)"
)


def _id_column() -> sa.Column[int]:
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        autoincrement=True,
        nullable=False,
    )


def _amount_column(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.Numeric(78, 0).with_variant(sa.String(79), "sqlite"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "ledger_accounts",
        _id_column(),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("token", sa.String(42), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("owner", sa.String(42), nullable=False),
        sa.Column("flags", sa.Integer(), nullable=False),
        _amount_column("debits_pending"),
        _amount_column("credits_pending"),
        _amount_column("debits_posted"),
        _amount_column("credits_posted"),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_accounts"),
        sa.UniqueConstraint(
            "chain_id",
            "token",
            "kind",
            "owner",
            name="uq_ledger_accounts_chain_id_token_kind_owner",
        ),
        sa.CheckConstraint(_ACCOUNT_KIND_KNOWN, name="ck_ledger_accounts_kind_known"),
        sa.CheckConstraint("flags >= 0 AND flags < 4", name="ck_ledger_accounts_flags_known"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "ledger_entries",
        _id_column(),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("payment_id", sa.String(40), nullable=True),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("reverses_entry_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("posted_at", sa.BigInteger(), nullable=True),
        sa.Column("voided_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_entries"),
        sa.ForeignKeyConstraint(
            ["reverses_entry_id"],
            ["ledger_entries.id"],
            name="fk_ledger_entries_reverses_entry_id_ledger_entries",
        ),
        sa.UniqueConstraint("idempotency_key", name="uq_ledger_entries_idempotency_key"),
        sa.UniqueConstraint("reverses_entry_id", name="uq_ledger_entries_reverses_entry_id"),
        sa.CheckConstraint(
            "state IN ('pending', 'posted', 'voided')", name="ck_ledger_entries_state_known"
        ),
        sa.CheckConstraint(_ENTRY_STATE_TIMES, name="ck_ledger_entries_state_times"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_ledger_entries_payment_id", "ledger_entries", ["payment_id"])
    op.create_table(
        "ledger_postings",
        _id_column(),
        sa.Column("entry_id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        _amount_column("amount"),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_postings"),
        sa.ForeignKeyConstraint(
            ["entry_id"], ["ledger_entries.id"], name="fk_ledger_postings_entry_id_ledger_entries"
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["ledger_accounts.id"],
            name="fk_ledger_postings_account_id_ledger_accounts",
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_ledger_postings_entry_id", "ledger_postings", ["entry_id"])
    op.create_index("ix_ledger_postings_account_id", "ledger_postings", ["account_id"])


def downgrade() -> None:
    op.drop_index("ix_ledger_postings_account_id", table_name="ledger_postings")
    op.drop_index("ix_ledger_postings_entry_id", table_name="ledger_postings")
    op.drop_table("ledger_postings")
    op.drop_index("ix_ledger_entries_payment_id", table_name="ledger_entries")
    op.drop_table("ledger_entries")
    op.drop_table("ledger_accounts")
