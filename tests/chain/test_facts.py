"""The one mapping from escrow logs to domain events: what each log means, who a dispute's
resolution paid, and a capture's legs, on logs built by hand (the mirror's and repair's tests
run it on real chains)."""

from __future__ import annotations

import pytest

from engine.chain import facts
from engine.chain.contracts import logs as chain
from engine.domain.events import (
    Captured,
    DisputeOpened,
    DisputeResolved,
    Party,
    Refunded,
)
from engine.domain.ids import IdPrefix, PaymentTerms, new_id
from engine.domain.money import Leg, checksum_address

PAYMENT = b"\x01" * 32
PAYER = checksum_address("0x" + "11" * 20, "payer")
MERCHANT = checksum_address("0x" + "22" * 20, "merchant")
OPERATOR = checksum_address("0x" + "33" * 20, "operator")
LEG = checksum_address("0x" + "44" * 20, "leg")
AT = 1_700_000_000
TERMS = PaymentTerms(
    payer=PAYER,
    merchant=MERCHANT,
    token="0x" + "55" * 20,
    max_amount=1_000,
    authorization_expiry=AT + 3_600,
    refund_expiry=AT + 7_200,
    min_fee_bps=0,
    max_fee_bps=100,
    fee_receiver="0x" + "66" * 20,
    operator=OPERATOR,
    salt=1,
)
PID = new_id(IdPrefix.PAYMENT)


def events(*logs: chain.EscrowEvent) -> list[object]:
    return facts.payment_events([(b"tx", log) for log in logs], payment_id=PID, terms=TERMS, at=AT)


def test_refunds_and_disputes_name_the_funder_the_log_names() -> None:
    assert events(
        chain.Refunded(PAYMENT, 3, 10, OPERATOR), chain.DisputeOpened(PAYMENT, 4, 20, MERCHANT)
    ) == [
        Refunded(payment_id=PID, at=AT, amount=10, funder=OPERATOR),
        DisputeOpened(payment_id=PID, at=AT, amount=20, funder=MERCHANT),
    ]


@pytest.mark.parametrize(
    ("payer_wins", "winner", "paid_to"),
    [(False, Party.MERCHANT, OPERATOR), (True, Party.PAYER, PAYER)],
)
def test_a_resolution_pays_the_payer_or_whoever_funded_the_dispute_it_closes(
    payer_wins: bool, winner: Party, paid_to: str
) -> None:
    found = events(
        chain.DisputeOpened(PAYMENT, 3, 20, MERCHANT),
        chain.DisputeResolved(PAYMENT, 4, 20, False),
        chain.DisputeOpened(PAYMENT, 5, 20, OPERATOR),
        chain.DisputeResolved(PAYMENT, 6, 20, payer_wins),
    )
    assert found[1] == DisputeResolved(
        payment_id=PID, at=AT, winner=Party.MERCHANT, paid_to=MERCHANT
    )
    assert found[3] == DisputeResolved(payment_id=PID, at=AT, winner=winner, paid_to=paid_to)


def test_a_resolution_whose_dispute_the_caller_does_not_know_names_no_payee() -> None:
    resolved = facts.payment_event(
        chain.DisputeResolved(PAYMENT, 4, 20, False), payment_id=PID, terms=TERMS, at=AT
    )
    assert resolved == DisputeResolved(payment_id=PID, at=AT, winner=Party.MERCHANT)


def test_a_capture_takes_the_legs_its_transaction_paid_after_it() -> None:
    assert events(
        chain.Captured(PAYMENT, 1, 100, 1),
        chain.Credited(TERMS.token, MERCHANT, 95),  # the merchant could not be paid
        chain.LegPaid(PAYMENT, LEG, 4),
    ) == [Captured(payment_id=PID, at=AT, amount=100, fee=1, legs=(Leg(LEG, 4),))]


def test_a_leg_of_another_transaction_than_its_capture_is_a_bug() -> None:
    logs = [
        (b"tx-1", chain.Captured(PAYMENT, 1, 100, 1)),
        (b"tx-2", chain.LegPaid(PAYMENT, LEG, 4)),
    ]
    with pytest.raises(AssertionError, match="without its capture"):
        facts.legs_of_captures(logs)


def test_credits_and_withdrawals_become_credit_stream_events() -> None:
    credited = facts.credit_event(chain.Credited(TERMS.token, MERCHANT, 7), chain_id=5, at=AT)
    withdrawn = facts.credit_event(
        chain.Withdrawn(TERMS.token, MERCHANT, OPERATOR, 7), chain_id=5, at=AT
    )
    assert (credited.kind, credited.account, credited.amount) == ("credited", MERCHANT, 7)
    assert (withdrawn.kind, withdrawn.to) == ("withdrawn", OPERATOR)
