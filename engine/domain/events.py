"""Domain events: the immutable facts a payment's history is made of.

Each event is one fact, named in the past tense, with a stable ``kind`` string that the store
persists. ``to_dict`` gives ints and strings only (no floats, no bytes), so an event survives
JSON and comes back from ``event_from_dict`` equal to what was written.

Facts come from three places: a validated command (the ``decide_*`` functions in
``engine.domain.payment``), a confirmed chain log read by the indexer, or reconciliation, which
flags a payment ``Conflicted`` and later ``ConflictResolved``. ``at`` is unix seconds: the
command's or the reconciliation's ``now``, or the block's timestamp.
"""

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar

from engine.domain.errors import DomainError, InvalidEvent, InvalidTime
from engine.domain.ids import UINT48_MAX, IdPrefix, PaymentTerms, parse_id
from engine.domain.money import EXTRA_LEGS_MAX, Leg, check_amount, checksum_address
from engine.domain.status import PaymentStatus

REASON_LENGTH_MAX = 200


def check_time(value: object, field: str) -> int:
    """Return ``value`` if it is unix seconds the escrow can store (a uint48)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= UINT48_MAX:
        raise InvalidTime(f"{field} must be unix seconds between 0 and {UINT48_MAX}")
    return value


def _check_reason(value: object) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= REASON_LENGTH_MAX:
        raise InvalidEvent(f"reason must be a string of 1 to {REASON_LENGTH_MAX} characters")


class Party(StrEnum):
    PAYER = "payer"
    MERCHANT = "merchant"


@dataclass(frozen=True, kw_only=True)
class Event:
    kind: ClassVar[str]

    payment_id: str
    at: int

    def __post_init__(self) -> None:
        parse_id(self.payment_id, IdPrefix.PAYMENT)
        check_time(self.at, "at")

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue  # an optional field unset reads back as its default, None
            if isinstance(value, PaymentTerms):
                data[f.name] = value.to_dict()
            elif isinstance(value, tuple):
                data[f.name] = [leg.to_dict() for leg in value]
            elif isinstance(value, StrEnum):
                data[f.name] = value.value
            else:
                data[f.name] = value
        return data


@dataclass(frozen=True, kw_only=True)
class PaymentRequested(Event):
    """The engine accepted a payment and asked the escrow to hold ``amount`` under ``terms``."""

    kind: ClassVar[str] = "payment_requested"
    terms: PaymentTerms
    amount: int

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.terms, PaymentTerms):
            raise InvalidEvent("terms must be PaymentTerms")
        check_amount(self.amount, "amount", positive=True)
        if self.amount > self.terms.max_amount:
            raise InvalidEvent("amount must not exceed the terms' max_amount")


@dataclass(frozen=True, kw_only=True)
class _AmountEvent(Event):
    amount: int

    def __post_init__(self) -> None:
        super().__post_init__()
        check_amount(self.amount, "amount", positive=True)


@dataclass(frozen=True, kw_only=True)
class Authorized(_AmountEvent):
    """The escrow confirmed the hold: ``amount`` moved from the payer into escrow."""

    kind: ClassVar[str] = "authorized"


@dataclass(frozen=True, kw_only=True)
class Failed(Event):
    """The hold never happened (e.g. the token pull reverted); no money moved."""

    kind: ClassVar[str] = "failed"
    reason: str

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_reason(self.reason)


@dataclass(frozen=True, kw_only=True)
class Captured(_AmountEvent):
    """``amount`` left the hold: ``fee`` to the fee receiver, ``legs`` to their recipients and
    the rest (``merchant_net``) to the merchant, all in one transfer set."""

    kind: ClassVar[str] = "captured"
    fee: int
    legs: tuple[Leg, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_amount(self.fee, "fee", positive=False)
        if not isinstance(self.legs, tuple) or not all(isinstance(x, Leg) for x in self.legs):
            raise InvalidEvent("legs must be a tuple of Leg")
        if len(self.legs) > EXTRA_LEGS_MAX:
            raise InvalidEvent(f"a capture has at most {EXTRA_LEGS_MAX} extra legs")
        if self.merchant_net < 0:
            raise InvalidEvent("fee and legs exceed the captured amount")

    @property
    def merchant_net(self) -> int:
        return self.amount - self.fee - sum(leg.amount for leg in self.legs)


@dataclass(frozen=True, kw_only=True)
class Voided(_AmountEvent):
    """The operator released the whole remaining hold (``amount``) back to the payer."""

    kind: ClassVar[str] = "voided"


@dataclass(frozen=True, kw_only=True)
class Reclaimed(_AmountEvent):
    """The payer took the remaining hold (``amount``) back after the authorization expired.

    Unlike a void this is the payer acting on an expired hold, so a payment with nothing
    captured ends ``expired`` rather than ``canceled``.
    """

    kind: ClassVar[str] = "reclaimed"


def _check_account(value: object, field: str) -> str | None:
    """``value`` as EIP-55, or None where the event does not name the account."""
    return None if value is None else checksum_address(value, field)


@dataclass(frozen=True, kw_only=True)
class _FundedEvent(_AmountEvent):
    """Money the escrow pulled from ``funder``: the merchant, or anyone the escrow let pay
    instead (the operator's arbiter). The chain's log names the funder; a decider's event does
    not know it yet (None), and neither do events stored before events named it, which the
    merchant funded (the engine's commands only ever had the merchant fund)."""

    funder: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "funder", _check_account(self.funder, "funder"))


@dataclass(frozen=True, kw_only=True)
class Refunded(_FundedEvent):
    """``amount`` of captured money went back to the payer, paid by ``funder``."""

    kind: ClassVar[str] = "refunded"


@dataclass(frozen=True, kw_only=True)
class DisputeOpened(_FundedEvent):
    """The payer disputed ``amount`` of captured money; ``funder`` put it up, and it is frozen
    until resolved."""

    kind: ClassVar[str] = "dispute_opened"


@dataclass(frozen=True, kw_only=True)
class DisputeResolved(Event):
    """The arbiter decided the open dispute and the escrow paid the frozen amount to
    ``paid_to``: the payer if the payer won, else whoever funded the dispute (not necessarily
    the merchant). The escrow's log says only who won; the chain-facts mapping names the
    account from the dispute it closes. None where that is unknown: a decider's event, or one
    stored before resolutions named it, when the merchant funded every dispute."""

    kind: ClassVar[str] = "dispute_resolved"
    winner: Party
    paid_to: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.winner, Party):
            raise InvalidEvent("winner must be a Party")
        object.__setattr__(self, "paid_to", _check_account(self.paid_to, "paid_to"))


@dataclass(frozen=True, kw_only=True)
class Conflicted(Event):
    """Reconciliation found the chain, the ledger or the PSP disagreeing about this payment."""

    kind: ClassVar[str] = "conflicted"
    reason: str

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_reason(self.reason)


@dataclass(frozen=True, kw_only=True)
class ConflictResolved(Event):
    """Reconciliation found the views agreeing again; the payment leaves ``conflicted``.

    ``status`` is the status it returns to. The amounts alone cannot always tell it (nothing
    held is pending or failed; settled money looks the same before and after a decided
    dispute), so the event names it and applying it checks that the amounts allow it.
    """

    kind: ClassVar[str] = "conflict_resolved"
    status: PaymentStatus
    reason: str

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.status, PaymentStatus) or self.status is PaymentStatus.CONFLICTED:
            raise InvalidEvent("status must be a PaymentStatus other than conflicted")
        _check_reason(self.reason)


EVENT_TYPES: Mapping[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        PaymentRequested,
        Authorized,
        Failed,
        Captured,
        Voided,
        Reclaimed,
        Refunded,
        DisputeOpened,
        DisputeResolved,
        Conflicted,
        ConflictResolved,
    )
}


def _decode(name: str, field_type: object, value: object) -> object:
    if field_type is PaymentTerms:
        if not isinstance(value, Mapping):
            raise InvalidEvent("terms must be an object")
        return PaymentTerms.from_dict(value)
    if field_type == tuple[Leg, ...]:
        if not isinstance(value, list) or not all(isinstance(x, Mapping) for x in value):
            raise InvalidEvent("legs must be a list of objects")
        if any(set(x) != {"recipient", "amount"} for x in value):
            raise InvalidEvent("a leg needs exactly recipient and amount")
        return tuple(Leg(recipient=x["recipient"], amount=x["amount"]) for x in value)
    if isinstance(field_type, type) and issubclass(field_type, StrEnum):
        if not isinstance(value, str) or value not in set(field_type):
            raise InvalidEvent(f"{name} must be one of {sorted(field_type)}")
        return field_type(value)
    return value  # ints and strings are checked by the event's own __post_init__


def event_from_dict(data: Mapping[str, object]) -> Event:
    """Rebuild an event from ``Event.to_dict`` output, validating it like a new one; fields
    an older version of the event lacked take their defaults."""
    kind = data.get("kind")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise InvalidEvent(f"unknown event kind {kind!r}")
    event_fields = {f.name: f.type for f in fields(cls)}
    # A field with a default was added later: events stored before it still read.
    required = {
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    }
    if not {"kind", *required} <= set(data) <= {"kind", *event_fields}:
        raise InvalidEvent(
            f"a {kind} event needs the fields {sorted(required)}, "
            f"and takes no others than {sorted(event_fields)}"
        )
    try:
        # Any: each value's type is checked by the event's own __post_init__.
        values: dict[str, Any] = {
            name: _decode(name, t, data[name]) for name, t in event_fields.items() if name in data
        }
        return cls(**values)
    except InvalidEvent:
        raise
    except DomainError as error:
        raise InvalidEvent(f"malformed {kind} event: {error.message}") from error
