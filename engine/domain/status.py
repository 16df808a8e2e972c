"""A payment's statuses (DESIGN §4), on their own so that events can name one.

``engine.domain.payment`` holds the rules that move a payment between them; a
``ConflictResolved`` event records which status a conflicted payment returns to, and events
cannot import the state machine that applies them.
"""

from enum import StrEnum


class PaymentStatus(StrEnum):
    PENDING = "pending"
    REQUIRES_CAPTURE = "requires_capture"
    PARTIALLY_CAPTURED = "partially_captured"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    DISPUTED = "disputed"
    DISPUTE_WON = "dispute_won"
    DISPUTE_LOST = "dispute_lost"
    CONFLICTED = "conflicted"
