"""Every custom error of the escrow's payment operations that an outside caller can reach, with
its arguments; each revert leaves balances, payments and disputes untouched (`reverts_with`).

Who may call what (NotOperator, NotPayer, roles, pause) is in test_escrow_roles_pause.py,
disputes in test_escrow_disputes.py, signatures in test_escrow_signatures.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

import pytest
from eth_utils import to_checksum_address
from web3.contract.contract import ContractFunction

from engine.chain.contracts.escrow import Leg, Method, legs_tuple, terms_tuple
from engine.domain.ids import PaymentTerms
from engine.domain.money import ZERO_ADDRESS
from engine.tools.localnet import UNIT, LocalDeployment
from tests.fixtures.solvency import captured, reverts_with

LEDGER = to_checksum_address("0x" + "1e" * 20)

# An operation on an existing payment at sequence `seq`, as the operator sends it.
Operation = Callable[[LocalDeployment, PaymentTerms, int], ContractFunction]

OPERATIONS: dict[str, Operation] = {
    "capture": lambda w, t, seq: w.escrow.functions.capture(terms_tuple(t), seq, UNIT, 0, []),
    "void": lambda w, t, seq: w.escrow.functions.void(terms_tuple(t), seq, UNIT),
    "refund": lambda w, t, seq: w.escrow.functions.refund(terms_tuple(t), seq, UNIT, False),
}


pytestmark = pytest.mark.usefixtures("escrow_stays_solvent")


def raw_terms(terms: PaymentTerms, **changes: Any) -> tuple[Any, ...]:
    """The ABI tuple of `terms` with fields replaced, bypassing PaymentTerms' own validation
    so the contract's checks can be reached."""
    names = [field.name for field in fields(PaymentTerms)]
    values = list(terms_tuple(terms))
    for name, value in changes.items():
        values[names.index(name)] = value
    return tuple(values)


def authorize_raw(world: LocalDeployment, terms: tuple[Any, ...], amount: int) -> ContractFunction:
    return world.escrow.functions.authorize(terms, amount, Method.ALLOWANCE, b"")


def reach(world: LocalDeployment, timestamp: int) -> None:
    """Moves the chain's clock so the latest block is at `timestamp`."""
    world.backend.increase_time(timestamp - world.backend.now())


# ───────────────────────────── authorize ─────────────────────────────


@pytest.mark.parametrize("field", ["payer", "merchant", "token"])
def test_authorize_with_a_zero_address_reverts_with_ZeroAddress(
    world: LocalDeployment, field: str
) -> None:
    terms = raw_terms(world.terms(), **{field: ZERO_ADDRESS})
    with reverts_with(world, "ZeroAddress"):
        world.operator.send(authorize_raw(world, terms, UNIT))


def test_authorize_with_authorization_expiry_after_refund_expiry_reverts_with_InvalidExpiries(
    world: LocalDeployment,
) -> None:
    good = world.terms()
    late = good.refund_expiry + 1
    terms = raw_terms(good, authorization_expiry=late)
    with reverts_with(
        world, "InvalidExpiries", authorizationExpiry=late, refundExpiry=good.refund_expiry
    ):
        world.operator.send(authorize_raw(world, terms, UNIT))


@pytest.mark.parametrize(
    ("changes", "min_fee_bps", "max_fee_bps"),
    [
        ({"min_fee_bps": 60, "max_fee_bps": 50}, 60, 50),
        ({"max_fee_bps": 10_001}, 0, 10_001),
        ({"fee_receiver": ZERO_ADDRESS, "max_fee_bps": 1}, 0, 1),
    ],
    ids=["min_above_max", "max_above_100_percent", "fee_without_fee_receiver"],
)
def test_authorize_with_invalid_fee_bounds_reverts_with_InvalidFeeBounds(
    world: LocalDeployment, changes: dict[str, Any], min_fee_bps: int, max_fee_bps: int
) -> None:
    terms = raw_terms(world.terms(), **changes)
    with reverts_with(world, "InvalidFeeBounds", minFeeBps=min_fee_bps, maxFeeBps=max_fee_bps):
        world.operator.send(authorize_raw(world, terms, UNIT))


def test_authorize_at_authorization_expiry_reverts_with_AuthorizationExpired(
    world: LocalDeployment,
) -> None:
    expiry = world.backend.now()
    terms = world.terms(authorization_expiry=expiry)
    with reverts_with(world, "AuthorizationExpired", authorizationExpiry=expiry):
        world.authorize(terms)


def test_authorize_of_zero_reverts_with_ZeroAmount(world: LocalDeployment) -> None:
    with reverts_with(world, "ZeroAmount"):
        world.authorize(world.terms(), 0)


def test_authorize_above_max_amount_reverts_with_AmountExceedsMax(world: LocalDeployment) -> None:
    terms = world.terms(100 * UNIT)
    with reverts_with(world, "AmountExceedsMax", amount=100 * UNIT + 1, maxAmount=100 * UNIT):
        world.authorize(terms, 100 * UNIT + 1)


def test_authorize_above_the_escrows_amount_max_reverts_with_AmountExceedsMax(
    world: LocalDeployment,
) -> None:
    """Amounts share the payment's storage slot with the fee carry: 112 bits each."""
    amount_max = 2**112 - 1
    assert world.escrow.functions.AMOUNT_MAX().call() == amount_max
    terms = world.terms(2**120 - 1)
    with reverts_with(world, "AmountExceedsMax", amount=amount_max + 1, maxAmount=amount_max):
        world.authorize(terms, amount_max + 1)


def test_second_authorize_of_the_same_terms_reverts_with_PaymentExists(
    world: LocalDeployment,
) -> None:
    terms = world.terms(100 * UNIT)
    world.authorize(terms, 40 * UNIT)
    with reverts_with(world, "PaymentExists", paymentId=world.payment_hash(terms)):
        world.authorize(terms, 40 * UNIT)
    assert world.state(terms) == (40 * UNIT, 0, 1)


def test_authorize_of_fully_voided_terms_reverts_with_PaymentExists(
    world: LocalDeployment,
) -> None:
    terms = world.terms(100 * UNIT)
    world.authorize(terms)
    world.operator.send(world.escrow.functions.void(terms_tuple(terms), 1, 100 * UNIT))
    with reverts_with(world, "PaymentExists", paymentId=world.payment_hash(terms)):
        world.authorize(terms)


# ────────────────────────────── capture ──────────────────────────────


def test_capture_above_hold_reverts_with_AmountExceedsCapturable(world: LocalDeployment) -> None:
    escrow = world.escrow.functions
    terms = world.terms(100 * UNIT)
    world.authorize(terms, 50 * UNIT)
    world.operator.send(escrow.capture(terms_tuple(terms), 1, 20 * UNIT, 0, []))
    with reverts_with(world, "AmountExceedsCapturable", amount=30 * UNIT + 1, capturable=30 * UNIT):
        world.operator.send(escrow.capture(terms_tuple(terms), 2, 30 * UNIT + 1, 0, []))


def test_capture_of_zero_reverts_with_ZeroAmount(world: LocalDeployment) -> None:
    terms = world.terms()
    world.authorize(terms)
    with reverts_with(world, "ZeroAmount"):
        world.operator.send(world.escrow.functions.capture(terms_tuple(terms), 1, 0, 0, []))


@pytest.mark.parametrize("fee_bps", [9, 101], ids=["below_min", "above_max"])
def test_capture_at_fee_outside_the_signed_bounds_reverts_with_FeeOutOfBounds(
    world: LocalDeployment, fee_bps: int
) -> None:
    terms = world.terms(min_fee_bps=10, max_fee_bps=100)
    world.authorize(terms)
    with reverts_with(world, "FeeOutOfBounds", feeBps=fee_bps, minFeeBps=10, maxFeeBps=100):
        world.operator.send(
            world.escrow.functions.capture(terms_tuple(terms), 1, UNIT, fee_bps, [])
        )


def test_capture_with_more_than_LEGS_MAX_legs_reverts_with_TooManyLegs(
    world: LocalDeployment,
) -> None:
    terms = world.terms(100 * UNIT)
    world.authorize(terms)
    legs = legs_tuple([Leg(LEDGER, 1)] * 5)
    with reverts_with(world, "TooManyLegs", count=5, max=4):
        world.operator.send(
            world.escrow.functions.capture(terms_tuple(terms), 1, 100 * UNIT, 0, legs)
        )


@pytest.mark.parametrize(
    ("legs", "index"),
    [([(LEDGER, 1), (ZERO_ADDRESS, 1)], 1), ([(LEDGER, 0)], 0)],
    ids=["zero_recipient", "zero_amount"],
)
def test_capture_with_an_invalid_leg_reverts_with_InvalidLeg(
    world: LocalDeployment, legs: list[tuple[str, int]], index: int
) -> None:
    terms = world.terms(100 * UNIT)
    world.authorize(terms)
    with reverts_with(world, "InvalidLeg", index=index):
        world.operator.send(
            world.escrow.functions.capture(terms_tuple(terms), 1, 100 * UNIT, 0, legs)
        )


def test_capture_whose_fee_and_legs_exceed_the_budget_reverts_with_FeeBudgetExceeded(
    world: LocalDeployment,
) -> None:
    terms = world.terms(100 * UNIT)  # max fee 100 bps: a budget of 1 UNIT on 100 UNIT
    world.authorize(terms)
    legs = legs_tuple([Leg(LEDGER, 500_001)])
    with reverts_with(world, "FeeBudgetExceeded", total=UNIT + 1, budget=UNIT):
        world.operator.send(
            world.escrow.functions.capture(terms_tuple(terms), 1, 100 * UNIT, 50, legs)
        )


def test_capture_at_authorization_expiry_reverts_with_AuthorizationExpired(
    world: LocalDeployment,
) -> None:
    terms = world.terms()
    world.authorize(terms)
    reach(world, terms.authorization_expiry)
    with reverts_with(
        world, "AuthorizationExpired", authorizationExpiry=terms.authorization_expiry
    ):
        world.operator.send(world.escrow.functions.capture(terms_tuple(terms), 1, UNIT, 0, []))


def test_charge_whose_capture_fails_holds_nothing(world: LocalDeployment) -> None:
    terms = world.terms(min_fee_bps=10)
    call = world.escrow.functions.charge(
        terms_tuple(terms), UNIT, Method.ALLOWANCE, world.payer_signature(terms), 0, []
    )
    with reverts_with(world, "FeeOutOfBounds", feeBps=0):
        world.operator.send(call)
    assert world.state(terms) == (0, 0, 0)


# ─────────────────────────── void, reclaim ───────────────────────────


def test_void_above_hold_reverts_with_AmountExceedsCapturable(world: LocalDeployment) -> None:
    terms = world.terms(100 * UNIT)
    world.authorize(terms, 10 * UNIT)
    with reverts_with(world, "AmountExceedsCapturable", amount=10 * UNIT + 1, capturable=10 * UNIT):
        world.operator.send(world.escrow.functions.void(terms_tuple(terms), 1, 10 * UNIT + 1))


def test_void_of_zero_reverts_with_ZeroAmount(world: LocalDeployment) -> None:
    terms = world.terms()
    world.authorize(terms)
    with reverts_with(world, "ZeroAmount"):
        world.operator.send(world.escrow.functions.void(terms_tuple(terms), 1, 0))


def test_reclaim_before_authorization_expiry_reverts_with_AuthorizationNotExpired(
    world: LocalDeployment,
) -> None:
    terms = world.terms()
    world.authorize(terms)
    reach(world, terms.authorization_expiry - 60)
    with reverts_with(
        world, "AuthorizationNotExpired", authorizationExpiry=terms.authorization_expiry
    ):
        world.payer.send(world.escrow.functions.reclaim(terms_tuple(terms)))


def test_reclaim_of_a_fully_captured_payment_reverts_with_ZeroAmount(
    world: LocalDeployment,
) -> None:
    terms = captured(world)
    reach(world, terms.authorization_expiry)
    with reverts_with(world, "ZeroAmount"):
        world.payer.send(world.escrow.functions.reclaim(terms_tuple(terms)))


def test_reclaim_of_an_unknown_payment_reverts_with_PaymentNotFound(
    world: LocalDeployment,
) -> None:
    terms = world.terms()
    with reverts_with(world, "PaymentNotFound", paymentId=world.payment_hash(terms)):
        world.payer.send(world.escrow.functions.reclaim(terms_tuple(terms)))


# ────────────────────────────── refund ───────────────────────────────


def test_refund_above_captured_reverts_with_AmountExceedsRefundable(
    world: LocalDeployment,
) -> None:
    escrow = world.escrow.functions
    terms = captured(world, 50 * UNIT)
    world.operator.send(escrow.refund(terms_tuple(terms), 2, 20 * UNIT, False))
    with reverts_with(world, "AmountExceedsRefundable", amount=30 * UNIT + 1, refundable=30 * UNIT):
        world.operator.send(escrow.refund(terms_tuple(terms), 3, 30 * UNIT + 1, False))


def test_refund_before_any_capture_reverts_with_AmountExceedsRefundable(
    world: LocalDeployment,
) -> None:
    terms = world.terms()
    world.authorize(terms)
    with reverts_with(world, "AmountExceedsRefundable", amount=UNIT, refundable=0):
        world.operator.send(world.escrow.functions.refund(terms_tuple(terms), 1, UNIT, False))


def test_refund_of_zero_reverts_with_ZeroAmount(world: LocalDeployment) -> None:
    terms = captured(world)
    with reverts_with(world, "ZeroAmount"):
        world.operator.send(world.escrow.functions.refund(terms_tuple(terms), 2, 0, False))


def test_refund_at_refund_expiry_reverts_with_RefundWindowClosed(world: LocalDeployment) -> None:
    terms = captured(world)
    reach(world, terms.refund_expiry)
    with reverts_with(world, "RefundWindowClosed", refundExpiry=terms.refund_expiry):
        world.operator.send(world.escrow.functions.refund(terms_tuple(terms), 2, UNIT, False))


def test_merchant_funded_refund_without_token_allowance_reverts_with_ERC20InsufficientAllowance(
    world: LocalDeployment,
) -> None:
    terms = captured(world)
    world.merchant.send(world.token.functions.approve(world.escrow.address, 0))
    with reverts_with(world, "ERC20InsufficientAllowance", spender=world.escrow.address):
        world.operator.send(world.escrow.functions.refund(terms_tuple(terms), 2, UNIT, True))


def test_merchant_funded_refund_without_funding_approval_reverts_with_FundingAllowanceExceeded(
    world: LocalDeployment,
) -> None:
    terms = captured(world)
    world.merchant.send(world.escrow.functions.approveFunding(world.operator.address, 0))
    with reverts_with(
        world,
        "FundingAllowanceExceeded",
        merchant=world.merchant.address,
        spender=world.operator.address,
        amount=UNIT,
        allowance=0,
    ):
        world.operator.send(world.escrow.functions.refund(terms_tuple(terms), 2, UNIT, True))


def test_merchant_funded_refund_beyond_the_merchants_net_reverts_with_MerchantFundingExceeded(
    world: LocalDeployment,
) -> None:
    terms = captured(world)  # maxFeeBps 100: the merchant's net share is 99 %
    with reverts_with(
        world,
        "MerchantFundingExceeded",
        paymentId=world.payment_hash(terms),
        funded=99 * UNIT + 1,
        bound=99 * UNIT,
    ):
        world.operator.send(
            world.escrow.functions.refund(terms_tuple(terms), 2, 99 * UNIT + 1, True)
        )


# ──────────────────────── replay protection ──────────────────────────


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_operation_replayed_with_the_same_sequence_reverts_with_StaleSequence(
    world: LocalDeployment, operation: str
) -> None:
    terms = world.terms(100 * UNIT)
    world.authorize(terms, 50 * UNIT)
    if operation == "refund":
        world.operator.send(OPERATIONS["capture"](world, terms, 1))
    seq = world.state(terms)[2]
    world.operator.send(OPERATIONS[operation](world, terms, seq))
    with reverts_with(
        world, "StaleSequence", paymentId=world.payment_hash(terms), current=seq + 1, given=seq
    ):
        world.operator.send(OPERATIONS[operation](world, terms, seq))


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_operation_with_a_future_sequence_reverts_with_StaleSequence(
    world: LocalDeployment, operation: str
) -> None:
    terms = captured(world, 50 * UNIT)
    with reverts_with(world, "StaleSequence", current=2, given=3):
        world.operator.send(OPERATIONS[operation](world, terms, 3))


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_operation_on_an_unknown_payment_reverts_with_PaymentNotFound(
    world: LocalDeployment, operation: str
) -> None:
    terms = world.terms()
    with reverts_with(world, "PaymentNotFound", paymentId=world.payment_hash(terms)):
        world.operator.send(OPERATIONS[operation](world, terms, 1))


# ───────────────────────────── withdraw ──────────────────────────────


def test_withdraw_without_credits_reverts_with_NothingToWithdraw(world: LocalDeployment) -> None:
    call = world.escrow.functions.withdraw(world.token.address)
    with reverts_with(
        world, "NothingToWithdraw", token=world.token.address, account=world.merchant.address
    ):
        world.merchant.send(call)
