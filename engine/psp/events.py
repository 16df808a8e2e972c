"""Processor events: a PSP's webhook, normalized, and its delivery to whoever acts on it.

A card processor decides (authorizes, captures, charges back) and the escrow follows; the
PSP-bridged sagas (``engine.saga.flows.PspBridgedSagas``) do the following. psp and saga are
independent rooms of one layer, so psp does not import them: ``deliver`` hands the event to a
``PspEventConsumer``, a protocol the sagas meet, and whoever wires the two (the API's webhook
route, a test) passes one in.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class PspEventKind(StrEnum):
    """What the processor says happened to a payment (won and lost from the merchant's side)."""

    AUTHORIZED = "authorized"
    CAPTURED = "captured"
    FAILED = "failed"
    CANCELED = "canceled"
    CHARGEBACK = "chargeback"
    DISPUTE_WON = "dispute_won"
    DISPUTE_LOST = "dispute_lost"


@dataclass(frozen=True, slots=True)
class PspEvent:
    """A processor webhook, normalized; ``psp_event_id`` is its idempotency key and
    ``amount`` is in minor units (0 when the event carries none)."""

    kind: PspEventKind
    psp_event_id: str
    payment_ref: str
    amount: int = 0


class PspEventConsumer(Protocol):
    """Acts on the events of the processor payment ``payment_ref``, each ``psp_event_id``
    once: False when it came before."""

    def on_psp_event(
        self, payment_ref: str, psp_event_id: str, kind: str, amount: int, now: int | None = None
    ) -> bool: ...


def deliver(consumer: PspEventConsumer, event: PspEvent, now: int | None = None) -> bool:
    """Feed a webhook to its consumer; False when this ``psp_event_id`` was delivered before."""
    return consumer.on_psp_event(
        event.payment_ref, event.psp_event_id, event.kind, event.amount, now
    )
