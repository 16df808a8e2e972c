"""The saga orchestrator's SQL: sagas, their steps, timers and received signals.

The orchestrator (engine/saga/orchestrator.py) decides; this module only reads and writes, so
the orchestration reads as decisions and every query on these tables sits in one place. Each
write happens in a transaction the orchestrator opens (``SagaStore.transaction()``), because a
decision must land together with what caused it: a signal with the steps it plans, a claimed
timer with the flow's answer to it.

Statuses are enums checked against the schema's CHECK constraints at import, as the ledger's
account kinds are: a status the schema does not know fails here, not half-way through a write.
The orchestrator also reads two tables other rooms own, ``payment_commands`` (has the chain
settled a step's command?) and ``payments`` (did the payment move since the flow last looked?);
those reads are here too, so that SQL stays in the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from sqlalchemy import Connection, Row, Select, and_, func, insert, or_, select, update

from engine.store.db import Database
from engine.store.event_store import Json, canonical_json
from engine.store.projections import ProjectedPayment, load
from engine.store.schema import (
    COMMAND_STATUSES,
    SAGA_STATUSES,
    SAGA_STEP_ROLES,
    SAGA_STEP_STATUSES,
    SAGA_TIMER_STATUSES,
    payment_commands,
    payments,
    saga_signals,
    saga_steps,
    saga_timers,
    sagas,
)


class SagaStatus(StrEnum):
    """running: the flow decides what happens next. compensating: a forward step failed and
    the compensations run. The last three are where a saga rests; a signal reopens only a
    completed one (a chargeback after the capture)."""

    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    MANUAL_REVIEW = "manual_review"


class StepStatus(StrEnum):
    """pending: waits for its turn and due time. submitted: its command was accepted and waits
    for the chain. done, failed, canceled: final."""

    PENDING = "pending"
    SUBMITTED = "submitted"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"


class StepRole(StrEnum):
    FORWARD = "forward"
    COMPENSATION = "compensation"


class TimerStatus(StrEnum):
    PENDING = "pending"
    FIRED = "fired"
    CANCELED = "canceled"


ACTIVE_STATUSES: Final = frozenset({SagaStatus.RUNNING, SagaStatus.COMPENSATING})
OPEN_STEP_STATUSES: Final = (StepStatus.PENDING, StepStatus.SUBMITTED)

for _enum, _allowed in (
    (SagaStatus, SAGA_STATUSES),
    (StepStatus, SAGA_STEP_STATUSES),
    (StepRole, SAGA_STEP_ROLES),
    (TimerStatus, SAGA_TIMER_STATUSES),
):
    if tuple(_enum) != _allowed:
        raise AssertionError(f"{_enum.__name__} and the schema's allowed values disagree")

# payment_commands.status as the command service writes it: "accepted" until the chain's
# answer is booked, then "applied" or "failed".
_COMMAND_ACCEPTED: Final = "accepted"
_COMMAND_APPLIED: Final = "applied"
if not {_COMMAND_ACCEPTED, _COMMAND_APPLIED} <= set(COMMAND_STATUSES):
    raise AssertionError("payment command statuses changed under the saga store")


@dataclass(frozen=True, slots=True)
class SagaRow:
    id: str
    flow: str
    status: SagaStatus
    outcome: str | None
    payment_id: str | None
    context: dict[str, Json]
    observed_version: int


@dataclass(frozen=True, slots=True)
class StepRow:
    saga_id: str
    seq: int
    action: str
    args: dict[str, Json]
    role: StepRole
    status: StepStatus
    attempts: int
    due_at: int
    command_key: str | None
    error_code: str | None
    error: str | None


@dataclass(frozen=True, slots=True)
class NewStep:
    """A step to append: the payment command ``action`` with its JSON ``args``."""

    action: str
    args: Mapping[str, Json]


@dataclass(frozen=True, slots=True)
class SettledStep:
    """A submitted step whose command the pipeline has finished: ``applied`` or not, with the
    command's error when it failed."""

    saga_id: str
    seq: int
    applied: bool
    error: str | None


class SagaRecords:
    """The saga tables inside one SQL transaction; every method reads or writes through it."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    # ── sagas ─────────────────────────────────────────────────────────────────────────

    def saga(self, saga_id: str, *, lock: bool = False) -> SagaRow | None:
        """The saga, with ``lock`` held against other orchestrators until the transaction ends
        (``FOR UPDATE`` on PostgreSQL; SQLite has one writer at a time and renders none)."""
        query = select(sagas).where(sagas.c.id == saga_id)
        row = self._conn.execute(query.with_for_update() if lock else query).one_or_none()
        return None if row is None else _saga_row(row)

    def insert_saga(self, saga_id: str, flow: str, context: Mapping[str, Json], at: int) -> None:
        self._conn.execute(
            insert(sagas).values(
                id=saga_id,
                flow=flow,
                status=SagaStatus.RUNNING,
                outcome=None,
                payment_id=None,
                context=canonical_json(dict(context)),
                observed_version=0,
                created_at=at,
                updated_at=at,
            )
        )

    def set_status(
        self, saga_id: str, status: SagaStatus, at: int, *, outcome: str | None = None
    ) -> None:
        """Move the saga to ``status``; only a completed saga has an ``outcome``."""
        status = SagaStatus(status)
        assert (status == SagaStatus.COMPLETED) == (outcome is not None), (status, outcome)
        self._set_saga(saga_id, at, status=status, outcome=outcome)

    def set_context(self, saga_id: str, context: Mapping[str, Json], at: int) -> None:
        self._set_saga(saga_id, at, context=canonical_json(dict(context)))

    def set_payment(self, saga_id: str, payment_id: str, at: int) -> None:
        self._set_saga(saga_id, at, payment_id=payment_id)

    def set_observed_version(self, saga_id: str, version: int, at: int) -> None:
        self._set_saga(saga_id, at, observed_version=version)

    def payment(self, payment_id: str) -> ProjectedPayment | None:
        return load(self._conn, payment_id)

    def _set_saga(self, saga_id: str, at: int, **values: object) -> None:
        self._conn.execute(
            update(sagas).where(sagas.c.id == saga_id).values(updated_at=at, **values)
        )

    # ── signals ───────────────────────────────────────────────────────────────────────

    def record_signal(
        self, signal_id: str, saga_id: str, name: str, data: Mapping[str, Json], at: int
    ) -> bool:
        """Record a signal once: False when ``signal_id`` was received before."""
        seen = self._conn.execute(
            select(saga_signals.c.signal_id).where(saga_signals.c.signal_id == signal_id)
        ).first()
        if seen is not None:
            return False
        self._conn.execute(
            insert(saga_signals).values(
                signal_id=signal_id,
                saga_id=saga_id,
                name=name,
                data=canonical_json(dict(data)),
                received_at=at,
            )
        )
        return True

    # ── steps ─────────────────────────────────────────────────────────────────────────

    def step(self, saga_id: str, seq: int) -> StepRow | None:
        s = saga_steps.c
        row = self._conn.execute(
            select(saga_steps).where(s.saga_id == saga_id, s.seq == seq)
        ).one_or_none()
        return None if row is None else _step_row(row)

    def head_seq(self, saga_id: str) -> int | None:
        """The saga's first open step: the only one that may run (steps run in order)."""
        s = saga_steps.c
        head = self._conn.execute(
            select(func.min(s.seq)).where(s.saga_id == saga_id, s.status.in_(OPEN_STEP_STATUSES))
        ).scalar_one()
        return None if head is None else int(head)

    def append_steps(self, saga_id: str, steps: Sequence[NewStep], role: StepRole, at: int) -> None:
        """Append ``steps`` after the saga's last one, pending and due at ``at``."""
        role = StepRole(role)
        s = saga_steps.c
        last = self._conn.execute(select(func.max(s.seq)).where(s.saga_id == saga_id)).scalar_one()
        for seq, step in enumerate(steps, start=(last or 0) + 1):
            self._conn.execute(
                insert(saga_steps).values(
                    saga_id=saga_id,
                    seq=seq,
                    action=step.action,
                    args=canonical_json(dict(step.args)),
                    role=role,
                    status=StepStatus.PENDING,
                    attempts=0,
                    due_at=at,
                    command_key=None,
                    error_code=None,
                    error=None,
                    updated_at=at,
                )
            )

    def update_step(
        self,
        saga_id: str,
        seq: int,
        at: int,
        *,
        status: StepStatus,
        attempts: int | None = None,
        due_at: int | None = None,
        command_key: str | None = None,
        error_code: str | None = None,
        error: str | None = None,
    ) -> None:
        """Set the step's ``status``, and each other field given (None leaves it as it is:
        a step never loses its command key or its last error)."""
        changes: dict[str, object] = {"status": StepStatus(status), "updated_at": at}
        optional = {
            "attempts": attempts,
            "due_at": due_at,
            "command_key": command_key,
            "error_code": error_code,
            "error": error,
        }
        changes.update({name: value for name, value in optional.items() if value is not None})
        s = saga_steps.c
        self._conn.execute(
            update(saga_steps).where(s.saga_id == saga_id, s.seq == seq).values(**changes)
        )

    def close_open_work(self, saga_id: str, at: int) -> None:
        """Cancel the steps not yet sent and the timers of a saga whose plan went wrong."""
        s = saga_steps.c
        self._conn.execute(
            update(saga_steps)
            .where(s.saga_id == saga_id, s.status == StepStatus.PENDING)
            .values(status=StepStatus.CANCELED, updated_at=at)
        )
        self.cancel_timers(saga_id)

    # ── timers ────────────────────────────────────────────────────────────────────────

    def set_timer(self, saga_id: str, name: str, due_at: int) -> None:
        """Set a timer once: a timer already set, fired or canceled under ``name`` stays as it
        is, so a flow asking again (a webhook redelivered) cannot make it fire twice."""
        t = saga_timers.c
        exists = self._conn.execute(
            select(t.status).where(t.saga_id == saga_id, t.name == name)
        ).first()
        if exists is None:
            self._conn.execute(
                insert(saga_timers).values(
                    saga_id=saga_id, name=name, due_at=due_at, status=TimerStatus.PENDING
                )
            )

    def claim_timer(self, saga_id: str, name: str) -> bool:
        """Fire a pending timer: False when another orchestrator fired or canceled it first."""
        t = saga_timers.c
        claimed = self._conn.execute(
            update(saga_timers)
            .where(t.saga_id == saga_id, t.name == name, t.status == TimerStatus.PENDING)
            .values(status=TimerStatus.FIRED)
        ).rowcount
        return claimed == 1

    def cancel_timers(self, saga_id: str) -> None:
        t = saga_timers.c
        self._conn.execute(
            update(saga_timers)
            .where(and_(t.saga_id == saga_id, t.status == TimerStatus.PENDING))
            .values(status=TimerStatus.CANCELED)
        )


class SagaStore:
    """The sagas of one database: transactions to decide in, and the look-ups for due work.

    Each look-up returns at most ``limit`` rows in a snapshot of its own; the orchestrator
    then takes each row in a transaction and checks it again, since another orchestrator may
    have moved it in between.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    @contextmanager
    def transaction(self) -> Iterator[SagaRecords]:
        with self._db.transaction() as conn:
            yield SagaRecords(conn)

    @contextmanager
    def snapshot(self) -> Iterator[SagaRecords]:
        """Read-only: a lock or a write in it fails on PostgreSQL."""
        with self._db.snapshot() as conn:
            yield SagaRecords(conn)

    def anything_due(self, at: int) -> bool:
        """Whether any of the four kinds of due work below may exist: one query instead of four
        for the engine loop, which ticks every round whether sagas run or not."""
        with self._db.snapshot() as conn:
            due = or_(
                _due_timers(at).exists(),
                _settled_steps().exists(),
                _due_steps(at).exists(),
                _changed_sagas().exists(),
            )
            return bool(conn.execute(select(due)).scalar())

    def due_timers(self, at: int, limit: int) -> list[tuple[str, str]]:
        """(saga id, timer name) of pending timers due at ``at``, the earliest first."""
        t = saga_timers.c
        with self._db.snapshot() as conn:
            rows = conn.execute(_due_timers(at).order_by(t.due_at).limit(limit)).all()
        return [(str(saga_id), str(name)) for saga_id, name in rows]

    def settled_steps(self, limit: int) -> list[SettledStep]:
        """Submitted steps whose command the pipeline has applied or failed."""
        c = payment_commands.c
        with self._db.snapshot() as conn:
            rows = conn.execute(_settled_steps().add_columns(c.status, c.error).limit(limit)).all()
        return [
            SettledStep(str(saga_id), int(seq), status == _COMMAND_APPLIED, error)
            for saga_id, seq, status, error in rows
        ]

    def due_steps(self, at: int, limit: int) -> list[tuple[str, int]]:
        """(saga id, seq) of pending steps due at ``at`` that head their saga."""
        s = saga_steps.c
        with self._db.snapshot() as conn:
            rows = conn.execute(
                _due_steps(at).order_by(s.due_at, s.saga_id, s.seq).limit(limit)
            ).all()
        return [(str(saga_id), int(seq)) for saga_id, seq in rows]

    def changed_sagas(self, limit: int) -> list[str]:
        """Running sagas whose payment moved past the version their flow last looked at."""
        with self._db.snapshot() as conn:
            rows = conn.execute(_changed_sagas().limit(limit)).all()
        return [str(saga_id) for (saga_id,) in rows]


# ── the queries for due work, shared by the look-ups and anything_due ─────────────────────


def _due_timers(at: int) -> Select[Any]:
    t = saga_timers.c
    return select(t.saga_id, t.name).where(t.status == TimerStatus.PENDING, t.due_at <= at)


def _settled_steps() -> Select[Any]:
    s, c = saga_steps.c, payment_commands.c
    return (
        select(s.saga_id, s.seq)
        .join(payment_commands, c.idempotency_key == s.command_key)
        .where(s.status == StepStatus.SUBMITTED, c.status != _COMMAND_ACCEPTED)
    )


def _due_steps(at: int) -> Select[Any]:
    s = saga_steps.c
    earlier = saga_steps.alias("earlier")
    # Only each saga's first open step: steps queued behind one in flight must not fill the
    # batch and starve other sagas.
    blocked = (
        select(earlier.c.seq)
        .where(
            earlier.c.saga_id == s.saga_id,
            earlier.c.seq < s.seq,
            earlier.c.status.in_(OPEN_STEP_STATUSES),
        )
        .exists()
    )
    return select(s.saga_id, s.seq).where(s.status == StepStatus.PENDING, s.due_at <= at, ~blocked)


def _changed_sagas() -> Select[Any]:
    g, p = sagas.c, payments.c
    return (
        select(g.id)
        .join(payments, p.id == g.payment_id)
        .where(g.status == SagaStatus.RUNNING, p.version > g.observed_version)
    )


def _saga_row(row: Row[Any]) -> SagaRow:
    return SagaRow(
        id=row.id,
        flow=row.flow,
        status=SagaStatus(row.status),
        outcome=row.outcome,
        payment_id=row.payment_id,
        context=json.loads(row.context),
        observed_version=row.observed_version,
    )


def _step_row(row: Row[Any]) -> StepRow:
    return StepRow(
        saga_id=row.saga_id,
        seq=row.seq,
        action=row.action,
        args=json.loads(row.args),
        role=StepRole(row.role),
        status=StepStatus(row.status),
        attempts=row.attempts,
        due_at=row.due_at,
        command_key=row.command_key,
        error_code=row.error_code,
        error=row.error,
    )
