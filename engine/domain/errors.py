"""Errors a caller can cause in the domain, each with a stable code.

The code is the contract with clients (API error bodies, PSP callbacks, logs); the message is
for humans and may be reworded. Codes are snake_case and never reused for another meaning.
"""

from typing import ClassVar


class DomainError(Exception):
    """A command or fact the domain refuses; nothing was changed when it is raised."""

    code: ClassVar[str] = "domain_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidAmount(DomainError):
    code = "invalid_amount"


class InvalidFeeBps(DomainError):
    code = "invalid_fee_bps"


class InvalidAsset(DomainError):
    code = "invalid_asset"


class InvalidAddress(DomainError):
    code = "invalid_address"


class InvalidId(DomainError):
    code = "invalid_id"


class InvalidTerms(DomainError):
    code = "invalid_terms"


class InvalidEvent(DomainError):
    code = "invalid_event"


class InvalidTime(DomainError):
    code = "invalid_time"


class AmountExceedsMaxAmount(DomainError):
    code = "amount_exceeds_max_amount"


class AmountExceedsCapturable(DomainError):
    code = "amount_exceeds_capturable"


class AmountExceedsRefundable(DomainError):
    code = "amount_exceeds_refundable"


class FeeOutOfBounds(DomainError):
    code = "fee_out_of_bounds"


class AuthorizationExpired(DomainError):
    code = "authorization_expired"


class AuthorizationNotExpired(DomainError):
    code = "authorization_not_expired"


class RefundWindowClosed(DomainError):
    code = "refund_window_closed"


class IllegalTransition(DomainError):
    """The payment's status does not accept this kind of event at all, whatever the amounts."""

    code = "illegal_transition"

    def __init__(self, from_status: str, event_kind: str) -> None:
        super().__init__(f"a payment in status {from_status!r} cannot accept {event_kind!r}")
        self.from_status = from_status
        self.event_kind = event_kind
