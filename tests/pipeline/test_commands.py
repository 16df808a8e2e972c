"""Payment commands: idempotent by key, refused with stable codes, and all-or-nothing."""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from engine.domain.errors import DomainError
from engine.pipeline.commands import (
    Capture,
    CommandConflict,
    CommandError,
    CommandOutcome,
    Create,
    Refund,
    Void,
)
from engine.pipeline.engine import SettlementEngine
from engine.store.schema import outbox, payment_commands
from engine.tools.localnet import AUTHORIZATION_WINDOW_S, UNIT
from tests.fixtures.pipeline_support import refused, written

AMOUNT = 100 * UNIT
FEE_BPS = 50


def create(engine: SettlementEngine, key: str = "create") -> CommandOutcome:
    world = engine.deployment
    terms = world.terms(AMOUNT)
    return engine.service.create(key, terms, AMOUNT, world.payer_signature(terms))


def authorized(engine: SettlementEngine) -> str:
    payment_id = create(engine).payment_id
    engine.run_until_quiescent()
    return payment_id


def test_a_retried_command_returns_its_first_outcome_and_writes_nothing(
    engine: SettlementEngine,
) -> None:
    world = engine.deployment
    terms = world.terms(AMOUNT)
    signature = world.payer_signature(terms)
    first = engine.service.create("same-key", terms, AMOUNT, signature)
    before = written(engine)

    again = engine.service.create("same-key", terms, AMOUNT, signature)

    assert again == first
    assert written(engine) == before
    engine.run_until_quiescent()
    capture = engine.service.capture("cap", first.payment_id, AMOUNT, FEE_BPS)
    assert engine.service.capture("cap", first.payment_id, AMOUNT, FEE_BPS) == capture


def test_a_key_reused_for_another_command_is_refused(engine: SettlementEngine) -> None:
    payment_id = authorized(engine)
    engine.service.capture("cap", payment_id, AMOUNT // 2, FEE_BPS)

    code = refused(engine, lambda: engine.service.capture("cap", payment_id, AMOUNT, FEE_BPS))

    assert code == "idempotency_key_reused"


def test_bad_commands_are_refused_with_stable_codes(engine: SettlementEngine) -> None:
    payment_id = authorized(engine)
    service = engine.service

    assert refused(engine, lambda: service.capture("k1", "pay_" + "0" * 26, 1, FEE_BPS)) == (
        "unknown_payment"
    )
    assert refused(engine, lambda: service.capture("k2", payment_id, AMOUNT + 1, FEE_BPS)) == (
        "amount_exceeds_capturable"
    )
    assert refused(engine, lambda: service.refund("k3", payment_id, 1)) == (
        "illegal_transition"  # nothing captured yet: a refund does not apply at all
    )
    engine.service.capture("k4", payment_id, AMOUNT // 2, FEE_BPS)
    engine.run_until_quiescent()
    assert refused(engine, lambda: service.refund("k5", payment_id, AMOUNT // 2 + 1)) == (
        "amount_exceeds_refundable"
    )
    engine.backend.increase_time(AUTHORIZATION_WINDOW_S + 1)
    engine.backend.mine()
    assert refused(engine, lambda: service.capture("k6", payment_id, 1, FEE_BPS)) == (
        "authorization_expired"
    )


def test_a_command_while_another_is_in_flight_is_a_conflict(engine: SettlementEngine) -> None:
    payment_id = authorized(engine)
    engine.service.capture("first", payment_id, AMOUNT // 2, FEE_BPS)

    assert refused(engine, lambda: engine.service.void("second", payment_id)) == "conflict"

    engine.run_until_quiescent()
    engine.service.void("second", payment_id)  # accepted once the first is on chain
    engine.run_until_quiescent()


def test_of_two_concurrent_commands_on_a_payment_exactly_one_is_accepted(
    engine: SettlementEngine,
) -> None:
    payment_id = authorized(engine)
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def capture(key: str) -> None:
        barrier.wait()
        try:
            outcomes.append(engine.service.capture(key, payment_id, AMOUNT, FEE_BPS))
        except CommandConflict as conflict:
            outcomes.append(conflict)

    threads = [threading.Thread(target=capture, args=(key,)) for key in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(type(outcome).__name__ for outcome in outcomes) == [
        "CommandConflict",
        "CommandOutcome",
    ]
    with engine.db.snapshot() as conn:
        operations = conn.execute(
            select(func.count()).select_from(outbox).where(outbox.c.payment_key == payment_id)
        ).scalar_one()
    assert operations == 2  # the authorization and one capture


def test_a_batch_commits_what_it_accepts_and_gives_each_refusal_in_its_place(
    engine: SettlementEngine,
) -> None:
    """``execute`` decides each command on its own: refused ones write nothing, the accepted
    ones commit together, and later commands see the earlier ones of the same batch."""
    world = engine.deployment
    held = authorized(engine)
    terms = world.terms(AMOUNT)
    signature = world.payer_signature(terms)
    before = written(engine)

    results = engine.service.execute(
        [
            Create("batch-new", terms, AMOUNT, signature),
            Capture("batch-too-much", held, AMOUNT + 1, FEE_BPS),
            Capture("batch-capture", held, AMOUNT, FEE_BPS),
            Void("batch-second-on-held", held),  # the capture above is now in flight
            Capture("batch-unknown", "pay_" + "0" * 26, 1, FEE_BPS),
            Create("batch-new", terms, AMOUNT, signature),  # a repeat: the first outcome
            Refund("batch-new", held, 1),  # the key again, for another command
        ]
    )

    created, too_much, captured, second, unknown, repeated, reused = results
    assert isinstance(created, CommandOutcome) and isinstance(captured, CommandOutcome)
    assert repeated == created
    assert [
        error.code
        for error in (too_much, second, unknown, reused)
        if isinstance(error, CommandError | DomainError)
    ] == ["amount_exceeds_capturable", "conflict", "unknown_payment", "idempotency_key_reused"]
    # Two commands accepted: one new stream event, two outbox rows, two command rows.
    events_before, outbox_before, commands_before = before
    assert written(engine) == (events_before + 1, outbox_before + 2, commands_before + 2)
    engine.run_until_quiescent()
    with engine.db.snapshot() as conn:
        rows = conn.execute(select(payment_commands.c.idempotency_key, payment_commands.c.status))
        statuses = {key: status for key, status in rows}
    assert statuses["batch-new"] == statuses["batch-capture"] == "applied"
