"""Payment commands (DESIGN §5.2): decide with the domain, write events, outbox and command in
one SQL transaction.

Each command carries the caller's idempotency key (the API's ``Idempotency-Key``): a retry with
the same key and arguments returns the first outcome without deciding again; the same key with
other arguments is refused. A command writes its events (a new payment's ``PaymentRequested``;
chain facts are written later by the mirror), the escrow operation it owes (an outbox row whose
``op_id`` is derived from the key) and its own row, or nothing at all.

A payment has at most one escrow operation on its way at a time. The escrow checks each against
the payment's operation sequence, which the command fixes from the confirmed projection; a
second command while one is in flight could only be judged against stale amounts, so it gets
``CommandConflict`` instead. Commands serialise on the event log's append lock, so of two
concurrent commands on one payment exactly one is accepted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from sqlalchemy import Connection, Row, insert, select, update

from engine.domain.events import Failed, PaymentRequested
from engine.domain.ids import IdPrefix, PaymentTerms, new_id
from engine.domain.payment import decide_capture, decide_refund, decide_request, decide_void
from engine.store.db import Database
from engine.store.event_store import EventStore, Json, canonical_json
from engine.store.outbox import Outbox
from engine.store.projections import (
    ProjectedPayment,
    caught_up,
    load,
    project,
    project_new,
    stored_form,
)
from engine.store.schema import payment_commands

IDEMPOTENCY_KEY_LENGTH_MAX = 150
_OP_KIND = {"create": "authorize", "capture": "capture", "void": "void", "refund": "refund"}
# The chain fact that completes each command.
COMPLETING_EVENT = {
    "create": "authorized",
    "capture": "captured",
    "void": "voided",
    "refund": "refunded",
}


class CommandError(Exception):
    """A command refused before anything was written; ``code`` is the stable contract."""

    code: ClassVar[str] = "command_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownPayment(CommandError):
    code = "unknown_payment"

    def __init__(self, payment_id: str) -> None:
        super().__init__(f"no payment {payment_id!r}")


class CommandConflict(CommandError):
    """Another command on the payment is still on its way to the chain."""

    code = "conflict"


class IdempotencyKeyReused(CommandError):
    code = "idempotency_key_reused"

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was used for another command")


class InvalidIdempotencyKey(CommandError):
    code = "invalid_idempotency_key"


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    payment_id: str
    command: str
    op_id: str

    def to_dict(self) -> dict[str, Json]:
        return {"payment_id": self.payment_id, "command": self.command, "op_id": self.op_id}


def op_id_for(idempotency_key: str) -> str:
    return "op_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]


class PaymentService:
    """The write side of payments against one escrow (``chain_id``, ``escrow``)."""

    def __init__(self, db: Database, chain_id: int, escrow: str, clock: Callable[[], int]) -> None:
        self._db = db
        self._chain_id = chain_id
        self._escrow = escrow
        self._clock = clock
        self._events = EventStore(db)
        self._outbox = Outbox(db)

    def create(
        self, key: str, terms: PaymentTerms, amount: int, authorization: bytes
    ) -> CommandOutcome:
        """Request a payment and owe the escrow its authorization (signed by the payer)."""
        request: dict[str, Json] = {
            "terms": dict(terms.to_dict()),
            "amount": amount,
            "authorization": "0x" + authorization.hex(),
        }
        with self._db.transaction() as conn:
            earlier = self._begin(conn, key, "create", request)
            if earlier is not None:
                return earlier
            now = self._clock()
            payment_id = new_id(IdPrefix.PAYMENT)
            [requested] = decide_request(payment_id, terms, amount, now)
            assert isinstance(requested, PaymentRequested)
            stored = self._events.append(conn, payment_id, 0, [stored_form(requested)])
            chain_id = terms.payment_hash(self._chain_id, self._escrow)
            project_new(conn, requested, chain_id, stored[-1].version)
            payload = {"seq": 0, **request}
            return self._accept(conn, key, "create", request, payment_id, payload, now)

    def capture(self, key: str, payment_id: str, amount: int, fee_bps: int) -> CommandOutcome:
        request: dict[str, Json] = {"payment_id": payment_id, "amount": amount, "fee_bps": fee_bps}
        with self._db.transaction() as conn:
            earlier = self._begin(conn, key, "capture", request)
            if earlier is not None:
                return earlier
            current, now = self._current(conn, payment_id)
            decide_capture(current.payment, amount, now, fee_bps=fee_bps)
            payload = {**_op_base(current), "amount": amount, "fee_bps": fee_bps}
            return self._accept(conn, key, "capture", request, payment_id, payload, now)

    def void(self, key: str, payment_id: str) -> CommandOutcome:
        request: dict[str, Json] = {"payment_id": payment_id}
        with self._db.transaction() as conn:
            earlier = self._begin(conn, key, "void", request)
            if earlier is not None:
                return earlier
            current, now = self._current(conn, payment_id)
            [voided] = decide_void(current.payment, now)
            payload = {**_op_base(current), "amount": current.payment.capturable}
            assert voided.kind == "voided"
            return self._accept(conn, key, "void", request, payment_id, payload, now)

    def refund(self, key: str, payment_id: str, amount: int) -> CommandOutcome:
        request: dict[str, Json] = {"payment_id": payment_id, "amount": amount}
        with self._db.transaction() as conn:
            earlier = self._begin(conn, key, "refund", request)
            if earlier is not None:
                return earlier
            current, now = self._current(conn, payment_id)
            decide_refund(current.payment, amount, now)
            payload = {**_op_base(current), "amount": amount}
            return self._accept(conn, key, "refund", request, payment_id, payload, now)

    # ── hooks for the relay and the mirror, in their transactions ───────────────────────

    def settle_command(self, conn: Connection, payment_id: str, event_kind: str) -> None:
        """Mark the payment's command in flight applied when ``event_kind`` completes it."""
        row = _in_flight(conn, payment_id)
        if row is not None and COMPLETING_EVENT[row.kind] == event_kind:
            _set_status(conn, row.idempotency_key, "applied", None)

    def fail_command(self, conn: Connection, payment_id: str, reason: str, at: int) -> str | None:
        """The payment's command in flight will never reach the chain: free the payment, and
        fail a payment whose authorization was refused. Returns the failed command's kind."""
        row = _in_flight(conn, payment_id)
        if row is None:
            return None
        _set_status(conn, row.idempotency_key, "failed", reason[:2000])
        found = load(conn, payment_id)
        current = None if found is None else caught_up(conn, self._events, found)
        if row.kind == "create" and current is not None and current.payment.authorized == 0:
            failed = Failed(payment_id=payment_id, at=at, reason=reason[:200] or "failed")
            stored = self._events.append(conn, payment_id, current.version, [stored_form(failed)])
            project(conn, current, [failed], stored[-1].version)
        return str(row.kind)

    # ── internals ─────────────────────────────────────────────────────────────────────

    def _begin(
        self, conn: Connection, key: str, kind: str, request: Mapping[str, Json]
    ) -> CommandOutcome | None:
        if not isinstance(key, str) or not 1 <= len(key) <= IDEMPOTENCY_KEY_LENGTH_MAX:
            raise InvalidIdempotencyKey(
                f"an idempotency key is 1 to {IDEMPOTENCY_KEY_LENGTH_MAX} characters"
            )
        self._db.lock_for_append(conn)
        row = conn.execute(
            select(payment_commands).where(payment_commands.c.idempotency_key == key)
        ).one_or_none()
        if row is None:
            return None
        if (row.kind, row.request) != (kind, canonical_json(dict(request))):
            raise IdempotencyKeyReused(key)
        outcome = json.loads(row.outcome)
        return CommandOutcome(outcome["payment_id"], outcome["command"], outcome["op_id"])

    def _current(self, conn: Connection, payment_id: str) -> tuple[ProjectedPayment, int]:
        found = load(conn, payment_id) if isinstance(payment_id, str) else None
        if found is None:
            raise UnknownPayment(str(payment_id))
        current = caught_up(conn, self._events, found)
        busy = _in_flight(conn, payment_id)
        if busy is not None:
            raise CommandConflict(
                f"payment {payment_id} has a {busy.kind} command on its way to the chain"
            )
        return current, self._clock()

    def _accept(
        self,
        conn: Connection,
        key: str,
        kind: str,
        request: Mapping[str, Json],
        payment_id: str,
        payload: Mapping[str, Json],
        now: int,
    ) -> CommandOutcome:
        outcome = CommandOutcome(payment_id, kind, op_id_for(key))
        self._outbox.enqueue(conn, outcome.op_id, payment_id, _OP_KIND[kind], payload, now)
        conn.execute(
            insert(payment_commands).values(
                idempotency_key=key,
                payment_id=payment_id,
                kind=kind,
                request=canonical_json(dict(request)),
                op_id=outcome.op_id,
                status="accepted",
                outcome=canonical_json(outcome.to_dict()),
                created_at=now,
            )
        )
        return outcome


def _op_base(current: ProjectedPayment) -> dict[str, Json]:
    return {"terms": dict(current.payment.terms.to_dict()), "seq": current.chain_seq}


def _in_flight(conn: Connection, payment_id: str) -> Row[Any, Any] | None:
    c = payment_commands.c
    return conn.execute(
        select(c.idempotency_key, c.kind).where(c.payment_id == payment_id, c.status == "accepted")
    ).first()


def _set_status(conn: Connection, key: str, status: str, error: str | None) -> None:
    conn.execute(
        update(payment_commands)
        .where(payment_commands.c.idempotency_key == key)
        .values(status=status, error=error)
    )
