"""Typed decoding of the escrow's payment events: every event the contract emits on a real
chain (both EVMs) comes back from its raw topics and data with every field, and logs that are
not payment events are refused by name."""

from __future__ import annotations

import pytest
from eth_utils import keccak
from hexbytes import HexBytes
from web3.types import TxReceipt

from engine.chain.contracts.escrow import BatchOp, Method, legs_tuple, terms_tuple
from engine.chain.contracts.logs import (
    EVENT_CLASSES,
    Authorized,
    Captured,
    Credited,
    DisputeOpened,
    DisputeResolved,
    EscrowEvent,
    FundingApproved,
    LegPaid,
    MalformedEscrowLog,
    OperationFailed,
    Reclaimed,
    Refunded,
    UnknownEscrowEvent,
    Voided,
    Withdrawn,
    decode_event,
    event_name,
    event_topics,
)
from engine.domain.money import Leg
from engine.tools.localnet import UNIT, LocalDeployment
from tests.chain.contracts.batch_support import deploy_funded_token, held, settle


def decoded(world: LocalDeployment, receipt: TxReceipt) -> list[EscrowEvent]:
    """The payment events the escrow emitted in `receipt`, decoded from their raw form."""
    topics = set(event_topics())
    return [
        decode_event([bytes(t) for t in log["topics"]], bytes(log["data"]))
        for log in receipt["logs"]
        if log["address"] == world.escrow.address and bytes(log["topics"][0]) in topics
    ]


def test_authorized_carries_the_full_terms_the_amount_and_the_method(
    world: LocalDeployment,
) -> None:
    terms = world.terms(100 * UNIT)

    receipt = world.authorize(terms, 70 * UNIT)

    assert decoded(world, receipt) == [
        Authorized(world.payment_hash(terms), terms, 70 * UNIT, Method.ALLOWANCE)
    ]


def test_capture_with_an_extra_leg_decodes_as_captured_then_leg_paid(
    world: LocalDeployment,
) -> None:
    terms = held(world)
    legs = [Leg(world.other.address, 100_000)]

    receipt = world.operator.send(
        world.escrow.functions.capture(terms_tuple(terms), 1, 40 * UNIT, 50, legs_tuple(legs))
    )

    payment_id = world.payment_hash(terms)
    assert decoded(world, receipt) == [
        Captured(payment_id, seq=1, amount=40 * UNIT, fee=200_000),
        LegPaid(payment_id, recipient=world.other.address, amount=100_000),
    ]


def test_void_refund_and_dispute_decode_with_their_sequence_and_funder(
    world: LocalDeployment,
) -> None:
    terms = held(world)
    payment_id = world.payment_hash(terms)
    escrow = world.escrow.functions
    world.operator.send(escrow.capture(terms_tuple(terms), 1, 60 * UNIT, 0, []))

    voided = world.operator.send(escrow.void(terms_tuple(terms), 2, 10 * UNIT))
    refunded = world.operator.send(escrow.refund(terms_tuple(terms), 3, 5 * UNIT, False))
    opened = world.arbiter.send(escrow.openDispute(terms_tuple(terms), 4, 7 * UNIT, True))
    resolved = world.arbiter.send(escrow.resolveDispute(terms_tuple(terms), 5, True))

    assert decoded(world, voided) == [Voided(payment_id, seq=2, amount=10 * UNIT)]
    assert decoded(world, refunded) == [
        Refunded(payment_id, seq=3, amount=5 * UNIT, funder=world.operator.address)
    ]
    assert decoded(world, opened) == [
        DisputeOpened(payment_id, seq=4, amount=7 * UNIT, funder=world.merchant.address)
    ]
    assert decoded(world, resolved) == [
        DisputeResolved(payment_id, seq=5, amount=7 * UNIT, payer_wins=True)
    ]


def test_reclaim_after_the_authorization_expiry_decodes_as_reclaimed(
    world: LocalDeployment,
) -> None:
    terms = held(world, 30 * UNIT)
    world.backend.increase_time(terms.authorization_expiry - world.backend.now())

    receipt = world.payer.send(world.escrow.functions.reclaim(terms_tuple(terms)))

    assert decoded(world, receipt) == [Reclaimed(world.payment_hash(terms), 1, 30 * UNIT)]


def test_a_skipped_batch_operation_decodes_with_its_revert_by_name(
    world: LocalDeployment,
) -> None:
    terms = held(world)

    receipt = settle(world, [BatchOp.void(terms, 7, UNIT)], atomic=False)

    [failed] = decoded(world, receipt)
    assert isinstance(failed, OperationFailed)
    assert (failed.payment_id, failed.index) == (world.payment_hash(terms), 0)
    assert (failed.error.error, failed.error.args_by_name) == (
        "StaleSequence",
        {"paymentId": world.payment_hash(terms), "current": 1, "given": 7},
    )


def test_credit_to_a_blocked_merchant_and_its_withdrawal_decode_with_the_token(
    world: LocalDeployment,
) -> None:
    token = deploy_funded_token(world, "BlocklistToken")
    terms = world.terms(100 * UNIT, token=token.address)
    world.authorize(terms)
    world.admin.send(token.functions.setBlocked(world.merchant.address, True))
    captured = world.operator.send(
        world.escrow.functions.capture(terms_tuple(terms), 1, 40 * UNIT, 0, [])
    )

    world.admin.send(token.functions.setBlocked(world.merchant.address, False))
    withdrawn = world.merchant.send(world.escrow.functions.withdraw(token.address))

    assert decoded(world, captured) == [
        Captured(world.payment_hash(terms), seq=1, amount=40 * UNIT, fee=0),
        Credited(token.address, world.merchant.address, 40 * UNIT),
    ]
    assert decoded(world, withdrawn) == [
        Withdrawn(token.address, world.merchant.address, world.merchant.address, 40 * UNIT)
    ]


def test_funding_approval_decodes_as_funding_approved(world: LocalDeployment) -> None:
    receipt = world.merchant.send(world.escrow.functions.approveFunding(world.other.address, UNIT))

    assert decoded(world, receipt) == [
        FundingApproved(world.merchant.address, world.other.address, cap=UNIT)
    ]


def test_every_payment_event_has_its_own_topic_the_one_web3_computes(
    world: LocalDeployment,
) -> None:
    expected = [
        bytes(HexBytes(getattr(world.escrow.events, cls.__name__)().topic)) for cls in EVENT_CLASSES
    ]

    assert list(event_topics()) == expected
    assert len(set(expected)) == len(EVENT_CLASSES) == 12


def test_a_log_of_another_event_is_refused_as_unknown() -> None:
    role_granted = keccak(text="RoleGranted(bytes32,address,address)")

    with pytest.raises(UnknownEscrowEvent):
        decode_event([role_granted, bytes(32), bytes(32), bytes(32)], b"")
    with pytest.raises(UnknownEscrowEvent):
        decode_event([], b"")


def test_a_payment_event_with_missing_topics_or_short_data_is_refused_as_malformed() -> None:
    voided = keccak(text="Voided(bytes32,uint16,uint256)")
    whole = (1).to_bytes(32, "big") + (5).to_bytes(32, "big")

    assert decode_event([voided, bytes(32)], whole) == Voided(bytes(32), 1, 5)
    with pytest.raises(MalformedEscrowLog):
        decode_event([voided], whole)
    with pytest.raises(MalformedEscrowLog):
        decode_event([voided, bytes(32)], whole[:40])


def test_event_name_is_the_solidity_name() -> None:
    assert event_name(Voided(bytes(32), 1, 5)) == "Voided"
