"""The one mapping from the escrow's decoded logs to domain facts: payment events and credits.

The chain mirror (each log as the indexer delivers it) and reconciliation's repair (a payment's
logs read back from the node) both translate through here, so they cannot disagree about what
a log means. The domain event carries what the chain did in its own fields (who funded a
refund or dispute, who a resolution paid), so the stored event books the same money in the
mirror, in replay and in repair through the one booking, ``engine.store.ledger_events``.

Two facts need more than their own log:

* A capture's extra legs are the ``LegPaid`` logs its transaction emitted right after it
  (payouts the escrow kept as credits may sit in between); ``legs_of_captures`` pairs them.
* ``DisputeResolved`` says only who won. The escrow pays the payer, or else whoever funded the
  dispute it closes, which the ``DisputeOpened`` log named; the caller passes that funder in
  (``dispute_funder``), and ``payment_events`` tracks it along a payment's logs.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from engine.chain.contracts import logs as chain
from engine.domain import credits
from engine.domain.events import (
    Authorized,
    Captured,
    DisputeOpened,
    DisputeResolved,
    Event,
    Party,
    Reclaimed,
    Refunded,
    Voided,
)
from engine.domain.ids import PaymentTerms
from engine.domain.money import Leg

# One log as the pairing of legs sees it: the transaction that emitted it (with whatever else
# tells two deliveries of it apart, such as the block and the indexer's stage) and its event.
TransactionLog = tuple[Hashable, chain.EscrowEvent]


def payment_event(
    fact: chain.EscrowEvent,
    *,
    payment_id: str,
    terms: PaymentTerms,
    at: int,
    legs: tuple[Leg, ...] = (),
    dispute_funder: str | None = None,
) -> Event | None:
    """The domain event of a payment's escrow log, or None for a log that is no payment fact
    (``LegPaid`` folds into its capture, ``OperationFailed`` fails a command, credits belong to
    accounts). ``legs`` are a capture's extra legs; ``dispute_funder`` is who funded the dispute
    a resolution closes (None if unknown)."""
    match fact:
        case chain.Authorized(amount=amount):
            return Authorized(payment_id=payment_id, at=at, amount=amount)
        case chain.Captured(amount=amount, fee=fee):
            return Captured(payment_id=payment_id, at=at, amount=amount, fee=fee, legs=legs)
        case chain.Voided(amount=amount):
            return Voided(payment_id=payment_id, at=at, amount=amount)
        case chain.Reclaimed(amount=amount):
            return Reclaimed(payment_id=payment_id, at=at, amount=amount)
        case chain.Refunded(amount=amount, funder=funder):
            return Refunded(payment_id=payment_id, at=at, amount=amount, funder=funder)
        case chain.DisputeOpened(amount=amount, funder=funder):
            return DisputeOpened(payment_id=payment_id, at=at, amount=amount, funder=funder)
        case chain.DisputeResolved(payer_wins=True):
            return DisputeResolved(
                payment_id=payment_id, at=at, winner=Party.PAYER, paid_to=terms.payer
            )
        case chain.DisputeResolved(payer_wins=False):
            # The escrow pays the freeze back to whoever funded it, the merchant or not.
            return DisputeResolved(
                payment_id=payment_id, at=at, winner=Party.MERCHANT, paid_to=dispute_funder
            )
    return None


def payment_events(
    logs: Sequence[TransactionLog], *, payment_id: str, terms: PaymentTerms, at: int
) -> list[Event]:
    """A payment's escrow logs, all of them in chain order, as its domain events."""
    legs = legs_of_captures(logs)
    events: list[Event] = []
    dispute_funder: str | None = None
    for index, (_, fact) in enumerate(logs):
        if isinstance(fact, chain.DisputeOpened):
            dispute_funder = fact.funder
        event = payment_event(
            fact,
            payment_id=payment_id,
            terms=terms,
            at=at,
            legs=legs.get(index, ()),
            dispute_funder=dispute_funder,
        )
        if event is not None:
            events.append(event)
    return events


def credit_event(
    fact: chain.Credited | chain.Withdrawn, *, chain_id: int, at: int
) -> credits.Credited | credits.Withdrawn:
    """The credit stream's event of a payout kept as a credit, or of its withdrawal."""
    if isinstance(fact, chain.Credited):
        return credits.Credited(
            chain_id=chain_id, token=fact.token, account=fact.account, amount=fact.amount, at=at
        )
    return credits.Withdrawn(
        chain_id=chain_id,
        token=fact.token,
        account=fact.account,
        to=fact.to,
        amount=fact.amount,
        at=at,
    )


def legs_of_captures(logs: Sequence[TransactionLog]) -> dict[int, tuple[Leg, ...]]:
    """The extra legs of each capture among ``logs``, by the capture's index: the ``LegPaid``
    logs its transaction emitted right after it. A leg without its capture before it means the
    logs were cut or reordered, a bug of the caller's: it stops with an AssertionError."""
    legs: dict[int, tuple[Leg, ...]] = {}
    capture: int | None = None
    for index, (transaction, fact) in enumerate(logs):
        if isinstance(fact, chain.Captured):
            capture = index
        elif isinstance(fact, chain.LegPaid):
            if capture is None or logs[capture][0] != transaction:
                raise AssertionError(f"LegPaid log {index} without its capture")
            captured = logs[capture][1]
            assert isinstance(captured, chain.Captured)
            if captured.payment_id != fact.payment_id:
                raise AssertionError(f"LegPaid log {index} without its capture")
            legs[capture] = (
                *legs.get(capture, ()),
                Leg(recipient=fact.recipient, amount=fact.amount),
            )
        elif not isinstance(fact, chain.Credited | chain.Withdrawn):
            # A payout kept as a credit may sit between a capture and its legs.
            capture = None
    return legs
