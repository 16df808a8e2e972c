"""The whole pipeline: command → outbox → relay → tx manager → escrow → indexer → mirror → books.

Runs on the embedded EVM with SQLite and PostgreSQL, and once on anvil with confirmations, and
checks after quiescence that the projection, the ledger and the chain tell one story.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from eth_account import Account
from sqlalchemy import func, select, update
from web3.types import RPCEndpoint

from engine.chain.backends import AnvilBackend, ChainBackend, EmbeddedBackend
from engine.chain.backends.anvil import AnvilProcess
from engine.chain.networks import STUCK_AFTER_S_LOCAL
from engine.domain.events import Authorized, Captured, Conflicted, PaymentRequested
from engine.domain.money import Leg
from engine.ops.reconcile import ChainTarget, reconcile
from engine.pipeline import relay as relay_module
from engine.pipeline.engine import SettlementEngine
from engine.pipeline.relay import Relay
from engine.store.event_store import EventStore
from engine.store.ledger import Ledger
from engine.store.ledger_accounts import AccountKey, AccountKind, AssetKey
from engine.store.projections import load, stored_form
from engine.store.schema import indexer_checkpoints, payment_commands, tx_history, txs
from engine.tools.demo import settle_mix
from engine.tools.localnet import UNIT, local_engine
from tests.fixtures.pipeline_support import assert_books_match_chain

AMOUNT = 100 * UNIT
FEE_BPS = 50


def test_a_mix_of_payments_settles_with_books_equal_to_the_chain(
    engine: SettlementEngine,
) -> None:
    result = settle_mix(engine)

    assert result["payments"] == {
        "total": 8,
        "settled": 5,  # captured with nothing left on hold: succeeded and refunded ones
        "by_status": {
            "canceled": 1,
            "partially_captured": 1,
            "partially_refunded": 1,
            "refunded": 1,
            "requires_capture": 1,
            "succeeded": 3,
        },
    }
    assert set(result["ledger"]["trial_balance"].values()) == {0}
    assert result["reconciliation"] == {
        "matched": 9,
        "mismatched": 0,
        "payments": 8,
        "assets": 1,
    }
    assert result["audit"]["ok"]
    assert_books_match_chain(engine)


def authorized_payments(engine: SettlementEngine, count: int) -> list[str]:
    world = engine.deployment
    payment_ids = []
    for index in range(count):
        terms = world.terms(AMOUNT)
        signature = world.payer_signature(terms)
        payment_ids.append(engine.service.create(f"c{index}", terms, AMOUNT, signature).payment_id)
    engine.run_until_quiescent()
    return payment_ids


def test_the_relay_reads_its_watched_transactions_a_page_at_a_time(
    engine: SettlementEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three batches in flight at once, looked up in pages of one, all finish."""
    world = engine.deployment
    monkeypatch.setattr(relay_module, "WATCHED_PER_PAGE_MAX", 1)
    engine.relay = Relay(
        engine.db,
        engine.outbox,
        engine.txmanager,
        world.escrow,
        "paging-worker",
        engine.now,
        operator=world.operator.address,
        arbiter=world.arbiter.address,
        batch_ops_max=1,  # a batch, and a watched transaction, per payment
    )
    read = engine.txmanager.get_many
    pages: list[int] = []

    def get_many(keys: list[str]) -> object:
        pages.append(len(keys))
        return read(keys)

    monkeypatch.setattr(engine.txmanager, "get_many", get_many)

    payment_ids = authorized_payments(engine, 3)

    assert pages and set(pages) == {1} and len(pages) >= 3
    with engine.db.snapshot() as conn:
        statuses = {load(conn, payment_id).payment.status for payment_id in payment_ids}
    assert statuses == {"requires_capture"}


def test_an_operation_sent_again_in_another_batch_is_applied_once(
    engine: SettlementEngine,
) -> None:
    world = engine.deployment
    first, second = authorized_payments(engine, 2)
    merchant_before = world.balance(world.merchant.address)
    engine.service.capture("cap-1", first, AMOUNT, FEE_BPS)
    engine.service.capture("cap-2", second, AMOUNT, FEE_BPS)
    engine.relay.step()  # claims both captures and submits them as one batch
    engine.txmanager.pump()
    engine.txmanager.pump()  # mined on the embedded chain: the captures happened on chain
    # The relay dies before completing its rows; their lease runs out.
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
        batch_ops_max=1,  # another grouping: a new transaction re-sends a capture
    )

    engine.run_until_quiescent()

    with engine.db.snapshot() as conn:
        batches = conn.execute(select(func.count()).select_from(txs)).scalar_one()
        assert batches == 1 + 3  # the authorizations, then the captures, sent again one by one
        for payment_id in (first, second):
            current = load(conn, payment_id)
            assert current is not None
            assert (current.payment.status, current.payment.captured) == ("succeeded", AMOUNT)
    net = AMOUNT - AMOUNT * FEE_BPS // 10_000
    assert world.balance(world.merchant.address) - merchant_before == 2 * net
    assert_books_match_chain(engine)


def test_notices_delivered_again_change_nothing(engine: SettlementEngine) -> None:
    [payment_id] = authorized_payments(engine, 1)
    engine.service.capture("cap", payment_id, AMOUNT // 2, FEE_BPS)
    engine.run_until_quiescent()
    with engine.db.snapshot() as conn:
        before = load(conn, payment_id)
        entries_before = Ledger().entries_of_payment(conn, payment_id)

    with engine.db.transaction() as conn:  # the indexer forgets what the mirror acknowledged
        conn.execute(update(indexer_checkpoints).values(acknowledged_through=0))
    engine.run_until_quiescent()

    with engine.db.snapshot() as conn:
        assert load(conn, payment_id) == before
        assert Ledger().entries_of_payment(conn, payment_id) == entries_before
    assert_books_match_chain(engine)


@pytest.mark.anvil
def test_the_pipeline_posts_at_the_confirmation_depth_on_anvil(
    anvil_process: AnvilProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    backend: ChainBackend = AnvilBackend(anvil_process)
    token = backend.snapshot()
    db_url = f"sqlite:///{tmp_path_factory.mktemp('anvil') / 'settle.db'}"
    try:
        engine = local_engine(db_url, backend, confirmations=2)
        try:
            result = settle_mix(engine)
            assert result["reconciliation"]["mismatched"] == 0
            assert result["payments"]["total"] == 8
            assert_books_match_chain(engine)
        finally:
            engine.close()
    finally:
        backend.revert(token)


def test_an_authorization_the_escrow_refuses_fails_the_payment(engine: SettlementEngine) -> None:
    world = engine.deployment
    terms = world.terms(AMOUNT, payer=world.other.address)  # never approved the escrow
    signature = world.payer_signature(terms, world.other.account)
    refused = engine.service.create("no-allowance", terms, AMOUNT, signature)
    [accepted] = authorized_payments(engine, 1)  # in the same non-atomic batch

    with engine.db.snapshot() as conn:
        failed, ok = load(conn, refused.payment_id), load(conn, accepted)
    assert failed is not None and failed.payment.status == "failed"
    assert ok is not None and ok.payment.status == "requires_capture"
    assert_books_match_chain(engine)


def test_a_new_engine_over_the_same_database_and_chain_settles_what_was_left(
    db_url: str,
) -> None:
    with EmbeddedBackend() as backend:
        first = local_engine(db_url, backend)
        [payment_id] = authorized_payments(first, 1)
        first.service.capture("cap", payment_id, AMOUNT, FEE_BPS)
        first.close()  # stops before relaying the capture

        second = local_engine(db_url, backend, first.deployment)
        try:
            second.run_until_quiescent()
            with second.db.snapshot() as conn:
                current = load(conn, payment_id)
            assert current is not None and current.payment.status == "succeeded"
            assert_books_match_chain(second)
        finally:
            second.close()


def test_a_capture_in_flight_when_reconciliation_flags_the_payment_still_lands_in_its_books(
    engine: SettlementEngine,
) -> None:
    """The capture is accepted, then reconciliation flags the payment (another writer's event,
    folded in before the mirror's); the escrow's capture is confirmed while the payment is
    conflicted and still reaches the stream, the projection and the ledger. Reconciliation then
    finds every view agreeing and resolves the payment to the status the capture left."""
    [payment_id] = authorized_payments(engine, 1)
    engine.service.capture("cap", payment_id, AMOUNT, FEE_BPS)
    flagged = Conflicted(payment_id=payment_id, at=engine.now(), reason="reconcile: test")
    with engine.db.transaction() as conn:  # as reconciliation flags a payment
        EventStore(engine.db).append(conn, payment_id, 2, [stored_form(flagged)])

    engine.run_until_quiescent()

    with engine.db.snapshot() as conn:
        current = load(conn, payment_id)
        stream = EventStore(engine.db).read(conn, payment_id)
        command = conn.execute(
            select(payment_commands.c.status).where(payment_commands.c.idempotency_key == "cap")
        ).scalar_one()
    assert [event.kind for event in stream] == [
        PaymentRequested.kind,
        Authorized.kind,
        Conflicted.kind,
        Captured.kind,
    ]
    assert current is not None and current.version == len(stream)
    payment = current.payment
    assert (payment.status, payment.underlying) == ("conflicted", "succeeded")
    assert (payment.captured, payment.capturable) == (AMOUNT, 0)
    assert command == "applied"
    # Projection and escrow agree, the ledger balances and holds the escrow's balance, the
    # event log verifies and replays to the live books.
    assert_books_match_chain(engine)

    target = ChainTarget(engine.backend.w3, engine.chain_id, engine.deployment.escrow.address)
    report = reconcile(engine.db, target, now=engine.now())

    assert (report.mismatched, report.conflicted, report.resolved) == (0, (), (payment_id,))
    with engine.db.snapshot() as conn:
        resolved = load(conn, payment_id)
    assert resolved is not None
    assert resolved.payment == replace(payment, status="succeeded", underlying=None)
    assert_books_match_chain(engine)


def test_a_batch_whose_gas_bound_falls_short_goes_again_estimated(
    engine: SettlementEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bound too low for the batch: the escrow reverts it whole (BatchOutOfGas) instead of
    logging its operations as refused, and the relay sends the rows again under an estimate."""
    monkeypatch.setattr("engine.pipeline.relay.batch_gas_limit", lambda ops: 60_000)
    world = engine.deployment
    terms = world.terms(AMOUNT)
    payment_id = engine.service.create("c0", terms, AMOUNT, world.payer_signature(terms)).payment_id
    for _ in range(10):
        if engine.step().failed:
            break
    else:
        raise AssertionError("the starved batch never failed")
    # The retry waits out its backoff on the chain's clock, which runs ahead of the wall's.
    engine.backend.increase_time(engine.outbox.policy.backoff_base_s + 1)
    engine.backend.mine()
    engine.run_until_quiescent()

    with engine.db.snapshot() as conn:
        sent = conn.execute(select(txs.c.idempotency_key, txs.c.status).order_by(txs.c.id)).all()
        payment = load(conn, payment_id)
    assert payment is not None and payment.payment.status == "requires_capture"
    assert [status for _, status in sent] == ["failed", "confirmed"]
    first, second = (key for key, _ in sent)
    assert second == first + ":estimated"
    assert_books_match_chain(engine)


def test_a_capture_with_extra_legs_books_each_leg_from_the_chain(
    engine: SettlementEngine,
) -> None:
    """Legs go command → relay → escrow; the mirror folds the LegPaid logs into the capture,
    so each recipient's account holds what the chain paid it and the merchant the rest."""
    world = engine.deployment
    [payment_id] = authorized_payments(engine, 1)
    legs = (Leg(Account.create().address, UNIT // 10), Leg(Account.create().address, UNIT // 5))
    engine.service.capture("cap-legs", payment_id, AMOUNT, FEE_BPS, legs)
    engine.run_until_quiescent()

    asset = AssetKey(engine.chain_id, world.token.address)
    with engine.db.snapshot() as conn:
        payment = load(conn, payment_id)
        balances = Ledger().balances(conn, asset)
        [stored] = [e for e in EventStore(engine.db).read(conn, payment_id) if e.kind == "captured"]
    assert payment is not None and payment.payment.status == "succeeded"
    assert stored.payload["legs"] == [leg.to_dict() for leg in legs]
    for leg in legs:
        assert world.balance(leg.recipient) == leg.amount
        assert balances[AccountKey(asset, AccountKind.LEG, leg.recipient)].posted == leg.amount
    fee = -(-AMOUNT * FEE_BPS // 10_000)
    merchant = AccountKey(asset, AccountKind.MERCHANT_SETTLED, world.merchant.address)
    assert balances[merchant].posted == AMOUNT - fee - sum(leg.amount for leg in legs)
    assert_books_match_chain(engine)
    target = ChainTarget(engine.backend.w3, engine.chain_id, world.escrow.address)
    assert reconcile(engine.db, target, now=engine.now()).mismatched == 0


def test_a_poll_never_splits_a_capture_from_its_legs(db_url: str) -> None:
    """With room for two notices per poll, the capture and its three LegPaid logs still come
    in one poll, so the capture is booked with all its legs."""
    with EmbeddedBackend() as backend:
        engine = local_engine(db_url, backend)
        try:
            engine.indexer._notices_per_poll_max = 2
            [payment_id] = authorized_payments(engine, 1)
            legs = tuple(Leg(Account.create().address, UNIT // 10) for _ in range(3))
            engine.service.capture("cap-legs", payment_id, AMOUNT, FEE_BPS, legs)
            engine.run_until_quiescent()
            with engine.db.snapshot() as conn:
                captured = [
                    e for e in EventStore(engine.db).read(conn, payment_id) if e.kind == "captured"
                ]
            assert [item.payload["legs"] for item in captured] == [[leg.to_dict() for leg in legs]]
            assert_books_match_chain(engine)
        finally:
            engine.close()


@pytest.mark.anvil
def test_a_batch_whose_nonce_another_transaction_took_goes_again_as_a_new_one(
    anvil_process: AnvilProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The operator's key sends something else with the nonce the relay's batch was given
    before the batch goes out: the batch is replaced, its rows are retried, and the retry is a
    new transaction rather than the replaced one found again. (Telling who used a nonce needs
    historical state, which anvil keeps and the embedded EVM does not.)"""
    backend: ChainBackend = AnvilBackend(anvil_process)
    snapshot = backend.snapshot()
    db_url = f"sqlite:///{tmp_path_factory.mktemp('replaced') / 'settle.db'}"
    engine = local_engine(db_url, backend)
    try:
        world = engine.deployment
        terms = world.terms(AMOUNT)
        signature = world.payer_signature(terms)
        payment_id = engine.service.create("c0", terms, AMOUNT, signature).payment_id
        engine.relay.step()  # the batch has its nonce; nothing is broadcast yet
        world.operator.resync()
        world.operator.send(world.token.functions.approve(world.escrow.address, 1))
        for _ in range(10):
            if engine.step().failed:
                break
        else:
            raise AssertionError("the replaced batch never failed")
        engine.backend.increase_time(engine.outbox.policy.backoff_base_s + 1)
        engine.backend.mine()
        engine.run_until_quiescent()

        with engine.db.snapshot() as conn:
            sent = conn.execute(
                select(txs.c.idempotency_key, txs.c.status).order_by(txs.c.id)
            ).all()
            payment = load(conn, payment_id)
        assert payment is not None and payment.payment.status == "requires_capture"
        assert [status for _, status in sent] == ["replaced", "confirmed"]
        first, second = (key for key, _ in sent)
        assert second == first + ":estimated"
        assert_books_match_chain(engine)
    finally:
        engine.close()
        backend.revert(snapshot)


@pytest.mark.anvil
def test_a_batch_the_node_keeps_unmined_is_replaced_within_seconds_and_settles(
    anvil_process: AnvilProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """anvil, given a JSON-RPC batch of sends, once kept the last one in its pool unmined, and
    the next transaction behind it: a payment stalled for the public chains' minute until the
    fee bump replaced the batch. On a node that mines on arrival the engine calls a batch
    stuck after seconds, and the replacement (same nonce, higher fees) settles it."""
    backend: ChainBackend = AnvilBackend(anvil_process)
    snapshot = backend.snapshot()
    db_url = f"sqlite:///{tmp_path_factory.mktemp('stuck') / 'settle.db'}"
    engine = local_engine(db_url, backend)

    def set_automine(on: bool) -> None:
        backend.w3.manager.request_blocking(RPCEndpoint("evm_setAutomine"), [on])

    def events_of_the_batch() -> list[str]:
        with engine.db.snapshot() as conn:
            return list(
                conn.execute(select(tx_history.c.event).order_by(tx_history.c.id)).scalars()
            )

    try:
        world = engine.deployment
        terms = world.terms(AMOUNT)
        created = engine.service.create("c0", terms, AMOUNT, world.payer_signature(terms))
        set_automine(False)  # the node takes the batch into its pool and keeps it there
        engine.step()
        assert events_of_the_batch() == ["queued", "sent"]

        deadline = time.monotonic() + STUCK_AFTER_S_LOCAL + 5
        while "replaced_by_bump" not in events_of_the_batch():
            assert time.monotonic() < deadline, "the unmined batch was never replaced"
            engine.step()
            time.sleep(0.2)
        set_automine(True)
        backend.mine()
        engine.run_until_quiescent()

        with engine.db.snapshot() as conn:
            batch = conn.execute(select(txs.c.status, txs.c.attempts)).one()
            payment = load(conn, created.payment_id)
        assert (batch.status, batch.attempts) == ("confirmed", 2)
        assert payment is not None and payment.payment.status == "requires_capture"
        assert_books_match_chain(engine)
    finally:
        set_automine(True)
        engine.close()
        backend.revert(snapshot)
