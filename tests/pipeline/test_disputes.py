"""Dispute commands through the whole pipeline: decided by the domain, written with their
outbox row, sent by the relay as the arbiter's own calls, booked by the mirror.

Runs on the embedded EVM with SQLite and PostgreSQL (fixtures in conftest.py); the disputes
the operator funds run on both EVMs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from engine.chain.backends import ChainBackend
from engine.chain.contracts.escrow import terms_tuple
from engine.domain.events import Party
from engine.domain.money import fee_for
from engine.ops.reconcile import ChainTarget, reconcile
from engine.pipeline.commands import UnknownPayment
from engine.pipeline.engine import Role, SettlementEngine
from engine.store.ledger import Ledger
from engine.store.ledger_accounts import AccountKey, AccountKind, AssetKey
from engine.store.schema import payment_commands, txs
from engine.tools.localnet import local_engine
from tests.fixtures.pipeline_support import (
    AMOUNT,
    FEE_BPS,
    assert_books_match_chain,
    captured,
    payment,
    refused,
    written,
)

DISPUTED = AMOUNT // 4


def command_states(engine: SettlementEngine) -> dict[str, str]:
    c = payment_commands.c
    with engine.db.snapshot() as conn:
        rows = conn.execute(select(c.idempotency_key, c.status)).all()
    return {str(key): str(status) for key, status in rows}


def senders(engine: SettlementEngine) -> set[str]:
    with engine.db.snapshot() as conn:
        return {str(sender) for (sender,) in conn.execute(select(txs.c.sender)).all()}


def test_an_opened_dispute_freezes_merchant_funds_on_the_arbiter_lane(
    engine: SettlementEngine,
) -> None:
    world = engine.deployment
    payment_id = captured(engine)
    merchant_before = world.balance(world.merchant.address)

    outcome = engine.service.open_dispute("dispute", payment_id, DISPUTED)
    engine.run_until_quiescent()

    assert (outcome.command, outcome.payment_id) == ("open_dispute", payment_id)
    disputed = payment(engine, payment_id)
    assert (disputed.status, disputed.disputed, disputed.refundable) == (
        "disputed",
        DISPUTED,
        AMOUNT - DISPUTED,
    )
    assert command_states(engine)["dispute"] == "applied"
    assert world.balance(world.merchant.address) == merchant_before - DISPUTED
    frozen, funder = world.escrow.functions.disputes(world.payment_hash(disputed.terms)).call()
    assert (frozen, funder) == (DISPUTED, world.merchant.address)
    # Batches went out on the operator's lane, the dispute call on the arbiter's.
    assert senders(engine) == {world.operator.address, world.arbiter.address}
    assert_books_match_chain(engine)


@pytest.mark.parametrize(
    ("winner", "status", "merchant_gets", "payer_gets"),
    [
        (Party.MERCHANT, "dispute_won", DISPUTED, 0),
        (Party.PAYER, "dispute_lost", 0, DISPUTED),
    ],
)
def test_a_resolved_dispute_pays_the_winner_and_the_books_balance(
    engine: SettlementEngine, winner: Party, status: str, merchant_gets: int, payer_gets: int
) -> None:
    world = engine.deployment
    payment_id = captured(engine)
    engine.service.open_dispute("dispute", payment_id, DISPUTED)
    engine.run_until_quiescent()
    merchant_before = world.balance(world.merchant.address)
    payer_before = world.balance(world.payer.address)

    engine.service.resolve_dispute("resolve", payment_id, winner)
    engine.run_until_quiescent()

    resolved = payment(engine, payment_id)
    refunded = DISPUTED if winner is Party.PAYER else 0
    assert (resolved.status, resolved.disputed, resolved.refunded) == (status, 0, refunded)
    assert resolved.refundable == AMOUNT - refunded
    assert command_states(engine)["resolve"] == "applied"
    assert world.balance(world.merchant.address) - merchant_before == merchant_gets
    assert world.balance(world.payer.address) - payer_before == payer_gets
    frozen, _ = world.escrow.functions.disputes(world.payment_hash(resolved.terms)).call()
    assert frozen == 0
    assert_books_match_chain(engine)


def test_a_retried_dispute_command_returns_its_first_outcome(engine: SettlementEngine) -> None:
    payment_id = captured(engine)
    first = engine.service.open_dispute("dispute", payment_id, DISPUTED)
    before = written(engine)

    assert engine.service.open_dispute("dispute", payment_id, DISPUTED) == first
    assert written(engine) == before
    assert refused(engine, lambda: engine.service.open_dispute("dispute", payment_id, 1)) == (
        "idempotency_key_reused"
    )
    engine.run_until_quiescent()
    assert payment(engine, payment_id).disputed == DISPUTED


def test_refused_dispute_commands_have_stable_codes_and_write_nothing(
    engine: SettlementEngine,
) -> None:
    payment_id = captured(engine)
    service = engine.service

    assert refused(engine, lambda: service.open_dispute("d1", "pay_unknown", DISPUTED)) == (
        UnknownPayment.code
    )
    assert refused(engine, lambda: service.open_dispute("d2", payment_id, AMOUNT + 1)) == (
        "amount_exceeds_refundable"
    )
    assert refused(engine, lambda: service.resolve_dispute("r1", payment_id, Party.PAYER)) == (
        "illegal_transition"
    )
    assert refused(engine, lambda: service.resolve_dispute("r2", "pay_unknown", Party.PAYER)) == (
        UnknownPayment.code
    )

    service.open_dispute("d3", payment_id, DISPUTED)
    # A second dispute while one is on its way, then while it is open, is refused.
    assert refused(engine, lambda: service.open_dispute("d4", payment_id, 1)) == "conflict"
    engine.run_until_quiescent()
    assert refused(engine, lambda: service.open_dispute("d5", payment_id, 1)) == (
        "illegal_transition"
    )
    assert payment(engine, payment_id).status == "disputed"
    assert_books_match_chain(engine)


def test_a_dispute_on_an_open_hold_is_refused(engine: SettlementEngine) -> None:
    world = engine.deployment
    terms = world.terms(AMOUNT)
    created = engine.service.create("create", terms, AMOUNT, world.payer_signature(terms))
    engine.run_until_quiescent()
    engine.service.capture("capture", created.payment_id, AMOUNT // 2, FEE_BPS)
    engine.run_until_quiescent()

    code = refused(engine, lambda: engine.service.open_dispute("d", created.payment_id, 1))

    assert code == "illegal_transition"


def test_a_dispute_call_the_escrow_refuses_fails_its_command_and_books_nothing(
    engine: SettlementEngine,
) -> None:
    world = engine.deployment
    payment_id = captured(engine)
    # The merchant no longer lets the arbiter fund disputes from it: openDispute reverts.
    world.merchant.send(world.escrow.functions.approveFunding(world.arbiter.address, 0))
    before = payment(engine, payment_id)

    engine.service.open_dispute("dispute", payment_id, DISPUTED)
    engine.run_until_quiescent()

    assert command_states(engine)["dispute"] == "failed"
    assert payment(engine, payment_id) == before
    with engine.db.snapshot() as conn:
        error = conn.execute(
            select(payment_commands.c.error).where(payment_commands.c.idempotency_key == "dispute")
        ).scalar_one()
    assert "FundingAllowanceExceeded" in str(error)
    # The payment is free again: with the funding approved, a new dispute goes through.
    world.merchant.send(world.escrow.functions.approveFunding(world.arbiter.address, 2**256 - 1))
    engine.service.open_dispute("dispute-again", payment_id, DISPUTED)
    engine.run_until_quiescent()
    assert payment(engine, payment_id).status == "disputed"
    assert_books_match_chain(engine)


@pytest.fixture
def engine_on_chain(db_url: str, chain: ChainBackend) -> Iterator[SettlementEngine]:
    """The settlement engine on each EVM (the ``chain`` fixture reverts what it mined)."""
    settlement = local_engine(db_url, chain, roles=frozenset({Role.RELAY, Role.MIRROR}))
    yield settlement
    settlement.close()


@pytest.mark.parametrize(
    ("winner", "status", "funder_gets_back", "payer_gets"),
    [
        (Party.MERCHANT, "dispute_won", DISPUTED, 0),
        (Party.PAYER, "dispute_lost", 0, DISPUTED),
    ],
)
def test_an_operator_funded_dispute_books_its_resolution_to_whoever_the_chain_paid(
    engine_on_chain: SettlementEngine,
    winner: Party,
    status: str,
    funder_gets_back: int,
    payer_gets: int,
) -> None:
    """The arbiter freezes the amount from its own funds, not the merchant's (the escrow
    allows it, and the API's operator routes will do it). Won by the merchant, the escrow pays
    the freeze back to that funder: the mirror must book it there too, as replay and
    reconciliation's repair do, or replay disagrees with the live ledger."""
    engine = engine_on_chain
    world = engine.deployment
    payment_id = captured(engine)
    terms = payment(engine, payment_id).terms
    funder = world.arbiter
    merchant_before = world.balance(world.merchant.address)
    funder_before = world.balance(funder.address)
    payer_before = world.balance(world.payer.address)

    # Sent by the arbiter itself (merchantFunds false): the engine's commands never do that.
    seq = world.state(terms)[2]
    funder.send(world.escrow.functions.openDispute(terms_tuple(terms), seq, DISPUTED, False))
    engine.run_until_quiescent()
    assert payment(engine, payment_id).disputed == DISPUTED
    seq = world.state(terms)[2]
    payer_wins = winner is Party.PAYER
    funder.send(world.escrow.functions.resolveDispute(terms_tuple(terms), seq, payer_wins))
    engine.run_until_quiescent()

    resolved = payment(engine, payment_id)
    assert (resolved.status, resolved.disputed) == (status, 0)
    assert world.balance(funder.address) - funder_before == funder_gets_back - DISPUTED
    assert world.balance(world.payer.address) - payer_before == payer_gets
    assert world.balance(world.merchant.address) == merchant_before
    asset = AssetKey(engine.chain_id, world.token.address)
    with engine.db.snapshot() as conn:
        ledger = Ledger()
        funded = ledger.balance(conn, AccountKey(asset, AccountKind.REFUNDS, funder.address))
        merchant = ledger.balance(
            conn, AccountKey(asset, AccountKind.MERCHANT_SETTLED, world.merchant.address)
        )
    # What the funder's account lent the escrow and got back, and the merchant untouched.
    assert funded.posted == funder_gets_back - DISPUTED
    assert merchant.posted == AMOUNT - fee_for(AMOUNT, FEE_BPS)
    assert_books_match_chain(engine)  # replay --verify identical included
    target = ChainTarget(engine.backend.w3, engine.chain_id, world.escrow.address)
    report = reconcile(engine.db, target, now=engine.now())
    assert (report.mismatched, report.details) == (0, ())
