"""Replay verification (DESIGN §5.5): rebuild the ledger from the event store and compare.

The event store is the record; the ledger and the payments projection are derived from it. If
they were written correctly, replaying every payment's events through the same booking the
chain mirror uses (``ledger_events``) into a second set of ledger tables gives the same money
in the same accounts: each event names what the chain did (who funded a refund or dispute, who
a resolution paid), so the booking needs nothing but the event and the payment before it. A
difference means a live row was altered, an entry was lost or written twice, or the mirror and
the events drifted apart.

What is compared, and why not row by row: the live ledger's entry keys are the mirror's (chain
log keys) and a repaired payment carries reversals next to its re-recorded entries, neither of
which the events know. What they must agree on is the money: for every payment and account,
the net of its non-voided postings. The live running totals are checked against the live
postings by ``Ledger.verify``, so a tampered total is named too. The escrow's credits (payouts
it could not push, which no payment event books) replay from their own streams
(``engine.store.credit_streams``) and are compared per account.

The scratch tables live inside one transaction that is rolled back, so a replay leaves
nothing behind and two replays never see each other's tables.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, MetaData, Table, inspect, select

from engine.domain.errors import DomainError
from engine.domain.events import (
    EVENT_TYPES,
    Conflicted,
    ConflictResolved,
    Event,
    PaymentRequested,
)
from engine.domain.ids import IdPrefix
from engine.domain.payment import Payment, apply, start
from engine.store.credit_streams import credit_event
from engine.store.db import Database
from engine.store.event_store import READ_ALL_LIMIT_MAX, EventStore, InvalidEvent, StoredEvent
from engine.store.ledger import ENTRIES_PER_CALL_MAX, LIVE_TABLES, Ledger, scratch_tables
from engine.store.ledger_entries import EntryState, NewEntry
from engine.store.ledger_events import credit_entry, entry_for
from engine.store.projections import domain_event_from
from engine.store.schema import chain_binding, streams

# A replayed payment's history is folded in memory; this bounds one payment's events.
EVENTS_PER_PAYMENT_MAX = 10_000
# Postings of entries that belong to no payment (the escrow's credits) are compared under this.
CREDITS_LABEL = "escrow credits"
# Keeps the JSON report readable when a whole ledger disagrees; the count stays exact.
DIFFERENCES_SHOWN_MAX = 100
PAYMENTS_PROJECTION_TABLE = "payments"
_PROJECTION_FIELDS = (
    "status",
    "amount",
    "authorized",
    "captured",
    "voided",
    "reclaimed",
    "refunded",
    "disputed",
    "version",
)


class ReplayError(Exception):
    """The events cannot be replayed as stored (a bug or a damaged store): stable code."""

    code = "replay_failed"


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    stored: StoredEvent
    event: Event


@dataclass(slots=True)
class PaymentHistory:
    """One payment's stream as domain events, with what appending to it needs."""

    payment_id: str
    stream_id: str
    version: int
    events: list[HistoryEvent] = field(default_factory=list)

    @property
    def requested(self) -> PaymentRequested:
        first = self.events[0].event
        assert isinstance(first, PaymentRequested)
        return first

    @property
    def last_conflict(self) -> str | None:
        """The reason of the newest Conflicted event while the payment is still conflicted;
        None once a ConflictResolved followed it (or it never was)."""
        for item in reversed(self.events):
            if isinstance(item.event, ConflictResolved):
                return None
            if isinstance(item.event, Conflicted):
                return item.event.reason
        return None

    def projection(self) -> Payment:
        """The payment as its events leave it, the flags (Conflicted, ConflictResolved)
        included."""
        return self.folded()[-1]

    def folded(self) -> list[Payment]:
        """The payment after each of its events, first event first."""
        payments = [start(self.requested)]
        for item in self.events[1:]:
            payments.append(apply(payments[-1], item.event))
        return payments

    def bookings(self) -> Iterator[tuple[HistoryEvent, Payment]]:
        """Each event but the first with the payment before it, for booking money (the flags
        Conflicted and ConflictResolved book nothing)."""
        yield from zip(self.events[1:], self.folded()[:-1], strict=True)


def domain_event(stored: StoredEvent) -> Event | None:
    """The domain event a stored one holds, or None for events of other kinds (a saga's, say).
    Decoded by the projection's one mapper."""
    if stored.kind not in EVENT_TYPES:
        return None
    try:
        return domain_event_from(stored.kind, stored.payload)
    except DomainError as error:
        raise ReplayError(
            f"event {stored.stream_id} v{stored.version} does not decode: {error}"
        ) from error


def payment_histories(conn: Connection, store: EventStore) -> dict[str, PaymentHistory]:
    """Every payment's history, by payment id; streams that are not payments are skipped."""
    histories: dict[str, PaymentHistory] = {}
    for stored in _stored_events(conn, store):
        _add_to_history(histories, stored)
    return histories


def _add_to_history(histories: dict[str, PaymentHistory], stored: StoredEvent) -> None:
    """Fold ``stored`` into its payment's history, given events in position order."""
    event = domain_event(stored)
    if event is None:
        return
    history = histories.get(event.payment_id)
    if history is None:
        if not isinstance(event, PaymentRequested):
            return  # not a payment stream: payments start with a request
        history = PaymentHistory(event.payment_id, stored.stream_id, stored.version)
        histories[event.payment_id] = history
    if len(history.events) >= EVENTS_PER_PAYMENT_MAX:
        raise ReplayError(f"{event.payment_id} has over {EVENTS_PER_PAYMENT_MAX} events")
    history.events.append(HistoryEvent(stored, event))
    history.version = max(history.version, stored.version)


def payment_histories_page(
    conn: Connection, store: EventStore, *, after: str, limit: int
) -> dict[str, PaymentHistory]:
    """The histories of the first ``limit`` payment streams whose ids sort after ``after``, by
    payment id: a page for readers that must not hold every payment at once (reconciliation).
    An empty page is the end; the next page starts after the page's last id."""
    if not 1 <= limit <= READ_ALL_LIMIT_MAX:
        raise ValueError(f"limit must be 1 to {READ_ALL_LIMIT_MAX}")
    stream_ids = list(
        conn.execute(
            select(streams.c.stream_id)
            .where(
                streams.c.stream_id.startswith(f"{IdPrefix.PAYMENT.value}_", autoescape=True),
                streams.c.stream_id > after,
            )
            .order_by(streams.c.stream_id)
            .limit(limit)
        ).scalars()
    )
    histories: dict[str, PaymentHistory] = {}
    for stored in store.read_streams(conn, stream_ids) if stream_ids else ():
        _add_to_history(histories, stored)
    return histories


def _stored_events(conn: Connection, store: EventStore) -> Iterator[StoredEvent]:
    """Every stored event in position order, read a bounded batch at a time."""
    after = 0
    while batch := store.read_all(conn, after, READ_ALL_LIMIT_MAX):
        after = batch[-1].position
        yield from batch


def _credit_entries(conn: Connection, store: EventStore) -> list[NewEntry]:
    """The entries of the credit streams' events, in position order: a withdrawal follows the
    credit it takes out, as on chain. No payment entry touches their accounts."""
    entries: list[NewEntry] = []
    for stored in _stored_events(conn, store):
        try:
            event = credit_event(stored)
        except InvalidEvent as error:
            raise ReplayError(error.args[0]) from error
        if event is not None:
            entries.append(credit_entry(event, key=f"replay:{stored.position}"))
    return entries


def bound_chain_id(conn: Connection) -> int | None:
    return conn.execute(select(chain_binding.c.chain_id)).scalar_one_or_none()


@dataclass(frozen=True, slots=True)
class ReplayReport:
    identical: bool
    events: int
    entries: int
    differences: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "events": self.events,
            "entries": self.entries,
            "differences": list(self.differences[:DIFFERENCES_SHOWN_MAX]),
            "differences_total": len(self.differences),
        }


def verify_replay(db: Database, *, chain_id: int | None = None) -> ReplayReport:
    """Rebuild ledger (and payments projection, if its table exists) from the events and
    compare with the live ones. ``chain_id`` defaults to the database's chain binding."""
    with db.engine.connect() as conn:
        if db.dialect == "postgresql":
            # Events and ledger must be read in one consistent state.
            conn.execution_options(isolation_level="REPEATABLE READ")
        transaction = conn.begin()
        try:
            return _verify(conn, db, chain_id)
        finally:
            transaction.rollback()  # the scratch tables go with it


def _verify(conn: Connection, db: Database, chain_id: int | None) -> ReplayReport:
    histories = payment_histories(conn, EventStore(db))
    events = sum(len(history.events) for history in histories.values())
    chain_id = chain_id if chain_id is not None else bound_chain_id(conn)
    entries = _replayed_entries(histories, chain_id)
    credit_entries = _credit_entries(conn, EventStore(db))
    events += len(credit_entries)
    entries += credit_entries
    scratch = scratch_tables(f"replay_{secrets.token_hex(4)}_")
    scratch.accounts.metadata.create_all(conn)
    replayed = Ledger(scratch)
    at = max((h.events[-1].stored.occurred_at for h in histories.values()), default=0)
    for start_index in range(0, len(entries), ENTRIES_PER_CALL_MAX):
        chunk = entries[start_index : start_index + ENTRIES_PER_CALL_MAX]
        replayed.record_all(conn, chunk, at, state=EntryState.POSTED)
    differences = [f"live ledger: {problem}" for problem in Ledger().verify(conn).problems]
    differences += [f"replayed ledger: {problem}" for problem in replayed.verify(conn).problems]
    differences += _money_differences(
        payment_nets(conn, LIVE_TABLES.entries, LIVE_TABLES.postings, LIVE_TABLES.accounts),
        payment_nets(conn, scratch.entries, scratch.postings, scratch.accounts),
    )
    differences += _projection_differences(conn, histories)
    return ReplayReport(not differences, events, len(entries), tuple(differences))


def _replayed_entries(
    histories: Mapping[str, PaymentHistory], chain_id: int | None
) -> list[NewEntry]:
    entries: list[tuple[int, NewEntry]] = []
    for history in histories.values():
        for item, before in history.bookings():
            if chain_id is None:
                raise ReplayError("the database is bound to no chain: pass its chain id")
            entry = entry_for(
                item.event, before, chain_id=chain_id, key=f"replay:{item.stored.position}"
            )
            if entry is not None:
                entries.append((item.stored.position, entry))
    return [entry for _, entry in sorted(entries, key=lambda pair: pair[0])]


Nets = dict[tuple[str, str], int]


def payment_nets(conn: Connection, entries: Table, postings: Table, accounts: Table) -> Nets:
    """The net of every payment's non-voided postings per account, keyed by (payment id,
    account), those of no payment (the escrow's credits) under ``CREDITS_LABEL``; read from the
    rows, so even an unbalanced (tampered) entry is counted."""
    rows = conn.execute(
        select(
            entries.c.payment_id,
            accounts.c.chain_id,
            accounts.c.token,
            accounts.c.kind,
            accounts.c.owner,
            postings.c.amount,
        )
        .join(entries, entries.c.id == postings.c.entry_id)
        .join(accounts, accounts.c.id == postings.c.account_id)
        .where(entries.c.state != EntryState.VOIDED.value)
    )
    nets: Nets = {}
    for row in rows:
        account = f"{row.chain_id}:{row.token}:{row.kind}:{row.owner}".rstrip(":")
        key = (row.payment_id or CREDITS_LABEL, account)
        nets[key] = nets.get(key, 0) + row.amount
    return {key: amount for key, amount in nets.items() if amount != 0}


def _money_differences(live: Nets, replayed: Nets) -> list[str]:
    return [
        f"payment {payment} account {account}: live {live.get((payment, account), 0)}, "
        f"replay {replayed.get((payment, account), 0)}"
        for payment, account in sorted(set(live) | set(replayed))
        if live.get((payment, account), 0) != replayed.get((payment, account), 0)
    ]


def _projection_differences(conn: Connection, histories: Mapping[str, PaymentHistory]) -> list[str]:
    """The payments projection (if the pipeline created its table) against the replayed one."""
    if not inspect(conn).has_table(PAYMENTS_PROJECTION_TABLE):
        return []
    table = Table(PAYMENTS_PROJECTION_TABLE, MetaData(), autoload_with=conn)
    key = next((name for name in ("payment_id", "id") if name in table.c), None)
    if key is None:
        return [f"{PAYMENTS_PROJECTION_TABLE}: no payment_id column to compare by"]
    compared = [name for name in _PROJECTION_FIELDS if name in table.c]
    live = {row[key]: row for row in conn.execute(select(table)).mappings()}
    differences: list[str] = []
    for payment_id in sorted(set(live) | set(histories)):
        if payment_id not in live:
            differences.append(f"projection: payment {payment_id} missing from the live table")
            continue
        if payment_id not in histories:
            differences.append(f"projection: payment {payment_id} has no events")
            continue
        history = histories[payment_id]
        replayed = history.projection()
        for name in compared:
            want = _plain(getattr(replayed, name) if name != "version" else history.version)
            have = _plain(live[payment_id][name])
            if want != have:
                differences.append(
                    f"projection: payment {payment_id} {name}: live {have}, replay {want}"
                )
    return differences


def _plain(value: object) -> str:
    # Amount columns come back as int or decimal text, statuses as str or enum.
    return str(value.value if hasattr(value, "value") else value)


__all__ = [
    "HistoryEvent",
    "PaymentHistory",
    "ReplayError",
    "ReplayReport",
    "domain_event",
    "payment_histories",
    "payment_histories_page",
    "payment_nets",
    "verify_replay",
]
