"""The reads reconciliation (``engine.ops.reconcile``) makes of the ledger's and the indexer's
tables, so that only the store speaks SQL.

Reconciliation compares the escrow with the ledger a page of payments at a time; every read
here is bounded: by the payments it is given (a page), or paged itself with a named bound.
The ledger side of a payment is the net of its non-voided postings (pending ones count, as the
chain is read at its head) or, for ``posted_only``, of its posted ones:

    capturable = net of escrow_held
    refundable = -(net of escrow_held + disputes + payer)
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from sqlalchemy import Connection, select

from engine.store.db import one_of
from engine.store.ledger import LIVE_TABLES
from engine.store.ledger_accounts import ESCROW_KINDS, AccountKind, AssetKey
from engine.store.ledger_entries import EntryState
from engine.store.schema import indexer_checkpoints

# Payments whose postings one statement reads; a caller's page is served in chunks of it.
PAYMENTS_PER_QUERY_MAX: Final = 500
# Accounts (of one asset's escrow kinds) and tokens one statement reads.
ACCOUNTS_PER_PAGE_MAX: Final = 1_000
TOKENS_PER_PAGE_MAX: Final = 1_000
_K = AccountKind
_REFUNDABLE_KINDS: Final = (_K.ESCROW_HELD.value, _K.DISPUTES.value, _K.PAYER.value)


@dataclass(slots=True)
class PaymentBooks:
    """One payment as the ledger booked it."""

    held: int = 0
    escrow_and_payer: int = 0  # net of escrow_held + disputes + payer

    @property
    def refundable(self) -> int:
        return -self.escrow_and_payer


def payment_books(
    conn: Connection, payment_ids: Collection[str], *, posted_only: bool = False
) -> dict[str, PaymentBooks]:
    """The books of those of ``payment_ids`` with postings, by payment id."""
    a, e, p = LIVE_TABLES
    counted = (
        e.c.state == EntryState.POSTED.value
        if posted_only
        else e.c.state != EntryState.VOIDED.value
    )
    books: dict[str, PaymentBooks] = {}
    ordered = sorted(payment_ids)
    for first in range(0, len(ordered), PAYMENTS_PER_QUERY_MAX):
        chunk = ordered[first : first + PAYMENTS_PER_QUERY_MAX]
        rows = conn.execute(
            select(e.c.payment_id, a.c.kind, p.c.amount)
            .join(e, e.c.id == p.c.entry_id)
            .join(a, a.c.id == p.c.account_id)
            .where(one_of(conn, e.c.payment_id, chunk), a.c.kind.in_(_REFUNDABLE_KINDS), counted)
        )
        for row in rows:
            booked = books.setdefault(row.payment_id, PaymentBooks())
            if row.kind == _K.ESCROW_HELD:
                booked.held += row.amount
            booked.escrow_and_payer += row.amount
    return books


def ledger_tokens(conn: Connection, chain_id: int) -> set[str]:
    """Every token the ledger has accounts of on ``chain_id``, read a page at a time."""
    a = LIVE_TABLES.accounts
    tokens: set[str] = set()
    after = ""
    while page := list(
        conn.execute(
            select(a.c.token)
            .where(a.c.chain_id == chain_id, a.c.token > after)
            .group_by(a.c.token)
            .order_by(a.c.token)
            .limit(TOKENS_PER_PAGE_MAX)
        ).scalars()
    ):
        tokens.update(page)
        after = page[-1]
    return tokens


def escrow_holdings_projected(conn: Connection, asset: AssetKey) -> int:
    """What the escrow's token balance should be by the ledger, pending entries included (the
    chain's head already holds them): open holds, frozen disputes and unclaimed credits. The
    accounts are read a page at a time (unclaimed credits are one account per owner)."""
    a = LIVE_TABLES.accounts
    total = 0
    after = 0
    while page := conn.execute(
        select(
            a.c.id, a.c.debits_pending, a.c.credits_pending, a.c.debits_posted, a.c.credits_posted
        )
        .where(
            a.c.chain_id == asset.chain_id,
            a.c.token == asset.token,
            a.c.kind.in_(sorted(kind.value for kind in ESCROW_KINDS)),
            a.c.id > after,
        )
        .order_by(a.c.id)
        .limit(ACCOUNTS_PER_PAGE_MAX)
    ).all():
        total += sum(
            row.credits_posted - row.debits_posted + row.credits_pending - row.debits_pending
            for row in page
        )
        after = page[-1].id
    return total


def indexer_start_block(conn: Connection, chain_id: int, escrow: str) -> int | None:
    """The block the escrow's indexer started reading from, None if it never ran."""
    start: int | None = conn.execute(
        select(indexer_checkpoints.c.start_block).where(
            indexer_checkpoints.c.chain_id == chain_id,
            indexer_checkpoints.c.escrow_address == escrow,
        )
    ).scalar_one_or_none()
    return start
