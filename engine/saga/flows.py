"""The payment flows the orchestrator runs, and how outside events enter them.

Direct checkout: hold, then capture on request (a ``capture`` signal) or at once.
PSP-bridged: a card processor decides and the escrow follows, driven by its events
(``engine.psp.events.PspEvent``, fed in through ``PspBridgedSagas``): authorized → hold,
captured → capture, failed or canceled → void (or nothing, before a hold), chargeback → open
a dispute freezing the charged-back amount (funded by the merchant), then the processor's
outcome resolves it: dispute_won → the merchant wins (the amount is released back to it),
dispute_lost → the payer wins (the amount goes to the payer). The escrow opens disputes on
settled money only, so a chargeback while the hold is still open fails its step and the saga
compensates by voiding the hold.

Both flows share the expiry policy: a hold nobody captured is voided ``void_margin_s`` before
its authorization expires, or, without a margin, left for the payer to reclaim; a reclaim the
mirror books completes the saga either way.

Flows are pure decisions written against ``engine.saga.plan``; their entry points take the
``Sagas`` protocol, which the orchestrator meets, so this module never imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from engine.domain.events import Party
from engine.domain.ids import PaymentTerms
from engine.domain.payment import PaymentStatus
from engine.saga.errors import SignalRejected
from engine.saga.plan import (
    Flow,
    Plan,
    Sagas,
    SagaView,
    Step,
    StepAction,
    json_int,
    json_mapping,
)
from engine.store.event_store import Json

EXPIRY_TIMER = "void_before_expiry"
_HOLD_OPEN = (PaymentStatus.REQUIRES_CAPTURE, PaymentStatus.PARTIALLY_CAPTURED)


class PspSignal(StrEnum):
    """The signals the PSP-bridged flow takes: the processor's event kinds.

    ``engine.psp.events.PspEventKind`` names the same values; psp and saga are independent
    rooms of one layer, so neither may import the other's, and tests/psp checks the two agree.
    """

    AUTHORIZED = "authorized"
    CAPTURED = "captured"
    FAILED = "failed"
    CANCELED = "canceled"
    CHARGEBACK = "chargeback"
    DISPUTE_WON = "dispute_won"
    DISPUTE_LOST = "dispute_lost"


# Who wins the dispute a processor's outcome closes (won and lost from the merchant's side).
_DISPUTE_WINNER = {PspSignal.DISPUTE_WON: Party.MERCHANT, PspSignal.DISPUTE_LOST: Party.PAYER}


@dataclass(frozen=True, slots=True)
class ExpiryPolicy:
    """``void_margin_s``: how long before the authorization expiry an uncaptured hold is voided;
    None leaves it for the payer's reclaim."""

    void_margin_s: int | None = 3600


DEFAULT_EXPIRY = ExpiryPolicy()


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
    args = {"terms": c["terms"], "amount": c["amount"], "authorization": c["authorization"]}
    return Step(StepAction.CREATE, args)


def _capture(saga: SagaView, amount: int) -> Step:
    return Step(StepAction.CAPTURE, {"amount": amount, "fee_bps": saga.context["fee_bps"]})


def _expiry_timers(saga: SagaView) -> dict[str, int]:
    margin = saga.context.get("void_margin_s")
    if margin is None:
        return {}
    terms = PaymentTerms.from_dict(json_mapping(saga.context["terms"]))
    return {EXPIRY_TIMER: terms.authorization_expiry - json_int(margin)}


def _hold_open(saga: SagaView) -> bool:
    payment = saga.payment
    return payment is not None and payment.status in _HOLD_OPEN and payment.capturable > 0


class _HoldFlow:
    """What both flows do around a hold: expiry, reclaim, compensation, finishing."""

    def on_timer(self, saga: SagaView, name: str) -> Plan:
        if name == EXPIRY_TIMER and _hold_open(saga):
            return Plan(steps=[Step(StepAction.VOID)])
        return Plan()

    def on_payment(self, saga: SagaView) -> Plan:
        if saga.payment is not None and saga.payment.reclaimed > 0:
            return Plan(finish="reclaimed")
        return Plan()

    def compensate(self, saga: SagaView, failed: Step) -> Plan:
        return Plan(steps=[Step(StepAction.VOID)] if _hold_open(saga) else [])

    def on_step_done(self, saga: SagaView, step: Step) -> Plan:
        if step.action == StepAction.CREATE:
            return Plan()  # the hold waits for a capture, a void or its expiry
        if step.action == StepAction.OPEN_DISPUTE:
            return Plan()  # the dispute waits for the processor's outcome
        if step.action == StepAction.RESOLVE_DISPUTE:
            merchant_won = step.args["winner"] == Party.MERCHANT
            return Plan(finish="dispute_won" if merchant_won else "dispute_lost")
        payment = saga.payment
        assert payment is not None
        if step.action == StepAction.CAPTURE and payment.capturable > 0:
            return Plan()  # a partial capture: the rest of the hold is still open
        finished = {StepAction.CAPTURE: "captured", StepAction.VOID: "voided"}
        return Plan(finish=finished.get(step.action, "refunded"))


class DirectCheckout(_HoldFlow):
    name = "direct_checkout"

    def start(self, saga: SagaView) -> Plan:
        steps = [_create(saga)]
        if saga.context["auto_capture"]:
            steps.append(_capture(saga, json_int(saga.context["amount"])))
        return Plan(steps=steps, timers=_expiry_timers(saga))

    def on_signal(self, saga: SagaView, name: str, data: Mapping[str, Json]) -> Plan:
        if name == "capture":
            return Plan(steps=[_capture(saga, json_int(data["amount"]))])
        if name == "void":
            return Plan(steps=[Step(StepAction.VOID)])
        raise SignalRejected(f"direct checkout has no signal {name!r}")


class PspBridged(_HoldFlow):
    name = "psp_bridged"

    def start(self, saga: SagaView) -> Plan:
        return Plan()  # the processor speaks first

    def on_signal(self, saga: SagaView, name: str, data: Mapping[str, Json]) -> Plan:
        held = bool(saga.context.get("held"))
        amount = json_int(data.get("amount", 0))
        if name == PspSignal.AUTHORIZED:
            if held:
                return Plan()
            context = {**saga.context, "held": True}
            return Plan(steps=[_create(saga)], timers=_expiry_timers(saga), context=context)
        if name == PspSignal.CAPTURED and held:
            return Plan(steps=[_capture(saga, amount)])
        if name in (PspSignal.FAILED, PspSignal.CANCELED):
            return Plan(steps=[Step(StepAction.VOID)]) if held else Plan(finish=name)
        dispute_open = bool(saga.context.get("dispute_open"))
        if name == PspSignal.CHARGEBACK and held and not dispute_open:
            context = {**saga.context, "dispute_open": True}
            return Plan(steps=[Step(StepAction.OPEN_DISPUTE, {"amount": amount})], context=context)
        if name in _DISPUTE_WINNER and dispute_open:
            context = {**saga.context, "dispute_open": False}
            winner = _DISPUTE_WINNER[PspSignal(name)]
            return Plan(
                steps=[Step(StepAction.RESOLVE_DISPUTE, {"winner": str(winner)})], context=context
            )
        raise SignalRejected(f"PSP event {name!r} does not fit a payment in this state")


FLOWS: Mapping[str, Flow] = {flow.name: flow for flow in (DirectCheckout(), PspBridged())}


def start_direct_checkout(
    sagas: Sagas,
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
    return sagas.start(saga_id, DirectCheckout.name, context, now)


def psp_saga_id(payment_ref: str) -> str:
    return f"psp:{payment_ref}"


def start_psp_bridged(
    sagas: Sagas,
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
    return sagas.start(psp_saga_id(payment_ref), PspBridged.name, context, now)


class PspBridgedSagas:
    """The PSP-bridged sagas, addressed by the processor's payment reference.

    What ``engine.psp.events.deliver`` feeds a processor's events to: it names its consumer by
    the ``PspEventConsumer`` protocol, which this class meets, since psp may not import saga.
    """

    def __init__(self, sagas: Sagas) -> None:
        self._sagas = sagas

    def on_psp_event(
        self, payment_ref: str, psp_event_id: str, kind: str, amount: int, now: int | None = None
    ) -> bool:
        """Signal the event to its saga once; False when ``psp_event_id`` came before."""
        return self._sagas.signal(
            psp_saga_id(payment_ref),
            f"psp:{psp_event_id}",
            kind,
            {"amount": amount},
            now,
        )
