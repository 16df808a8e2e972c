"""The chain mirror (DESIGN §5.4): books the escrow's logs, as the indexer delivers them, into
the payment streams, the projection and the ledger.

Money enters the ledger only from the chain: a pending log records its entry pending, the
confirmed log posts it (recording it first if the pending notice was never seen), and a removed
log voids a pending entry or reverses a posted one. The domain event is appended to the payment
stream on confirmation only, since a stream is append-only and a pending log may yet vanish.
A confirmed log that vanishes all the same (a reorg deeper than the confirmation depth) leaves
its payment's stream holding a fact the chain no longer has: the payment is flagged
``conflicted`` for reconciliation, while a credit's stream records a ``credit_reversed``.

A whole poll is applied in one SQL transaction together with each notice's ``NoticeDedupe`` row
and the indexer's acknowledgement, so a crash either loses all of it (and the notices come
again) or none, and a notice delivered twice is applied once. The poll is booked set-wise: its
payments are read at once into a ``PaymentBatch``, the notices applied to them in memory in
delivery order, and events, projections, command states and ledger entries written with a few
statements per table rather than a few per notice.

``OperationFailed`` (a non-atomic batch skipped an operation) fails the payment's command in
flight. A skipped operation refused for its sequence number or for an existing payment is a
re-sent one the escrow had already applied, so it changes nothing.

``Credited`` and ``Withdrawn`` (a payout the escrow could not push, kept as a credit of its
recipient, and the recipient taking it out) name no payment: they are staged in the ledger like
a payment's logs (pending, posted, voided or reversed, keyed by the log), and on confirmation
appended to the account's credit stream (``engine.store.credit_streams``), in the same
transaction, so replay books them too. Every credit of the escrow is booked, whoever's payment
it came from, as its tokens are in the escrow's balance either way.

What a log means is ``engine.chain.facts``'s to say (the one mapping, shared with
reconciliation's repair), and what an event books is ``engine.store.ledger_events``'s (shared
with replay): the mirror only stages them. A capture's extra legs (``LegPaid``, emitted right
after its ``Captured`` in the same transaction) are folded into its ``Captured`` event. A
dispute's resolution pays back whoever funded the dispute when the merchant wins; that funder
is the latest ``DisputeOpened`` of the payment in the poll, or else in its stream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from sqlalchemy import Connection

from engine.chain import facts
from engine.chain.contracts import logs as chain
from engine.chain.indexer.log_indexer import Indexer, LogNotice, LogStage, NoticeDedupe
from engine.domain import credits
from engine.domain.errors import DomainError
from engine.domain.events import Conflicted, Event
from engine.domain.money import Leg
from engine.pipeline.commands import fail_command, settle_command
from engine.pipeline.payment_batch import PaymentBatch
from engine.store.credit_streams import CreditAppends
from engine.store.db import Database
from engine.store.disputes import open_dispute_funders
from engine.store.ledger import ENTRIES_PER_CALL_MAX, Ledger
from engine.store.ledger_entries import EntryState, NewEntry
from engine.store.ledger_events import credit_entry, entry_for
from engine.store.projections import ProjectedPayment

CONSUMER = "payments-mirror"
# Refusals that mean "already applied": the escrow met this operation before.
_ALREADY_APPLIED = frozenset({"StaleSequence", "PaymentExists"})


@dataclass
class MirrorReport:
    notices: int = 0
    applied: int = 0
    conflicts: int = 0


class ChainMirror:
    def __init__(self, db: Database, indexer: Indexer, chain_id: int) -> None:
        self._db = db
        self._indexer = indexer
        self._chain_id = chain_id
        self._ledger = Ledger()
        self._dedupe = NoticeDedupe(CONSUMER)

    def step(self) -> MirrorReport:
        """Poll the indexer once and apply what it hands out."""
        result = self._indexer.poll()
        report = MirrorReport(notices=len(result.notices))
        if not result.notices:
            return report
        with self._db.transaction() as conn:
            # Logs taken as final: a reorg deeper than the confirmation depth may remove one.
            final = self._dedupe.confirmed_applied(
                conn, [notice for notice in result.notices if notice.stage is LogStage.REMOVED]
            )
            fresh = [
                notice
                for notice, first in zip(
                    result.notices,
                    self._dedupe.first_deliveries(conn, result.notices),
                    strict=True,
                )
                if first
            ]
            batch = PaymentBatch(
                conn,
                self._db,
                chain_payment_ids={
                    payment_id
                    for notice in fresh
                    if isinstance(
                        payment_id := getattr(notice.log.event, "payment_id", None), bytes
                    )
                },
            )
            credit_appends = CreditAppends(conn, self._db)
            books = _LedgerPlan()
            legs = legs_of_captures(fresh)
            dispute_funders = _stored_dispute_funders(conn, batch, fresh)
            for notice in fresh:
                report.applied += 1
                was_final = notice.log.key in final
                fact = notice.log.event
                if isinstance(fact, chain.Credited | chain.Withdrawn):
                    self._credit(credit_appends, books, notice, fact, was_final)
                    continue
                report.conflicts += self._apply(
                    batch, books, notice, legs, dispute_funders, was_final
                )
                if isinstance(fact, chain.DisputeOpened) and notice.stage is not LogStage.REMOVED:
                    dispute_funders[fact.payment_id] = fact.funder
                if notice.stage is LogStage.CONFIRMED:
                    final.add(notice.log.key)
            batch.flush()
            credit_appends.flush()
            books.write(conn, self._ledger)
            self._indexer.acknowledge(result, conn)
        return report

    def _apply(
        self,
        batch: PaymentBatch,
        books: _LedgerPlan,
        notice: LogNotice,
        legs: Mapping[int, tuple[Leg, ...]],
        dispute_funders: Mapping[bytes, str | None],
        was_final: bool,
    ) -> int:
        log = notice.log
        payment_id = getattr(log.event, "payment_id", None)
        if not isinstance(payment_id, bytes):
            return 0  # not a payment's log (funding approvals)
        current = batch.by_chain_id(payment_id)
        if current is None:
            return 0  # a payment of this escrow that the engine did not make
        if isinstance(log.event, chain.OperationFailed):
            if notice.stage is LogStage.CONFIRMED:
                error = log.event.error
                if error.error not in _ALREADY_APPLIED:
                    fail_command(batch, current.payment.id, str(error), log.block_timestamp)
            return 0
        event = facts.payment_event(
            log.event,
            payment_id=current.payment.id,
            terms=current.payment.terms,
            at=log.block_timestamp,
            legs=legs.get(notice.sequence, ()),
            dispute_funder=dispute_funders.get(payment_id),
        )
        if event is None:
            return 0
        key = _log_key(notice)
        if notice.stage is LogStage.PENDING:
            entry = entry_for(event, current.payment, chain_id=self._chain_id, key=key)
            if entry is not None:
                books.add(_Booking.PENDING, entry, log.block_timestamp)
            return 0
        if notice.stage is LogStage.REMOVED:
            books.add(_Booking.REMOVED, key, log.block_timestamp)
            if not was_final:
                return 0
            # A reorg deeper than the confirmation depth: the stream holds a fact the chain no
            # longer has. The ledger follows the chain (the entry is reversed); the flag stops
            # commands and leaves the payment to reconciliation, since its events no longer
            # vouch for its books.
            reason = (
                f"a reorg deeper than the confirmation depth removed its confirmed {event.kind} "
                f"(block {log.block_number})"
            )
            batch.append(
                current.payment.id,
                Conflicted(payment_id=current.payment.id, at=log.block_timestamp, reason=reason),
            )
            return 1
        return self._confirm(batch, books, current, event, key, log.block_timestamp)

    def _credit(
        self,
        appends: CreditAppends,
        books: _LedgerPlan,
        notice: LogNotice,
        fact: chain.Credited | chain.Withdrawn,
        was_final: bool,
    ) -> None:
        """Stage a credit's ledger entry as a payment's is staged; record it once confirmed."""
        log = notice.log
        key = _log_key(notice)
        event = facts.credit_event(fact, chain_id=self._chain_id, at=log.block_timestamp)
        if notice.stage is LogStage.REMOVED:
            books.add(_Booking.REMOVED, key, log.block_timestamp)
            if was_final:
                # Its stream recorded it as final; a reorg deeper than the confirmation depth
                # took it back, so the stream records the undoing too, as the ledger does.
                appends.append(credits.reversal_of(event))
            return
        if notice.stage is LogStage.PENDING:
            books.add(_Booking.PENDING, credit_entry(event, key=key), log.block_timestamp)
            return
        appends.append(event)
        books.add(_Booking.CONFIRMED, credit_entry(event, key=key), log.block_timestamp)

    def _confirm(
        self,
        batch: PaymentBatch,
        books: _LedgerPlan,
        current: ProjectedPayment,
        event: Event,
        key: str,
        at: int,
    ) -> int:
        payment = current.payment
        try:
            entry = entry_for(event, payment, chain_id=self._chain_id, key=key)
            batch.append(payment.id, event)
        except DomainError as error:
            # The chain did something the books cannot hold: flag it for reconciliation.
            reason = error.message[:200]
            batch.append(payment.id, Conflicted(payment_id=payment.id, at=at, reason=reason))
            return 1
        if entry is not None:
            books.add(_Booking.CONFIRMED, entry, at)
        settle_command(batch, payment.id, event.kind)
        return 0


class _Booking(Enum):
    PENDING = "pending"  # record the entry pending
    CONFIRMED = "confirmed"  # record it posted, or post it if it was recorded pending
    REMOVED = "removed"  # void it if pending, reverse it if posted


class _LedgerPlan:
    """The poll's ledger work in notice order. Consecutive bookings of one kind and block
    time become one ledger call, so a poll of confirmed captures is a single ``record_all``;
    the ledger checks its flags on the balances each call leaves."""

    def __init__(self) -> None:
        self._runs: list[tuple[_Booking, int, list[NewEntry | str]]] = []

    def add(self, booking: _Booking, item: NewEntry | str, at: int) -> None:
        if self._runs:
            last_booking, last_at, items = self._runs[-1]
            if (last_booking, last_at) == (booking, at) and len(items) < ENTRIES_PER_CALL_MAX:
                items.append(item)
                return
        self._runs.append((booking, at, [item]))

    def write(self, conn: Connection, ledger: Ledger) -> None:
        for booking, at, items in self._runs:
            if booking is _Booking.REMOVED:
                for key in items:
                    assert isinstance(key, str)
                    _unbook(conn, ledger, key, at)
                continue
            entries = [item for item in items if isinstance(item, NewEntry)]
            if booking is _Booking.PENDING:
                ledger.record_all(conn, entries, at)
                continue
            # A confirmed fact is booked posted in one write (as replay books it); only an
            # entry recorded pending at an earlier stage still has to be posted.
            booked = ledger.record_all(conn, entries, at, state=EntryState.POSTED)
            still_pending = [entry.key for entry in booked if entry.state is EntryState.PENDING]
            if still_pending:
                ledger.post_all(conn, still_pending, at)


def _unbook(conn: Connection, ledger: Ledger, key: str, at: int) -> None:
    booked = ledger.entry(conn, key)
    if booked is not None and booked.state is EntryState.PENDING:
        ledger.void(conn, key, at)
    elif booked is not None and booked.state is EntryState.POSTED:
        ledger.reverse(conn, key, key + ":reversed", at)


def _log_key(notice: LogNotice) -> str:
    """The ledger key of what a log books: the same log at every stage, a new one elsewhere."""
    log = notice.log
    return "log:" + ":".join((log.block_hash.hex(), log.tx_hash.hex(), str(log.log_index)))


def _stored_dispute_funders(
    conn: Connection, batch: PaymentBatch, notices: Sequence[LogNotice]
) -> dict[bytes, str | None]:
    """Who funded the open dispute of each payment with a resolution among ``notices``, as
    its stream recorded it, by escrow payment id: a dispute opened in an earlier poll."""
    resolved: dict[str, bytes] = {}
    for notice in notices:
        if isinstance(fact := notice.log.event, chain.DisputeResolved):
            current = batch.by_chain_id(fact.payment_id)
            if current is not None:
                resolved[current.payment.id] = fact.payment_id
    if not resolved:
        return {}
    funders = open_dispute_funders(conn, resolved)
    return {resolved[pid]: funder for pid, funder in funders.items()}


def legs_of_captures(notices: Sequence[LogNotice]) -> dict[int, tuple[Leg, ...]]:
    """The extra legs of each capture among ``notices``, by the capture's notice sequence
    (``engine.chain.facts.legs_of_captures``). One delivery of a transaction is its stage and
    block too; the indexer never splits one transaction's notices over two polls."""
    logs = [
        ((notice.stage, notice.log.tx_hash, notice.log.block_hash), notice.log.event)
        for notice in notices
    ]
    return {notices[index].sequence: legs for index, legs in facts.legs_of_captures(logs).items()}
