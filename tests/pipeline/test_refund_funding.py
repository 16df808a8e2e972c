"""Who funds a refund or a dispute freeze: the relay asks the merchant for what the escrow lets
it fund of the payment (its net at the payer's largest fee, less what it funded already) and
the operator or the arbiter for the whole of a larger amount; the mirror books each from the
funder the chain names.

Runs on both EVMs with SQLite and PostgreSQL; the crash case on the embedded EVM.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from engine.chain.backends import ChainBackend
from engine.domain.money import fee_for
from engine.ops.reconcile import ChainTarget, reconcile
from engine.pipeline.engine import Role, SettlementEngine
from engine.pipeline.relay import Relay, merchant_can_fund
from engine.store.ledger import Ledger
from engine.store.ledger_accounts import AccountKey, AccountKind, AssetKey
from engine.store.schema import payment_commands
from engine.tools.localnet import DEFAULT_MAX_FEE_BPS, local_engine
from tests.fixtures.pipeline_support import (
    AMOUNT,
    FEE_BPS,
    assert_books_match_chain,
    captured,
    payment,
)

NET = AMOUNT - fee_for(AMOUNT, FEE_BPS)
# What the escrow lets the merchant fund of a payment captured in full, before any refund.
FUNDABLE = AMOUNT * (10_000 - DEFAULT_MAX_FEE_BPS) // 10_000


@pytest.fixture
def engine_on_chain(db_url: str, chain: ChainBackend) -> Iterator[SettlementEngine]:
    """The settlement engine on each EVM (the ``chain`` fixture reverts what it mined)."""
    settlement = local_engine(db_url, chain, roles=frozenset({Role.RELAY, Role.MIRROR}))
    yield settlement
    settlement.close()


def status(engine: SettlementEngine, payment_id: str) -> str:
    return payment(engine, payment_id).status


def chain_id_of(engine: SettlementEngine, payment_id: str) -> bytes:
    return engine.deployment.payment_hash(payment(engine, payment_id).terms)


def posted(engine: SettlementEngine, kind: AccountKind, owner: str) -> int:
    asset = AssetKey(engine.chain_id, engine.deployment.token.address)
    with engine.db.snapshot() as conn:
        return Ledger().balance(conn, AccountKey(asset, kind, owner)).posted


def assert_reconciled(engine: SettlementEngine) -> None:
    assert_books_match_chain(engine)  # replay --verify identical included
    world = engine.deployment
    target = ChainTarget(engine.backend.w3, engine.chain_id, world.escrow.address)
    report = reconcile(engine.db, target, now=engine.now())
    assert (report.mismatched, report.details) == (0, ())


def test_the_merchant_funds_up_to_its_net_at_the_largest_fee() -> None:
    assert merchant_can_fund(FUNDABLE, AMOUNT, 0, DEFAULT_MAX_FEE_BPS)
    assert not merchant_can_fund(FUNDABLE + 1, AMOUNT, 0, DEFAULT_MAX_FEE_BPS)
    # After the merchant funded half: the bound is the same, what is left of it is less.
    half = AMOUNT // 2
    assert merchant_can_fund(FUNDABLE - half, AMOUNT - half, half, DEFAULT_MAX_FEE_BPS)
    assert not merchant_can_fund(FUNDABLE - half + 1, AMOUNT - half, half, DEFAULT_MAX_FEE_BPS)
    assert merchant_can_fund(AMOUNT, AMOUNT, 0, 0)


def test_a_full_refund_of_a_payment_captured_with_a_fee_is_funded_by_the_operator(
    engine_on_chain: SettlementEngine,
) -> None:
    engine = engine_on_chain
    world = engine.deployment
    payment_id = captured(engine)
    merchant_before = world.balance(world.merchant.address)
    operator_before = world.balance(world.operator.address)

    engine.service.refund("refund", payment_id, AMOUNT)
    engine.run_until_quiescent()

    assert status(engine, payment_id) == "refunded"
    assert world.balance(world.merchant.address) == merchant_before
    assert world.balance(world.operator.address) == operator_before - AMOUNT
    assert world.escrow.functions.merchantFunded(chain_id_of(engine, payment_id)).call() == 0
    # Booked to the operator's refunds account; the merchant keeps its net.
    assert posted(engine, AccountKind.REFUNDS, world.operator.address) == -AMOUNT
    assert posted(engine, AccountKind.MERCHANT_SETTLED, world.merchant.address) == NET
    assert_reconciled(engine)


def test_a_partial_refund_within_the_bound_is_funded_by_the_merchant_and_a_larger_dispute_by_the_arbiter(  # noqa: E501
    engine_on_chain: SettlementEngine,
) -> None:
    engine = engine_on_chain
    world = engine.deployment
    payment_id = captured(engine)
    refunded = AMOUNT // 2
    merchant_before = world.balance(world.merchant.address)
    arbiter_before = world.balance(world.arbiter.address)

    engine.service.refund("refund", payment_id, refunded)
    engine.run_until_quiescent()

    assert status(engine, payment_id) == "partially_refunded"
    assert world.balance(world.merchant.address) == merchant_before - refunded
    assert posted(engine, AccountKind.MERCHANT_SETTLED, world.merchant.address) == NET - refunded
    assert world.escrow.functions.merchantFunded(chain_id_of(engine, payment_id)).call() == refunded

    # What the merchant may still fund is FUNDABLE - refunded, less than the rest.
    disputed = AMOUNT - refunded
    assert disputed > FUNDABLE - refunded
    engine.service.open_dispute("dispute", payment_id, disputed)
    engine.run_until_quiescent()

    assert status(engine, payment_id) == "disputed"
    frozen, funder = world.escrow.functions.disputes(chain_id_of(engine, payment_id)).call()
    assert (frozen, funder) == (disputed, world.arbiter.address)
    assert world.balance(world.merchant.address) == merchant_before - refunded
    assert world.balance(world.arbiter.address) == arbiter_before - disputed
    assert posted(engine, AccountKind.REFUNDS, world.arbiter.address) == -disputed
    assert_reconciled(engine)


def test_a_refund_sent_before_a_crash_is_watched_as_sent_though_the_chain_has_moved_on(
    engine: SettlementEngine,
) -> None:
    """The refund applied merchant-funded; afterwards the merchant could not fund it again, so
    a relay choosing anew would build other calldata under the same key and be refused."""
    world = engine.deployment
    payment_id = captured(engine)
    refunded = AMOUNT * 6 // 10  # fundable now, more than what is left of the bound after it
    assert refunded > FUNDABLE - refunded
    merchant_before = world.balance(world.merchant.address)
    engine.service.refund("refund", payment_id, refunded)
    engine.relay.step()
    engine.txmanager.pump()
    engine.txmanager.pump()  # mined: the refund happened on chain
    # The relay dies before completing its row; its lease runs out.
    engine.backend.increase_time(engine.outbox.policy.lease_s + 1)
    engine.backend.mine()
    engine.relay = Relay(
        engine.db,
        engine.outbox,
        engine.txmanager,
        world.escrow,
        "second-worker",
        engine.now,
        operator=world.operator.address,
        arbiter=world.arbiter.address,
    )

    engine.run_until_quiescent()

    assert status(engine, payment_id) == "partially_refunded"
    assert world.balance(world.merchant.address) == merchant_before - refunded
    c = payment_commands.c
    with engine.db.snapshot() as conn:
        state = conn.execute(select(c.status).where(c.idempotency_key == "refund")).scalar_one()
    assert state == "applied"
    assert_reconciled(engine)
