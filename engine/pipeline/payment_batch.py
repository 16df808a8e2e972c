"""Payment writes gathered in memory and flushed with one statement per table.

The chain mirror books a whole indexer poll, and a command batch accepts many commands, in one
SQL transaction. Reading and writing each payment on its own would cost some twenty round
trips per payment; a ``PaymentBatch`` reads every payment it will touch up front, lets its
caller decide against the in-memory state, and writes the events, projection rows and command
rows in one statement each.

The batch takes the event log's append lock before it reads, so no other writer can move the
payments it holds: what it decides against is exactly what one-by-one writes in the same order
would have seen, and ``flush`` cannot meet a concurrency conflict.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import Connection

from engine.domain.events import Event, PaymentRequested
from engine.domain.payment import apply, start
from engine.store.command_log import open_commands
from engine.store.db import Database, insert_rows, update_rows
from engine.store.event_store import EventStore, NewEvent, StreamAppend
from engine.store.projections import (
    ProjectedPayment,
    caught_up_many,
    chain_steps,
    load_many,
    load_many_by_chain_id,
    project_many,
    project_new_many,
    stored_form,
)
from engine.store.schema import payment_commands


@dataclass(frozen=True, slots=True)
class InFlight:
    """A payment's accepted command whose escrow operation has not been seen settled yet."""

    idempotency_key: str
    kind: str


@dataclass(frozen=True, slots=True)
class CommandRow:
    """A row of ``payment_commands`` as an accepted command writes it."""

    idempotency_key: str
    payment_id: str
    kind: str
    request: str  # canonical JSON
    op_id: str
    outcome: str  # canonical JSON
    created_at: int


class PaymentBatch:
    """The payments named at construction (by engine id or escrow id), and the changes made
    to them, held until ``flush``; new payments can be added with ``create``."""

    def __init__(
        self,
        conn: Connection,
        db: Database,
        *,
        payment_ids: Collection[str] = (),
        chain_payment_ids: Collection[bytes] = (),
    ) -> None:
        db.lock_for_append(conn)
        self._conn = conn
        self._store = EventStore(db)
        loaded = load_many(conn, payment_ids)
        for found in load_many_by_chain_id(conn, chain_payment_ids).values():
            loaded[found.payment.id] = found
        self._base: dict[str, ProjectedPayment] = caught_up_many(conn, loaded)
        self._current = dict(self._base)
        self._by_chain = {p.chain_payment_id: pid for pid, p in self._current.items()}
        self._in_flight = _in_flight(conn, list(self._current))
        self._requested: dict[str, PaymentRequested] = {}
        self._appended: dict[str, list[tuple[Event, NewEvent]]] = {}
        self._new_commands: list[CommandRow] = []
        self._finished: dict[str, tuple[str, str | None]] = {}

    # ── reading ──────────────────────────────────────────────────────────────────────────

    def payment(self, payment_id: str) -> ProjectedPayment | None:
        return self._current.get(payment_id)

    def by_chain_id(self, chain_payment_id: bytes) -> ProjectedPayment | None:
        payment_id = self._by_chain.get(chain_payment_id)
        return None if payment_id is None else self._current[payment_id]

    def in_flight(self, payment_id: str) -> InFlight | None:
        return self._in_flight.get(payment_id)

    # ── changing ─────────────────────────────────────────────────────────────────────────

    def create(self, requested: PaymentRequested, chain_payment_id: bytes) -> ProjectedPayment:
        """A new payment, its stream begun with ``requested``."""
        payment_id = requested.payment_id
        if payment_id in self._current:
            raise AssertionError(f"payment {payment_id} exists already")
        created = ProjectedPayment(start(requested), chain_payment_id, 1, 0)
        self._requested[payment_id] = requested
        self._current[payment_id] = created
        self._by_chain[chain_payment_id] = payment_id
        return created

    def append(self, payment_id: str, event: Event) -> None:
        """Fold ``event`` into the payment; a ``DomainError`` leaves the batch as it was."""
        current = self._current[payment_id]
        payment = apply(current.payment, event)
        self._current[payment_id] = ProjectedPayment(
            payment,
            current.chain_payment_id,
            current.version + 1,
            current.chain_seq + chain_steps([event]),
        )
        self._appended.setdefault(payment_id, []).append((event, stored_form(event)))

    def accept(self, command: CommandRow) -> None:
        """Record an accepted command; it is the payment's command in flight from now on."""
        self._new_commands.append(command)
        self._in_flight[command.payment_id] = InFlight(command.idempotency_key, command.kind)

    def finish(self, payment_id: str, status: str, error: str | None = None) -> InFlight | None:
        """End the payment's command in flight with ``status`` (applied or failed)."""
        done = self._in_flight.pop(payment_id, None)
        if done is not None:
            self._finished[done.idempotency_key] = (status, error)
        return done

    # ── writing ──────────────────────────────────────────────────────────────────────────

    def flush(self) -> None:
        """Write everything changed since the batch was made (or last flushed)."""
        conn = self._conn
        appends: list[StreamAppend] = []
        for payment_id, requested in self._requested.items():
            first = stored_form(requested)
            rest = [stored for _, stored in self._appended.get(payment_id, [])]
            appends.append(StreamAppend(payment_id, 0, [first, *rest]))
        for payment_id, appended in self._appended.items():
            if payment_id not in self._requested:
                base = self._base[payment_id].version
                appends.append(StreamAppend(payment_id, base, [stored for _, stored in appended]))
        if appends:
            self._store.append_many(conn, appends)
        if self._requested:
            created = project_new_many(
                conn,
                [
                    (requested, self._current[pid].chain_payment_id, 1)
                    for pid, requested in self._requested.items()
                ],
            )
            self._base.update((new.payment.id, new) for new in created)
        folds = [
            (
                self._base[pid],
                [event for event, _ in appended],
                self._current[pid].version,
            )
            for pid, appended in self._appended.items()
        ]
        if folds:
            project_many(conn, folds)
        if self._new_commands:
            insert_rows(conn, payment_commands, [_command_values(c) for c in self._new_commands])
        if self._finished:
            update_rows(
                conn,
                payment_commands,
                [
                    ({"idempotency_key": key}, {"status": status, "error": error})
                    for key, (status, error) in self._finished.items()
                ],
            )
        self._base = dict(self._current)
        self._requested.clear()
        self._appended.clear()
        self._new_commands.clear()
        self._finished.clear()


def _in_flight(conn: Connection, payment_ids: list[str]) -> dict[str, InFlight]:
    return {
        payment_id: InFlight(command.idempotency_key, command.kind)
        for payment_id, command in open_commands(conn, payment_ids).items()
    }


def _command_values(command: CommandRow) -> dict[str, object]:
    return {
        "idempotency_key": command.idempotency_key,
        "payment_id": command.payment_id,
        "kind": command.kind,
        "request": command.request,
        "op_id": command.op_id,
        "status": "accepted",
        "outcome": command.outcome,
        "created_at": command.created_at,
    }
