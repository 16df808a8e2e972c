"""The transactional outbox (DESIGN §5.2-5.3): operations a command owes the outside world.

An accepted command appends its events (`EventStore.append`) and enqueues the operations they
call for in the same SQL transaction, so both commit or neither does. Relay workers then
deliver every operation at least once; the contract and the tx manager make that exactly once
in effect, keyed by the op_id they share with the outbox.

Delivery rules, all enforced in SQL so that any number of workers can share one database:

* Operations of one payment_key run one at a time, in the order their commands committed: the
  next one becomes claimable only when no other operation of that payment is in flight and
  none before it is pending. Different payments proceed in parallel.
* A claim is a lease. A worker that crashes loses nothing: once `lease_until` has passed, its
  operation is claimable again, by any worker. The lease holder is known by its worker id, so
  every running process needs its own (host, pid and a random part, say).
* `attempts` counts deliveries, crashed ones included, so an operation that kills every worker
  that touches it still reaches `attempts_max` and stops.
* A failed delivery is retried after an exponential backoff; a permanent error, or the last
  allowed attempt, makes the operation a dead letter, which waits for an operator's `retry`.

Times are int unix seconds passed in by the caller, like every other time in the store.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, and_, exists, func, insert, or_, select, update

from engine.store.db import (
    Database,
    insert_rows,
    notify,
    one_of,
)
from engine.store.event_store import (
    PAYLOAD_BYTES_MAX,
    InvalidEvent,
    Json,
    Payload,
    StoreError,
    canonical_json,
    plain_json,
)
from engine.store.schema import (
    KIND_LENGTH_MAX,
    OUTBOX_KEY_LENGTH_MAX,
    WORKER_ID_LENGTH_MAX,
    outbox,
    outbox_history,
)

CLAIM_LIMIT_MAX = 1_000
# Notified (engine.store.db.notify) when operations are enqueued: what relay workers wait on.
OUTBOX_CHANNEL = "settle_outbox"
LIST_LIMIT_MAX = 10_000
HISTORY_LIMIT_MAX = 1_000
# Longer error texts are cut: a failure must always be recordable, whatever the caller caught.
ERROR_LENGTH_MAX = 2_000
_TIME_LIMIT = 2**63
# Op ids one statement binds: well inside every backend's parameter limit.
_OPS_PER_QUERY_MAX = 500
# Past this many doublings the delay is far beyond any sensible backoff_max_s.
_BACKOFF_DOUBLINGS_MAX = 62


@dataclass(frozen=True, slots=True)
class NewOperation:
    """An operation a command owes: ``op_id`` is its idempotency key, ``payment_key`` orders
    it after the earlier operations of the same payment."""

    op_id: str
    payment_key: str
    kind: str
    payload: Mapping[str, Json]


class OutboxStatus(StrEnum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    COMPLETED = "completed"
    DEAD = "dead"


class InvalidOperation(StoreError):
    """An outbox call got input it cannot store (a float in a payload, an over-long op id)."""

    code = "invalid_operation"


class UnknownOperation(StoreError):
    code = "unknown_operation"

    def __init__(self, op_id: str) -> None:
        super().__init__(f"no outbox operation {op_id!r}")
        self.op_id = op_id


class OperationConflict(StoreError):
    """The op_id is taken by a different operation: an idempotency key must not be reused."""

    code = "operation_conflict"

    def __init__(self, op_id: str) -> None:
        super().__init__(
            f"outbox operation {op_id!r} exists with another payment key, kind or payload"
        )
        self.op_id = op_id


class NotLeaseHolder(StoreError):
    """The worker no longer holds the operation: its lease expired and the operation was
    claimed again, failed or completed since. The worker must drop its outcome."""

    code = "not_lease_holder"

    def __init__(
        self, op_id: str, worker_id: str, status: OutboxStatus, claimed_by: str | None
    ) -> None:
        super().__init__(
            f"worker {worker_id!r} does not hold outbox operation {op_id!r} "
            f"(it is {status} and was last claimed by {claimed_by!r})"
        )
        self.op_id = op_id
        self.worker_id = worker_id
        self.status = status
        self.claimed_by = claimed_by


class NotDeadLetter(StoreError):
    code = "not_dead_letter"

    def __init__(self, op_id: str, status: OutboxStatus) -> None:
        super().__init__(f"outbox operation {op_id!r} is {status}, not dead: nothing to retry")
        self.op_id = op_id
        self.status = status


@dataclass(frozen=True, slots=True)
class OutboxPolicy:
    """How long a claim lasts and how failed deliveries are retried."""

    lease_s: int = 60
    attempts_max: int = 8
    backoff_base_s: int = 1
    backoff_max_s: int = 300

    def __post_init__(self) -> None:
        for name in ("lease_s", "attempts_max", "backoff_base_s", "backoff_max_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int")
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError("backoff_max_s must not be below backoff_base_s")

    def backoff_s(self, attempts: int) -> int:
        """The delay before the next delivery once `attempts` deliveries have failed.

        No jitter: jitter spreads out independent clients that would retry in lockstep, but
        here workers claim rows, so operations that failed together simply become ready
        together, and the relay can batch them into one transaction. A fixed schedule is
        also one a test can state exactly.
        """
        if attempts < 1:
            raise ValueError("backoff follows a failed delivery, so attempts >= 1")
        doublings = min(attempts - 1, _BACKOFF_DOUBLINGS_MAX)
        return min(self.backoff_max_s, self.backoff_base_s << doublings)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int  # orders operations; per payment_key it is the order they run in
    op_id: str
    payment_key: str
    kind: str
    payload: Payload
    status: OutboxStatus
    attempts: int
    due_at: int
    available_at: int
    claimed_by: str | None  # the worker of the latest delivery
    lease_until: int | None  # set while in flight
    last_error: str | None
    result: Payload | None  # set once completed

    def to_dict(self) -> dict[str, Json | None]:
        return {
            "op_id": self.op_id,
            "payment_key": self.payment_key,
            "kind": self.kind,
            "payload": self.payload,
            "status": self.status.value,
            "attempts": self.attempts,
            "due_at": self.due_at,
            "available_at": self.available_at,
            "claimed_by": self.claimed_by,
            "lease_until": self.lease_until,
            "last_error": self.last_error,
            "result": self.result,
        }


@dataclass(frozen=True, slots=True)
class Claim:
    """The operations one `claim` handed to a worker, oldest first, at most one per payment."""

    worker_id: str
    lease_until: int
    rows: tuple[OutboxRow, ...]

    def by_kind(self) -> dict[str, tuple[OutboxRow, ...]]:
        """The rows grouped by kind, each group oldest first: a relay turns a group of chain
        operations into one settleBatch call."""
        groups: dict[str, list[OutboxRow]] = {}
        for row in self.rows:
            groups.setdefault(row.kind, []).append(row)
        return {kind: tuple(rows) for kind, rows in groups.items()}


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    event: str  # failed, dead_lettered, lease_expired or retried
    attempts: int  # deliveries so far when it happened
    worker_id: str | None
    error: str | None
    at: int


@dataclass(frozen=True, slots=True)
class OutboxLag:
    pending: int
    in_flight: int
    dead: int
    # How long the oldest undelivered (pending or in-flight) operation has been due; 0 if none.
    oldest_pending_age_s: int

    def to_dict(self) -> dict[str, int]:
        return {
            "pending": self.pending,
            "in_flight": self.in_flight,
            "dead": self.dead,
            "oldest_pending_age_s": self.oldest_pending_age_s,
        }


class Outbox:
    def __init__(self, db: Database, policy: OutboxPolicy | None = None) -> None:
        self._db = db
        self.policy = OutboxPolicy() if policy is None else policy

    def enqueue(
        self,
        conn: Connection,
        op_id: str,
        payment_key: str,
        kind: str,
        payload: Mapping[str, Json],
        available_at: int,
    ) -> OutboxRow:
        """Add an operation in the caller's transaction, deliverable from `available_at` on.

        `op_id` is the idempotency key: enqueuing it again with the same payment key, kind
        and payload returns the first row unchanged (its original `available_at` included).
        Nothing is written when a check fails.
        """
        return self.enqueue_many(
            conn, [NewOperation(op_id, payment_key, kind, payload)], available_at
        )[0]

    def enqueue_many(
        self, conn: Connection, operations: Sequence[NewOperation], available_at: int
    ) -> list[OutboxRow]:
        """``enqueue`` for a batch of commands' operations, in one look-up and one insert;
        ids follow the order of ``operations``."""
        _check_time("available_at", available_at)
        texts: dict[str, tuple[str, str, str]] = {}
        for operation in operations:
            _check_text("op_id", operation.op_id, OUTBOX_KEY_LENGTH_MAX)
            _check_text("payment_key", operation.payment_key, OUTBOX_KEY_LENGTH_MAX)
            _check_text("kind", operation.kind, KIND_LENGTH_MAX)
            identity = (
                operation.payment_key,
                operation.kind,
                _canonical_object(operation.payload, "payload"),
            )
            if texts.setdefault(operation.op_id, identity) != identity:
                raise OperationConflict(operation.op_id)

        # The event log's append lock, which a command holds anyway once it has appended:
        # enqueues then commit one at a time, so ids follow commit order (the order of
        # operations of one payment), and a concurrent duplicate of op_id waits for the first
        # to commit and finds it below instead of failing on the unique constraint.
        self._db.lock_for_append(conn)
        found: dict[str, OutboxRow] = {}
        op_ids = list(texts)
        for first in range(0, len(op_ids), _OPS_PER_QUERY_MAX):
            chunk = op_ids[first : first + _OPS_PER_QUERY_MAX]
            for existing in conn.execute(select(outbox).where(one_of(conn, outbox.c.op_id, chunk))):
                # Canonical texts, not parsed payloads: in Python True == 1, in JSON they differ.
                if (existing.payment_key, existing.kind, existing.payload) != texts[existing.op_id]:
                    raise OperationConflict(existing.op_id)
                found[existing.op_id] = _outbox_row(existing._mapping)
        fresh = [
            {
                "op_id": op_id,
                "payment_key": payment_key,
                "kind": kind,
                "payload": payload_text,
                "status": OutboxStatus.PENDING.value,
                "attempts": 0,
                "due_at": available_at,
                "available_at": available_at,
                "claimed_by": None,
                "lease_until": None,
                "last_error": None,
                "result": None,
            }
            for op_id, (payment_key, kind, payload_text) in texts.items()
            if op_id not in found
        ]
        ids = insert_rows(conn, outbox, fresh, returning=outbox.c.id)
        if fresh:
            notify(conn, OUTBOX_CHANNEL)  # relay workers wake when this commits
        found.update(
            (str(row["op_id"]), _outbox_row({**row, "id": row_id}))
            for row, row_id in zip(fresh, ids, strict=True)
        )
        return [found[operation.op_id] for operation in operations]

    def claim(
        self,
        conn: Connection,
        worker_id: str,
        now: int,
        limit: int,
        kinds: Collection[str] | None = None,
    ) -> Claim:
        """Lease up to `limit` ready operations (of `kinds`, if given) to `worker_id`.

        Ready means pending and available, with no other operation of its payment in flight
        and none before it pending; or in flight under a lease that has run out. Such an
        expired operation that used up its attempts becomes a dead letter instead. The lease
        runs until `now + policy.lease_s`; the rows are the worker's once the caller commits.
        """
        _check_text("worker_id", worker_id, WORKER_ID_LENGTH_MAX)
        _check_time("now", now)
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise ValueError("limit must be an int")
        if not 1 <= limit <= CLAIM_LIMIT_MAX:
            raise ValueError(f"limit must be 1 to {CLAIM_LIMIT_MAX}")
        if isinstance(kinds, str):
            raise ValueError("kinds is a collection of kinds, not one kind")

        other = outbox.alias("other")
        blocked = exists().where(
            other.c.payment_key == outbox.c.payment_key,
            other.c.id != outbox.c.id,
            or_(
                other.c.status == OutboxStatus.IN_FLIGHT.value,
                and_(other.c.status == OutboxStatus.PENDING.value, other.c.id < outbox.c.id),
            ),
        )
        ready = or_(
            and_(
                outbox.c.status == OutboxStatus.PENDING.value,
                outbox.c.available_at <= now,
                ~blocked,
            ),
            and_(outbox.c.status == OutboxStatus.IN_FLIGHT.value, outbox.c.lease_until <= now),
        )
        query = select(outbox.c.id, outbox.c.status, outbox.c.attempts, outbox.c.claimed_by).where(
            ready
        )
        if kinds is not None:
            query = query.where(outbox.c.kind.in_(sorted(kinds)))
        # SKIP LOCKED: rows another worker is claiming right now are left to it instead of
        # waited for. PostgreSQL only; SQLite has one writer at a time, and SQLAlchemy leaves
        # the clause out there.
        candidates = conn.execute(
            query.order_by(outbox.c.id).limit(limit).with_for_update(skip_locked=True)
        ).all()

        expired = [row for row in candidates if row.status == OutboxStatus.IN_FLIGHT.value]
        exhausted = {row.id for row in expired if row.attempts >= self.policy.attempts_max}
        history = [
            _history(row.id, "lease_expired", row.attempts, row.claimed_by, None, now)
            for row in expired
        ]
        if exhausted:
            error = f"lease expired on the last of {self.policy.attempts_max} attempts"
            conn.execute(
                update(outbox)
                .where(one_of(conn, outbox.c.id, sorted(exhausted)))
                .values(status=OutboxStatus.DEAD.value, lease_until=None, last_error=error)
            )
            history += [
                _history(row.id, "dead_lettered", row.attempts, row.claimed_by, error, now)
                for row in expired
                if row.id in exhausted
            ]
        if history:
            conn.execute(insert(outbox_history), history)

        lease_until = now + self.policy.lease_s
        claimed_ids = sorted(row.id for row in candidates if row.id not in exhausted)
        if not claimed_ids:
            return Claim(worker_id, lease_until, ())
        claimed = conn.execute(
            update(outbox)
            .where(one_of(conn, outbox.c.id, claimed_ids))
            .values(
                status=OutboxStatus.IN_FLIGHT.value,
                claimed_by=worker_id,
                lease_until=lease_until,
                attempts=outbox.c.attempts + 1,
            )
            .returning(*outbox.c)
        ).all()
        rows = sorted((_outbox_row(row._mapping) for row in claimed), key=lambda row: row.id)
        return Claim(worker_id, lease_until, tuple(rows))

    def complete(
        self, conn: Connection, op_id: str, worker_id: str, result: Mapping[str, Json]
    ) -> OutboxRow:
        """Record that `worker_id` delivered the operation it holds, with its `result`.

        Accepted after the lease ran out too, as long as no other worker has claimed the
        operation since: the delivery did happen, and nobody else is repeating it.
        """
        completed = self.complete_many(conn, [op_id], worker_id, result)
        if not completed:
            raise _not_held(self.get(conn, op_id), worker_id)
        return completed[0]

    def complete_many(
        self, conn: Connection, op_ids: Sequence[str], worker_id: str, result: Mapping[str, Json]
    ) -> list[OutboxRow]:
        """``complete`` for the operations one delivery carried, in one statement. Returns the
        rows completed; those the worker no longer holds are left as they are."""
        for op_id in op_ids:
            _check_text("op_id", op_id, OUTBOX_KEY_LENGTH_MAX)
        _check_text("worker_id", worker_id, WORKER_ID_LENGTH_MAX)
        result_text = _canonical_object(result, "result")
        completed: list[OutboxRow] = []
        for first in range(0, len(op_ids), _OPS_PER_QUERY_MAX):
            rows = conn.execute(
                update(outbox)
                .where(
                    one_of(conn, outbox.c.op_id, op_ids[first : first + _OPS_PER_QUERY_MAX]),
                    outbox.c.status == OutboxStatus.IN_FLIGHT.value,
                    outbox.c.claimed_by == worker_id,
                )
                .values(
                    status=OutboxStatus.COMPLETED.value,
                    lease_until=None,
                    last_error=None,
                    result=result_text,
                )
                .returning(*outbox.c)
            )
            completed.extend(_outbox_row(row._mapping) for row in rows)
        return sorted(completed, key=lambda row: row.id)

    def fail(
        self,
        conn: Connection,
        op_id: str,
        worker_id: str,
        error: str,
        retryable: bool,
        now: int,
    ) -> OutboxRow:
        """Record that a delivery failed: back to pending after a backoff if `retryable` and
        attempts remain, otherwise a dead letter."""
        _check_text("op_id", op_id, OUTBOX_KEY_LENGTH_MAX)
        _check_text("worker_id", worker_id, WORKER_ID_LENGTH_MAX)
        _check_time("now", now)
        if not isinstance(error, str):
            raise InvalidOperation("error must be a string")
        error = error[:ERROR_LENGTH_MAX]
        row = self._locked(conn, op_id)
        if row.status != OutboxStatus.IN_FLIGHT or row.claimed_by != worker_id:
            raise _not_held(row, worker_id)
        if row.attempts < 1:
            raise AssertionError(f"outbox operation {op_id!r} is in flight after no claim")

        if retryable and row.attempts < self.policy.attempts_max:
            event = "failed"
            values: dict[str, object] = {
                "status": OutboxStatus.PENDING.value,
                "available_at": now + self.policy.backoff_s(row.attempts),
            }
        else:
            event = "dead_lettered"
            values = {"status": OutboxStatus.DEAD.value}
        updated = conn.execute(
            update(outbox)
            .where(outbox.c.id == row.id)
            .values(lease_until=None, last_error=error, **values)
            .returning(*outbox.c)
        ).one()
        conn.execute(
            insert(outbox_history).values(
                _history(row.id, event, row.attempts, worker_id, error, now)
            )
        )
        return _outbox_row(updated._mapping)

    def retry(self, conn: Connection, op_id: str, now: int) -> OutboxRow:
        """Put a dead letter back to pending, due now, with its attempts reset; recorded in the
        operation's history. It then runs in its place among its payment's operations."""
        _check_text("op_id", op_id, OUTBOX_KEY_LENGTH_MAX)
        _check_time("now", now)
        row = self._locked(conn, op_id)
        if row.status != OutboxStatus.DEAD:
            raise NotDeadLetter(op_id, row.status)
        updated = conn.execute(
            update(outbox)
            .where(outbox.c.id == row.id)
            .values(
                status=OutboxStatus.PENDING.value,
                attempts=0,
                due_at=now,
                available_at=now,
                last_error=None,
            )
            .returning(*outbox.c)
        ).one()
        conn.execute(
            insert(outbox_history).values(
                _history(row.id, "retried", row.attempts, None, row.last_error, now)
            )
        )
        return _outbox_row(updated._mapping)

    def get(self, conn: Connection, op_id: str) -> OutboxRow:
        row = conn.execute(select(outbox).where(outbox.c.op_id == op_id)).one_or_none()
        if row is None:
            raise UnknownOperation(op_id)
        return _outbox_row(row._mapping)

    def list_rows(
        self,
        conn: Connection,
        status: OutboxStatus | None = None,
        limit: int = LIST_LIMIT_MAX,
        after_id: int = 0,
    ) -> list[OutboxRow]:
        """Up to `limit` operations (with `status`, if given) with an id above `after_id`."""
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise ValueError(f"limit must be 1 to {LIST_LIMIT_MAX}")
        query = select(outbox).where(outbox.c.id > after_id)
        if status is not None:
            query = query.where(outbox.c.status == OutboxStatus(status).value)
        rows = conn.execute(query.order_by(outbox.c.id).limit(limit))
        return [_outbox_row(row._mapping) for row in rows]

    def history(self, conn: Connection, op_id: str) -> list[HistoryEntry]:
        """What happened to the operation beyond its current row, oldest first (bounded)."""
        row = self.get(conn, op_id)
        entries = conn.execute(
            select(outbox_history)
            .where(outbox_history.c.outbox_id == row.id)
            .order_by(outbox_history.c.id)
            .limit(HISTORY_LIMIT_MAX)
        )
        return [
            HistoryEntry(entry.event, entry.attempts, entry.worker_id, entry.error, entry.at)
            for entry in entries
        ]

    def lag(self, conn: Connection, now: int) -> OutboxLag:
        """How much work is waiting and how late the oldest of it is, as of `now`."""
        _check_time("now", now)
        counts = {status: 0 for status in OutboxStatus}
        oldest_due: int | None = None
        rows = conn.execute(
            select(outbox.c.status, func.count(), func.min(outbox.c.due_at))
            .where(outbox.c.status != OutboxStatus.COMPLETED.value)
            .group_by(outbox.c.status)
        )
        for status, count, earliest in rows:
            counts[OutboxStatus(status)] = count
            if status != OutboxStatus.DEAD.value:
                oldest_due = earliest if oldest_due is None else min(oldest_due, earliest)
        return OutboxLag(
            pending=counts[OutboxStatus.PENDING],
            in_flight=counts[OutboxStatus.IN_FLIGHT],
            dead=counts[OutboxStatus.DEAD],
            oldest_pending_age_s=0 if oldest_due is None else max(0, now - oldest_due),
        )

    def _locked(self, conn: Connection, op_id: str) -> OutboxRow:
        """The operation's row, locked against concurrent claims until the transaction ends."""
        row = conn.execute(
            select(outbox).where(outbox.c.op_id == op_id).with_for_update()
        ).one_or_none()
        if row is None:
            raise UnknownOperation(op_id)
        return _outbox_row(row._mapping)


def parse_status(status: str) -> OutboxStatus:
    """The status a user typed, or InvalidOperation naming the ones there are."""
    try:
        return OutboxStatus(status)
    except ValueError:
        known = ", ".join(member.value for member in OutboxStatus)
        raise InvalidOperation(f"unknown status {status!r}: use one of {known}") from None


def _not_held(row: OutboxRow, worker_id: str) -> NotLeaseHolder:
    return NotLeaseHolder(row.op_id, worker_id, row.status, row.claimed_by)


def _canonical_object(value: object, name: str) -> str:
    """The canonical JSON text of an object, checked as event payloads are."""
    if not isinstance(value, Mapping):
        raise InvalidOperation(f"{name} must be a JSON object")
    try:
        text = canonical_json(plain_json(value, name, 0))
    except InvalidEvent as error:
        raise InvalidOperation(str(error)) from None
    if len(text.encode("utf-8")) > PAYLOAD_BYTES_MAX:
        raise InvalidOperation(f"{name} exceeds {PAYLOAD_BYTES_MAX} bytes")
    return text


def _check_text(name: str, value: object, length_max: int) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= length_max:
        raise InvalidOperation(f"{name} must be a string of 1 to {length_max} characters")


def _check_time(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _TIME_LIMIT:
        raise InvalidOperation(f"{name} must be int unix seconds")


def _history(
    outbox_id: int, event: str, attempts: int, worker_id: str | None, error: str | None, at: int
) -> dict[str, object]:
    return {
        "outbox_id": outbox_id,
        "event": event,
        "attempts": attempts,
        "worker_id": worker_id,
        "error": error,
        "at": at,
    }


def _outbox_row(row: Mapping[Any, Any]) -> OutboxRow:
    return OutboxRow(
        id=row["id"],
        op_id=row["op_id"],
        payment_key=row["payment_key"],
        kind=row["kind"],
        payload=json.loads(row["payload"]),
        status=OutboxStatus(row["status"]),
        attempts=row["attempts"],
        due_at=row["due_at"],
        available_at=row["available_at"],
        claimed_by=row["claimed_by"],
        lease_until=row["lease_until"],
        last_error=row["last_error"],
        result=None if row["result"] is None else json.loads(row["result"]),
    )
