"""Helpers shared by the saga tests: start a checkout, tick until idle, read the books and
check them against the chain."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from engine.chain.localnet import UNIT
from engine.domain.errors import DomainError
from engine.domain.payment import Payment
from engine.saga.commands import CommandError
from engine.saga.engine import SettlementEngine
from engine.saga.flows import DEFAULT_EXPIRY, ExpiryPolicy, start_direct_checkout
from engine.saga.orchestrator import Orchestrator, TickReport
from engine.store.event_store import EventStore
from engine.store.ledger import Ledger
from engine.store.ledger_accounts import AssetKey
from engine.store.projections import load, load_all
from engine.store.replay import verify_replay
from engine.store.schema import events, outbox, payment_commands, saga_steps, sagas

AMOUNT = 100 * UNIT
FEE_BPS = 50
ROUNDS_MAX = 20


def settle(engine: SettlementEngine, orchestrator: Orchestrator, now: int) -> TickReport:
    """Tick and let the pipeline book the chain's answers until the sagas wait on nothing;
    returns the sum of what the ticks did."""
    total = TickReport()
    for _ in range(ROUNDS_MAX):
        engine.run_until_quiescent()
        report = orchestrator.tick(now)
        for name in vars(total):
            setattr(total, name, getattr(total, name) + getattr(report, name))
        if report.idle:
            return total
    raise AssertionError(f"sagas still busy after {ROUNDS_MAX} rounds")


def checkout(
    engine: SettlementEngine,
    orchestrator: Orchestrator,
    saga_id: str,
    *,
    auto_capture: bool = False,
    fee_bps: int = FEE_BPS,
    expiry: ExpiryPolicy = DEFAULT_EXPIRY,
) -> int:
    """Start a direct checkout; returns the terms' authorization expiry."""
    world = engine.deployment
    terms = world.terms(AMOUNT)
    started = start_direct_checkout(
        orchestrator,
        saga_id,
        terms,
        AMOUNT,
        world.payer_signature(terms),
        fee_bps=fee_bps,
        auto_capture=auto_capture,
        expiry=expiry,
        now=engine.now(),
    )
    assert started
    return terms.authorization_expiry


def payment_of(engine: SettlementEngine, saga_id: str) -> Payment:
    with engine.db.snapshot() as conn:
        payment_id = conn.execute(
            select(sagas.c.payment_id).where(sagas.c.id == saga_id)
        ).scalar_one()
        found = load(conn, payment_id)
    assert found is not None
    return found.payment


def books(payment: Payment) -> tuple[str, int, int]:
    return str(payment.status), payment.captured, payment.refunded


def steps_of(engine: SettlementEngine, saga_id: str) -> list[tuple[str, str, str]]:
    s = saga_steps.c
    with engine.db.snapshot() as conn:
        rows = conn.execute(
            select(s.action, s.role, s.status).where(s.saga_id == saga_id).order_by(s.seq)
        ).all()
    return [(str(action), str(role), str(status)) for action, role, status in rows]


def assert_books_match_chain(engine: SettlementEngine) -> None:
    """The projection agrees with the escrow, the ledger balances and holds what the escrow
    holds, and the event log verifies and replays to the same state."""
    world = engine.deployment
    ledger = Ledger()
    asset = AssetKey(engine.chain_id, world.token.address)
    with engine.db.snapshot() as conn:
        projected = load_all(conn)
        for item in projected:
            capturable, refundable, seq = world.escrow.functions.payments(
                item.chain_payment_id
            ).call()
            payment = item.payment
            assert (capturable, refundable, seq) == (
                payment.capturable,
                payment.refundable,
                item.chain_seq,
            ), payment
        for balance in ledger.trial_balance(conn).values():
            assert (balance.posted, balance.pending) == (0, 0)
        assert ledger.verify(conn).ok
        assert ledger.escrow_holdings(conn, asset) == world.balance(world.escrow.address)
        assert EventStore(engine.db).verify(conn).ok
    assert verify_replay(engine.db, chain_id=engine.chain_id).identical


def written(engine: SettlementEngine) -> tuple[int, int, int]:
    """Rows of the tables a command writes: events, outbox operations, command records."""
    with engine.db.snapshot() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (events, outbox, payment_commands)
        )


def refused(engine: SettlementEngine, command: Callable[[], object]) -> str:
    """The code a refused command raises; asserts it wrote nothing."""
    before = written(engine)
    with pytest.raises((CommandError, DomainError)) as caught:
        command()
    assert written(engine) == before
    error = caught.value
    assert isinstance(error, CommandError | DomainError)
    return error.code
