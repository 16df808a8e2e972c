"""The happy path of one payment, on both EVMs: authorize, capture in two parts, refund."""

import pytest

from engine.chain.contracts.escrow import ContractReverted, terms_tuple
from engine.tools.localnet import UNIT, LocalDeployment


def test_authorize_capture_refund_moves_every_leg(world: LocalDeployment) -> None:
    terms = world.terms(100 * UNIT)
    payer_before = world.balance(world.payer.address)
    world.authorize(terms)
    assert world.state(terms) == (100 * UNIT, 0, 1)
    assert world.balance(world.escrow.address) == 100 * UNIT

    world.operator.send(world.escrow.functions.capture(terms_tuple(terms), 1, 40 * UNIT, 100, []))
    assert world.state(terms) == (60 * UNIT, 40 * UNIT, 2)
    assert world.balance(world.fee_receiver.address) - 1_000_000 * UNIT == 400_000
    world.operator.send(world.escrow.functions.refund(terms_tuple(terms), 2, 10 * UNIT, False))
    assert world.state(terms) == (60 * UNIT, 30 * UNIT, 3)
    assert world.balance(world.payer.address) == payer_before - 90 * UNIT


def test_merchant_funded_refund_needs_the_merchants_approval_of_the_caller(
    world: LocalDeployment,
) -> None:
    """Terms are signed by the payer, not the merchant: naming a merchant is not consent."""
    terms = world.terms(100 * UNIT)
    world.authorize(terms)
    world.operator.send(world.escrow.functions.capture(terms_tuple(terms), 1, 50 * UNIT, 0, []))
    world.merchant.send(world.escrow.functions.approveFunding(world.operator.address, 0))
    merchant_before = world.balance(world.merchant.address)
    with pytest.raises(ContractReverted) as revert:
        world.operator.send(world.escrow.functions.refund(terms_tuple(terms), 2, 10 * UNIT, True))
    assert revert.value.error == "FundingAllowanceExceeded"
    assert revert.value.args_by_name == {
        "merchant": world.merchant.address,
        "spender": world.operator.address,
        "amount": 10 * UNIT,
        "allowance": 0,
    }
    world.merchant.send(world.escrow.functions.approveFunding(world.operator.address, 10 * UNIT))
    world.operator.send(world.escrow.functions.refund(terms_tuple(terms), 2, 10 * UNIT, True))
    assert world.balance(world.merchant.address) == merchant_before - 10 * UNIT
