"""The payment state machine: transitions, deciders, invariants and the events it records."""

import json
import random
import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from engine.domain import errors
from engine.domain.errors import DomainError, IllegalTransition
from engine.domain.events import (
    EVENT_TYPES,
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
    event_from_dict,
)
from engine.domain.ids import IdPrefix, PaymentTerms, new_id
from engine.domain.money import EXTRA_LEGS_MAX, Leg, fee_for
from engine.domain.payment import (
    TRANSITIONS,
    Payment,
    PaymentStatus,
    apply,
    decide_capture,
    decide_open_dispute,
    decide_reclaim,
    decide_refund,
    decide_request,
    decide_resolve_conflict,
    decide_resolve_dispute,
    decide_void,
    replay,
    start,
    statuses_matching_amounts,
)

S = PaymentStatus
UNFLAGGED = [status for status in PaymentStatus if status is not S.CONFLICTED]
PAY = new_id(IdPrefix.PAYMENT, random.Random(1).randbytes)
OTHER_PAY = new_id(IdPrefix.PAYMENT, random.Random(2).randbytes)
T0 = 1_000
AUTHORIZATION_EXPIRY = 2_000
REFUND_EXPIRY = 3_000
MIN_FEE_BPS = 10
MAX_FEE_BPS = 100
TERMS = PaymentTerms(
    payer="0x" + "11" * 20,
    merchant="0x" + "22" * 20,
    token="0x" + "33" * 20,
    max_amount=10_000,
    authorization_expiry=AUTHORIZATION_EXPIRY,
    refund_expiry=REFUND_EXPIRY,
    min_fee_bps=MIN_FEE_BPS,
    max_fee_bps=MAX_FEE_BPS,
    fee_receiver="0x" + "44" * 20,
    operator="0x" + "55" * 20,
    salt=42,
)
PARTNER = "0x" + "66" * 20


def requested(amount: int = 1_000, terms: PaymentTerms = TERMS) -> Payment:
    [event] = decide_request(PAY, terms, amount, T0)
    assert isinstance(event, PaymentRequested)
    return start(event)


def authorized(amount: int = 1_000) -> Payment:
    return apply(requested(amount), Authorized(payment_id=PAY, at=T0, amount=amount))


def then(payment: Payment, events: Sequence[Event]) -> Payment:
    for event in events:
        payment = apply(payment, event)
    return payment


def captured(amount: int, hold: int = 1_000) -> Payment:
    payment = authorized(hold)
    return then(payment, decide_capture(payment, amount, T0, fee_bps=MIN_FEE_BPS))


def disputed(amount: int = 300) -> Payment:
    payment = captured(1_000)
    return then(payment, decide_open_dispute(payment, amount, T0))


def reach(status: PaymentStatus) -> Payment:
    """A payment in ``status``, reached through the public deciders and chain facts."""
    if status is S.PENDING:
        return requested()
    if status is S.REQUIRES_CAPTURE:
        return authorized()
    if status is S.PARTIALLY_CAPTURED:
        return captured(400)
    if status is S.SUCCEEDED:
        return captured(1_000)
    if status is S.FAILED:
        return apply(requested(), Failed(payment_id=PAY, at=T0, reason="permit reverted"))
    if status is S.CANCELED:
        return then(authorized(), decide_void(authorized(), T0))
    if status is S.EXPIRED:
        return then(authorized(), decide_reclaim(authorized(), AUTHORIZATION_EXPIRY))
    if status is S.PARTIALLY_REFUNDED:
        return then(captured(1_000), decide_refund(captured(1_000), 100, T0))
    if status is S.REFUNDED:
        return then(captured(1_000), decide_refund(captured(1_000), 1_000, T0))
    if status is S.DISPUTED:
        return disputed()
    if status is S.DISPUTE_WON:
        return then(disputed(), decide_resolve_dispute(disputed(), Party.MERCHANT, T0))
    if status is S.DISPUTE_LOST:
        return then(disputed(), decide_resolve_dispute(disputed(), Party.PAYER, T0))
    return apply(authorized(), Conflicted(payment_id=PAY, at=T0, reason="chain disagrees"))


def sample_event(payment: Payment, kind: str) -> Event:
    """An event of ``kind`` whose amounts fit ``payment``, so only the status can refuse it."""
    at = T0
    if kind == PaymentRequested.kind:
        return PaymentRequested(payment_id=PAY, at=at, terms=TERMS, amount=payment.amount)
    if kind == Authorized.kind:
        return Authorized(payment_id=PAY, at=at, amount=payment.amount)
    if kind == Failed.kind:
        return Failed(payment_id=PAY, at=at, reason="reverted")
    if kind == Captured.kind:
        amount = max(1, min(payment.capturable, 100))
        return Captured(payment_id=PAY, at=at, amount=amount, fee=fee_for(amount, MIN_FEE_BPS))
    if kind == Voided.kind:
        return Voided(payment_id=PAY, at=at, amount=max(1, payment.capturable))
    if kind == Reclaimed.kind:
        return Reclaimed(payment_id=PAY, at=at, amount=max(1, payment.capturable))
    if kind == Refunded.kind:
        return Refunded(payment_id=PAY, at=at, amount=1)
    if kind == DisputeOpened.kind:
        return DisputeOpened(payment_id=PAY, at=at, amount=1)
    if kind == DisputeResolved.kind:
        return DisputeResolved(payment_id=PAY, at=at, winner=Party.PAYER)
    if kind == ConflictResolved.kind:
        status = payment.unflagged_status
        return ConflictResolved(payment_id=PAY, at=at, status=status, reason="views agree")
    return Conflicted(payment_id=PAY, at=at, reason="ledger disagrees")


FLAG_KINDS = (Conflicted.kind, ConflictResolved.kind)


def listed_targets(payment: Payment, kind: str) -> frozenset[PaymentStatus] | None:
    """What the table lets ``kind`` lead ``payment`` to: a conflicted payment takes a chain
    fact only where the status beneath its flag has a pair for it too."""
    targets = TRANSITIONS.get((payment.status, kind))
    beneath = payment.underlying
    if beneath is not None and kind not in FLAG_KINDS and (beneath, kind) not in TRANSITIONS:
        return None
    return targets


def assert_books_balance(p: Payment) -> None:
    assert min(p.authorized, p.captured, p.voided, p.reclaimed, p.refunded, p.disputed) >= 0
    assert p.captured <= p.authorized
    assert p.refunded + p.disputed <= p.captured
    assert p.capturable == p.authorized - p.captured - p.voided - p.reclaimed >= 0
    assert p.authorized <= p.terms.max_amount


# --- the transition table -------------------------------------------------------------------


@pytest.mark.parametrize("status", list(PaymentStatus))
def test_every_status_is_reachable(status: PaymentStatus) -> None:
    assert reach(status).status is status


@pytest.mark.parametrize("kind", list(EVENT_TYPES))
@pytest.mark.parametrize("status", list(PaymentStatus))
def test_each_status_and_event_kind_is_either_a_listed_transition_or_illegal(
    status: PaymentStatus, kind: str
) -> None:
    payment = reach(status)
    event = sample_event(payment, kind)
    targets = listed_targets(payment, kind)
    if targets is None:
        with pytest.raises(IllegalTransition) as raised:
            apply(payment, event)
        # A fact a conflicted payment cannot take is refused by the status beneath the flag.
        judged = status if (status, kind) not in TRANSITIONS else payment.unflagged_status
        assert (raised.value.from_status, raised.value.event_kind) == (judged.value, kind)
        assert raised.value.code == "illegal_transition"
    else:
        assert apply(payment, event).status in targets


def test_the_table_only_names_known_statuses_and_event_kinds() -> None:
    for (status, kind), targets in TRANSITIONS.items():
        assert status in PaymentStatus
        assert kind in EVENT_TYPES
        assert targets and targets <= set(PaymentStatus)


def test_a_payment_is_created_only_by_a_request_and_never_requested_twice() -> None:
    assert all(kind != PaymentRequested.kind for _, kind in TRANSITIONS)
    with pytest.raises(IllegalTransition):
        apply(requested(), sample_event(requested(), PaymentRequested.kind))


def test_conflicted_is_reachable_from_every_status() -> None:
    for status in PaymentStatus:
        assert TRANSITIONS[(status, Conflicted.kind)] == {S.CONFLICTED}


def conflicted(payment: Payment) -> Payment:
    return apply(payment, Conflicted(payment_id=PAY, at=T0, reason="chain disagrees"))


def test_only_a_conflicted_payment_can_be_resolved_and_into_any_other_status() -> None:
    assert {status for status, kind in TRANSITIONS if kind == ConflictResolved.kind} == {
        S.CONFLICTED
    }
    assert TRANSITIONS[(S.CONFLICTED, ConflictResolved.kind)] == set(UNFLAGGED)
    for status in UNFLAGGED:
        with pytest.raises(IllegalTransition) as raised:
            decide_resolve_conflict(reach(status), status, "views agree", T0)
        assert raised.value.code == "illegal_transition"


@pytest.mark.parametrize("status", UNFLAGGED)
def test_resolving_a_conflict_returns_the_payment_to_the_status_it_had_before(
    status: PaymentStatus,
) -> None:
    before = reach(status)
    flagged = conflicted(conflicted(before))
    [event] = decide_resolve_conflict(flagged, status, "reconcile: books match again", T0 + 1)
    assert apply(flagged, event) == before


@pytest.mark.parametrize(
    ("status", "described"),
    [
        (S.PENDING, {S.PENDING, S.FAILED}),
        (S.FAILED, {S.PENDING, S.FAILED}),
        (S.REQUIRES_CAPTURE, {S.REQUIRES_CAPTURE}),
        (S.PARTIALLY_CAPTURED, {S.PARTIALLY_CAPTURED}),
        (S.SUCCEEDED, {S.SUCCEEDED, S.DISPUTE_WON}),
        (S.CANCELED, {S.CANCELED}),
        (S.EXPIRED, {S.EXPIRED}),
        (S.PARTIALLY_REFUNDED, {S.PARTIALLY_REFUNDED, S.DISPUTE_WON, S.DISPUTE_LOST}),
        (S.REFUNDED, {S.REFUNDED, S.DISPUTE_LOST}),
        (S.DISPUTED, {S.DISPUTED}),
        (S.DISPUTE_WON, {S.SUCCEEDED, S.DISPUTE_WON}),
        (S.DISPUTE_LOST, {S.PARTIALLY_REFUNDED, S.DISPUTE_WON, S.DISPUTE_LOST}),
    ],
)
def test_the_amounts_name_one_status_unless_a_failure_or_a_decided_dispute_left_no_trace(
    status: PaymentStatus, described: set[PaymentStatus]
) -> None:
    assert statuses_matching_amounts(reach(status)) == described


@pytest.mark.parametrize(
    ("status", "claimed"),
    [
        (S.PENDING, S.REQUIRES_CAPTURE),
        (S.PARTIALLY_CAPTURED, S.SUCCEEDED),
        (S.CANCELED, S.EXPIRED),
        (S.SUCCEEDED, S.REFUNDED),
        (S.REFUNDED, S.DISPUTE_WON),
        (S.DISPUTED, S.DISPUTE_LOST),
        # The amounts would allow these, the facts do not: later facts would be judged by a
        # status the history never reached.
        (S.PENDING, S.FAILED),
        (S.FAILED, S.PENDING),
        (S.SUCCEEDED, S.DISPUTE_WON),
        (S.DISPUTE_LOST, S.PARTIALLY_REFUNDED),
    ],
)
def test_a_resolution_to_any_status_but_the_one_the_facts_describe_is_refused(
    status: PaymentStatus, claimed: PaymentStatus
) -> None:
    flagged = conflicted(reach(status))
    with pytest.raises(errors.InvalidEvent, match="does not fit the facts") as raised:
        decide_resolve_conflict(flagged, claimed, "views agree", T0)
    assert raised.value.code == "invalid_event"
    stored = ConflictResolved(payment_id=PAY, at=T0, status=claimed, reason="views agree")
    with pytest.raises(errors.InvalidEvent):
        apply(flagged, stored)  # a stored event is checked the same way on replay


def test_a_resolved_history_replays_through_json_to_the_same_payment() -> None:
    payment = captured(400)
    history: list[Event] = [
        *decide_request(PAY, TERMS, 1_000, T0),
        Authorized(payment_id=PAY, at=T0, amount=1_000),
        *decide_capture(authorized(), 400, T0, fee_bps=MIN_FEE_BPS),
        Conflicted(payment_id=PAY, at=T0, reason="ledger disagrees"),
        *decide_resolve_conflict(conflicted(payment), S.PARTIALLY_CAPTURED, "views agree", T0),
    ]
    payment = then(payment, decide_void(payment, T0))
    history.extend(decide_void(replay(history), T0))
    assert replay(event_from_dict(json.loads(json.dumps(e.to_dict()))) for e in history) == payment
    assert payment.status is S.SUCCEEDED


# --- chain facts on a conflicted payment ----------------------------------------------------


def _capture(amount: int) -> Captured:
    return Captured(payment_id=PAY, at=T0, amount=amount, fee=fee_for(amount, MIN_FEE_BPS))


CHAIN_FACTS: list[tuple[PaymentStatus, Event]] = [
    (S.PENDING, Authorized(payment_id=PAY, at=T0, amount=1_000)),
    (S.PENDING, Failed(payment_id=PAY, at=T0, reason="permit reverted")),
    (S.REQUIRES_CAPTURE, _capture(400)),
    (S.REQUIRES_CAPTURE, _capture(1_000)),
    (S.PARTIALLY_CAPTURED, Voided(payment_id=PAY, at=T0, amount=600)),
    (S.REQUIRES_CAPTURE, Reclaimed(payment_id=PAY, at=T0, amount=1_000)),
    (S.SUCCEEDED, Refunded(payment_id=PAY, at=T0, amount=250)),
    (S.SUCCEEDED, DisputeOpened(payment_id=PAY, at=T0, amount=300)),
    (S.DISPUTED, DisputeResolved(payment_id=PAY, at=T0, winner=Party.PAYER)),
    (S.DISPUTED, DisputeResolved(payment_id=PAY, at=T0, winner=Party.MERCHANT)),
]


def test_every_chain_fact_kind_is_taken_while_conflicted() -> None:
    kinds = {event.kind for _, event in CHAIN_FACTS}
    assert kinds == set(EVENT_TYPES) - {PaymentRequested.kind, *FLAG_KINDS}
    assert {kind for status, kind in TRANSITIONS if status is S.CONFLICTED} == {
        *kinds,
        *FLAG_KINDS,
    }


@pytest.mark.parametrize(("status", "fact"), CHAIN_FACTS, ids=lambda v: getattr(v, "kind", v))
def test_a_conflicted_payment_takes_a_chain_fact_into_its_amounts_and_stays_conflicted(
    status: PaymentStatus, fact: Event
) -> None:
    unflagged = apply(reach(status), fact)
    flagged = apply(conflicted(reach(status)), fact)

    assert (flagged.status, flagged.underlying) == (S.CONFLICTED, unflagged.status)
    assert replace(flagged, status=unflagged.status, underlying=None) == unflagged
    # Resolution returns it to the status its facts describe, the absorbed one included.
    [resolved] = decide_resolve_conflict(flagged, unflagged.status, "views agree", T0 + 1)
    assert apply(flagged, resolved) == unflagged


@pytest.mark.parametrize(
    ("status", "fact", "error"),
    [
        (S.REQUIRES_CAPTURE, Authorized(payment_id=PAY, at=T0, amount=1_000), IllegalTransition),
        (S.REQUIRES_CAPTURE, Refunded(payment_id=PAY, at=T0, amount=1), IllegalTransition),
        (S.SUCCEEDED, _capture(1), IllegalTransition),
        (S.CANCELED, DisputeOpened(payment_id=PAY, at=T0, amount=1), IllegalTransition),
        (S.FAILED, Authorized(payment_id=PAY, at=T0, amount=1_000), IllegalTransition),
        (S.REQUIRES_CAPTURE, _capture(1_001), errors.AmountExceedsCapturable),
        (S.REQUIRES_CAPTURE, Voided(payment_id=PAY, at=T0, amount=999), errors.InvalidAmount),
        (S.PARTIALLY_REFUNDED, Refunded(payment_id=PAY, at=T0, amount=901), DomainError),
    ],
)
def test_a_fact_the_underlying_status_or_the_amounts_refuse_is_refused_while_conflicted(
    status: PaymentStatus, fact: Event, error: type[DomainError]
) -> None:
    flagged = conflicted(reach(status))
    before = repr(flagged)
    with pytest.raises(error) as raised:
        apply(flagged, fact)
    if isinstance(raised.value, IllegalTransition):
        assert raised.value.from_status == status.value  # judged by the status beneath
    assert repr(flagged) == before


def test_a_conflicted_payment_takes_no_command() -> None:
    for status, decide in [
        (S.REQUIRES_CAPTURE, lambda p: decide_capture(p, 1, T0, fee_bps=MIN_FEE_BPS)),
        (S.REQUIRES_CAPTURE, lambda p: decide_void(p, T0)),
        (S.REQUIRES_CAPTURE, lambda p: decide_reclaim(p, AUTHORIZATION_EXPIRY)),
        (S.SUCCEEDED, lambda p: decide_refund(p, 1, T0)),
        (S.SUCCEEDED, lambda p: decide_open_dispute(p, 1, T0)),
        (S.DISPUTED, lambda p: decide_resolve_dispute(p, Party.MERCHANT, T0)),
    ]:
        decide(reach(status))  # accepted while the payment is not flagged
        with pytest.raises(IllegalTransition) as raised:
            decide(conflicted(reach(status)))
        assert raised.value.from_status == S.CONFLICTED.value


def test_facts_and_flags_interleaved_resolve_to_the_status_the_facts_describe() -> None:
    payment = authorized()
    history: list[Event] = [
        *decide_request(PAY, TERMS, 1_000, T0),
        Authorized(payment_id=PAY, at=T0, amount=1_000),
        Conflicted(payment_id=PAY, at=T0, reason="chain ahead"),
        _capture(400),
        Conflicted(payment_id=PAY, at=T0, reason="chain ahead again"),
        _capture(600),
    ]
    flagged = replay(history)
    assert (flagged.status, flagged.underlying, flagged.captured) == (
        S.CONFLICTED,
        S.SUCCEEDED,
        1_000,
    )
    # The status before the conflict no longer fits: the captures moved it on.
    with pytest.raises(errors.InvalidEvent, match="does not fit the facts"):
        decide_resolve_conflict(flagged, payment.status, "views agree", T0 + 1)
    history += decide_resolve_conflict(flagged, S.SUCCEEDED, "views agree", T0 + 1)
    resolved = replay(history)
    # The same as folding the facts alone, without the flags.
    assert resolved == replay(e for e in history if e.kind not in FLAG_KINDS)
    assert resolved.status is S.SUCCEEDED and resolved.underlying is None
    assert decide_refund(resolved, 100, T0)  # commands are taken again


def _candidate_events() -> Iterator[Event]:
    """Every event with amounts up to 3 units, including ones the books must refuse."""
    for amount in (1, 2, 3):
        yield Authorized(payment_id=PAY, at=T0, amount=amount)
        for fee in {0, fee_for(amount, MIN_FEE_BPS), fee_for(amount, MAX_FEE_BPS) + 1}:
            if fee <= amount:
                yield Captured(payment_id=PAY, at=T0, amount=amount, fee=fee)
        for kind in (Voided, Reclaimed, Refunded, DisputeOpened):
            yield kind(payment_id=PAY, at=T0, amount=amount)
    yield Failed(payment_id=PAY, at=T0, reason="reverted")
    yield DisputeResolved(payment_id=PAY, at=T0, winner=Party.PAYER)
    yield DisputeResolved(payment_id=PAY, at=T0, winner=Party.MERCHANT)
    yield Conflicted(payment_id=PAY, at=T0, reason="drift")
    for status in UNFLAGGED:
        yield ConflictResolved(payment_id=PAY, at=T0, status=status, reason="views agree")
    yield PaymentRequested(payment_id=PAY, at=T0, terms=TERMS, amount=3)


def test_every_event_sequence_over_small_amounts_keeps_the_books_and_the_table() -> None:
    """Breadth-first over every payment reachable with amounts of at most 3 units."""
    candidates = list(_candidate_events())
    first = requested(3)
    seen = {first}
    queue = deque([first])
    observed: set[tuple[PaymentStatus, str, PaymentStatus]] = set()
    while queue:
        payment = queue.popleft()
        for event in candidates:
            listed = listed_targets(payment, event.kind)
            try:
                after = apply(payment, event)
            except IllegalTransition:
                assert listed is None
                continue
            except DomainError:
                assert listed is not None  # amounts refused it, the status accepted the kind
                continue
            assert listed is not None and after.status in listed
            assert_books_balance(after)
            # What a resolution returns to is what the rules that got here derived.
            assert after.unflagged_status in statuses_matching_amounts(after)
            observed.add((payment.status, event.kind, after.status))
            if after not in seen:
                seen.add(after)
                queue.append(after)
    assert {p.status for p in seen} == set(PaymentStatus)
    listed_triples = {(s, k, t) for (s, k), targets in TRANSITIONS.items() for t in targets}
    assert observed == listed_triples


# --- deciders -------------------------------------------------------------------------------


def test_a_request_is_pending_with_nothing_held_yet() -> None:
    payment = requested(500)
    assert (payment.status, payment.amount, payment.authorized, payment.capturable) == (
        S.PENDING,
        500,
        0,
        0,
    )


def test_a_request_above_the_terms_max_amount_is_refused() -> None:
    with pytest.raises(errors.AmountExceedsMaxAmount) as raised:
        decide_request(PAY, TERMS, TERMS.max_amount + 1, T0)
    assert raised.value.code == "amount_exceeds_max_amount"


def test_a_request_at_or_after_the_authorization_expiry_is_refused() -> None:
    with pytest.raises(errors.AuthorizationExpired):
        decide_request(PAY, TERMS, 1, AUTHORIZATION_EXPIRY)


@pytest.mark.parametrize("amount", [0, -1, True, 1.5])
def test_a_request_for_a_non_positive_or_non_integer_amount_is_refused(amount: object) -> None:
    with pytest.raises(errors.InvalidAmount) as raised:
        decide_request(PAY, TERMS, amount, T0)  # type: ignore[arg-type]
    assert raised.value.code == "invalid_amount"


def test_a_request_needs_a_payment_id() -> None:
    with pytest.raises(errors.InvalidId):
        decide_request(new_id(IdPrefix.MERCHANT), TERMS, 1, T0)


@pytest.mark.parametrize("now", [-1, 2**48, 1.5, True])
def test_time_must_be_unix_seconds_the_escrow_can_store(now: object) -> None:
    with pytest.raises(errors.InvalidTime) as raised:
        decide_void(authorized(), now)  # type: ignore[arg-type]
    assert raised.value.code == "invalid_time"


def test_the_authorized_amount_is_capturable() -> None:
    payment = authorized(700)
    assert (payment.status, payment.authorized, payment.capturable) == (
        S.REQUIRES_CAPTURE,
        700,
        700,
    )


def test_a_partial_capture_leaves_the_rest_capturable() -> None:
    payment = captured(400)
    assert (payment.status, payment.captured, payment.capturable) == (
        S.PARTIALLY_CAPTURED,
        400,
        600,
    )


def test_captures_that_empty_the_hold_succeed() -> None:
    payment = captured(400)
    payment = then(payment, decide_capture(payment, 600, T0, fee_bps=MAX_FEE_BPS))
    assert (payment.status, payment.captured, payment.capturable) == (S.SUCCEEDED, 1_000, 0)


def test_a_capture_records_the_contracts_fee_and_the_extra_legs() -> None:
    [event] = decide_capture(
        authorized(), 999, T0, fee_bps=MAX_FEE_BPS, extra_legs=[Leg(PARTNER, 100)]
    )
    assert isinstance(event, Captured)
    assert (event.amount, event.fee, event.merchant_net) == (999, 10, 889)
    assert event.legs == (Leg(PARTNER, 100),)


def test_a_capture_above_the_capturable_amount_is_refused() -> None:
    with pytest.raises(errors.AmountExceedsCapturable) as raised:
        decide_capture(captured(400), 601, T0, fee_bps=MIN_FEE_BPS)
    assert raised.value.code == "amount_exceeds_capturable"


def test_a_capture_at_or_after_the_authorization_expiry_is_refused() -> None:
    with pytest.raises(errors.AuthorizationExpired) as raised:
        decide_capture(authorized(), 1, AUTHORIZATION_EXPIRY, fee_bps=MIN_FEE_BPS)
    assert raised.value.code == "authorization_expired"
    assert decide_capture(authorized(), 1, AUTHORIZATION_EXPIRY - 1, fee_bps=MIN_FEE_BPS)


@pytest.mark.parametrize("fee_bps", [MIN_FEE_BPS - 1, MAX_FEE_BPS + 1])
def test_a_capture_with_a_fee_rate_outside_the_terms_is_refused(fee_bps: int) -> None:
    with pytest.raises(errors.FeeOutOfBounds) as raised:
        decide_capture(authorized(), 100, T0, fee_bps=fee_bps)
    assert raised.value.code == "fee_out_of_bounds"


def test_a_capture_whose_legs_exceed_the_merchant_share_is_refused() -> None:
    with pytest.raises(errors.InvalidAmount):
        decide_capture(authorized(), 100, T0, fee_bps=MIN_FEE_BPS, extra_legs=[Leg(PARTNER, 100)])


def test_capturing_a_pending_payment_is_an_illegal_transition() -> None:
    with pytest.raises(IllegalTransition):
        decide_capture(requested(), 1, T0, fee_bps=MIN_FEE_BPS)


def test_voiding_an_uncaptured_hold_releases_everything_and_cancels() -> None:
    [event] = decide_void(authorized(), AUTHORIZATION_EXPIRY + 1)
    payment = apply(authorized(), event)
    assert (payment.status, payment.voided, payment.capturable) == (S.CANCELED, 1_000, 0)


def test_voiding_after_a_partial_capture_releases_the_rest_and_succeeds() -> None:
    payment = then(captured(400), decide_void(captured(400), T0))
    assert (payment.status, payment.captured, payment.voided) == (S.SUCCEEDED, 400, 600)


def test_voiding_a_fully_captured_payment_is_an_illegal_transition() -> None:
    with pytest.raises(IllegalTransition):
        decide_void(captured(1_000), T0)


def test_a_partial_void_from_the_chain_is_refused() -> None:
    with pytest.raises(errors.InvalidAmount, match="whole remaining hold"):
        apply(authorized(), Voided(payment_id=PAY, at=T0, amount=999))


def test_reclaiming_before_the_authorization_expiry_is_refused() -> None:
    with pytest.raises(errors.AuthorizationNotExpired) as raised:
        decide_reclaim(authorized(), AUTHORIZATION_EXPIRY - 1)
    assert raised.value.code == "authorization_not_expired"


def test_a_reclaimed_hold_with_nothing_captured_is_expired() -> None:
    payment = then(authorized(), decide_reclaim(authorized(), AUTHORIZATION_EXPIRY))
    assert (payment.status, payment.reclaimed, payment.capturable) == (S.EXPIRED, 1_000, 0)


def test_a_reclaimed_hold_after_a_partial_capture_is_succeeded() -> None:
    payment = then(captured(400), decide_reclaim(captured(400), AUTHORIZATION_EXPIRY))
    assert (payment.status, payment.captured, payment.reclaimed) == (S.SUCCEEDED, 400, 600)


def test_partial_then_full_refunds_move_through_partially_refunded_to_refunded() -> None:
    payment = then(captured(1_000), decide_refund(captured(1_000), 400, T0))
    assert (payment.status, payment.refunded, payment.refundable) == (
        S.PARTIALLY_REFUNDED,
        400,
        600,
    )
    payment = then(payment, decide_refund(payment, 600, REFUND_EXPIRY - 1))
    assert (payment.status, payment.refunded, payment.refundable) == (S.REFUNDED, 1_000, 0)


def test_a_refund_above_the_refundable_amount_is_refused() -> None:
    with pytest.raises(errors.AmountExceedsRefundable) as raised:
        decide_refund(captured(400), 401, T0)
    assert raised.value.code == "amount_exceeds_refundable"


def test_a_refund_at_or_after_the_refund_expiry_is_refused() -> None:
    with pytest.raises(errors.RefundWindowClosed) as raised:
        decide_refund(captured(1_000), 1, REFUND_EXPIRY)
    assert raised.value.code == "refund_window_closed"


def test_a_refund_while_the_hold_is_open_keeps_the_payment_partially_captured() -> None:
    payment = then(captured(400), decide_refund(captured(400), 400, T0))
    assert (payment.status, payment.refunded, payment.capturable) == (
        S.PARTIALLY_CAPTURED,
        400,
        600,
    )
    payment = then(payment, decide_void(payment, T0))
    assert payment.status is S.REFUNDED


def test_refunding_an_uncaptured_hold_is_an_illegal_transition() -> None:
    with pytest.raises(IllegalTransition):
        decide_refund(authorized(), 1, T0)


def test_a_dispute_freezes_its_amount_and_blocks_refunds_until_resolved() -> None:
    payment = disputed(300)
    assert (payment.status, payment.disputed, payment.refundable) == (S.DISPUTED, 300, 700)
    with pytest.raises(IllegalTransition):
        decide_refund(payment, 1, T0)


def test_a_dispute_above_the_refundable_amount_is_refused() -> None:
    payment = then(captured(1_000), decide_refund(captured(1_000), 900, T0))
    with pytest.raises(errors.AmountExceedsRefundable):
        decide_open_dispute(payment, 101, T0)


def test_a_dispute_while_the_hold_is_open_is_an_illegal_transition() -> None:
    with pytest.raises(IllegalTransition):
        decide_open_dispute(captured(400), 100, T0)


def test_a_dispute_can_open_after_the_refund_window_closes() -> None:
    assert decide_open_dispute(captured(1_000), 1, REFUND_EXPIRY + 86_400)


def test_a_dispute_won_by_the_payer_counts_as_refunded_and_is_lost_for_the_merchant() -> None:
    payment = then(disputed(300), decide_resolve_dispute(disputed(300), Party.PAYER, T0))
    assert (payment.status, payment.refunded, payment.disputed, payment.refundable) == (
        S.DISPUTE_LOST,
        300,
        0,
        700,
    )


def test_a_dispute_won_by_the_merchant_makes_the_amount_refundable_again() -> None:
    payment = then(disputed(300), decide_resolve_dispute(disputed(300), Party.MERCHANT, T0))
    assert (payment.status, payment.refunded, payment.disputed, payment.refundable) == (
        S.DISPUTE_WON,
        0,
        0,
        1_000,
    )
    payment = then(payment, decide_refund(payment, 1_000, T0))
    assert payment.status is S.REFUNDED


def test_resolving_without_an_open_dispute_is_an_illegal_transition() -> None:
    with pytest.raises(IllegalTransition):
        decide_resolve_dispute(captured(1_000), Party.PAYER, T0)


def test_a_chain_capture_with_a_fee_outside_the_terms_is_refused() -> None:
    with pytest.raises(errors.FeeOutOfBounds):
        apply(authorized(), Captured(payment_id=PAY, at=T0, amount=1_000, fee=11))
    with pytest.raises(errors.FeeOutOfBounds):
        apply(authorized(), Captured(payment_id=PAY, at=T0, amount=1_000, fee=0))


def test_a_chain_authorization_above_the_max_amount_is_refused() -> None:
    with pytest.raises(errors.AmountExceedsMaxAmount):
        apply(requested(), Authorized(payment_id=PAY, at=T0, amount=TERMS.max_amount + 1))


def test_an_event_for_another_payment_is_refused() -> None:
    with pytest.raises(errors.InvalidEvent):
        apply(authorized(), Voided(payment_id=OTHER_PAY, at=T0, amount=1_000))


def test_a_refused_event_leaves_the_payment_unchanged() -> None:
    payment = captured(400)
    before = repr(payment)
    with pytest.raises(errors.AmountExceedsCapturable):
        apply(payment, Captured(payment_id=PAY, at=T0, amount=601, fee=7))
    assert repr(payment) == before


def test_replaying_the_history_rebuilds_the_same_payment() -> None:
    history: list[Event] = [*decide_request(PAY, TERMS, 1_000, T0)]
    payment = start(history[0])  # type: ignore[arg-type]
    for step in (
        lambda p: [Authorized(payment_id=PAY, at=T0, amount=1_000)],
        lambda p: decide_capture(p, 1_000, T0, fee_bps=MIN_FEE_BPS),
        lambda p: decide_refund(p, 250, T0),
    ):
        events = step(payment)
        payment = then(payment, events)
        history.extend(events)
    assert replay(history) == payment
    assert replay(event_from_dict(json.loads(json.dumps(e.to_dict()))) for e in history) == payment


def test_replay_needs_a_request_first() -> None:
    with pytest.raises(errors.InvalidEvent):
        replay([Authorized(payment_id=PAY, at=T0, amount=1)])
    with pytest.raises(errors.InvalidEvent):
        replay([])


# --- random command sequences ---------------------------------------------------------------


class PaymentLifecycle(RuleBasedStateMachine):
    """Random commands against one confirmed hold, checking each decision against a plain
    reading of the rules and the books after every step. (Pending and failed payments are
    covered by the exhaustive walk above.)

    Amounts are drawn as a percentage of what is left, up to 120 %, so most commands are
    valid and the rest overshoot by a little, which is where the bugs live.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.history: list[Event] = []
        self.payment = requested()

    @initialize(amount=st.integers(1, TERMS.max_amount))
    def hold(self, amount: int) -> None:
        self.history = [
            *decide_request(PAY, TERMS, amount, T0),
            Authorized(payment_id=PAY, at=T0, amount=amount),
        ]
        self.payment = replay(self.history)

    def _decide(self, should_succeed: bool, decide: Callable[[], list[Event]]) -> None:
        try:
            events = decide()
            after = then(self.payment, events)
        except DomainError:
            assert not should_succeed
            return
        assert should_succeed
        self.payment = after
        self.history.extend(events)

    def _in(self, *statuses: PaymentStatus) -> bool:
        return self.payment.status in statuses

    @staticmethod
    def _part_of(left: int, percent: int) -> int:
        return max(1, -(-left * percent // 100))

    @rule(seconds=st.integers(0, 1_200))
    def time_passes(self, seconds: int) -> None:
        self.now += seconds

    @rule(percent=st.integers(1, 120), fee_bps=st.integers(0, 110))
    def capture(self, percent: int, fee_bps: int) -> None:
        amount = self._part_of(self.payment.capturable, percent)
        ok = (
            self._in(S.REQUIRES_CAPTURE, S.PARTIALLY_CAPTURED)
            and self.now < AUTHORIZATION_EXPIRY
            and amount <= self.payment.capturable
            and MIN_FEE_BPS <= fee_bps <= MAX_FEE_BPS
        )
        self._decide(ok, lambda: decide_capture(self.payment, amount, self.now, fee_bps=fee_bps))

    @rule()
    def void(self) -> None:
        ok = self._in(S.REQUIRES_CAPTURE, S.PARTIALLY_CAPTURED)
        self._decide(ok, lambda: decide_void(self.payment, self.now))

    @rule()
    def reclaim(self) -> None:
        ok = self._in(S.REQUIRES_CAPTURE, S.PARTIALLY_CAPTURED) and (
            self.now >= AUTHORIZATION_EXPIRY
        )
        self._decide(ok, lambda: decide_reclaim(self.payment, self.now))

    @rule(percent=st.integers(1, 120))
    def refund(self, percent: int) -> None:
        amount = self._part_of(self.payment.refundable, percent)
        ok = (
            self._in(
                S.PARTIALLY_CAPTURED,
                S.SUCCEEDED,
                S.PARTIALLY_REFUNDED,
                S.DISPUTE_WON,
                S.DISPUTE_LOST,
            )
            and self.now < REFUND_EXPIRY
            and amount <= self.payment.refundable
        )
        self._decide(ok, lambda: decide_refund(self.payment, amount, self.now))

    @rule(percent=st.integers(1, 120))
    def open_dispute(self, percent: int) -> None:
        amount = self._part_of(self.payment.refundable, percent)
        ok = (
            self._in(S.SUCCEEDED, S.PARTIALLY_REFUNDED, S.DISPUTE_WON, S.DISPUTE_LOST)
            and amount <= self.payment.refundable
        )
        self._decide(ok, lambda: decide_open_dispute(self.payment, amount, self.now))

    @rule(winner=st.sampled_from(Party))
    def resolve_dispute(self, winner: Party) -> None:
        ok = self._in(S.DISPUTED)
        self._decide(ok, lambda: decide_resolve_dispute(self.payment, winner, self.now))

    @rule(percent=st.integers(1, 120))
    def capture_in_flight_while_flagged(self, percent: int) -> None:
        """Reconciliation flags the payment while a capture is in flight; the capture's fact
        still lands, and resolution returns to the status it leads to."""
        amount = self._part_of(self.payment.capturable, percent)
        try:
            decided = decide_capture(self.payment, amount, self.now, fee_bps=MIN_FEE_BPS)
        except DomainError:
            return  # the capture rule judges refusals
        unflagged = then(self.payment, decided)
        flagged = Conflicted(payment_id=PAY, at=self.now, reason="reconcile: in flight")
        self._decide(True, lambda: [flagged, *decided])
        assert (self.payment.status, self.payment.underlying) == (S.CONFLICTED, unflagged.status)
        self._decide(
            True,
            lambda: decide_resolve_conflict(self.payment, unflagged.status, "agree", self.now),
        )
        assert self.payment == unflagged

    @rule()
    def conflict_and_resolve(self) -> None:
        before = self.payment
        flagged = Conflicted(payment_id=PAY, at=self.now, reason="reconcile: drift")
        self._decide(True, lambda: [flagged])
        self._decide(False, lambda: decide_capture(self.payment, 1, self.now, fee_bps=MAX_FEE_BPS))
        self._decide(
            True, lambda: decide_resolve_conflict(self.payment, before.status, "agree", self.now)
        )
        assert self.payment == before

    @invariant()
    def books_balance(self) -> None:
        assert_books_balance(self.payment)

    @invariant()
    def the_history_replays_to_the_same_payment(self) -> None:
        assert replay(self.history) == self.payment

    @invariant()
    def the_flags_change_no_fact(self) -> None:
        assert replay(e for e in self.history if e.kind not in FLAG_KINDS) == self.payment

    @invariant()
    def amounts_are_the_sums_of_the_events(self) -> None:
        def total(kind: type[Event]) -> int:
            return sum(getattr(e, "amount", 0) for e in self.history if isinstance(e, kind))

        assert self.payment.captured == total(Captured)
        assert self.payment.voided == total(Voided)
        assert self.payment.reclaimed == total(Reclaimed)
        lost = self.payment.refunded - total(Refunded)
        assert 0 <= lost <= total(DisputeOpened)


PaymentLifecycle.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None
)
TestPaymentLifecycle = PaymentLifecycle.TestCase


# --- events as stored -----------------------------------------------------------------------

payment_ids = st.integers(0, 2**128 - 1).map(
    lambda n: new_id(IdPrefix.PAYMENT, lambda _: n.to_bytes(16, "big"))
)
times = st.integers(0, 2**48 - 1)
amounts = st.integers(1, 2**120 - 1)
reasons = st.text(min_size=1, max_size=200)
# Who funded or was paid: named by the chain's log, or unset in a decider's or an old event.
accounts = st.sampled_from([None, TERMS.payer, TERMS.merchant, PARTNER])
legs = st.lists(
    st.builds(Leg, recipient=st.just(PARTNER), amount=st.integers(1, 1_000)),
    max_size=EXTRA_LEGS_MAX,
).map(tuple)
EVENT_STRATEGIES: dict[str, st.SearchStrategy[Event]] = {
    PaymentRequested.kind: st.builds(
        PaymentRequested,
        payment_id=payment_ids,
        at=times,
        terms=st.just(TERMS),
        amount=st.integers(1, TERMS.max_amount),
    ),
    Authorized.kind: st.builds(Authorized, payment_id=payment_ids, at=times, amount=amounts),
    Failed.kind: st.builds(Failed, payment_id=payment_ids, at=times, reason=reasons),
    Captured.kind: st.builds(
        Captured,
        payment_id=payment_ids,
        at=times,
        amount=st.integers(10_000, 2**120 - 1),
        fee=st.integers(0, 1_000),
        legs=legs,
    ),
    Voided.kind: st.builds(Voided, payment_id=payment_ids, at=times, amount=amounts),
    Reclaimed.kind: st.builds(Reclaimed, payment_id=payment_ids, at=times, amount=amounts),
    Refunded.kind: st.builds(
        Refunded, payment_id=payment_ids, at=times, amount=amounts, funder=accounts
    ),
    DisputeOpened.kind: st.builds(
        DisputeOpened, payment_id=payment_ids, at=times, amount=amounts, funder=accounts
    ),
    DisputeResolved.kind: st.builds(
        DisputeResolved,
        payment_id=payment_ids,
        at=times,
        winner=st.sampled_from(Party),
        paid_to=accounts,
    ),
    Conflicted.kind: st.builds(Conflicted, payment_id=payment_ids, at=times, reason=reasons),
    ConflictResolved.kind: st.builds(
        ConflictResolved,
        payment_id=payment_ids,
        at=times,
        status=st.sampled_from(UNFLAGGED),
        reason=reasons,
    ),
}


def test_every_event_kind_has_a_round_trip_strategy() -> None:
    assert set(EVENT_STRATEGIES) == set(EVENT_TYPES)


def _leaves(value: object) -> Iterator[object]:
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


@settings(max_examples=200, deadline=None)
@given(event=st.one_of(*EVENT_STRATEGIES.values()))
def test_events_round_trip_through_json_as_ints_and_strings_only(event: Event) -> None:
    data = event.to_dict()
    assert data["kind"] == event.kind
    assert all(type(leaf) in (int, str) for leaf in _leaves(data))
    assert event_from_dict(json.loads(json.dumps(data))) == event


def _refund_dict() -> dict[str, object]:
    return Refunded(payment_id=PAY, at=T0, amount=5).to_dict()


def _resolved_dict() -> dict[str, object]:
    return ConflictResolved(payment_id=PAY, at=T0, status=S.SUCCEEDED, reason="ok").to_dict()


@pytest.mark.parametrize(
    "data",
    [
        {**_refund_dict(), "kind": "teleported"},
        {**_refund_dict(), "amount": 5.0},
        {**_refund_dict(), "amount": True},
        {**_refund_dict(), "amount": "5"},
        {**_refund_dict(), "amount": 0},
        {**_refund_dict(), "at": -1},
        {**_refund_dict(), "payment_id": "mer_" + PAY[4:]},
        {**_refund_dict(), "note": "extra"},
        {k: v for k, v in _refund_dict().items() if k != "at"},
        {**DisputeResolved(payment_id=PAY, at=T0, winner=Party.PAYER).to_dict(), "winner": "me"},
        {**_resolved_dict(), "status": "conflicted"},
        {**_resolved_dict(), "status": "settled"},
        {**_resolved_dict(), "status": None},
        {k: v for k, v in _resolved_dict().items() if k != "reason"},
        {**Captured(payment_id=PAY, at=T0, amount=10, fee=0).to_dict(), "legs": [{"amount": 1}]},
        {**Captured(payment_id=PAY, at=T0, amount=10, fee=0).to_dict(), "fee": 11},
        {
            **PaymentRequested(payment_id=PAY, at=T0, terms=TERMS, amount=1).to_dict(),
            "amount": TERMS.max_amount + 1,
        },
    ],
)
def test_malformed_stored_events_are_refused_with_invalid_event(data: dict[str, object]) -> None:
    with pytest.raises(errors.InvalidEvent) as raised:
        event_from_dict(data)
    assert raised.value.code == "invalid_event"


def test_error_codes_are_unique_snake_case_and_stable() -> None:
    classes = DomainError.__subclasses__()
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes))
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", code) for code in codes)
    assert {
        "invalid_amount",
        "amount_exceeds_capturable",
        "amount_exceeds_refundable",
        "authorization_expired",
        "refund_window_closed",
        "illegal_transition",
    } <= set(codes)
