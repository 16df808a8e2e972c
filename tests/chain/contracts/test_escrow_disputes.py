"""Disputes: an arbiter freezes part of what is refundable, funded by itself or by the merchant,
then resolves it for the payer (who is paid the frozen amount) or for the merchant (the funder
is repaid and the amount becomes refundable again)."""

from __future__ import annotations

import pytest

from engine.chain.contracts.escrow import terms_tuple
from engine.domain.ids import PaymentTerms
from engine.domain.money import ZERO_ADDRESS
from engine.tools.localnet import UNIT, LocalDeployment
from tests.fixtures.solvency import Balances, captured, emitted, reverts_with

pytestmark = pytest.mark.usefixtures("escrow_stays_solvent")


def open_dispute(
    world: LocalDeployment, terms: PaymentTerms, seq: int, amount: int, *, merchant_funds: bool
) -> None:
    call = world.escrow.functions.openDispute(terms_tuple(terms), seq, amount, merchant_funds)
    world.arbiter.send(call)


def dispute(world: LocalDeployment, terms: PaymentTerms) -> tuple[int, str]:
    amount, funder = world.escrow.functions.disputes(world.payment_hash(terms)).call()
    return int(amount), funder


def test_open_dispute_without_ARBITER_ROLE_reverts_with_AccessControlUnauthorizedAccount(
    world: LocalDeployment,
) -> None:
    terms = captured(world)
    arbiter_role = bytes(world.escrow.functions.ARBITER_ROLE().call())
    call = world.escrow.functions.openDispute(terms_tuple(terms), 2, UNIT, False)
    with reverts_with(
        world,
        "AccessControlUnauthorizedAccount",
        account=world.operator.address,
        neededRole=arbiter_role,
    ):
        world.operator.send(call)


def test_resolve_dispute_without_ARBITER_ROLE_reverts_with_AccessControlUnauthorizedAccount(
    world: LocalDeployment,
) -> None:
    terms = captured(world)
    open_dispute(world, terms, 2, UNIT, merchant_funds=False)
    call = world.escrow.functions.resolveDispute(terms_tuple(terms), 3, True)
    with reverts_with(world, "AccessControlUnauthorizedAccount", account=world.payer.address):
        world.payer.send(call)


@pytest.mark.parametrize(("merchant_funds", "funder"), [(False, "arbiter"), (True, "merchant")])
def test_open_dispute_freezes_funds_pulled_from_the_funder_and_shrinks_refundable(
    world: LocalDeployment, merchant_funds: bool, funder: str
) -> None:
    terms = captured(world)
    balances = Balances(world)
    receipt = world.arbiter.send(
        world.escrow.functions.openDispute(terms_tuple(terms), 2, 30 * UNIT, merchant_funds)
    )
    funder_address = getattr(world, funder).address
    assert emitted(world, receipt, "DisputeOpened") == [
        {
            "paymentId": world.payment_hash(terms),
            "seq": 2,
            "amount": 30 * UNIT,
            "funder": funder_address,
        }
    ]
    assert balances.moved() == {funder: -30 * UNIT, "escrow": 30 * UNIT}
    assert world.state(terms) == (0, 70 * UNIT, 3)
    assert dispute(world, terms) == (30 * UNIT, funder_address)


def test_merchant_funded_dispute_without_funding_approval_reverts_with_FundingAllowanceExceeded(
    world: LocalDeployment,
) -> None:
    terms = captured(world)
    world.merchant.send(world.escrow.functions.approveFunding(world.arbiter.address, 0))
    with reverts_with(
        world,
        "FundingAllowanceExceeded",
        merchant=world.merchant.address,
        spender=world.arbiter.address,
        amount=UNIT,
        allowance=0,
    ):
        open_dispute(world, terms, 2, UNIT, merchant_funds=True)


def test_second_open_dispute_reverts_with_DisputeAlreadyOpen(world: LocalDeployment) -> None:
    terms = captured(world)
    open_dispute(world, terms, 2, 10 * UNIT, merchant_funds=False)
    with reverts_with(world, "DisputeAlreadyOpen", paymentId=world.payment_hash(terms)):
        open_dispute(world, terms, 3, 10 * UNIT, merchant_funds=False)


def test_resolve_without_an_open_dispute_reverts_with_NoOpenDispute(
    world: LocalDeployment,
) -> None:
    terms = captured(world)
    call = world.escrow.functions.resolveDispute(terms_tuple(terms), 2, True)
    with reverts_with(world, "NoOpenDispute", paymentId=world.payment_hash(terms)):
        world.arbiter.send(call)


@pytest.mark.parametrize("merchant_funds", [False, True], ids=["arbiter_funded", "merchant_funded"])
def test_dispute_resolved_for_the_payer_pays_the_payer_and_keeps_refundable_reduced(
    world: LocalDeployment, merchant_funds: bool
) -> None:
    escrow = world.escrow.functions
    terms = captured(world)
    open_dispute(world, terms, 2, 30 * UNIT, merchant_funds=merchant_funds)
    balances = Balances(world)

    receipt = world.arbiter.send(escrow.resolveDispute(terms_tuple(terms), 3, True))
    assert emitted(world, receipt, "DisputeResolved") == [
        {"paymentId": world.payment_hash(terms), "seq": 3, "amount": 30 * UNIT, "payerWins": True}
    ]
    assert balances.moved() == {"escrow": -30 * UNIT, "payer": 30 * UNIT}
    assert world.state(terms) == (0, 70 * UNIT, 4)
    assert dispute(world, terms) == (0, ZERO_ADDRESS)
    with reverts_with(world, "AmountExceedsRefundable", amount=70 * UNIT + 1, refundable=70 * UNIT):
        world.operator.send(escrow.refund(terms_tuple(terms), 4, 70 * UNIT + 1, False))


@pytest.mark.parametrize(("merchant_funds", "funder"), [(False, "arbiter"), (True, "merchant")])
def test_dispute_resolved_for_the_merchant_repays_the_funder_and_restores_refundable(
    world: LocalDeployment, merchant_funds: bool, funder: str
) -> None:
    escrow = world.escrow.functions
    terms = captured(world)
    open_dispute(world, terms, 2, 30 * UNIT, merchant_funds=merchant_funds)
    balances = Balances(world)

    receipt = world.arbiter.send(escrow.resolveDispute(terms_tuple(terms), 3, False))
    assert emitted(world, receipt, "DisputeResolved")[0]["payerWins"] is False
    assert balances.moved() == {"escrow": -30 * UNIT, funder: 30 * UNIT}
    assert world.state(terms) == (0, 100 * UNIT, 4)
    assert dispute(world, terms) == (0, ZERO_ADDRESS)

    world.operator.send(escrow.refund(terms_tuple(terms), 4, 100 * UNIT, False))
    assert balances.moved() == {"operator": -100 * UNIT, "payer": 100 * UNIT}


def test_open_dispute_above_refundable_reverts_with_AmountExceedsRefundable(
    world: LocalDeployment,
) -> None:
    terms = captured(world, 50 * UNIT)
    with reverts_with(world, "AmountExceedsRefundable", amount=50 * UNIT + 1, refundable=50 * UNIT):
        open_dispute(world, terms, 2, 50 * UNIT + 1, merchant_funds=False)


def test_open_dispute_of_zero_reverts_with_ZeroAmount(world: LocalDeployment) -> None:
    terms = captured(world)
    with reverts_with(world, "ZeroAmount"):
        open_dispute(world, terms, 2, 0, merchant_funds=False)


def test_dispute_operations_with_a_stale_sequence_revert_with_StaleSequence(
    world: LocalDeployment,
) -> None:
    terms = captured(world)
    payment_id = world.payment_hash(terms)
    with reverts_with(world, "StaleSequence", paymentId=payment_id, current=2, given=1):
        open_dispute(world, terms, 1, UNIT, merchant_funds=False)
    open_dispute(world, terms, 2, UNIT, merchant_funds=False)
    call = world.escrow.functions.resolveDispute(terms_tuple(terms), 2, True)
    with reverts_with(world, "StaleSequence", paymentId=payment_id, current=3, given=2):
        world.arbiter.send(call)


def test_dispute_on_an_unknown_payment_reverts_with_PaymentNotFound(
    world: LocalDeployment,
) -> None:
    terms = world.terms()
    with reverts_with(world, "PaymentNotFound", paymentId=world.payment_hash(terms)):
        open_dispute(world, terms, 1, UNIT, merchant_funds=False)


def test_refunds_during_an_open_dispute_are_limited_to_the_unfrozen_part(
    world: LocalDeployment,
) -> None:
    escrow = world.escrow.functions
    terms = captured(world)
    open_dispute(world, terms, 2, 30 * UNIT, merchant_funds=True)
    balances = Balances(world)

    world.operator.send(escrow.refund(terms_tuple(terms), 3, 70 * UNIT, False))
    assert balances.moved() == {"operator": -70 * UNIT, "payer": 70 * UNIT}
    with reverts_with(world, "AmountExceedsRefundable", amount=1, refundable=0):
        world.operator.send(escrow.refund(terms_tuple(terms), 4, 1, False))

    world.arbiter.send(escrow.resolveDispute(terms_tuple(terms), 4, False))
    assert balances.moved() == {"escrow": -30 * UNIT, "merchant": 30 * UNIT}
    assert world.state(terms) == (0, 30 * UNIT, 5)


def test_a_resolved_dispute_can_be_followed_by_a_new_one(world: LocalDeployment) -> None:
    escrow = world.escrow.functions
    terms = captured(world)
    open_dispute(world, terms, 2, 10 * UNIT, merchant_funds=False)
    world.arbiter.send(escrow.resolveDispute(terms_tuple(terms), 3, True))
    balances = Balances(world)

    open_dispute(world, terms, 4, 80 * UNIT, merchant_funds=True)
    assert balances.moved() == {"merchant": -80 * UNIT, "escrow": 80 * UNIT}
    assert dispute(world, terms) == (80 * UNIT, world.merchant.address)
    assert world.state(terms) == (0, 10 * UNIT, 5)


def test_disputes_go_on_while_paused_and_after_the_refund_window(world: LocalDeployment) -> None:
    escrow = world.escrow.functions
    terms = captured(world)
    world.pauser.send(escrow.pause())
    world.backend.increase_time(terms.refund_expiry - world.backend.now())
    balances = Balances(world)

    open_dispute(world, terms, 2, 40 * UNIT, merchant_funds=True)
    assert balances.moved() == {"merchant": -40 * UNIT, "escrow": 40 * UNIT}
    world.arbiter.send(escrow.resolveDispute(terms_tuple(terms), 3, True))
    assert balances.moved() == {"escrow": -40 * UNIT, "payer": 40 * UNIT}
    assert world.state(terms) == (0, 60 * UNIT, 4)
