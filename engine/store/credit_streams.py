"""Credit streams in the event store: one per (chain, token, account), holding its confirmed
``Credited`` and ``Withdrawn`` facts (``engine.domain.credits``).

The chain mirror appends a poll's credit facts with ``CreditAppends`` in the transaction that
books their ledger entries, and replay reads them back with ``credit_event`` to book the same
entries again, so the escrow's credits are as much a part of the record as the payments.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Connection

from engine.domain.credits import CREDIT_EVENT_TYPES, CreditEvent, credit_event_from_dict
from engine.domain.errors import DomainError
from engine.store.db import Database
from engine.store.event_store import (
    EventStore,
    InvalidEvent,
    Json,
    NewEvent,
    StoredEvent,
    StreamAppend,
)


def stored_credit(event: CreditEvent) -> NewEvent:
    """The event store's form of a credit event: its fields but the kind, which has a column."""
    payload = event.to_dict()
    del payload["kind"]
    return NewEvent(event.kind, cast(dict[str, Json], payload), event.at)


def credit_event(stored: StoredEvent) -> CreditEvent | None:
    """The credit event a stored one holds, or None for events of other kinds."""
    if stored.kind not in CREDIT_EVENT_TYPES:
        return None
    try:
        return credit_event_from_dict({**stored.payload, "kind": stored.kind})
    except DomainError as error:
        raise InvalidEvent(
            f"event {stored.stream_id} v{stored.version} does not decode: {error.message}"
        ) from error


class CreditAppends:
    """A transaction's credit events, appended to their streams by ``flush`` with one
    ``append_many``; the caller's transaction must hold the event log's append lock from
    before ``flush`` on (the chain mirror's ``PaymentBatch`` takes it), so the stream versions
    read there are still the heads when the events are written."""

    def __init__(self, conn: Connection, db: Database) -> None:
        self._conn = conn
        self._store = EventStore(db)
        self._events: dict[str, list[CreditEvent]] = {}

    def append(self, event: CreditEvent) -> None:
        self._events.setdefault(event.stream_id, []).append(event)

    def flush(self) -> None:
        if not self._events:
            return
        versions = self._store.versions(self._conn, list(self._events))
        self._store.append_many(
            self._conn,
            [
                StreamAppend(stream_id, versions[stream_id], [stored_credit(e) for e in events])
                for stream_id, events in self._events.items()
            ],
        )
        self._events.clear()
