"""Payouts the escrow could not push: booked from its Credited and Withdrawn logs.

A merchant blocked by the token is paid by credit (the tokens stay in the escrow) and withdraws
later. The mirror books both into the ledger's escrow credits and records them in the
merchant's credit stream, so the books keep holding what the escrow holds, reconcile, replay
and audit, and a notice delivered again changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import select, update
from web3.contract import Contract

from engine.chain.backends import EmbeddedBackend
from engine.domain import credits
from engine.domain.money import fee_for
from engine.ops.reconcile import ChainTarget, reconcile
from engine.pipeline.engine import SettlementEngine
from engine.store.credit_streams import credit_event
from engine.store.event_store import EventStore
from engine.store.ledger import Ledger
from engine.store.ledger_accounts import AccountKey, AccountKind, AssetKey
from engine.store.ledger_entries import EntryState
from engine.store.projections import load
from engine.store.replay import verify_replay
from engine.store.schema import indexer_checkpoints, ledger_entries
from engine.tools.localnet import UNIT, LocalDeployment, deploy_local, local_engine
from tests.chain.contracts.batch_support import deploy_funded_token
from tests.fixtures.pipeline_support import assert_books_match_chain

AMOUNT = 100 * UNIT
FEE_BPS = 50
NET = AMOUNT - fee_for(AMOUNT, FEE_BPS)
CONFIRMATIONS = 2


@pytest.fixture
def engine(db_url: str) -> Iterator[SettlementEngine]:
    """An engine whose payments are in a token with a blocklist (USDC-style)."""
    with EmbeddedBackend() as backend:
        deployment = deploy_local(backend)
        token = deploy_funded_token(deployment, "BlocklistToken")
        settlement = local_engine(db_url, backend, replace(deployment, token=token))
        yield settlement
        settlement.close()


def authorized_for_blocked_merchant(engine: SettlementEngine) -> str:
    """A payment held on chain whose merchant the token has blocklisted since."""
    world = engine.deployment
    terms = world.terms(AMOUNT)
    payment_id = engine.service.create(
        "create", terms, AMOUNT, world.payer_signature(terms)
    ).payment_id
    engine.run_until_quiescent()
    set_blocked(world, world.merchant.address, True)
    return payment_id


def capture_all(engine: SettlementEngine, payment_id: str) -> None:
    engine.service.capture("capture", payment_id, AMOUNT, FEE_BPS)
    engine.run_until_quiescent()


def capture_to_blocked_merchant(engine: SettlementEngine) -> str:
    payment_id = authorized_for_blocked_merchant(engine)
    capture_all(engine, payment_id)
    return payment_id


def set_blocked(world: LocalDeployment, account: str, blocked: bool) -> None:
    world.admin.send(world.token.functions.setBlocked(account, blocked))


def escrow_credit(world: LocalDeployment, token: Contract, account: str) -> int:
    return int(world.escrow.functions.credits(token.address, account).call())


def credit_history(engine: SettlementEngine) -> list[credits.CreditEvent]:
    world = engine.deployment
    stream = credits.stream_id(engine.chain_id, world.token.address, world.merchant.address)
    with engine.db.snapshot() as conn:
        stored = EventStore(engine.db).read(conn, stream)
    return [event for item in stored if (event := credit_event(item)) is not None]


def credit_entries(engine: SettlementEngine) -> list[tuple[str, str]]:
    e = ledger_entries.c
    with engine.db.snapshot() as conn:
        rows = conn.execute(
            select(e.kind, e.state).where(e.payment_id.is_(None)).order_by(e.id)
        ).all()
    return [(str(kind), str(state)) for kind, state in rows]


def merchant_credit(engine: SettlementEngine) -> int:
    world = engine.deployment
    account = AccountKey(
        AssetKey(engine.chain_id, world.token.address),
        AccountKind.ESCROW_CREDITS,
        world.merchant.address,
    )
    with engine.db.snapshot() as conn:
        return Ledger().balance(conn, account).posted


def reconciled(engine: SettlementEngine) -> tuple[int, int]:
    world = engine.deployment
    target = ChainTarget(engine.backend.w3, engine.chain_id, world.escrow.address)
    report = reconcile(engine.db, target, now=engine.now())
    return report.matched, report.mismatched


def test_a_payout_credited_to_a_blocked_merchant_is_booked_in_the_escrow_credits(
    engine: SettlementEngine,
) -> None:
    world = engine.deployment

    capture_to_blocked_merchant(engine)

    assert escrow_credit(world, world.token, world.merchant.address) == NET
    assert world.balance(world.escrow.address) == NET  # the fee was pushed, the net stayed
    assert credit_entries(engine) == [("credited", EntryState.POSTED.value)]
    assert merchant_credit(engine) == NET
    assert [type(event) for event in credit_history(engine)] == [credits.Credited]
    assert credit_history(engine)[0].amount == NET
    assert reconciled(engine) == (2, 0)  # the payment and the token
    assert_books_match_chain(engine)  # holdings == balance, trial balance 0, replay, audit


def test_a_withdrawn_credit_leaves_the_escrow_and_the_books_together(
    engine: SettlementEngine,
) -> None:
    world = engine.deployment
    capture_to_blocked_merchant(engine)
    set_blocked(world, world.merchant.address, False)  # a credit goes to its account only
    merchant_before = world.balance(world.merchant.address)

    world.merchant.send(world.escrow.functions.withdraw(world.token.address))
    engine.run_until_quiescent()

    assert world.balance(world.merchant.address) - merchant_before == NET
    assert world.balance(world.escrow.address) == 0
    assert credit_entries(engine) == [
        ("credited", EntryState.POSTED.value),
        ("withdrawn", EntryState.POSTED.value),
    ]
    assert merchant_credit(engine) == 0
    withdrawal = credit_history(engine)[-1]
    assert isinstance(withdrawal, credits.Withdrawn)
    assert (withdrawal.amount, withdrawal.to) == (NET, world.merchant.address)
    assert reconciled(engine) == (2, 0)
    assert_books_match_chain(engine)


def test_an_unblocked_merchant_withdraws_to_itself(engine: SettlementEngine) -> None:
    world = engine.deployment
    capture_to_blocked_merchant(engine)
    set_blocked(world, world.merchant.address, False)
    merchant_before = world.balance(world.merchant.address)

    world.merchant.send(world.escrow.functions.withdraw(world.token.address))
    engine.run_until_quiescent()

    assert world.balance(world.merchant.address) - merchant_before == NET
    assert merchant_credit(engine) == 0
    assert [event.kind for event in credit_history(engine)] == ["credited", "withdrawn"]
    assert_books_match_chain(engine)


def test_credit_notices_delivered_again_change_nothing(engine: SettlementEngine) -> None:
    world = engine.deployment
    capture_to_blocked_merchant(engine)
    set_blocked(world, world.merchant.address, False)
    world.merchant.send(world.escrow.functions.withdraw(world.token.address))
    engine.run_until_quiescent()
    history_before = credit_history(engine)
    entries_before = credit_entries(engine)

    with engine.db.transaction() as conn:  # the indexer forgets what the mirror acknowledged
        conn.execute(update(indexer_checkpoints).values(acknowledged_through=0))
    engine.run_until_quiescent()

    assert credit_history(engine) == history_before
    assert credit_entries(engine) == entries_before
    assert merchant_credit(engine) == 0
    assert_books_match_chain(engine)


def test_replay_tells_a_credit_the_live_ledger_lost(engine: SettlementEngine) -> None:
    capture_to_blocked_merchant(engine)
    e = ledger_entries.c
    with engine.db.transaction() as conn:
        key = conn.execute(select(e.idempotency_key).where(e.kind == "credited")).scalar_one()
        Ledger().reverse(conn, key, key + ":lost", engine.now())

    report = verify_replay(engine.db, chain_id=engine.chain_id)

    assert not report.identical
    assert len(report.differences) == 2  # the merchant's credit and its deferred payout
    assert all("escrow credits" in difference for difference in report.differences)


@pytest.fixture
def deep_engine(db_url: str) -> Iterator[SettlementEngine]:
    """As ``engine``, with logs final only two blocks deep."""
    with EmbeddedBackend() as backend:
        deployment = deploy_local(backend)
        token = deploy_funded_token(deployment, "BlocklistToken")
        settlement = local_engine(
            db_url,
            backend,
            replace(deployment, token=token),
            confirmations=CONFIRMATIONS,
        )
        yield settlement
        settlement.close()


def test_a_withdrawal_is_pending_until_final_and_voided_when_a_reorg_drops_it(
    deep_engine: SettlementEngine,
) -> None:
    engine = deep_engine
    world = engine.deployment
    backend = engine.backend
    capture_to_blocked_merchant(engine)
    set_blocked(world, world.merchant.address, False)
    fork = backend.snapshot()

    world.merchant.send(world.escrow.functions.withdraw(world.token.address))
    engine.mirror.step()
    pending = credit_entries(engine)
    recorded_while_pending = [event.kind for event in credit_history(engine)]
    backend.revert(fork)  # the withdrawal's block leaves the chain
    backend.mine(CONFIRMATIONS + 1)
    engine.mirror.step()

    assert pending == [("credited", "posted"), ("withdrawn", "pending")]
    assert recorded_while_pending == ["credited"]  # a stream records confirmed facts only
    assert credit_entries(engine) == [("credited", "posted"), ("withdrawn", "voided")]
    assert [event.kind for event in credit_history(engine)] == ["credited"]
    assert escrow_credit(world, world.token, world.merchant.address) == NET
    assert merchant_credit(engine) == NET
    assert reconciled(engine) == (2, 0)
    assert_books_match_chain(engine)


def test_a_reorg_deeper_than_the_confirmation_depth_reverses_a_posted_credit_and_flags_the_payment(
    engine: SettlementEngine,
) -> None:
    """With no confirmation depth a Credited log is final as soon as it is mined. A reorg that
    drops it afterwards breaks that promise: the books follow the chain (the posted entry is
    reversed, never voided), the credit stream records the undoing so replay books it too, and
    the payment whose capture went with it is flagged, since its stream still holds the
    capture and only reconciliation can say what becomes of it."""
    world = engine.deployment
    backend = engine.backend
    payment_id = authorized_for_blocked_merchant(engine)
    fork = backend.snapshot()
    capture_all(engine, payment_id)
    posted = credit_entries(engine)
    booked_while_on_chain = merchant_credit(engine)

    backend.revert(fork)  # the capture's block, and its Credited log with it, leave the chain
    backend.mine(3)
    engine.mirror.step()

    assert posted == [("credited", "posted")]
    assert booked_while_on_chain == NET
    assert credit_entries(engine) == [("credited", "posted"), ("reversal", "posted")]
    e = ledger_entries.c
    with engine.db.snapshot() as conn:
        key = conn.execute(select(e.idempotency_key).where(e.kind == "credited")).scalar_one()
        original, reversal = Ledger().entry(conn, key), Ledger().entry(conn, key + ":reversed")
        payment = load(conn, payment_id)
        holdings = Ledger().escrow_holdings(conn, AssetKey(engine.chain_id, world.token.address))
    assert original is not None and reversal is not None
    assert reversal.reverses_id == original.id
    assert [event.kind for event in credit_history(engine)] == ["credited", "credit_reversed"]
    assert escrow_credit(world, world.token, world.merchant.address) == 0
    assert merchant_credit(engine) == 0
    assert holdings == world.balance(world.escrow.address) == AMOUNT  # the hold is back
    assert payment is not None and payment.payment.status == "conflicted"
    assert payment.payment.underlying == "succeeded"  # what its stream still says
    replay = verify_replay(engine.db, chain_id=engine.chain_id)
    assert replay.differences and all(payment_id in line for line in replay.differences)
    reconciled(engine)
    with engine.db.snapshot() as conn:
        still = load(conn, payment_id)
    assert still is not None and still.payment.status == "conflicted"
