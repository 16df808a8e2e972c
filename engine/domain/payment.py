"""The payment state machine (DESIGN §4) as pure functions over an immutable ``Payment``.

``decide_*`` take a command and the current payment and return the events it causes, or raise
a ``DomainError`` with a stable code; ``apply`` folds one event into a payment. Deciders check
what only the engine can know in advance (time windows, fee bounds, remaining amounts); ``apply``
re-checks the amounts of every event, including confirmed chain facts, so a fact that breaks
the books is refused (and reconciliation marks the payment ``conflicted``) rather than
projected.

Deciders judge against the confirmed projection only. Two commands decided against the same
projection may together exceed it; the escrow then refuses the later one, so callers either
keep one operation per payment in flight or treat that revert as a normal outcome.

``TRANSITIONS`` lists every (status, event kind) pair that is allowed and the statuses it can
lead to; any pair not listed raises ``IllegalTransition``, and so does a chain fact on a
conflicted payment whose underlying status has no pair for it. Where a pair has several targets the
amounts pick one: a capture that empties the hold ``succeeded``, one that leaves some is
``partially_captured``.

``conflicted`` is a flag over the status the payment's facts describe, kept in ``underlying``.
Nothing the chain confirmed may be lost, so a conflicted payment still takes chain facts (a
capture already in flight when reconciliation flagged it, say): each is judged and folded as
by the underlying status, which it moves, and the flag stays. Commands are refused until
reconciliation finds the views agreeing again and records ``ConflictResolved``, which returns
the payment to its underlying status, the one its facts (including those taken while
conflicted) describe. ``apply`` needs nothing but the payment and the event, so a replay folds
the same history to the same payment.

Disputes are opened on settled money only: the hold must be closed (captured in full, voided or
reclaimed), which keeps a dispute from overlapping a capture still in flight. A dispute won by
the payer counts as refunded money (status ``dispute_lost``, from the merchant's side); one won
by the merchant unfreezes the amount, which can then be refunded or disputed again.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

from engine.domain.errors import (
    AmountExceedsCapturable,
    AmountExceedsMaxAmount,
    AmountExceedsRefundable,
    AuthorizationExpired,
    AuthorizationNotExpired,
    FeeOutOfBounds,
    IllegalTransition,
    InvalidAmount,
    InvalidEvent,
    RefundWindowClosed,
)
from engine.domain.events import (
    Authorized,
    Captured,
    Conflicted,
    ConflictResolved,
    DisputeOpened,
    DisputeResolved,
    Event,
    Failed,
    Party,
    PaymentRequested,
    Reclaimed,
    Refunded,
    Voided,
    check_time,
)
from engine.domain.ids import IdPrefix, PaymentTerms, parse_id
from engine.domain.money import Leg, check_amount, check_bps, fee_for, split_capture
from engine.domain.status import PaymentStatus

_S = PaymentStatus
_SETTLED = (_S.SUCCEEDED, _S.PARTIALLY_REFUNDED, _S.DISPUTE_WON, _S.DISPUTE_LOST)
_HOLD_CLOSED_AFTER_CAPTURE = frozenset({_S.SUCCEEDED, _S.PARTIALLY_REFUNDED, _S.REFUNDED})
# What the chain confirmed about a payment; ``Failed`` records the escrow's confirmed refusal
# of its authorization. A conflicted payment takes these; the rest are commands' or flags.
_CHAIN_FACT_KINDS = (
    Authorized.kind,
    Failed.kind,
    Captured.kind,
    Voided.kind,
    Reclaimed.kind,
    Refunded.kind,
    DisputeOpened.kind,
    DisputeResolved.kind,
)

TRANSITIONS: Mapping[tuple[PaymentStatus, str], frozenset[PaymentStatus]] = MappingProxyType(
    {
        (_S.PENDING, Authorized.kind): frozenset({_S.REQUIRES_CAPTURE}),
        (_S.PENDING, Failed.kind): frozenset({_S.FAILED}),
        (_S.REQUIRES_CAPTURE, Captured.kind): frozenset({_S.PARTIALLY_CAPTURED, _S.SUCCEEDED}),
        (_S.REQUIRES_CAPTURE, Voided.kind): frozenset({_S.CANCELED}),
        (_S.REQUIRES_CAPTURE, Reclaimed.kind): frozenset({_S.EXPIRED}),
        (_S.PARTIALLY_CAPTURED, Captured.kind): frozenset(
            {_S.PARTIALLY_CAPTURED, _S.SUCCEEDED, _S.PARTIALLY_REFUNDED}
        ),
        (_S.PARTIALLY_CAPTURED, Voided.kind): _HOLD_CLOSED_AFTER_CAPTURE,
        (_S.PARTIALLY_CAPTURED, Reclaimed.kind): _HOLD_CLOSED_AFTER_CAPTURE,
        (_S.PARTIALLY_CAPTURED, Refunded.kind): frozenset({_S.PARTIALLY_CAPTURED}),
        **{
            (status, Refunded.kind): frozenset({_S.PARTIALLY_REFUNDED, _S.REFUNDED})
            for status in _SETTLED
        },
        **{(status, DisputeOpened.kind): frozenset({_S.DISPUTED}) for status in _SETTLED},
        (_S.DISPUTED, DisputeResolved.kind): frozenset({_S.DISPUTE_WON, _S.DISPUTE_LOST}),
        # Reconciliation can find any payment out of step with the chain or the ledger.
        **{(status, Conflicted.kind): frozenset({_S.CONFLICTED}) for status in PaymentStatus},
        # ...and, once they agree again, return it to its underlying status, whichever it is.
        (_S.CONFLICTED, ConflictResolved.kind): frozenset(set(PaymentStatus) - {_S.CONFLICTED}),
        # Meanwhile it still takes the chain's facts, each only where its underlying status
        # would take it (``apply`` checks both); the flag stays.
        **{(_S.CONFLICTED, kind): frozenset({_S.CONFLICTED}) for kind in _CHAIN_FACT_KINDS},
    }
)


@dataclass(frozen=True, slots=True)
class Payment:
    """One payment's projection; amounts are minor units of ``terms.token``.

    ``amount`` is what was requested; the rest counts what the escrow confirmed. ``disputed`` is
    captured money frozen by an open dispute. ``underlying`` is set while the status is
    ``conflicted`` only: the status the payment's facts describe beneath the flag.
    """

    id: str
    terms: PaymentTerms
    status: PaymentStatus
    amount: int
    authorized: int = 0
    captured: int = 0
    voided: int = 0
    reclaimed: int = 0
    refunded: int = 0
    disputed: int = 0
    underlying: PaymentStatus | None = None

    @property
    def unflagged_status(self) -> PaymentStatus:
        """The status the payment's facts describe, the conflict flag aside."""
        return self.status if self.underlying is None else self.underlying

    @property
    def capturable(self) -> int:
        return self.authorized - self.captured - self.voided - self.reclaimed

    @property
    def refundable(self) -> int:
        return self.captured - self.refunded - self.disputed


def check_invariants(payment: Payment) -> None:
    """Crash on a payment whose books do not add up; that is a bug, never a user error."""
    p = payment
    amounts = (p.amount, p.authorized, p.captured, p.voided, p.reclaimed, p.refunded, p.disputed)
    books_broken = (
        min(amounts) < 0
        or p.authorized > p.terms.max_amount
        or p.capturable < 0
        or p.refundable < 0
    )
    # A conflicted payment's amounts are described by the status beneath its flag.
    flag_broken = (p.status is _S.CONFLICTED) != (p.underlying is not None)
    status_broken = p.unflagged_status not in statuses_matching_amounts(p)
    if books_broken or flag_broken or status_broken:
        raise AssertionError(f"payment invariants broken: {payment!r}")


def statuses_matching_amounts(payment: Payment) -> frozenset[PaymentStatus]:
    """The statuses ``apply`` could have left a payment with these amounts in, conflicted aside.

    Mostly one; several where the amounts cannot tell: nothing authorized is ``pending`` or
    ``failed``, and settled money whose dispute was decided (the frozen amount is released or
    counted as refunded) looks like settled money that was never disputed.
    """
    p = payment
    if p.authorized == 0:
        return frozenset({_S.PENDING, _S.FAILED})
    if p.disputed > 0:
        return frozenset({_S.DISPUTED})
    status = _hold_status(p, _S.EXPIRED if p.reclaimed > 0 else _S.CANCELED)
    if status not in _HOLD_CLOSED_AFTER_CAPTURE:
        return frozenset({status})
    # A dispute opens on refundable money only, so a merchant's win leaves some refundable and
    # a payer's win has refunded some.
    decided = {_S.DISPUTE_WON} if p.refunded < p.captured else set()
    decided |= {_S.DISPUTE_LOST} if p.refunded > 0 else set()
    return frozenset({status, *decided})


def start(event: PaymentRequested) -> Payment:
    """The payment a ``PaymentRequested`` event creates: pending until the chain confirms."""
    if not isinstance(event, PaymentRequested):
        raise InvalidEvent(f"a payment starts with {PaymentRequested.kind!r}, not {event.kind!r}")
    return Payment(id=event.payment_id, terms=event.terms, status=_S.PENDING, amount=event.amount)


def replay(events: Iterable[Event]) -> Payment:
    """Fold a payment's whole history, first event first."""
    iterator = iter(events)
    first = next(iterator, None)
    if not isinstance(first, PaymentRequested):
        raise InvalidEvent(f"a payment's history starts with {PaymentRequested.kind!r}")
    payment = start(first)
    for event in iterator:
        payment = apply(payment, event)
    return payment


def apply(payment: Payment, event: Event) -> Payment:
    """The payment after ``event``; raises and leaves ``payment`` as it was if it cannot happen."""
    if event.payment_id != payment.id:
        raise InvalidEvent(f"event for {event.payment_id} applied to {payment.id}")
    targets = _allowed_targets(payment, event.kind)
    if payment.underlying is not None and event.kind in _CHAIN_FACT_KINDS:
        after = _absorb(payment, payment.underlying, event)
    else:
        after = _apply_amounts(payment, event)
    if after.status not in targets:
        raise AssertionError(f"{event.kind} led {payment.status} to {after.status}, not {targets}")
    check_invariants(after)
    return after


def _allowed_targets(payment: Payment, kind: str) -> frozenset[PaymentStatus]:
    targets = TRANSITIONS.get((payment.status, kind))
    if targets is None:
        raise IllegalTransition(payment.status.value, kind)
    return targets


def _absorb(payment: Payment, underlying: PaymentStatus, fact: Event) -> Payment:
    """A chain fact on a conflicted payment: judged and folded as by its underlying status,
    which it moves; the flag stays."""
    beneath = apply(replace(payment, status=underlying, underlying=None), fact)
    return replace(beneath, status=_S.CONFLICTED, underlying=beneath.status)


def _require_decidable(payment: Payment, kind: str) -> None:
    """Commands act on a payment whose status describes it: a conflicted one takes the chain's
    facts, but no command until reconciliation resolves it."""
    if payment.underlying is not None:
        raise IllegalTransition(payment.status.value, kind)
    _allowed_targets(payment, kind)


def _hold_status(p: Payment, nothing_captured: PaymentStatus) -> PaymentStatus:
    """Status implied by the amounts once a hold exists and no dispute is open."""
    if p.capturable > 0:
        return _S.REQUIRES_CAPTURE if p.captured == 0 else _S.PARTIALLY_CAPTURED
    if p.captured == 0:
        return nothing_captured
    if p.refunded == 0:
        return _S.SUCCEEDED
    return _S.PARTIALLY_REFUNDED if p.refunded < p.captured else _S.REFUNDED


def _require_capturable(payment: Payment, amount: int) -> None:
    if amount > payment.capturable:
        raise AmountExceedsCapturable(
            f"cannot capture {amount}; {payment.capturable} is left on the hold"
        )


def _require_refundable(payment: Payment, amount: int) -> None:
    if amount > payment.refundable:
        raise AmountExceedsRefundable(
            f"amount {amount} exceeds the {payment.refundable} captured and not yet refunded "
            "or disputed"
        )


def _require_whole_hold(payment: Payment, event: Voided | Reclaimed) -> None:
    # The escrow releases a hold all at once; a partial release would be a different fact.
    if event.amount != payment.capturable:
        raise InvalidAmount(
            f"{event.kind} must release the whole remaining hold of {payment.capturable}, "
            f"not {event.amount}"
        )


def _apply_amounts(p: Payment, event: Event) -> Payment:
    match event:
        case Authorized(amount=amount):
            if amount > p.terms.max_amount:
                raise AmountExceedsMaxAmount(
                    f"authorized {amount} exceeds the terms' max_amount {p.terms.max_amount}"
                )
            return replace(p, status=_S.REQUIRES_CAPTURE, authorized=amount)
        case Failed():
            return replace(p, status=_S.FAILED)
        case Captured(amount=amount, fee=fee):
            _require_capturable(p, amount)
            fee_min = fee_for(amount, p.terms.min_fee_bps)
            fee_max = fee_for(amount, p.terms.max_fee_bps)
            if not fee_min <= fee <= fee_max:
                raise FeeOutOfBounds(
                    f"fee {fee} on {amount} is outside the terms' {fee_min}..{fee_max}"
                )
            after = replace(p, captured=p.captured + amount)
            return replace(after, status=_hold_status(after, _S.SUCCEEDED))
        case Voided(amount=amount):
            _require_whole_hold(p, event)
            after = replace(p, voided=p.voided + amount)
            return replace(after, status=_hold_status(after, _S.CANCELED))
        case Reclaimed(amount=amount):
            _require_whole_hold(p, event)
            after = replace(p, reclaimed=p.reclaimed + amount)
            return replace(after, status=_hold_status(after, _S.EXPIRED))
        case Refunded(amount=amount):
            _require_refundable(p, amount)
            after = replace(p, refunded=p.refunded + amount)
            return replace(after, status=_hold_status(after, _S.REFUNDED))
        case DisputeOpened(amount=amount):
            _require_refundable(p, amount)
            return replace(p, status=_S.DISPUTED, disputed=amount)
        case DisputeResolved(winner=Party.PAYER):
            return replace(p, status=_S.DISPUTE_LOST, refunded=p.refunded + p.disputed, disputed=0)
        case DisputeResolved(winner=Party.MERCHANT):
            return replace(p, status=_S.DISPUTE_WON, disputed=0)
        case Conflicted():
            return replace(p, status=_S.CONFLICTED, underlying=p.unflagged_status)
        case ConflictResolved(status=status):
            # Only the underlying status: another the amounts allow (failed for pending, say)
            # would let later facts be judged by a status the history never reached.
            if status != p.underlying:
                raise InvalidEvent(
                    f"{event.kind} to {status} does not fit the facts of {p.id}: "
                    f"they describe {p.underlying}"
                )
            return replace(p, status=status, underlying=None)
    # Unreachable while every listed kind has a case above; kept so a new kind cannot slip by.
    raise IllegalTransition(p.status.value, event.kind)


def _decided(payment: Payment, event: Event) -> list[Event]:
    # Applying what was just decided proves deciders and apply agree; a mismatch is a bug.
    apply(payment, event)
    return [event]


def decide_request(payment_id: str, terms: PaymentTerms, amount: int, now: int) -> list[Event]:
    """Accept a new payment that will hold ``amount`` under ``terms``."""
    parse_id(payment_id, IdPrefix.PAYMENT)
    check_time(now, "now")
    check_amount(amount, "amount", positive=True)
    if amount > terms.max_amount:
        raise AmountExceedsMaxAmount(
            f"amount {amount} exceeds the terms' max_amount {terms.max_amount}"
        )
    if now >= terms.authorization_expiry:
        raise AuthorizationExpired("the authorization expiry has already passed")
    return [PaymentRequested(payment_id=payment_id, at=now, terms=terms, amount=amount)]


def decide_capture(
    payment: Payment,
    amount: int,
    now: int,
    *,
    fee_bps: int,
    extra_legs: Sequence[Leg] = (),
) -> list[Event]:
    """Capture ``amount`` of the hold at ``fee_bps``, paying ``extra_legs`` from the merchant's
    share."""
    _require_decidable(payment, Captured.kind)
    check_time(now, "now")
    check_amount(amount, "amount", positive=True)
    check_bps(fee_bps, "fee_bps")
    if now >= payment.terms.authorization_expiry:
        raise AuthorizationExpired("the hold can no longer be captured: its authorization expired")
    _require_capturable(payment, amount)
    terms = payment.terms
    if not terms.min_fee_bps <= fee_bps <= terms.max_fee_bps:
        raise FeeOutOfBounds(
            f"fee_bps {fee_bps} is outside the terms' {terms.min_fee_bps}..{terms.max_fee_bps}"
        )
    split = split_capture(amount, fee_bps, extra_legs)
    captured = Captured(
        payment_id=payment.id, at=now, amount=amount, fee=split.fee, legs=split.extras
    )
    return _decided(payment, captured)


def decide_void(payment: Payment, now: int) -> list[Event]:
    """Release the whole remaining hold to the payer; the operator may do so at any time."""
    _require_decidable(payment, Voided.kind)
    check_time(now, "now")
    return _decided(payment, Voided(payment_id=payment.id, at=now, amount=payment.capturable))


def decide_reclaim(payment: Payment, now: int) -> list[Event]:
    """Return the remaining hold to the payer, which the payer may claim once it has expired."""
    _require_decidable(payment, Reclaimed.kind)
    check_time(now, "now")
    if now < payment.terms.authorization_expiry:
        raise AuthorizationNotExpired(
            f"the hold can be reclaimed from {payment.terms.authorization_expiry}, not at {now}"
        )
    return _decided(payment, Reclaimed(payment_id=payment.id, at=now, amount=payment.capturable))


def decide_refund(payment: Payment, amount: int, now: int) -> list[Event]:
    """Return ``amount`` of captured money to the payer while the refund window is open."""
    _require_decidable(payment, Refunded.kind)
    check_time(now, "now")
    check_amount(amount, "amount", positive=True)
    if now >= payment.terms.refund_expiry:
        raise RefundWindowClosed(f"refunds closed at {payment.terms.refund_expiry}")
    _require_refundable(payment, amount)
    return _decided(payment, Refunded(payment_id=payment.id, at=now, amount=amount))


def decide_open_dispute(payment: Payment, amount: int, now: int) -> list[Event]:
    """Freeze ``amount`` of captured money for a dispute.

    No time window: chargebacks arrive on the card network's schedule, not the escrow's.
    """
    _require_decidable(payment, DisputeOpened.kind)
    check_time(now, "now")
    check_amount(amount, "amount", positive=True)
    _require_refundable(payment, amount)
    return _decided(payment, DisputeOpened(payment_id=payment.id, at=now, amount=amount))


def decide_resolve_dispute(payment: Payment, winner: Party, now: int) -> list[Event]:
    """Close the open dispute in favour of ``winner``."""
    _require_decidable(payment, DisputeResolved.kind)
    check_time(now, "now")
    return _decided(payment, DisputeResolved(payment_id=payment.id, at=now, winner=winner))


def decide_resolve_conflict(
    payment: Payment, status: PaymentStatus, reason: str, now: int
) -> list[Event]:
    """Take a conflicted payment out of ``conflicted`` into ``status``, which must be its
    underlying status; the caller has found every view agreeing with its books again."""
    _allowed_targets(payment, ConflictResolved.kind)
    check_time(now, "now")
    resolved = ConflictResolved(payment_id=payment.id, at=now, status=status, reason=reason)
    return _decided(payment, resolved)
