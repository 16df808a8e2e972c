"""Replay rebuilds the ledger from the event store and finds every live row that disagrees."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import insert, inspect, select, update

from engine.cli.replay import cmd_replay
from engine.domain.events import (
    Authorized,
    Captured,
    Conflicted,
    Event,
    PaymentRequested,
    Refunded,
)
from engine.domain.ids import IdPrefix, PaymentTerms, new_id
from engine.domain.money import fee_for
from engine.domain.payment import Payment, PaymentStatus, apply, start
from engine.store.db import Database
from engine.store.event_store import EventStore
from engine.store.ledger import Ledger
from engine.store.ledger_entries import EntryState
from engine.store.ledger_events import entry_for
from engine.store.projections import (
    caught_up,
    load,
    project,
    project_new,
    stored_form,
)
from engine.store.replay import verify_replay
from engine.store.schema import chain_binding, ledger_accounts, ledger_postings, payments

CHAIN_ID = 31337
PAYER = "0x" + "11" * 20
MERCHANT = "0x" + "22" * 20
TOKEN = "0x" + "33" * 20
FEES = "0x" + "44" * 20
OPERATOR = "0x" + "55" * 20


def book(
    database: Database,
    payment: Payment | None,
    event: Event,
    *,
    chain_id: int = CHAIN_ID,
) -> Payment:
    """What the chain mirror does with a confirmed fact: its event and its posted entry, in
    one transaction. Returns the payment after it."""
    store = EventStore(database)
    with database.transaction() as conn:
        version = len(store.read(conn, event.payment_id))
        stored = store.append(conn, event.payment_id, version, [stored_form(event)])
        if isinstance(event, PaymentRequested):
            project_new(conn, event, event.terms.payment_hash(CHAIN_ID, OPERATOR), 1)
        else:
            current = load(conn, event.payment_id)
            assert current is not None
            project(conn, current, [event], version + 1)
        if payment is not None:
            key = f"mirror:{stored[0].position}"
            entry = entry_for(event, payment, chain_id=chain_id, key=key)
            if entry is not None:
                Ledger().record(conn, entry, event.at, state=EntryState.POSTED)
    if payment is None:
        assert isinstance(event, PaymentRequested)
        return start(event)
    return apply(payment, event)


def settled_payment(database: Database, terms: PaymentTerms, at: int) -> Payment:
    """A payment held, partly captured at 1% and partly refunded, all booked."""
    pid = new_id(IdPrefix.PAYMENT)
    payment = book(database, None, PaymentRequested(payment_id=pid, at=at, terms=terms, amount=100))
    payment = book(database, payment, Authorized(payment_id=pid, at=at, amount=100))
    captured = Captured(payment_id=pid, at=at, amount=60, fee=fee_for(60, 100))
    payment = book(database, payment, captured)
    return book(
        database, payment, Refunded(payment_id=pid, at=at, amount=10, funder=terms.merchant)
    )


def _terms(salt: int) -> PaymentTerms:
    return PaymentTerms(
        payer=PAYER,
        merchant=MERCHANT,
        token=TOKEN,
        max_amount=100,
        authorization_expiry=2_000_000_000,
        refund_expiry=2_000_000_000,
        min_fee_bps=0,
        max_fee_bps=100,
        fee_receiver=FEES,
        operator=OPERATOR,
        salt=salt,
    )


@pytest.fixture
def books(database: Database) -> list[Payment]:
    return [settled_payment(database, _terms(salt), 1_700_000_000) for salt in (1, 2)]


def test_replay_of_consistent_books_is_identical(database: Database, books: list[Payment]) -> None:
    report = verify_replay(database, chain_id=CHAIN_ID)
    assert report.differences == ()
    assert report.identical
    assert (report.events, report.entries) == (8, 6)


def test_a_conflicted_row_loads_with_the_status_its_stream_has_beneath_the_flag(
    database: Database,
) -> None:
    pid = new_id(IdPrefix.PAYMENT)
    at = 1_700_000_000
    requested = PaymentRequested(payment_id=pid, at=at, terms=_terms(3), amount=100)
    payment = book(database, None, requested)
    payment = book(database, payment, Authorized(payment_id=pid, at=at, amount=100))
    payment = book(database, payment, Conflicted(payment_id=pid, at=at, reason="drift"))
    first = Captured(payment_id=pid, at=at, amount=60, fee=fee_for(60, 100))
    payment = book(database, payment, first)  # taken while conflicted
    assert (payment.status, payment.underlying) == (
        PaymentStatus.CONFLICTED,
        PaymentStatus.PARTIALLY_CAPTURED,
    )
    with database.snapshot() as conn:
        loaded = load(conn, pid)
    assert loaded is not None and (loaded.payment, loaded.version) == (payment, 4)
    assert verify_replay(database, chain_id=CHAIN_ID).differences == ()

    # Another writer appended a fact the row has not folded in yet: the row loads as of its
    # own version, and catching up moves the status beneath the flag on.
    second = Captured(payment_id=pid, at=at, amount=40, fee=fee_for(40, 100))
    with database.transaction() as conn:
        EventStore(database).append(conn, pid, 4, [stored_form(second)])
        behind = load(conn, pid)
        assert behind is not None and behind.payment == payment
        after = caught_up(conn, EventStore(database), behind).payment
    assert (after.status, after.underlying) == (PaymentStatus.CONFLICTED, PaymentStatus.SUCCEEDED)
    with database.snapshot() as conn:
        reloaded = load(conn, pid)
    assert reloaded is not None and reloaded.payment == after


def test_replay_leaves_no_scratch_tables_behind(database: Database, books: list[Payment]) -> None:
    verify_replay(database, chain_id=CHAIN_ID)
    verify_replay(database, chain_id=CHAIN_ID)
    with database.snapshot() as conn:
        assert not [name for name in inspect(conn).get_table_names() if "replay" in name]


def test_tampered_account_total_makes_replay_differ_naming_the_account(
    database: Database, books: list[Payment]
) -> None:
    with database.transaction() as conn:
        row = conn.execute(
            select(ledger_accounts.c.id, ledger_accounts.c.credits_posted).where(
                ledger_accounts.c.kind == "fees"
            )
        ).one()
        conn.execute(
            update(ledger_accounts)
            .where(ledger_accounts.c.id == row.id)
            .values(credits_posted=row.credits_posted + 1)
        )
    report = verify_replay(database, chain_id=CHAIN_ID)
    assert not report.identical
    assert any("fees" in line and "live ledger" in line for line in report.differences)


def test_tampered_posting_makes_replay_differ_naming_payment_and_account(
    database: Database, books: list[Payment]
) -> None:
    with database.transaction() as conn:
        merchant_posting = conn.execute(
            select(ledger_postings.c.id, ledger_postings.c.amount)
            .join(ledger_accounts, ledger_accounts.c.id == ledger_postings.c.account_id)
            .where(ledger_accounts.c.kind == "merchant_settled", ledger_postings.c.amount > 0)
            .order_by(ledger_postings.c.id)
        ).first()
        assert merchant_posting is not None
        conn.execute(
            update(ledger_postings)
            .where(ledger_postings.c.id == merchant_posting.id)
            .values(amount=merchant_posting.amount + 5)
        )
    report = verify_replay(database, chain_id=CHAIN_ID)
    assert not report.identical
    named = [line for line in report.differences if line.startswith(f"payment {books[0].id}")]
    assert named == [
        f"payment {books[0].id} account {CHAIN_ID}:{TOKEN}:merchant_settled:{MERCHANT}: "
        f"live {59 - 10 + 5}, replay {59 - 10}"
    ]


def test_tampered_projection_row_makes_replay_differ_naming_the_field(
    database: Database, books: list[Payment]
) -> None:
    with database.transaction() as conn:
        conn.execute(update(payments).where(payments.c.id == books[1].id).values(refunded=0))
    report = verify_replay(database, chain_id=CHAIN_ID)
    assert report.differences == (f"projection: payment {books[1].id} refunded: live 0, replay 10",)


def test_cmd_replay_prints_identical_json_for_a_bound_database(
    db_url: str, database: Database, books: list[Payment], capsys: pytest.CaptureFixture[str]
) -> None:
    with database.transaction() as conn:
        conn.execute(
            insert(chain_binding).values(
                id=1,
                chain_id=CHAIN_ID,
                genesis_hash=bytes(32),
                escrow_address=OPERATOR,
                created_at=0,
            )
        )
    assert cmd_replay(db_url, verify=True, as_json=True) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["identical"] is True
    assert (report["events"], report["entries"], report["differences"]) == (8, 6, [])
