"""The payment projection: each payment's current state as one row, folded from its events.

The row is written in the same transaction as the events it reflects (the command that
requests a payment, the chain mirror that books confirmed escrow events), so it is never
behind the stream it comes from. ``version`` is the stream version folded in, which lets a
writer refuse to project out of order.

A conflicted payment's row says ``conflicted``; the status beneath the flag, by which the
chain facts it still takes are judged (``Payment.underlying``), has no column. Loading such a
row folds its stream again up to the row's version to find it: conflicted payments are few,
and a column would need every existing conflicted row backfilled by that same fold.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

from sqlalchemy import Connection, Row, func, select

from engine.domain.events import Event, PaymentRequested, event_from_dict
from engine.domain.ids import PaymentTerms
from engine.domain.payment import Payment, PaymentStatus, apply, replay, start
from engine.store.db import insert_rows, one_of, update_rows
from engine.store.event_store import EventStore, Json, NewEvent, canonical_json
from engine.store.schema import events, payments

_T = TypeVar("_T")
# Ids one look-up binds: well inside every backend's parameter limit.
_IDS_PER_QUERY_MAX = 500
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
    return project_new_many(conn, [(event, chain_payment_id, version)])[0]


def project_new_many(
    conn: Connection, created: Sequence[tuple[PaymentRequested, bytes, int]]
) -> list[ProjectedPayment]:
    """``project_new`` for many payments, in one statement."""
    made = [
        (ProjectedPayment(start(event), chain_payment_id, version, 0), event.at)
        for event, chain_payment_id, version in created
    ]
    insert_rows(
        conn,
        payments,
        [
            {
                "id": new.payment.id,
                "chain_payment_id": new.chain_payment_id,
                "terms_hash": new.payment.terms.struct_hash(),
                "terms": canonical_json(dict(new.payment.terms.to_dict())),
                "version": new.version,
                "chain_seq": 0,
                "updated_at": at,
                **_amounts(new.payment),
            }
            for new, at in made
        ],
    )
    return [new for new, _ in made]


def project(
    conn: Connection, current: ProjectedPayment, new_events: Sequence[Event], version: int
) -> ProjectedPayment:
    """Fold ``new_events`` (the stream's events after ``current.version``) into the row."""
    return project_many(conn, [(current, new_events, version)])[0]


def project_many(
    conn: Connection, folds: Sequence[tuple[ProjectedPayment, Sequence[Event], int]]
) -> list[ProjectedPayment]:
    """``project`` for many payments (each once), in one statement."""
    projected: list[ProjectedPayment] = []
    rows: list[tuple[dict[str, object], dict[str, object]]] = []
    for current, new_events, version in folds:
        payment = current.payment
        for event in new_events:
            payment = apply(payment, event)
        chain_seq = current.chain_seq + chain_steps(new_events)
        projected.append(ProjectedPayment(payment, current.chain_payment_id, version, chain_seq))
        rows.append(
            (
                {"id": payment.id, "version": current.version},
                {
                    "version": version,
                    "chain_seq": chain_seq,
                    "updated_at": max(event.at for event in new_events),
                    **_amounts(payment),
                },
            )
        )
    if update_rows(conn, payments, rows) != len(rows):
        raise AssertionError("a payment projection moved past the version its writer read")
    return projected


def caught_up(conn: Connection, store: EventStore, current: ProjectedPayment) -> ProjectedPayment:
    """The row with any events another writer appended to the stream folded in (such as the
    Conflicted event reconciliation adds), so the next append expects the right version."""
    newer = store.read(conn, current.payment.id, current.version)
    if not newer:
        return current
    return project(
        conn, current, [domain_event_from(s.kind, s.payload) for s in newer], newer[-1].version
    )


def caught_up_many(
    conn: Connection, currents: Mapping[str, ProjectedPayment]
) -> dict[str, ProjectedPayment]:
    """``caught_up`` for many payments: one query finds the rows behind their streams."""
    ids = sorted(currents)
    newer: dict[str, list[Event]] = {}
    last: dict[str, int] = {}
    for chunk in _chunks(ids):
        rows = conn.execute(
            select(events.c.stream_id, events.c.version, events.c.kind, events.c.payload)
            .join(payments, payments.c.id == events.c.stream_id)
            .where(one_of(conn, payments.c.id, chunk), events.c.version > payments.c.version)
            .order_by(events.c.stream_id, events.c.version)
        )
        for row in rows:
            newer.setdefault(row.stream_id, []).append(
                domain_event_from(row.kind, json.loads(row.payload))
            )
            last[row.stream_id] = row.version
    result = dict(currents)
    if newer:
        folds = [(currents[pid], found, last[pid]) for pid, found in newer.items()]
        for projected in project_many(conn, folds):
            result[projected.payment.id] = projected
    return result


def domain_event_from(kind: str, payload: Mapping[str, object]) -> Event:
    """The one mapper from a stored event's kind and payload to its domain event; events
    stored before a field was added read with that field's default."""
    return event_from_dict({"kind": kind, **payload})


def load(conn: Connection, payment_id: str, *, lock: bool = False) -> ProjectedPayment | None:
    query = select(payments).where(payments.c.id == payment_id)
    row = conn.execute(query.with_for_update() if lock else query).one_or_none()
    return None if row is None else _projected(conn, [row])[0]


def load_many(conn: Connection, payment_ids: Collection[str]) -> dict[str, ProjectedPayment]:
    """The rows of those of ``payment_ids`` that exist."""
    found: dict[str, ProjectedPayment] = {}
    for chunk in _chunks(sorted(payment_ids)):
        rows = conn.execute(select(payments).where(one_of(conn, payments.c.id, chunk))).all()
        found.update((p.payment.id, p) for p in _projected(conn, rows))
    return found


def load_many_by_chain_id(
    conn: Connection, chain_payment_ids: Collection[bytes]
) -> dict[bytes, ProjectedPayment]:
    """The rows of those of ``chain_payment_ids`` (escrow payment ids) the engine knows."""
    found: dict[bytes, ProjectedPayment] = {}
    for chunk in _chunks(sorted(chain_payment_ids)):
        query = select(payments).where(one_of(conn, payments.c.chain_payment_id, chunk))
        found.update((p.chain_payment_id, p) for p in _projected(conn, conn.execute(query).all()))
    return found


def load_all(conn: Connection) -> list[ProjectedPayment]:
    return _projected(conn, conn.execute(select(payments).order_by(payments.c.id)).all())


def count_by_status(conn: Connection) -> dict[str, int]:
    rows = conn.execute(
        select(payments.c.status, func.count()).group_by(payments.c.status).order_by("status")
    )
    return {str(status): int(count) for status, count in rows}


def stored_form(event: Event) -> NewEvent:
    """The event store's form of a domain event: its fields but the kind, which has a column."""
    payload = event.to_dict()
    del payload["kind"]
    return NewEvent(event.kind, cast(dict[str, Json], payload), event.at)


def _chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for first in range(0, len(items), _IDS_PER_QUERY_MAX):
        yield items[first : first + _IDS_PER_QUERY_MAX]


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


def _projected(conn: Connection, rows: Sequence[Row[object]]) -> list[ProjectedPayment]:
    """The rows as projections, the conflicted ones with their underlying status."""
    underlying = _underlying_statuses(
        conn, {row.id: row.version for row in rows if row.status == PaymentStatus.CONFLICTED}
    )
    return [
        ProjectedPayment(
            Payment(
                id=row.id,
                terms=PaymentTerms.from_dict(json.loads(row.terms)),
                status=PaymentStatus(row.status),
                amount=row.amount,
                authorized=row.authorized,
                captured=row.captured,
                voided=row.voided,
                reclaimed=row.reclaimed,
                refunded=row.refunded,
                disputed=row.disputed,
                underlying=underlying.get(row.id),
            ),
            bytes(row.chain_payment_id),
            row.version,
            row.chain_seq,
        )
        for row in rows
    ]


def _underlying_statuses(
    conn: Connection, versions: Mapping[str, int]
) -> dict[str, PaymentStatus | None]:
    """The underlying status of each conflicted payment in ``versions`` (payment id → the
    stream version its row folded in), from its stream folded again up to that version."""
    streams: dict[str, list[Event]] = {}
    for chunk in _chunks(sorted(versions)):
        rows = conn.execute(
            select(events.c.stream_id, events.c.version, events.c.kind, events.c.payload)
            .where(one_of(conn, events.c.stream_id, chunk))
            .order_by(events.c.stream_id, events.c.version)
        )
        for row in rows:
            if row.version <= versions[row.stream_id]:
                streams.setdefault(row.stream_id, []).append(
                    domain_event_from(row.kind, json.loads(row.payload))
                )
    return {payment_id: replay(stream).underlying for payment_id, stream in streams.items()}
