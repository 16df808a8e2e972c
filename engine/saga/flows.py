"""The payment flows the orchestrator runs, and how outside events enter them.

Direct checkout: hold, then capture on request (a ``capture`` signal) or at once.
PSP-bridged: a card processor decides and the escrow follows, driven by normalized
``PspEvent``s: authorized → hold, captured → capture, failed or canceled → void (or nothing,
before a hold), chargeback → open a dispute freezing the charged-back amount (funded by the
merchant), then the processor's outcome resolves it: dispute_won → the merchant wins (the
amount is released back to it), dispute_lost → the payer wins (the amount goes to the payer).
The escrow opens disputes on settled money only, so a chargeback while the hold is still open
fails its step and the saga compensates by voiding the hold.

Both flows share the expiry policy: a hold nobody captured is voided ``void_margin_s`` before
its authorization expires, or, without a margin, left for the payer to reclaim; a reclaim the
mirror books completes the saga either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from engine.domain.events import Party
from engine.domain.ids import PaymentTerms
from engine.domain.payment import PaymentStatus
from engine.saga.orchestrator import Flow, Orchestrator, Plan, SagaView, SignalRejected, Step
from engine.store.event_store import Json

EXPIRY_TIMER = "void_before_expiry"
_HOLD_OPEN = (PaymentStatus.REQUIRES_CAPTURE, PaymentStatus.PARTIALLY_CAPTURED)
PspEventKind = Literal[
    "authorized", "captured", "failed", "canceled", "chargeback", "dispute_won", "dispute_lost"
]
# Who wins the dispute a processor's outcome closes (won and lost from the merchant's side).
_DISPUTE_WINNER = {"dispute_won": Party.MERCHANT, "dispute_lost": Party.PAYER}


@dataclass(frozen=True, slots=True)
class ExpiryPolicy:
    """``void_margin_s``: how long before the authorization expiry an uncaptured hold is voided;
    None leaves it for the payer's reclaim."""

    void_margin_s: int | None = 3600


DEFAULT_EXPIRY = ExpiryPolicy()


@dataclass(frozen=True, slots=True)
class PspEvent:
    """A processor webhook, normalized; ``psp_event_id`` is its idempotency key."""

    kind: PspEventKind
    psp_event_id: str
    payment_ref: str
    amount: int = 0


def _hold_request(
    terms: PaymentTerms, amount: int, authorization: bytes, fee_bps: int, expiry: ExpiryPolicy
) -> dict[str, Json]:
    request: dict[str, Json] = {
        "terms": dict(terms.to_dict()),
        "amount": amount,
        "authorization": "0x" + authorization.hex(),
        "fee_bps": fee_bps,
    }
    if expiry.void_margin_s is not None:
        request["void_margin_s"] = expiry.void_margin_s
    return request


def _create(saga: SagaView) -> Step:
    c = saga.context
    return Step(
        "create", {"terms": c["terms"], "amount": c["amount"], "authorization": c["authorization"]}
    )


def _capture(saga: SagaView, amount: int) -> Step:
    return Step("capture", {"amount": amount, "fee_bps": saga.context["fee_bps"]})


def _expiry_timers(saga: SagaView) -> dict[str, int]:
    margin = saga.context.get("void_margin_s")
    if margin is None:
        return {}
    terms = PaymentTerms.from_dict(_mapping(saga.context["terms"]))
    return {EXPIRY_TIMER: terms.authorization_expiry - _int(margin)}


def _int(value: Json | None) -> int:
    assert isinstance(value, int), value
    return value


def _mapping(value: Json) -> Mapping[str, Json]:
    assert isinstance(value, dict)
    return value


def _hold_open(saga: SagaView) -> bool:
    payment = saga.payment
    return payment is not None and payment.status in _HOLD_OPEN and payment.capturable > 0


class _HoldFlow:
    """What both flows do around a hold: expiry, reclaim, compensation, finishing."""

    def on_timer(self, saga: SagaView, name: str) -> Plan:
        if name == EXPIRY_TIMER and _hold_open(saga):
            return Plan(steps=[Step("void")])
        return Plan()

    def on_payment(self, saga: SagaView) -> Plan:
        if saga.payment is not None and saga.payment.reclaimed > 0:
            return Plan(finish="reclaimed")
        return Plan()

    def compensate(self, saga: SagaView, failed: Step) -> Plan:
        return Plan(steps=[Step("void")] if _hold_open(saga) else [])

    def on_step_done(self, saga: SagaView, step: Step) -> Plan:
        if step.action == "create":
            return Plan()  # the hold waits for a capture, a void or its expiry
        if step.action == "open_dispute":
            return Plan()  # the dispute waits for the processor's outcome
        if step.action == "resolve_dispute":
            merchant_won = step.args["winner"] == Party.MERCHANT
            return Plan(finish="dispute_won" if merchant_won else "dispute_lost")
        payment = saga.payment
        assert payment is not None
        if step.action == "capture" and payment.capturable > 0:
            return Plan()  # a partial capture: the rest of the hold is still open
        return Plan(finish={"capture": "captured", "void": "voided"}.get(step.action, "refunded"))


class DirectCheckout(_HoldFlow):
    name = "direct_checkout"

    def start(self, saga: SagaView) -> Plan:
        steps = [_create(saga)]
        if saga.context["auto_capture"]:
            steps.append(_capture(saga, _int(saga.context["amount"])))
        return Plan(steps=steps, timers=_expiry_timers(saga))

    def on_signal(self, saga: SagaView, name: str, data: Mapping[str, Json]) -> Plan:
        if name == "capture":
            return Plan(steps=[_capture(saga, _int(data["amount"]))])
        if name == "void":
            return Plan(steps=[Step("void")])
        raise SignalRejected(f"direct checkout has no signal {name!r}")


class PspBridged(_HoldFlow):
    name = "psp_bridged"

    def start(self, saga: SagaView) -> Plan:
        return Plan()  # the processor speaks first

    def on_signal(self, saga: SagaView, name: str, data: Mapping[str, Json]) -> Plan:
        held = bool(saga.context.get("held"))
        amount = _int(data.get("amount", 0))
        if name == "authorized":
            if held:
                return Plan()
            context = {**saga.context, "held": True}
            return Plan(steps=[_create(saga)], timers=_expiry_timers(saga), context=context)
        if name == "captured" and held:
            return Plan(steps=[_capture(saga, amount)])
        if name in ("failed", "canceled"):
            return Plan(steps=[Step("void")]) if held else Plan(finish=name)
        dispute_open = bool(saga.context.get("dispute_open"))
        if name == "chargeback" and held and not dispute_open:
            context = {**saga.context, "dispute_open": True}
            return Plan(steps=[Step("open_dispute", {"amount": amount})], context=context)
        if name in _DISPUTE_WINNER and dispute_open:
            context = {**saga.context, "dispute_open": False}
            winner = _DISPUTE_WINNER[name]
            return Plan(steps=[Step("resolve_dispute", {"winner": str(winner)})], context=context)
        raise SignalRejected(f"PSP event {name!r} does not fit a payment in this state")


FLOWS: Mapping[str, Flow] = {flow.name: flow for flow in (DirectCheckout(), PspBridged())}


def start_direct_checkout(
    orchestrator: Orchestrator,
    saga_id: str,
    terms: PaymentTerms,
    amount: int,
    authorization: bytes,
    *,
    fee_bps: int,
    auto_capture: bool,
    expiry: ExpiryPolicy = DEFAULT_EXPIRY,
    now: int | None = None,
) -> bool:
    context = {
        **_hold_request(terms, amount, authorization, fee_bps, expiry),
        "auto_capture": auto_capture,
    }
    return orchestrator.start(saga_id, DirectCheckout.name, context, now)


def psp_saga_id(payment_ref: str) -> str:
    return f"psp:{payment_ref}"


def start_psp_bridged(
    orchestrator: Orchestrator,
    payment_ref: str,
    terms: PaymentTerms,
    amount: int,
    authorization: bytes,
    *,
    fee_bps: int,
    expiry: ExpiryPolicy = DEFAULT_EXPIRY,
    now: int | None = None,
) -> bool:
    """Open the saga for a processor payment; the payer signed the escrow terms at checkout."""
    context = _hold_request(terms, amount, authorization, fee_bps, expiry)
    return orchestrator.start(psp_saga_id(payment_ref), PspBridged.name, context, now)


def deliver(orchestrator: Orchestrator, event: PspEvent, now: int | None = None) -> bool:
    """Feed a webhook to its saga; False when this ``psp_event_id`` was delivered before."""
    return orchestrator.signal(
        psp_saga_id(event.payment_ref),
        f"psp:{event.psp_event_id}",
        event.kind,
        {"amount": event.amount},
        now,
    )
