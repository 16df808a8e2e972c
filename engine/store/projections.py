"""The payment projection: each payment's current state as one row, folded from its events.

The row is written in the same transaction as the events it reflects (the command that
requests a payment, the chain mirror that books confirmed escrow events), so it is never
behind the stream it comes from. ``version`` is the stream version folded in, which lets a
writer refuse to project out of order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Connection, Row, func, insert, select, update

from engine.domain.events import Event, PaymentRequested, event_from_dict
from engine.domain.ids import PaymentTerms
from engine.domain.payment import Payment, PaymentStatus, apply, start
from engine.store.event_store import EventStore, Json, NewEvent, StoredEvent, canonical_json
from engine.store.schema import payments

# Escrow events that advance the payment's on-chain operation sequence.
_SEQUENCED_KINDS = frozenset(
    {
        "authorized",
        "captured",
        "voided",
        "reclaimed",
        "refunded",
        "dispute_opened",
        "dispute_resolved",
    }
)


@dataclass(frozen=True, slots=True)
class ProjectedPayment:
    payment: Payment
    chain_payment_id: bytes
    version: int
    chain_seq: int


def chain_steps(events: Sequence[Event]) -> int:
    """How many escrow operations ``events`` record, i.e. how far they advance ``chain_seq``."""
    return sum(1 for event in events if event.kind in _SEQUENCED_KINDS)


def project_new(
    conn: Connection, event: PaymentRequested, chain_payment_id: bytes, version: int
) -> ProjectedPayment:
    """Insert the row of a payment its first event just created."""
    payment = start(event)
    conn.execute(
        insert(payments).values(
            id=payment.id,
            chain_payment_id=chain_payment_id,
            terms_hash=payment.terms.struct_hash(),
            terms=canonical_json(dict(payment.terms.to_dict())),
            version=version,
            chain_seq=0,
            updated_at=event.at,
            **_amounts(payment),
        )
    )
    return ProjectedPayment(payment, chain_payment_id, version, 0)


def project(
    conn: Connection, current: ProjectedPayment, new_events: Sequence[Event], version: int
) -> ProjectedPayment:
    """Fold ``new_events`` (the stream's events after ``current.version``) into the row."""
    payment = current.payment
    for event in new_events:
        payment = apply(payment, event)
    chain_seq = current.chain_seq + chain_steps(new_events)
    moved = conn.execute(
        update(payments)
        .where(payments.c.id == payment.id, payments.c.version == current.version)
        .values(
            version=version,
            chain_seq=chain_seq,
            updated_at=max(event.at for event in new_events),
            **_amounts(payment),
        )
    )
    if moved.rowcount != 1:
        raise AssertionError(f"projection of {payment.id} moved past version {current.version}")
    return ProjectedPayment(payment, current.chain_payment_id, version, chain_seq)


def caught_up(conn: Connection, store: EventStore, current: ProjectedPayment) -> ProjectedPayment:
    """The row with any events another writer appended to the stream folded in (such as the
    Conflicted event reconciliation adds), so the next append expects the right version."""
    newer = store.read(conn, current.payment.id, current.version)
    if not newer:
        return current
    return project(conn, current, [_domain_event(s) for s in newer], newer[-1].version)


def _domain_event(stored: StoredEvent) -> Event:
    # The payload's funder (see stored_form) is for the ledger, not a field of the event.
    data = {key: value for key, value in stored.payload.items() if key != "funder"}
    return event_from_dict({"kind": stored.kind, **data})


def load(conn: Connection, payment_id: str, *, lock: bool = False) -> ProjectedPayment | None:
    query = select(payments).where(payments.c.id == payment_id)
    row = conn.execute(query.with_for_update() if lock else query).one_or_none()
    return None if row is None else _projected(row)


def load_by_chain_id(conn: Connection, chain_payment_id: bytes) -> ProjectedPayment | None:
    row = conn.execute(
        select(payments).where(payments.c.chain_payment_id == chain_payment_id)
    ).one_or_none()
    return None if row is None else _projected(row)


def load_all(conn: Connection) -> list[ProjectedPayment]:
    return [_projected(row) for row in conn.execute(select(payments).order_by(payments.c.id))]


def count_by_status(conn: Connection) -> dict[str, int]:
    rows = conn.execute(
        select(payments.c.status, func.count()).group_by(payments.c.status).order_by("status")
    )
    return {str(status): int(count) for status, count in rows}


def stored_form(event: Event, funder: str | None = None) -> NewEvent:
    """The event store's form of a domain event: its fields but the kind, which has a column,
    plus who funded a refund or dispute, which its ledger entry needs on replay."""
    payload = event.to_dict()
    del payload["kind"]
    if funder is not None:
        payload["funder"] = funder
    return NewEvent(event.kind, cast(dict[str, Json], payload), event.at)


def _amounts(payment: Payment) -> dict[str, object]:
    return {
        "status": payment.status.value,
        "amount": payment.amount,
        "authorized": payment.authorized,
        "captured": payment.captured,
        "voided": payment.voided,
        "reclaimed": payment.reclaimed,
        "refunded": payment.refunded,
        "disputed": payment.disputed,
    }


def _projected(row: Row[object]) -> ProjectedPayment:
    terms = PaymentTerms.from_dict(json.loads(row.terms))
    payment = Payment(
        id=row.id,
        terms=terms,
        status=PaymentStatus(row.status),
        amount=row.amount,
        authorized=row.authorized,
        captured=row.captured,
        voided=row.voided,
        reclaimed=row.reclaimed,
        refunded=row.refunded,
        disputed=row.disputed,
    )
    return ProjectedPayment(payment, bytes(row.chain_payment_id), row.version, row.chain_seq)
