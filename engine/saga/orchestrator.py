"""The saga orchestrator: persisted flows of payment commands with timers and compensations.

A saga is a row, its steps, its timers and the signals it received; every decision lands in
the database in the transaction that records what caused it, so a restarted orchestrator
carries on where a stopped one left off and a timer or a signal takes effect exactly once.

Steps run one at a time per saga, in order. A step is a payment command under a key derived
from (saga, step, attempt): a step run again after a crash returns the first outcome instead
of commanding twice. A step is done when the chain fact that completes its command is booked
(``payment_commands.status``), not when the command is accepted, so the next step is judged
against what the escrow holds.

Errors are told apart by type. ``CommandConflict`` (another command on its way) is worth
retrying after a backoff; every other typed error (the domain refuses, an unknown payment) is
permanent, and so is a forward step whose retries ran out or whose operation the chain refused:
the saga then compensates. A compensation is retried on any failure, at most
``compensation_attempts_max`` times, and then the saga waits for a person in ``manual_review``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from engine.domain.errors import DomainError
from engine.domain.events import Party
from engine.domain.ids import PaymentTerms
from engine.pipeline.commands import CommandConflict, CommandError, CommandOutcome
from engine.saga.errors import UnknownSaga
from engine.saga.flows import FLOWS
from engine.saga.plan import (
    Flow,
    Plan,
    RetryPolicy,
    SagaView,
    Step,
    StepAction,
    json_int,
    json_mapping,
)
from engine.store.db import Database
from engine.store.event_store import Json
from engine.store.saga_store import (
    ACTIVE_STATUSES,
    NewStep,
    SagaRecords,
    SagaRow,
    SagaStatus,
    SagaStore,
    StepRole,
    StepRow,
    StepStatus,
)

RETRYABLE: tuple[type[Exception], ...] = (CommandConflict,)
PERMANENT: tuple[type[Exception], ...] = (CommandError, DomainError)
# A step keeps this much of its last error's message: enough to read, bounded per row.
ERROR_CHARS_MAX: Final = 2000


class PaymentCommands(Protocol):
    """What a saga step may ask of the payment pipeline (``PaymentService``)."""

    def create(
        self, key: str, terms: PaymentTerms, amount: int, authorization: bytes
    ) -> CommandOutcome: ...

    def capture(self, key: str, payment_id: str, amount: int, fee_bps: int) -> CommandOutcome: ...

    def void(self, key: str, payment_id: str) -> CommandOutcome: ...

    def refund(self, key: str, payment_id: str, amount: int) -> CommandOutcome: ...

    def open_dispute(self, key: str, payment_id: str, amount: int) -> CommandOutcome: ...

    def resolve_dispute(self, key: str, payment_id: str, winner: Party) -> CommandOutcome: ...


@dataclass
class TickReport:
    timers_fired: int = 0
    steps_submitted: int = 0
    steps_retried: int = 0
    steps_done: int = 0
    steps_failed: int = 0
    observed: int = 0

    @property
    def idle(self) -> bool:
        return not (
            self.timers_fired
            or self.steps_submitted
            or self.steps_retried
            or self.steps_done
            or self.steps_failed
            or self.observed
        )


class Orchestrator:
    """Runs the sagas of one database against one payment pipeline.

    ``tick(now)`` does a bounded amount of due work (``batch_size_max`` rows of each kind) and
    may be called by several processes: timers are claimed by a conditional update, and a step
    submitted twice is the same idempotent command.
    """

    def __init__(
        self,
        db: Database,
        service: PaymentCommands,
        clock: Callable[[], int],
        flows: Mapping[str, Flow] = FLOWS,
        *,
        policy: RetryPolicy | None = None,
        batch_size_max: int = 100,
    ) -> None:
        self._store = SagaStore(db)
        self._service = service
        self._clock = clock
        self._flows = dict(flows)
        self.policy = policy or RetryPolicy()
        self._batch_size_max = batch_size_max

    # ── entry points ──────────────────────────────────────────────────────────────────

    def start(
        self, saga_id: str, flow: str, context: Mapping[str, Json], now: int | None = None
    ) -> bool:
        """Start ``flow`` as ``saga_id``; starting an existing saga again changes nothing."""
        at = self._clock() if now is None else now
        with self._store.transaction() as records:
            if records.saga(saga_id) is not None:
                return False
            records.insert_saga(saga_id, flow, context, at)
            row = records.saga(saga_id)
            assert row is not None
            self._apply(records, row, self._flows[flow].start(_view(records, row)), at)
        return True

    def signal(
        self,
        saga_id: str,
        signal_id: str,
        name: str,
        data: Mapping[str, Json],
        now: int | None = None,
    ) -> bool:
        """Deliver an outside event once: the same ``signal_id`` again is a no-op (False).

        A completed saga is reopened by a signal (a chargeback after the capture)."""
        at = self._clock() if now is None else now
        with self._store.transaction() as records:
            row = records.saga(saga_id, lock=True)
            if row is None:
                raise UnknownSaga(saga_id)
            if not records.record_signal(signal_id, saga_id, name, data, at):
                return False
            if row.status in (SagaStatus.COMPENSATED, SagaStatus.MANUAL_REVIEW):
                return True  # recorded for whoever reviews it; the flow is over
            if row.status == SagaStatus.COMPLETED:
                records.set_status(saga_id, SagaStatus.RUNNING, at)
                row = records.saga(saga_id)
                assert row is not None
            plan = self._flows[row.flow].on_signal(_view(records, row), name, data)
            self._apply(records, row, plan, at)
        return True

    def tick(self, now: int | None = None) -> TickReport:
        """Run what is due at ``now``: timers, then steps, then what the chain changed."""
        at = self._clock() if now is None else now
        report = TickReport()
        if not self._store.anything_due(at):
            return report
        self._fire_timers(at, report)
        self._finish_submitted(at, report)
        self._run_pending(at, report)
        self._observe(at, report)
        return report

    def status(self, saga_id: str) -> tuple[SagaStatus, str | None]:
        with self._store.snapshot() as records:
            row = records.saga(saga_id)
        if row is None:
            raise UnknownSaga(saga_id)
        return row.status, row.outcome

    # ── the four kinds of due work ────────────────────────────────────────────────────

    def _fire_timers(self, at: int, report: TickReport) -> None:
        for saga_id, name in self._store.due_timers(at, self._batch_size_max):
            with self._store.transaction() as records:
                if not records.claim_timer(saga_id, name):
                    continue  # another orchestrator fired it
                row = records.saga(saga_id, lock=True)
                assert row is not None
                report.timers_fired += 1
                if row.status == SagaStatus.RUNNING:
                    plan = self._flows[row.flow].on_timer(_view(records, row), name)
                    self._apply(records, row, plan, at)

    def _finish_submitted(self, at: int, report: TickReport) -> None:
        for settled in self._store.settled_steps(self._batch_size_max):
            with self._store.transaction() as records:
                row = records.saga(settled.saga_id, lock=True)
                step = records.step(settled.saga_id, settled.seq)
                assert row is not None and step is not None
                if step.status != StepStatus.SUBMITTED:
                    continue
                if row.status not in ACTIVE_STATUSES:
                    # The saga ended while this command was on its way: record, decide nothing.
                    final = StepStatus.DONE if settled.applied else StepStatus.FAILED
                    records.update_step(
                        step.saga_id, step.seq, at, status=final, error=settled.error
                    )
                    continue
                if settled.applied:
                    report.steps_done += 1
                    self._step_done(records, row, step, at)
                else:
                    report.steps_failed += 1
                    self._step_failed(records, row, step, "chain_failed", settled.error or "", at)

    def _run_pending(self, at: int, report: TickReport) -> None:
        for saga_id, seq in self._store.due_steps(at, self._batch_size_max):
            with self._store.snapshot() as records:
                step = records.step(saga_id, seq)
                row = records.saga(saga_id)
                head = records.head_seq(saga_id)
            if step is None or row is None or step.status != StepStatus.PENDING or head != seq:
                continue  # an earlier step of the saga is still open, or the step moved on
            key = f"saga:{saga_id}:{seq}:{step.attempts}"
            try:
                outcome = self._command(key, row.payment_id, step)
            except RETRYABLE as error:
                report.steps_retried += 1
                self._record_failure(saga_id, seq, error, at, retryable=True, report=report)
                continue
            except PERMANENT as error:
                self._record_failure(saga_id, seq, error, at, retryable=False, report=report)
                continue
            with self._store.transaction() as records:
                current = records.step(saga_id, seq)
                if current is None or current.status != StepStatus.PENDING:
                    continue
                records.update_step(saga_id, seq, at, status=StepStatus.SUBMITTED, command_key=key)
                if row.payment_id is None:
                    records.set_payment(saga_id, outcome.payment_id, at)
                report.steps_submitted += 1

    def _observe(self, at: int, report: TickReport) -> None:
        for saga_id in self._store.changed_sagas(self._batch_size_max):
            with self._store.transaction() as records:
                row = records.saga(saga_id, lock=True)
                assert row is not None
                found = None if row.payment_id is None else records.payment(row.payment_id)
                if row.status != SagaStatus.RUNNING or found is None:
                    continue
                records.set_observed_version(saga_id, found.version, at)
                report.observed += 1
                view = SagaView(row.id, row.context, found.payment)
                self._apply(records, row, self._flows[row.flow].on_payment(view), at)

    # ── outcomes ──────────────────────────────────────────────────────────────────────

    def _command(self, key: str, payment_id: str | None, step: StepRow) -> CommandOutcome:
        args = step.args
        action = StepAction(step.action)
        if action == StepAction.CREATE:
            authorization = bytes.fromhex(str(args["authorization"]).removeprefix("0x"))
            terms = PaymentTerms.from_dict(json_mapping(args["terms"]))
            return self._service.create(key, terms, json_int(args["amount"]), authorization)
        assert payment_id is not None, "a saga's first step creates its payment"
        if action == StepAction.CAPTURE:
            amount, fee_bps = json_int(args["amount"]), json_int(args["fee_bps"])
            return self._service.capture(key, payment_id, amount, fee_bps)
        if action == StepAction.VOID:
            return self._service.void(key, payment_id)
        if action == StepAction.REFUND:
            return self._service.refund(key, payment_id, json_int(args["amount"]))
        if action == StepAction.OPEN_DISPUTE:
            return self._service.open_dispute(key, payment_id, json_int(args["amount"]))
        assert action == StepAction.RESOLVE_DISPUTE, action
        return self._service.resolve_dispute(key, payment_id, Party(str(args["winner"])))

    def _record_failure(
        self,
        saga_id: str,
        seq: int,
        error: Exception,
        at: int,
        *,
        retryable: bool,
        report: TickReport,
    ) -> None:
        code = str(getattr(error, "code", type(error).__name__))
        with self._store.transaction() as records:
            row = records.saga(saga_id, lock=True)
            step = records.step(saga_id, seq)
            assert row is not None and step is not None
            if step.status != StepStatus.PENDING:
                return
            attempts = step.attempts + 1
            if retryable and attempts < self.policy.attempts_max and step.role == StepRole.FORWARD:
                records.update_step(
                    saga_id,
                    seq,
                    at,
                    status=StepStatus.PENDING,
                    attempts=attempts,
                    due_at=at + self.policy.backoff_s(attempts),
                    error_code=code,
                    error=str(error)[:ERROR_CHARS_MAX],
                )
                return
            report.steps_failed += 1
            self._step_failed(records, row, step, code, str(error), at)

    def _step_done(self, records: SagaRecords, row: SagaRow, step: StepRow, at: int) -> None:
        records.update_step(step.saga_id, step.seq, at, status=StepStatus.DONE)
        if step.role == StepRole.COMPENSATION:
            if records.head_seq(row.id) is None:
                records.set_status(row.id, SagaStatus.COMPENSATED, at)
            return
        done = Step(StepAction(step.action), step.args)
        plan = self._flows[row.flow].on_step_done(_view(records, row), done)
        self._apply(records, row, plan, at)

    def _step_failed(
        self, records: SagaRecords, row: SagaRow, step: StepRow, code: str, error: str, at: int
    ) -> None:
        attempts = step.attempts + 1
        error = error[:ERROR_CHARS_MAX]
        compensation = step.role == StepRole.COMPENSATION
        if compensation and attempts < self.policy.compensation_attempts_max:
            # Retried under a new command key: the chain may have refused the last one.
            due_at = at + self.policy.backoff_s(attempts)
            records.update_step(
                step.saga_id,
                step.seq,
                at,
                status=StepStatus.PENDING,
                attempts=attempts,
                due_at=due_at,
                error_code=code,
                error=error,
            )
            return
        records.update_step(
            step.saga_id,
            step.seq,
            at,
            status=StepStatus.FAILED,
            attempts=attempts,
            error_code=code,
            error=error,
        )
        records.close_open_work(row.id, at)
        if compensation:
            # A compensation that keeps failing is past what code can settle.
            records.set_status(row.id, SagaStatus.MANUAL_REVIEW, at)
            return
        records.set_status(row.id, SagaStatus.COMPENSATING, at)
        refreshed = records.saga(row.id)
        assert refreshed is not None
        failed = Step(StepAction(step.action), step.args)
        plan = self._flows[row.flow].compensate(_view(records, refreshed), failed)
        _append(records, row.id, plan.steps, StepRole.COMPENSATION, at)
        if not plan.steps:
            records.set_status(row.id, SagaStatus.COMPENSATED, at)

    def _apply(self, records: SagaRecords, row: SagaRow, plan: Plan, at: int) -> None:
        if plan.context is not None:
            records.set_context(row.id, plan.context, at)
        if plan.cancel_timers:
            records.cancel_timers(row.id)
        for name, due_at in plan.timers.items():
            records.set_timer(row.id, name, due_at)
        _append(records, row.id, plan.steps, StepRole.FORWARD, at)
        if plan.finish is not None:
            records.close_open_work(row.id, at)
            records.set_status(row.id, SagaStatus.COMPLETED, at, outcome=plan.finish)


def _view(records: SagaRecords, row: SagaRow) -> SagaView:
    found = None if row.payment_id is None else records.payment(row.payment_id)
    return SagaView(row.id, row.context, None if found is None else found.payment)


def _append(
    records: SagaRecords, saga_id: str, steps: Sequence[Step], role: StepRole, at: int
) -> None:
    records.append_steps(saga_id, [NewStep(step.action, step.args) for step in steps], role, at)
