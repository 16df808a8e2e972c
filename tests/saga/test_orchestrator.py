"""The orchestrator's guarantees: retries with backoff, compensation, manual review, timers
that fire once across a restart. Failures are injected by a service wrapper in front of the
real pipeline; everything else runs for real on the embedded EVM."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select

from engine.domain.events import Party
from engine.domain.ids import PaymentTerms
from engine.pipeline.commands import CommandConflict, CommandOutcome, PaymentService
from engine.pipeline.engine import SettlementEngine
from engine.saga.flows import start_direct_checkout
from engine.saga.orchestrator import Orchestrator
from engine.saga.plan import RetryPolicy
from engine.store.schema import saga_steps, saga_timers
from tests.fixtures.pipeline_support import (
    AMOUNT,
    FEE_BPS,
    books,
    checkout,
    payment_of,
    settle,
    steps_of,
)

POLICY = RetryPolicy(attempts_max=4, backoff_base_s=10, backoff_max_s=60)


@dataclass
class FlakyService:
    """The real service, except that ``action`` first raises ``failures`` errors, or
    always raises when ``failures`` is None."""

    service: PaymentService
    action: str
    failures: int | None
    calls: list[str] = field(default_factory=list)

    def _maybe_fail(self, action: str) -> None:
        self.calls.append(action)
        if action != self.action:
            return
        if self.failures is None or self.calls.count(action) <= self.failures:
            raise CommandConflict(f"injected: {action} is busy")

    def create(
        self, key: str, terms: PaymentTerms, amount: int, authorization: bytes
    ) -> CommandOutcome:
        self._maybe_fail("create")
        return self.service.create(key, terms, amount, authorization)

    def capture(self, key: str, payment_id: str, amount: int, fee_bps: int) -> CommandOutcome:
        self._maybe_fail("capture")
        return self.service.capture(key, payment_id, amount, fee_bps)

    def void(self, key: str, payment_id: str) -> CommandOutcome:
        self._maybe_fail("void")
        return self.service.void(key, payment_id)

    def refund(self, key: str, payment_id: str, amount: int) -> CommandOutcome:
        self._maybe_fail("refund")
        return self.service.refund(key, payment_id, amount)

    def open_dispute(self, key: str, payment_id: str, amount: int) -> CommandOutcome:
        self._maybe_fail("open_dispute")
        return self.service.open_dispute(key, payment_id, amount)

    def resolve_dispute(self, key: str, payment_id: str, winner: Party) -> CommandOutcome:
        self._maybe_fail("resolve_dispute")
        return self.service.resolve_dispute(key, payment_id, winner)


def flaky(
    engine: SettlementEngine, action: str, failures: int | None
) -> tuple[Orchestrator, FlakyService]:
    service = FlakyService(engine.service, action, failures)
    return Orchestrator(engine.db, service, engine.now, policy=POLICY), service


def due_at_of(engine: SettlementEngine, saga_id: str, action: str) -> int:
    s = saga_steps.c
    with engine.db.snapshot() as conn:
        return int(
            conn.execute(
                select(s.due_at).where(s.saga_id == saga_id, s.action == action)
            ).scalar_one()
        )


def test_a_retryable_failure_is_retried_after_a_growing_backoff_then_succeeds(
    engine: SettlementEngine,
) -> None:
    orchestrator, service = flaky(engine, "capture", failures=2)
    now = engine.now()
    checkout(engine, orchestrator, "co-1", auto_capture=True)

    settle(engine, orchestrator, now)
    assert service.calls == ["create", "capture"]
    assert due_at_of(engine, "co-1", "capture") == now + 10
    settle(engine, orchestrator, now + 9)  # not yet due: nothing is tried
    assert service.calls == ["create", "capture"]
    settle(engine, orchestrator, now + 10)
    assert due_at_of(engine, "co-1", "capture") == now + 10 + 20
    settle(engine, orchestrator, now + 30)

    assert service.calls == ["create", "capture", "capture", "capture"]
    assert orchestrator.status("co-1") == ("completed", "captured")
    assert books(payment_of(engine, "co-1")) == ("succeeded", AMOUNT, 0)


def test_a_permanent_failure_compensates_by_voiding_the_hold(
    engine: SettlementEngine, orchestrator: Orchestrator
) -> None:
    # The terms allow at most 100 bps: the capture is refused for good, not retried.
    checkout(engine, orchestrator, "co-1", auto_capture=True, fee_bps=101)

    settle(engine, orchestrator, engine.now())

    assert orchestrator.status("co-1") == ("compensated", None)
    assert steps_of(engine, "co-1") == [
        ("create", "forward", "done"),
        ("capture", "forward", "failed"),
        ("void", "compensation", "done"),
    ]
    assert payment_of(engine, "co-1").status == "canceled"
    with engine.db.snapshot() as conn:
        code = conn.execute(
            select(saga_steps.c.error_code).where(saga_steps.c.action == "capture")
        ).scalar_one()
    assert code == "fee_out_of_bounds"


def test_retryable_failures_that_outlast_the_attempts_compensate(
    engine: SettlementEngine,
) -> None:
    orchestrator, service = flaky(engine, "capture", failures=None)
    now = engine.now()
    checkout(engine, orchestrator, "co-1", auto_capture=True)

    for _ in range(POLICY.attempts_max):
        settle(engine, orchestrator, now)
        now += POLICY.backoff_max_s

    assert service.calls.count("capture") == POLICY.attempts_max
    assert orchestrator.status("co-1") == ("compensated", None)
    assert payment_of(engine, "co-1").status == "canceled"


def test_a_compensation_that_keeps_failing_ends_in_manual_review(
    engine: SettlementEngine,
) -> None:
    orchestrator, service = flaky(engine, "void", failures=None)
    now = engine.now()
    checkout(engine, orchestrator, "co-1", auto_capture=True, fee_bps=101)

    for _ in range(POLICY.compensation_attempts_max + 3):
        settle(engine, orchestrator, now)
        now += POLICY.backoff_max_s

    assert service.calls.count("void") == POLICY.compensation_attempts_max
    assert orchestrator.status("co-1") == ("manual_review", None)
    assert steps_of(engine, "co-1")[-1] == ("void", "compensation", "failed")
    assert payment_of(engine, "co-1").status == "requires_capture"  # the hold awaits a person


def test_a_timer_fires_exactly_once_across_an_orchestrator_restart(
    engine: SettlementEngine, orchestrator: Orchestrator
) -> None:
    expiry = checkout(engine, orchestrator, "co-1")
    settle(engine, orchestrator, engine.now())
    due = expiry - 3600
    settle(engine, orchestrator, due - 1)

    restarted = Orchestrator(engine.db, engine.service, engine.now)
    settle(engine, restarted, due)
    settle(engine, restarted, due + 1)
    settle(engine, orchestrator, due + 2)

    assert [action for action, _, _ in steps_of(engine, "co-1")] == ["create", "void"]
    with engine.db.snapshot() as conn:
        assert conn.execute(select(saga_timers.c.status)).scalars().all() == ["fired"]
    assert orchestrator.status("co-1") == ("completed", "voided")


def test_starting_a_saga_again_changes_nothing(
    engine: SettlementEngine, orchestrator: Orchestrator
) -> None:
    world = engine.deployment
    terms = world.terms(AMOUNT)
    signature = world.payer_signature(terms)

    def start() -> bool:
        return start_direct_checkout(
            orchestrator, "co-1", terms, AMOUNT, signature, fee_bps=FEE_BPS, auto_capture=False
        )

    assert start()
    assert not start()
    settle(engine, orchestrator, engine.now())

    assert steps_of(engine, "co-1") == [("create", "forward", "done")]


def test_steps_queued_behind_one_in_flight_leave_the_batch_to_other_sagas(
    engine: SettlementEngine,
) -> None:
    orchestrator = Orchestrator(engine.db, engine.service, engine.now, batch_size_max=1)
    now = engine.now()
    checkout(engine, orchestrator, "co-1", auto_capture=True)
    checkout(engine, orchestrator, "co-2", auto_capture=True)

    orchestrator.tick(now)
    orchestrator.tick(now)  # co-1's capture waits for its hold: co-2's hold goes next

    assert steps_of(engine, "co-1") == [
        ("create", "forward", "submitted"),
        ("capture", "forward", "pending"),
    ]
    assert steps_of(engine, "co-2")[0] == ("create", "forward", "submitted")
