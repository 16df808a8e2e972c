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

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Connection, Row, and_, func, insert, or_, select, update

from engine.domain.errors import DomainError
from engine.domain.events import Party
from engine.domain.ids import PaymentTerms
from engine.domain.payment import Payment
from engine.pipeline.commands import CommandConflict, CommandError, CommandOutcome
from engine.store.db import Database
from engine.store.event_store import Json, canonical_json
from engine.store.projections import load
from engine.store.schema import payment_commands, payments, saga_signals, saga_steps, saga_timers
from engine.store.schema import sagas as saga_table

ACTIVE = ("running", "compensating")
_OPEN_STEP = ("pending", "submitted")
RETRYABLE: tuple[type[Exception], ...] = (CommandConflict,)
PERMANENT: tuple[type[Exception], ...] = (CommandError, DomainError)


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


@dataclass(frozen=True, slots=True)
class Step:
    """One payment command a flow asks for: ``action`` is create, capture, void, refund,
    open_dispute or resolve_dispute."""

    action: str
    args: Mapping[str, Json] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plan:
    """A flow's answer to what happened: steps to append, timers to set, the context to keep,
    and ``finish`` (the saga's outcome) once nothing is left to do."""

    steps: Sequence[Step] = ()
    timers: Mapping[str, int] = field(default_factory=dict)
    cancel_timers: bool = False
    context: Mapping[str, Json] | None = None
    finish: str | None = None

    def __post_init__(self) -> None:
        assert not (self.steps and self.finish), "a finished saga runs no more steps"


@dataclass(frozen=True, slots=True)
class SagaView:
    """What a flow sees of its saga when it decides."""

    id: str
    context: Mapping[str, Json]
    payment: Payment | None


class Flow(Protocol):
    name: str

    def start(self, saga: SagaView) -> Plan: ...

    def on_step_done(self, saga: SagaView, step: Step) -> Plan: ...

    def on_signal(self, saga: SagaView, name: str, data: Mapping[str, Json]) -> Plan: ...

    def on_timer(self, saga: SagaView, name: str) -> Plan: ...

    def on_payment(self, saga: SagaView) -> Plan: ...

    def compensate(self, saga: SagaView, failed: Step) -> Plan: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts_max: int = 5
    backoff_base_s: int = 2
    backoff_max_s: int = 300
    compensation_attempts_max: int = 3

    def backoff_s(self, attempts: int) -> int:
        return int(min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, attempts - 1)))


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


class UnknownSaga(LookupError):
    code = "unknown_saga"


class SignalRejected(Exception):
    """The flow cannot take this signal now (a capture before the authorization): nothing is
    recorded, so the sender's own retry delivers it again later."""

    code = "signal_rejected"


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
        flows: Mapping[str, Flow] | None = None,
        *,
        policy: RetryPolicy | None = None,
        batch_size_max: int = 100,
    ) -> None:
        if flows is None:
            # Deferred: the flows are written against this module's Plan and Step.
            from engine.saga.flows import FLOWS

            flows = FLOWS
        self._db = db
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
        with self._db.transaction() as conn:
            if _saga(conn, saga_id) is not None:
                return False
            conn.execute(
                insert(saga_table).values(
                    id=saga_id,
                    flow=flow,
                    status="running",
                    outcome=None,
                    payment_id=None,
                    context=canonical_json(dict(context)),
                    observed_version=0,
                    created_at=at,
                    updated_at=at,
                )
            )
            row = _saga(conn, saga_id)
            assert row is not None
            view = _view(conn, row)
            self._apply(conn, row, self._flows[flow].start(view), at)
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
        with self._db.transaction() as conn:
            row = _saga(conn, saga_id, lock=True)
            if row is None:
                raise UnknownSaga(saga_id)
            seen = conn.execute(
                select(saga_signals.c.signal_id).where(saga_signals.c.signal_id == signal_id)
            ).first()
            if seen is not None:
                return False
            conn.execute(
                insert(saga_signals).values(
                    signal_id=signal_id,
                    saga_id=saga_id,
                    name=name,
                    data=canonical_json(dict(data)),
                    received_at=at,
                )
            )
            if row.status in ("compensated", "manual_review"):
                return True  # recorded for whoever reviews it; the flow is over
            if row.status == "completed":
                _set_saga(conn, saga_id, at, status="running", outcome=None)
                row = _saga(conn, saga_id)
                assert row is not None
            plan = self._flows[row.flow].on_signal(_view(conn, row), name, data)
            self._apply(conn, row, plan, at)
        return True

    def tick(self, now: int | None = None) -> TickReport:
        """Run what is due at ``now``: timers, then steps, then what the chain changed."""
        at = self._clock() if now is None else now
        report = TickReport()
        if not self._anything_due(at):
            return report
        self._fire_timers(at, report)
        self._finish_submitted(at, report)
        self._run_pending(at, report)
        self._observe(at, report)
        return report

    def status(self, saga_id: str) -> tuple[str, str | None]:
        with self._db.snapshot() as conn:
            row = _saga(conn, saga_id)
        if row is None:
            raise UnknownSaga(saga_id)
        return str(row.status), row.outcome

    # ── the four kinds of due work ────────────────────────────────────────────────────

    def _anything_due(self, at: int) -> bool:
        """Whether any of the four kinds of work below may be due: one look instead of four
        for the engine loop, which ticks every step whether sagas run or not."""
        t, s, c = saga_timers.c, saga_steps.c, payment_commands.c
        g, p = saga_table.c, payments.c
        due = or_(
            select(t.saga_id).where(t.status == "pending", t.due_at <= at).exists(),
            select(s.saga_id)
            .join(payment_commands, c.idempotency_key == s.command_key)
            .where(s.status == "submitted", c.status != "accepted")
            .exists(),
            select(s.saga_id).where(s.status == "pending", s.due_at <= at).exists(),
            select(g.id)
            .join(payments, p.id == g.payment_id)
            .where(g.status == "running", p.version > g.observed_version)
            .exists(),
        )
        with self._db.snapshot() as conn:
            return bool(conn.execute(select(due)).scalar())

    def _fire_timers(self, at: int, report: TickReport) -> None:
        t = saga_timers.c
        with self._db.snapshot() as conn:
            due = conn.execute(
                select(t.saga_id, t.name)
                .where(t.status == "pending", t.due_at <= at)
                .order_by(t.due_at)
                .limit(self._batch_size_max)
            ).all()
        for saga_id, name in due:
            with self._db.transaction() as conn:
                claimed = conn.execute(
                    update(saga_timers)
                    .where(t.saga_id == saga_id, t.name == name, t.status == "pending")
                    .values(status="fired")
                ).rowcount
                if claimed != 1:
                    continue  # another orchestrator fired it
                row = _saga(conn, saga_id, lock=True)
                assert row is not None
                report.timers_fired += 1
                if row.status == "running":
                    plan = self._flows[row.flow].on_timer(_view(conn, row), name)
                    self._apply(conn, row, plan, at)

    def _finish_submitted(self, at: int, report: TickReport) -> None:
        s, c = saga_steps.c, payment_commands.c
        with self._db.snapshot() as conn:
            settled = conn.execute(
                select(s.saga_id, s.seq, c.status, c.error)
                .join(payment_commands, c.idempotency_key == s.command_key)
                .where(s.status == "submitted", c.status != "accepted")
                .limit(self._batch_size_max)
            ).all()
        for saga_id, seq, command_status, error in settled:
            with self._db.transaction() as conn:
                row = _saga(conn, saga_id, lock=True)
                step = _step(conn, saga_id, seq)
                assert row is not None and step is not None
                if step.status != "submitted":
                    continue
                if row.status not in ACTIVE:
                    # The saga ended while this command was on its way: record, decide nothing.
                    final = "done" if command_status == "applied" else "failed"
                    _set_step(conn, step, at, status=final, error=error)
                    continue
                if command_status == "applied":
                    report.steps_done += 1
                    self._step_done(conn, row, step, at)
                else:
                    report.steps_failed += 1
                    self._step_failed(conn, row, step, "chain_failed", error or "", at)

    def _run_pending(self, at: int, report: TickReport) -> None:
        s = saga_steps.c
        earlier = saga_steps.alias("earlier")
        # Only each saga's first open step: steps queued behind one in flight must not fill
        # the batch and starve other sagas.
        blocked = (
            select(earlier.c.seq)
            .where(
                earlier.c.saga_id == s.saga_id,
                earlier.c.seq < s.seq,
                earlier.c.status.in_(_OPEN_STEP),
            )
            .exists()
        )
        with self._db.snapshot() as conn:
            due = conn.execute(
                select(s.saga_id, s.seq)
                .where(s.status == "pending", s.due_at <= at, ~blocked)
                .order_by(s.due_at, s.saga_id, s.seq)
                .limit(self._batch_size_max)
            ).all()
        for saga_id, seq in due:
            with self._db.snapshot() as conn:
                step = _step(conn, saga_id, seq)
                row = _saga(conn, saga_id)
                head = _head_seq(conn, saga_id)
            if step is None or row is None or step.status != "pending" or head != seq:
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
            with self._db.transaction() as conn:
                current = _step(conn, saga_id, seq)
                if current is None or current.status != "pending":
                    continue
                conn.execute(
                    update(saga_steps)
                    .where(s.saga_id == saga_id, s.seq == seq)
                    .values(status="submitted", command_key=key, updated_at=at)
                )
                if row.payment_id is None:
                    _set_saga(conn, saga_id, at, payment_id=outcome.payment_id)
                report.steps_submitted += 1

    def _observe(self, at: int, report: TickReport) -> None:
        g, p = saga_table.c, payments.c
        with self._db.snapshot() as conn:
            changed = conn.execute(
                select(g.id)
                .join(payments, p.id == g.payment_id)
                .where(g.status == "running", p.version > g.observed_version)
                .limit(self._batch_size_max)
            ).all()
        for (saga_id,) in changed:
            with self._db.transaction() as conn:
                row = _saga(conn, saga_id, lock=True)
                assert row is not None
                view = _view(conn, row)
                if row.status != "running" or view.payment is None:
                    continue
                version = conn.execute(select(p.version).where(p.id == row.payment_id)).scalar_one()
                _set_saga(conn, saga_id, at, observed_version=version)
                report.observed += 1
                self._apply(conn, row, self._flows[row.flow].on_payment(view), at)

    # ── outcomes ──────────────────────────────────────────────────────────────────────

    def _command(self, key: str, payment_id: str | None, step: Row[Any]) -> CommandOutcome:
        args = json.loads(step.args)
        if step.action == "create":
            authorization = bytes.fromhex(str(args["authorization"]).removeprefix("0x"))
            terms = PaymentTerms.from_dict(args["terms"])
            return self._service.create(key, terms, int(args["amount"]), authorization)
        assert payment_id is not None, "a saga's first step creates its payment"
        if step.action == "capture":
            return self._service.capture(key, payment_id, int(args["amount"]), int(args["fee_bps"]))
        if step.action == "void":
            return self._service.void(key, payment_id)
        if step.action == "refund":
            return self._service.refund(key, payment_id, int(args["amount"]))
        if step.action == "open_dispute":
            return self._service.open_dispute(key, payment_id, int(args["amount"]))
        if step.action == "resolve_dispute":
            return self._service.resolve_dispute(key, payment_id, Party(args["winner"]))
        raise ValueError(f"unknown saga step action {step.action!r}")

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
        with self._db.transaction() as conn:
            row = _saga(conn, saga_id, lock=True)
            step = _step(conn, saga_id, seq)
            assert row is not None and step is not None
            if step.status != "pending":
                return
            attempts = step.attempts + 1
            if retryable and attempts < self.policy.attempts_max and step.role == "forward":
                _set_step(
                    conn,
                    step,
                    at,
                    attempts=attempts,
                    due_at=at + self.policy.backoff_s(attempts),
                    error_code=code,
                    error=str(error)[:2000],
                )
                return
            report.steps_failed += 1
            self._step_failed(conn, row, step, code, str(error), at)

    def _step_done(self, conn: Connection, row: Row[Any], step: Row[Any], at: int) -> None:
        _set_step(conn, step, at, status="done")
        if step.role == "compensation":
            if _head_seq(conn, row.id) is None:
                _set_saga(conn, row.id, at, status="compensated")
            return
        done = Step(step.action, json.loads(step.args))
        self._apply(conn, row, self._flows[row.flow].on_step_done(_view(conn, row), done), at)

    def _step_failed(
        self, conn: Connection, row: Row[Any], step: Row[Any], code: str, error: str, at: int
    ) -> None:
        attempts = step.attempts + 1
        failure = {"error_code": code, "error": error[:2000], "attempts": attempts}
        if step.role == "compensation":
            if attempts >= self.policy.compensation_attempts_max:
                _set_step(conn, step, at, status="failed", **failure)
                _close_open_work(conn, row.id, at)
                _set_saga(conn, row.id, at, status="manual_review")
            else:
                # Retried under a new command key: the chain may have refused the last one.
                backoff = self.policy.backoff_s(attempts)
                _set_step(conn, step, at, status="pending", due_at=at + backoff, **failure)
            return
        _set_step(conn, step, at, status="failed", **failure)
        _close_open_work(conn, row.id, at)
        _set_saga(conn, row.id, at, status="compensating")
        refreshed = _saga(conn, row.id)
        assert refreshed is not None
        failed = Step(step.action, json.loads(step.args))
        plan = self._flows[row.flow].compensate(_view(conn, refreshed), failed)
        self._append_steps(conn, row.id, plan.steps, "compensation", at)
        if not plan.steps:
            _set_saga(conn, row.id, at, status="compensated")

    def _apply(self, conn: Connection, row: Row[Any], plan: Plan, at: int) -> None:
        if plan.context is not None:
            _set_saga(conn, row.id, at, context=canonical_json(dict(plan.context)))
        if plan.cancel_timers:
            _cancel_timers(conn, row.id)
        for name, due_at in plan.timers.items():
            _set_timer(conn, row.id, name, due_at)
        self._append_steps(conn, row.id, plan.steps, "forward", at)
        if plan.finish is not None:
            _close_open_work(conn, row.id, at)
            _set_saga(conn, row.id, at, status="completed", outcome=plan.finish)

    def _append_steps(
        self, conn: Connection, saga_id: str, steps: Sequence[Step], role: str, at: int
    ) -> None:
        s = saga_steps.c
        last = conn.execute(select(func.max(s.seq)).where(s.saga_id == saga_id)).scalar_one()
        for seq, step in enumerate(steps, start=(last or 0) + 1):
            conn.execute(
                insert(saga_steps).values(
                    saga_id=saga_id,
                    seq=seq,
                    action=step.action,
                    args=canonical_json(dict(step.args)),
                    role=role,
                    status="pending",
                    attempts=0,
                    due_at=at,
                    command_key=None,
                    error_code=None,
                    error=None,
                    updated_at=at,
                )
            )


# ── rows ──────────────────────────────────────────────────────────────────────────────


def _saga(conn: Connection, saga_id: str, *, lock: bool = False) -> Row[Any] | None:
    query = select(saga_table).where(saga_table.c.id == saga_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return conn.execute(query).one_or_none()


def _view(conn: Connection, row: Row[Any]) -> SagaView:
    found = None if row.payment_id is None else load(conn, row.payment_id)
    return SagaView(row.id, json.loads(row.context), None if found is None else found.payment)


def _step(conn: Connection, saga_id: str, seq: int) -> Row[Any] | None:
    s = saga_steps.c
    return conn.execute(select(saga_steps).where(s.saga_id == saga_id, s.seq == seq)).one_or_none()


def _head_seq(conn: Connection, saga_id: str) -> int | None:
    s = saga_steps.c
    head = conn.execute(
        select(func.min(s.seq)).where(s.saga_id == saga_id, s.status.in_(_OPEN_STEP))
    ).scalar_one()
    return None if head is None else int(head)


def _set_saga(conn: Connection, saga_id: str, at: int, **values: object) -> None:
    conn.execute(
        update(saga_table).where(saga_table.c.id == saga_id).values(updated_at=at, **values)
    )


def _set_step(conn: Connection, step: Row[Any], at: int, **values: object) -> None:
    s = saga_steps.c
    conn.execute(
        update(saga_steps)
        .where(s.saga_id == step.saga_id, s.seq == step.seq)
        .values(updated_at=at, **values)
    )


def _set_timer(conn: Connection, saga_id: str, name: str, due_at: int) -> None:
    """Set a timer once: a timer already set, fired or canceled under ``name`` stays as it is,
    so a flow asking again (a webhook redelivered) cannot make it fire twice."""
    t = saga_timers.c
    exists = conn.execute(select(t.status).where(t.saga_id == saga_id, t.name == name)).first()
    if exists is None:
        conn.execute(
            insert(saga_timers).values(saga_id=saga_id, name=name, due_at=due_at, status="pending")
        )


def _cancel_timers(conn: Connection, saga_id: str) -> None:
    t = saga_timers.c
    conn.execute(
        update(saga_timers)
        .where(and_(t.saga_id == saga_id, t.status == "pending"))
        .values(status="canceled")
    )


def _close_open_work(conn: Connection, saga_id: str, at: int) -> None:
    """Cancel the steps not yet sent and the timers of a saga whose plan went wrong."""
    s = saga_steps.c
    conn.execute(
        update(saga_steps)
        .where(s.saga_id == saga_id, s.status == "pending")
        .values(status="canceled", updated_at=at)
    )
    _cancel_timers(conn, saga_id)
