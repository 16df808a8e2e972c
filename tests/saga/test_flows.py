"""Each saga flow end to end on the embedded EVM, through commands, relay, chain and mirror.

Fixtures are in tests/fixtures/engines.py; shared helpers in tests/fixtures/pipeline_support.py.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from engine.chain.contracts.escrow import terms_tuple
from engine.pipeline.engine import SettlementEngine
from engine.psp.events import PspEvent, PspEventKind, deliver
from engine.saga.errors import SignalRejected
from engine.saga.flows import (
    EXPIRY_TIMER,
    ExpiryPolicy,
    PspBridgedSagas,
    psp_saga_id,
    start_psp_bridged,
)
from engine.saga.orchestrator import Orchestrator
from engine.store.schema import saga_timers
from engine.tools.localnet import AUTHORIZATION_WINDOW_S
from tests.fixtures.pipeline_support import (
    AMOUNT,
    FEE_BPS,
    assert_books_match_chain,
    books,
    checkout,
    payment_of,
    settle,
    steps_of,
)


def test_direct_checkout_with_auto_capture_holds_then_captures(
    engine: SettlementEngine, orchestrator: Orchestrator
) -> None:
    checkout(engine, orchestrator, "co-1", auto_capture=True)

    settle(engine, orchestrator, engine.now())

    assert orchestrator.status("co-1") == ("completed", "captured")
    assert books(payment_of(engine, "co-1")) == ("succeeded", AMOUNT, 0)
    assert steps_of(engine, "co-1") == [
        ("create", "forward", "done"),
        ("capture", "forward", "done"),
    ]


def test_direct_checkout_captures_on_request(
    engine: SettlementEngine, orchestrator: Orchestrator
) -> None:
    checkout(engine, orchestrator, "co-1")
    settle(engine, orchestrator, engine.now())
    assert orchestrator.status("co-1") == ("running", None)
    assert payment_of(engine, "co-1").status == "requires_capture"

    assert orchestrator.signal("co-1", "req-1", "capture", {"amount": AMOUNT})
    settle(engine, orchestrator, engine.now())

    assert orchestrator.status("co-1") == ("completed", "captured")
    assert books(payment_of(engine, "co-1")) == ("succeeded", AMOUNT, 0)


def start_psp(engine: SettlementEngine, orchestrator: Orchestrator, ref: str) -> PspBridgedSagas:
    """Open the saga of processor payment ``ref``; the processor's webhooks go to the result."""
    world = engine.deployment
    terms = world.terms(AMOUNT)
    signature = world.payer_signature(terms)
    assert start_psp_bridged(orchestrator, ref, terms, AMOUNT, signature, fee_bps=FEE_BPS)
    return PspBridgedSagas(orchestrator)


@pytest.mark.parametrize(
    ("outcome", "status", "refunded"),
    [
        (PspEventKind.DISPUTE_WON, "dispute_won", 0),
        (PspEventKind.DISPUTE_LOST, "dispute_lost", AMOUNT // 4),
    ],
)
def test_a_psp_chargeback_opens_a_dispute_that_the_processor_outcome_resolves(
    engine: SettlementEngine,
    orchestrator: Orchestrator,
    outcome: PspEventKind,
    status: str,
    refunded: int,
) -> None:
    psp = start_psp(engine, orchestrator, "pi_1")
    saga = psp_saga_id("pi_1")
    assert deliver(psp, PspEvent(PspEventKind.AUTHORIZED, "evt_1", "pi_1", AMOUNT))
    assert deliver(psp, PspEvent(PspEventKind.CAPTURED, "evt_2", "pi_1", AMOUNT))
    settle(engine, orchestrator, engine.now())
    assert orchestrator.status(saga) == ("completed", "captured")

    assert deliver(psp, PspEvent(PspEventKind.CHARGEBACK, "evt_3", "pi_1", AMOUNT // 4))
    settle(engine, orchestrator, engine.now())

    assert orchestrator.status(saga) == ("running", None)  # waits for the processor's outcome
    disputed = payment_of(engine, saga)
    assert (disputed.status, disputed.disputed) == ("disputed", AMOUNT // 4)
    # A second chargeback while the dispute is open does not fit.
    with pytest.raises(SignalRejected):
        deliver(psp, PspEvent(PspEventKind.CHARGEBACK, "evt_4", "pi_1", 1))

    assert deliver(psp, PspEvent(outcome, "evt_5", "pi_1"))
    settle(engine, orchestrator, engine.now())

    assert orchestrator.status(saga) == ("completed", status)
    assert books(payment_of(engine, saga)) == (status, AMOUNT, refunded)
    assert payment_of(engine, saga).disputed == 0
    assert [action for action, _, _ in steps_of(engine, saga)] == [
        "create",
        "capture",
        "open_dispute",
        "resolve_dispute",
    ]
    assert_books_match_chain(engine)


def test_a_psp_dispute_outcome_without_a_chargeback_is_rejected(
    engine: SettlementEngine, orchestrator: Orchestrator
) -> None:
    psp = start_psp(engine, orchestrator, "pi_1")
    assert deliver(psp, PspEvent(PspEventKind.AUTHORIZED, "evt_1", "pi_1", AMOUNT))
    assert deliver(psp, PspEvent(PspEventKind.CAPTURED, "evt_2", "pi_1", AMOUNT))
    settle(engine, orchestrator, engine.now())

    with pytest.raises(SignalRejected):
        deliver(psp, PspEvent(PspEventKind.DISPUTE_WON, "evt_3", "pi_1"))

    assert orchestrator.status(psp_saga_id("pi_1")) == ("completed", "captured")


def test_a_psp_chargeback_on_an_open_hold_voids_it_instead(
    engine: SettlementEngine, orchestrator: Orchestrator
) -> None:
    psp = start_psp(engine, orchestrator, "pi_1")
    saga = psp_saga_id("pi_1")
    assert deliver(psp, PspEvent(PspEventKind.AUTHORIZED, "evt_1", "pi_1", AMOUNT))
    assert deliver(psp, PspEvent(PspEventKind.CAPTURED, "evt_2", "pi_1", AMOUNT // 2))
    settle(engine, orchestrator, engine.now())

    assert deliver(psp, PspEvent(PspEventKind.CHARGEBACK, "evt_3", "pi_1", AMOUNT // 4))
    settle(engine, orchestrator, engine.now())

    # The escrow disputes settled money only: the step fails and compensation voids the hold.
    assert orchestrator.status(saga) == ("compensated", None)
    assert books(payment_of(engine, saga)) == ("succeeded", AMOUNT // 2, 0)
    assert steps_of(engine, saga)[-2:] == [
        ("open_dispute", "forward", "failed"),
        ("void", "compensation", "done"),
    ]
    assert_books_match_chain(engine)


def test_a_psp_webhook_delivered_again_applies_once(
    engine: SettlementEngine, orchestrator: Orchestrator
) -> None:
    psp = start_psp(engine, orchestrator, "pi_1")
    saga = psp_saga_id("pi_1")
    captured = PspEvent(PspEventKind.CAPTURED, "evt_2", "pi_1", AMOUNT // 2)

    assert deliver(psp, PspEvent(PspEventKind.AUTHORIZED, "evt_1", "pi_1", AMOUNT))
    assert deliver(psp, captured)
    assert not deliver(psp, PspEvent(PspEventKind.AUTHORIZED, "evt_1", "pi_1", AMOUNT))
    settle(engine, orchestrator, engine.now())
    assert not deliver(psp, captured)
    settle(engine, orchestrator, engine.now())

    assert [action for action, _, _ in steps_of(engine, saga)] == ["create", "capture"]
    assert books(payment_of(engine, saga)) == ("partially_captured", AMOUNT // 2, 0)


def test_a_psp_capture_before_its_authorization_is_rejected_until_redelivered(
    engine: SettlementEngine, orchestrator: Orchestrator
) -> None:
    psp = start_psp(engine, orchestrator, "pi_1")
    captured = PspEvent(PspEventKind.CAPTURED, "evt_2", "pi_1", AMOUNT)

    with pytest.raises(SignalRejected):
        deliver(psp, captured)
    assert deliver(psp, PspEvent(PspEventKind.AUTHORIZED, "evt_1", "pi_1", AMOUNT))
    assert deliver(psp, captured)
    settle(engine, orchestrator, engine.now())

    assert orchestrator.status(psp_saga_id("pi_1")) == ("completed", "captured")


def test_psp_failure_after_authorization_voids_the_hold(
    engine: SettlementEngine, orchestrator: Orchestrator
) -> None:
    psp = start_psp(engine, orchestrator, "pi_1")
    saga = psp_saga_id("pi_1")

    deliver(psp, PspEvent(PspEventKind.AUTHORIZED, "evt_1", "pi_1", AMOUNT))
    deliver(psp, PspEvent(PspEventKind.FAILED, "evt_2", "pi_1"))
    settle(engine, orchestrator, engine.now())

    assert orchestrator.status(saga) == ("completed", "voided")
    assert payment_of(engine, saga).status == "canceled"
    world = engine.deployment
    assert world.balance(world.escrow.address) == 0


def test_psp_cancellation_before_authorization_ends_without_touching_the_chain(
    engine: SettlementEngine, orchestrator: Orchestrator
) -> None:
    psp = start_psp(engine, orchestrator, "pi_1")

    deliver(psp, PspEvent(PspEventKind.CANCELED, "evt_1", "pi_1"))
    settle(engine, orchestrator, engine.now())

    assert orchestrator.status(psp_saga_id("pi_1")) == ("completed", "canceled")
    assert steps_of(engine, psp_saga_id("pi_1")) == []


def test_an_uncaptured_hold_is_voided_before_its_authorization_expires(
    engine: SettlementEngine, orchestrator: Orchestrator
) -> None:
    expiry = checkout(engine, orchestrator, "co-1", expiry=ExpiryPolicy(void_margin_s=3600))
    settle(engine, orchestrator, engine.now())
    settle(engine, orchestrator, expiry - 3601)
    assert payment_of(engine, "co-1").status == "requires_capture"

    settle(engine, orchestrator, expiry - 3600)

    assert orchestrator.status("co-1") == ("completed", "voided")
    assert payment_of(engine, "co-1").status == "canceled"


def test_a_payer_reclaim_after_expiry_is_booked_and_completes_the_saga(
    engine: SettlementEngine, orchestrator: Orchestrator
) -> None:
    world = engine.deployment
    checkout(engine, orchestrator, "co-1", expiry=ExpiryPolicy(void_margin_s=None))
    settle(engine, orchestrator, engine.now())
    with engine.db.snapshot() as conn:
        timers = conn.execute(select(func.count()).select_from(saga_timers)).scalar_one()
    assert timers == 0
    terms = payment_of(engine, "co-1").terms

    engine.backend.increase_time(AUTHORIZATION_WINDOW_S + 1)
    engine.backend.mine()
    world.payer.send(world.escrow.functions.reclaim(terms_tuple(terms)))
    settle(engine, orchestrator, engine.now())

    assert orchestrator.status("co-1") == ("completed", "reclaimed")
    assert payment_of(engine, "co-1").status == "expired"


def test_the_expiry_timer_is_named_once_per_saga(
    engine: SettlementEngine, orchestrator: Orchestrator
) -> None:
    checkout(engine, orchestrator, "co-1")

    with engine.db.snapshot() as conn:
        names = conn.execute(select(saga_timers.c.name)).scalars().all()

    assert names == [EXPIRY_TIMER]
