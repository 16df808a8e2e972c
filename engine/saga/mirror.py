"""The chain mirror (DESIGN §5.4): books the escrow's logs, as the indexer delivers them, into
the payment streams, the projection and the ledger.

Money enters the ledger only from the chain: a pending log records its entry pending, the
confirmed log posts it (recording it first if the pending notice was never seen), and a removed
log voids a pending entry or reverses a posted one. The domain event is appended to the payment
stream on confirmation only, since a stream is append-only and a pending log may yet vanish.

A whole poll is applied in one SQL transaction together with each notice's ``NoticeDedupe`` row
and the indexer's acknowledgement, so a crash either loses all of it (and the notices come
again) or none, and a notice delivered twice is applied once.

``OperationFailed`` (a non-atomic batch skipped an operation) fails the payment's command in
flight. A skipped operation refused for its sequence number or for an existing payment is a
re-sent one the escrow had already applied, so it changes nothing.

Not booked yet: ``Credited``/``Withdrawn`` (payouts the escrow could not push) and the extra
legs of a capture (``LegPaid``); the commands never ask for either.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from engine.chain import escrow_events as chain
from engine.chain.indexer import Indexer, LogNotice, LogStage, NoticeDedupe
from engine.domain.errors import DomainError
from engine.domain.events import (
    Authorized,
    Captured,
    Conflicted,
    DisputeOpened,
    DisputeResolved,
    Event,
    Party,
    Reclaimed,
    Refunded,
    Voided,
)
from engine.domain.payment import apply
from engine.saga.commands import PaymentService
from engine.store.db import Database
from engine.store.event_store import EventStore
from engine.store.ledger import Ledger
from engine.store.ledger_entries import EntryState
from engine.store.ledger_events import entry_for
from engine.store.projections import (
    ProjectedPayment,
    caught_up,
    load_by_chain_id,
    project,
    stored_form,
)

CONSUMER = "payments-mirror"
# Refusals that mean "already applied": the escrow met this operation before.
_ALREADY_APPLIED = frozenset({"StaleSequence", "PaymentExists"})
# Events whose ledger entry depends on who funded them; their stored payload names the funder.
_FUNDED_KINDS = frozenset({"refunded", "dispute_opened"})


@dataclass
class MirrorReport:
    notices: int = 0
    applied: int = 0
    conflicts: int = 0


class ChainMirror:
    def __init__(
        self, db: Database, indexer: Indexer, service: PaymentService, chain_id: int
    ) -> None:
        self._db = db
        self._indexer = indexer
        self._service = service
        self._chain_id = chain_id
        self._events = EventStore(db)
        self._ledger = Ledger()
        self._dedupe = NoticeDedupe(CONSUMER)

    def step(self) -> MirrorReport:
        """Poll the indexer once and apply what it hands out."""
        result = self._indexer.poll()
        report = MirrorReport(notices=len(result.notices))
        if not result.notices:
            return report
        with self._db.transaction() as conn:
            self._db.lock_for_append(conn)
            for notice in result.notices:
                if self._dedupe.first_delivery(conn, notice):
                    report.applied += 1
                    report.conflicts += self._apply(conn, notice)
            self._indexer.acknowledge(result, conn)
        return report

    def _apply(self, conn: Connection, notice: LogNotice) -> int:
        log = notice.log
        payment_id = getattr(log.event, "payment_id", None)
        if not isinstance(payment_id, bytes):
            return 0  # not a payment's log (credits, funding approvals)
        found = load_by_chain_id(conn, payment_id)
        if found is None:
            return 0  # a payment of this escrow that the engine did not make
        current = caught_up(conn, self._events, found)
        if isinstance(log.event, chain.OperationFailed):
            if notice.stage is LogStage.CONFIRMED:
                error = log.event.error
                if error.error not in _ALREADY_APPLIED:
                    self._service.fail_command(
                        conn, current.payment.id, str(error), log.block_timestamp
                    )
            return 0
        event = _domain_event(log.event, current, log.block_timestamp)
        if event is None:
            return 0
        key = "log:" + ":".join((log.block_hash.hex(), log.tx_hash.hex(), str(log.log_index)))
        funder = _funder(log.event, current)
        if notice.stage is LogStage.PENDING:
            entry = entry_for(
                event, current.payment, chain_id=self._chain_id, key=key, funder=funder
            )
            if entry is not None:
                self._ledger.record(conn, entry, log.block_timestamp)
            return 0
        if notice.stage is LogStage.REMOVED:
            booked = self._ledger.entry(conn, key)
            if booked is not None and booked.state is EntryState.PENDING:
                self._ledger.void(conn, key, log.block_timestamp)
            elif booked is not None and booked.state is EntryState.POSTED:
                self._ledger.reverse(conn, key, key + ":reversed", log.block_timestamp)
            return 0
        return self._confirm(conn, current, event, key, funder, log.block_timestamp)

    def _confirm(
        self,
        conn: Connection,
        current: ProjectedPayment,
        event: Event,
        key: str,
        funder: str | None,
        at: int,
    ) -> int:
        payment = current.payment
        try:
            apply(payment, event)
            entry = entry_for(event, payment, chain_id=self._chain_id, key=key, funder=funder)
        except DomainError as error:
            # The chain did something the books cannot hold: flag it for reconciliation.
            conflicted = Conflicted(payment_id=payment.id, at=at, reason=error.message[:200])
            stored = self._events.append(
                conn, payment.id, current.version, [stored_form(conflicted)]
            )
            project(conn, current, [conflicted], stored[-1].version)
            return 1
        new = stored_form(event, funder if event.kind in _FUNDED_KINDS else None)
        stored = self._events.append(conn, payment.id, current.version, [new])
        project(conn, current, [event], stored[-1].version)
        if entry is not None:
            # A confirmed fact is booked posted in one write (as replay books it); only an
            # entry recorded pending at an earlier stage still has to be posted.
            booked = self._ledger.record(conn, entry, at, state=EntryState.POSTED)
            if booked.state is EntryState.PENDING:
                self._ledger.post(conn, key, at)
        self._service.settle_command(conn, payment.id, event.kind)
        return 0


def _domain_event(event: object, current: ProjectedPayment, at: int) -> Event | None:
    pid = current.payment.id
    match event:
        case chain.Authorized(amount=amount):
            return Authorized(payment_id=pid, at=at, amount=amount)
        case chain.Captured(amount=amount, fee=fee):
            return Captured(payment_id=pid, at=at, amount=amount, fee=fee)
        case chain.Voided(amount=amount):
            return Voided(payment_id=pid, at=at, amount=amount)
        case chain.Reclaimed(amount=amount):
            return Reclaimed(payment_id=pid, at=at, amount=amount)
        case chain.Refunded(amount=amount):
            return Refunded(payment_id=pid, at=at, amount=amount)
        case chain.DisputeOpened(amount=amount):
            return DisputeOpened(payment_id=pid, at=at, amount=amount)
        case chain.DisputeResolved(payer_wins=payer_wins):
            winner = Party.PAYER if payer_wins else Party.MERCHANT
            return DisputeResolved(payment_id=pid, at=at, winner=winner)
    return None


def _funder(event: object, current: ProjectedPayment) -> str | None:
    match event:
        case chain.Refunded(funder=funder) | chain.DisputeOpened(funder=funder):
            return str(funder)
        case chain.DisputeResolved():
            # The resolution's log does not name the funder; the commands only ever have the
            # merchant fund disputes.
            return current.payment.terms.merchant
    return None
