"""Escrow credits: payouts the escrow could not push, kept for their owner to withdraw.

A capture, refund or dispute resolution pays its recipients by transfer; when the token refuses
one (a blocklisted merchant, fee receiver or leg recipient), the escrow keeps the amount as a
credit of that account, which the account later withdraws to itself only (so a blocked account
cannot move its credit to a fresh address and get round the token's blocklist). These facts
belong to an account, not to a payment (the escrow's ``Credited`` and ``Withdrawn`` logs name
no payment, and one credit may sum payouts of many), so they are not ``Event``s of a payment's
stream: each (chain, token, account) has a credit stream of its own
(``stream_id``), whose events are these.

They live in the domain, next to the payment events, because they are facts of the same kind
(confirmed chain effects, pure data, no I/O) that both the chain mirror (which records them)
and replay (which books them again) read; the store maps them to ledger entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from engine.domain.errors import DomainError, InvalidEvent
from engine.domain.events import check_time
from engine.domain.money import check_amount, checksum_address

STREAM_PREFIX = "credits"
_CHAIN_ID_LIMIT = 2**63  # the store's BIGINT


def stream_id(chain_id: int, token: str, account: str) -> str:
    """The credit stream of ``account`` for ``token`` on chain ``chain_id``."""
    return f"{STREAM_PREFIX}:{chain_id}:{token}:{account}"


@dataclass(frozen=True, kw_only=True)
class CreditEvent:
    """A change to ``account``'s credit of ``token`` on chain ``chain_id``, at block time ``at``."""

    kind: ClassVar[str]

    chain_id: int
    token: str  # EIP-55
    account: str  # EIP-55
    amount: int
    at: int

    def __post_init__(self) -> None:
        if (
            not isinstance(self.chain_id, int)
            or isinstance(self.chain_id, bool)
            or not 0 < self.chain_id < _CHAIN_ID_LIMIT
        ):
            raise InvalidEvent("chain_id must be a positive 63-bit integer")
        object.__setattr__(self, "token", checksum_address(self.token, "token"))
        object.__setattr__(self, "account", checksum_address(self.account, "account"))
        check_amount(self.amount, "amount", positive=True)
        check_time(self.at, "at")

    @property
    def stream_id(self) -> str:
        return stream_id(self.chain_id, self.token, self.account)

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, **{f.name: getattr(self, f.name) for f in fields(self)}}


@dataclass(frozen=True, kw_only=True)
class Credited(CreditEvent):
    """A payout of ``amount`` to ``account`` stayed in the escrow as a credit."""

    kind: ClassVar[str] = "credited"


@dataclass(frozen=True, kw_only=True)
class Withdrawn(CreditEvent):
    """``account`` took its whole credit, ``amount``, out of the escrow to ``to``."""

    kind: ClassVar[str] = "withdrawn"
    to: str  # EIP-55

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "to", checksum_address(self.to, "to"))


@dataclass(frozen=True, kw_only=True)
class CreditReversed(CreditEvent):
    """A reorg deeper than the confirmation depth took a confirmed ``of`` event (a credit or a
    withdrawal of ``amount``) off the chain. The stream is append-only, so the fact it had
    recorded is undone by this one rather than erased, and replay books the undoing too."""

    kind: ClassVar[str] = "credit_reversed"
    of: str  # the kind of the event undone: credited or withdrawn

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.of not in (Credited.kind, Withdrawn.kind):
            raise InvalidEvent(f"a credit reversal undoes credited or withdrawn, not {self.of!r}")


def reversal_of(event: Credited | Withdrawn) -> CreditReversed:
    """The event that undoes ``event`` in its stream."""
    shared = {field.name: getattr(event, field.name) for field in fields(CreditEvent)}
    return CreditReversed(**shared, of=event.kind)


CREDIT_EVENT_TYPES: Mapping[str, type[CreditEvent]] = {
    cls.kind: cls for cls in (Credited, Withdrawn, CreditReversed)
}


def credit_event_from_dict(data: Mapping[str, object]) -> CreditEvent:
    """Rebuild a credit event from ``CreditEvent.to_dict`` output, validating it like a new one."""
    kind = data.get("kind")
    cls = CREDIT_EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise InvalidEvent(f"unknown credit event kind {kind!r}")
    names = {f.name for f in fields(cls)}
    if set(data) != {"kind", *names}:
        raise InvalidEvent(f"a {kind} event needs exactly the fields {sorted(names)}")
    # Any: each value's type is checked by the event's own __post_init__.
    values: dict[str, Any] = {name: data[name] for name in names}
    try:
        return cls(**values)
    except InvalidEvent:
        raise
    except DomainError as error:
        raise InvalidEvent(f"malformed {kind} event: {error.message}") from error
