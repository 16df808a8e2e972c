"""The escrow against tokens that misbehave: fees on transfer, no return value, a blocklist,
and a hook that calls back into the escrow in the middle of a transfer."""

from __future__ import annotations

from typing import Final, NamedTuple

import pytest
from eth_utils import function_signature_to_4byte_selector
from web3.contract import Contract
from web3.types import TxReceipt

from engine.chain.contracts.escrow import BatchOp, Method, terms_tuple
from engine.domain.ids import PaymentTerms
from engine.tools.localnet import MINT_PER_ACCOUNT, UNIT, LocalDeployment
from tests.chain.contracts.batch_support import deploy_funded_token, settle
from tests.fixtures.solvency import assert_solvent, emitted, reverts_with

ZERO_ADDRESS: Final = "0x" + "00" * 20


def capture(
    world: LocalDeployment, terms: PaymentTerms, seq: int, amount: int, fee_bps: int
) -> None:
    world.operator.send(
        world.escrow.functions.capture(terms_tuple(terms), seq, amount, fee_bps, [])
    )


def credit(world: LocalDeployment, token: Contract, account: str) -> int:
    return int(world.escrow.functions.credits(token.address, account).call())


# ─────────────────────────── fee on transfer ───────────────────────────


def test_fee_on_transfer_token_authorization_reverts_with_ShortPull(
    world: LocalDeployment,
) -> None:
    token = deploy_funded_token(world, "FeeOnTransferToken")
    terms = world.terms(100 * UNIT, token=token.address)
    call = world.escrow.functions.authorize(
        terms_tuple(terms), 100 * UNIT, Method.ALLOWANCE, world.payer_signature(terms)
    )

    with reverts_with(
        world, "ShortPull", token=token.address, expected=100 * UNIT, received=99 * UNIT
    ):
        world.operator.send(call)

    assert world.state(terms) == (0, 0, 0)
    assert world.balance(world.escrow.address, token) == 0


# ───────────────────────────── no return ─────────────────────────────


def test_token_without_return_values_holds_captures_refunds_and_voids(
    world: LocalDeployment,
) -> None:
    token = deploy_funded_token(world, "NoReturnToken")
    terms = world.terms(100 * UNIT, token=token.address)
    payer_before = world.balance(world.payer.address, token)

    world.authorize(terms)
    capture(world, terms, 1, 40 * UNIT, 100)
    world.operator.send(world.escrow.functions.refund(terms_tuple(terms), 2, 10 * UNIT, False))
    world.operator.send(world.escrow.functions.void(terms_tuple(terms), 3, 60 * UNIT))

    assert world.state(terms) == (0, 30 * UNIT, 4)
    assert world.balance(world.payer.address, token) == payer_before - 30 * UNIT
    assert world.balance(world.merchant.address, token) == MINT_PER_ACCOUNT + 40 * UNIT - 400_000
    assert world.balance(world.fee_receiver.address, token) == 400_000
    assert world.balance(world.escrow.address, token) == 0


# ───────────────────────────── blocklist ─────────────────────────────


class BlockedCapture(NamedTuple):
    token: Contract
    terms: PaymentTerms
    receipt: TxReceipt


@pytest.fixture
def blocked_capture(world: LocalDeployment) -> BlockedCapture:
    """A 100-unit hold in a blocklist token, whose merchant was then blocked, and a 40-unit
    capture at 100 bps made after that."""
    token = deploy_funded_token(world, "BlocklistToken")
    terms = world.terms(100 * UNIT, token=token.address)
    world.authorize(terms)
    world.admin.send(token.functions.setBlocked(world.merchant.address, True))
    receipt = world.operator.send(
        world.escrow.functions.capture(terms_tuple(terms), 1, 40 * UNIT, 100, [])
    )
    return BlockedCapture(token, terms, receipt)


def test_capture_to_a_blocked_merchant_succeeds_and_credits_the_merchant(
    world: LocalDeployment, blocked_capture: BlockedCapture
) -> None:
    token, terms, receipt = blocked_capture

    assert emitted(world, receipt, "Credited") == [
        {"token": token.address, "account": world.merchant.address, "amount": 39_600_000}
    ]
    assert world.state(terms) == (60 * UNIT, 40 * UNIT, 2)
    assert credit(world, token, world.merchant.address) == 39_600_000
    assert world.balance(world.merchant.address, token) == MINT_PER_ACCOUNT
    assert world.balance(world.fee_receiver.address, token) == 400_000  # other legs still paid
    assert_solvent(world)


def test_blocked_merchant_cannot_withdraw_its_credit(
    world: LocalDeployment, blocked_capture: BlockedCapture
) -> None:
    """The token's own revert surfaces through the escrow, decoded by name; the credit stays.
    A credit goes to its account only, so a blocked account cannot move it elsewhere."""
    token = blocked_capture.token
    with reverts_with(world, "AccountBlocked", account=world.merchant.address):
        world.merchant.send(world.escrow.functions.withdraw(token.address))

    assert credit(world, token, world.merchant.address) == 39_600_000
    assert_solvent(world)


def test_merchant_unblocked_withdraws_its_credit_to_itself_once(
    world: LocalDeployment, blocked_capture: BlockedCapture
) -> None:
    token = blocked_capture.token
    world.admin.send(token.functions.setBlocked(world.merchant.address, False))
    withdraw = world.escrow.functions.withdraw(token.address)

    receipt = world.merchant.send(withdraw)

    assert emitted(world, receipt, "Withdrawn") == [
        {
            "token": token.address,
            "account": world.merchant.address,
            "to": world.merchant.address,
            "amount": 39_600_000,
        }
    ]
    assert world.balance(world.merchant.address, token) == MINT_PER_ACCOUNT + 39_600_000
    assert credit(world, token, world.merchant.address) == 0
    assert_solvent(world)
    with reverts_with(
        world, "NothingToWithdraw", token=token.address, account=world.merchant.address
    ):
        world.merchant.send(withdraw)


def test_netted_batch_payout_to_a_blocked_merchant_becomes_one_credit_of_the_total(
    world: LocalDeployment,
) -> None:
    token = deploy_funded_token(world, "BlocklistToken")
    payments = [world.terms(100 * UNIT, token=token.address) for _ in range(2)]
    for terms in payments:
        world.authorize(terms)
    world.admin.send(token.functions.setBlocked(world.merchant.address, True))

    receipt = settle(world, [BatchOp.capture(t, 1, 50 * UNIT, 100) for t in payments], atomic=False)

    assert emitted(world, receipt, "Credited") == [
        {"token": token.address, "account": world.merchant.address, "amount": 99 * UNIT}
    ]
    assert world.balance(world.fee_receiver.address, token) == UNIT
    assert_solvent(world)


# ───────────────────────────── reentrancy ─────────────────────────────


@pytest.fixture
def reentrant_hold(world: LocalDeployment) -> tuple[Contract, PaymentTerms]:
    """A ReentrantToken and a 100-unit hold in it, made while its hook was disarmed."""
    token = deploy_funded_token(world, "ReentrantToken")
    terms = world.terms(100 * UNIT, token=token.address)
    world.authorize(terms)
    return token, terms


def arm(world: LocalDeployment, token: Contract, call_data: str) -> None:
    """Arms the token's hook with a call into the escrow on the next transfer."""
    world.admin.send(token.functions.setHook(world.escrow.address, call_data))


def capture_call_data(world: LocalDeployment, terms: PaymentTerms, seq: int, amount: int) -> str:
    return world.escrow.encode_abi("capture", [terms_tuple(terms), seq, amount, 0, []])


def test_reentry_during_a_pull_reverts_the_authorization_with_ReentrancyGuardReentrantCall(
    world: LocalDeployment, reentrant_hold: tuple[Contract, PaymentTerms]
) -> None:
    token, first = reentrant_hold
    # While the second hold is pulled, the hook tries to capture the first one.
    arm(world, token, capture_call_data(world, first, 1, 100 * UNIT))
    second = world.terms(100 * UNIT, token=token.address)
    call = world.escrow.functions.authorize(
        terms_tuple(second), 100 * UNIT, Method.ALLOWANCE, world.payer_signature(second)
    )

    with reverts_with(world, "ReentrancyGuardReentrantCall"):
        world.operator.send(call)

    assert world.state(first) == (100 * UNIT, 0, 1)
    assert world.state(second) == (0, 0, 0)
    assert world.balance(world.escrow.address, token) == 100 * UNIT


def test_reentry_during_a_pull_in_a_non_atomic_batch_fails_only_that_operation(
    world: LocalDeployment, reentrant_hold: tuple[Contract, PaymentTerms]
) -> None:
    token, first = reentrant_hold
    arm(world, token, capture_call_data(world, first, 1, 100 * UNIT))
    second = world.terms(100 * UNIT, token=token.address)
    ops = [
        BatchOp.authorize(second, 100 * UNIT, Method.ALLOWANCE, world.payer_signature(second)),
        BatchOp.void(first, 1, 30 * UNIT),
    ]

    receipt = settle(world, ops, atomic=False)

    (failed,) = emitted(world, receipt, "OperationFailed")
    assert (failed["paymentId"], failed["index"]) == (world.payment_hash(second), 0)
    assert failed["reason"] == function_signature_to_4byte_selector(
        "ReentrancyGuardReentrantCall()"
    )
    assert world.state(second) == (0, 0, 0)
    assert world.state(first) == (70 * UNIT, 0, 2)
    # The failed pull rolled back the hook's disarming too: it fired again on the netted
    # payout of the void, which therefore became the payer's credit.
    assert credit(world, token, world.payer.address) == 30 * UNIT
    assert_solvent(world)


def test_reentry_during_a_push_turns_the_payouts_into_credits_and_captures_once(
    world: LocalDeployment, reentrant_hold: tuple[Contract, PaymentTerms]
) -> None:
    """The hook's failing call rolls back the hook's own disarming too, so it fires (and
    fails) on every push of the capture and stays armed afterwards."""
    token, terms = reentrant_hold
    # While the first capture pays out, the hook tries to capture the rest a second time.
    arm(world, token, capture_call_data(world, terms, 2, 60 * UNIT))

    receipt = world.operator.send(
        world.escrow.functions.capture(terms_tuple(terms), 1, 40 * UNIT, 100, [])
    )

    assert world.state(terms) == (60 * UNIT, 40 * UNIT, 2)
    assert [(c["account"], c["amount"]) for c in emitted(world, receipt, "Credited")] == [
        (world.merchant.address, 39_600_000),
        (world.fee_receiver.address, 400_000),
    ]
    assert token.functions.hookCallCount().call() == 0
    assert world.balance(world.escrow.address, token) == 100 * UNIT
    assert_solvent(world)


def test_reentry_during_a_withdrawal_reverts_it_and_the_credit_stays(
    world: LocalDeployment, reentrant_hold: tuple[Contract, PaymentTerms]
) -> None:
    token, terms = reentrant_hold
    arm(world, token, capture_call_data(world, terms, 2, 60 * UNIT))
    capture(world, terms, 1, 40 * UNIT, 0)  # the merchant's payout becomes a credit
    withdraw = world.escrow.functions.withdraw(token.address)

    with reverts_with(world, "ReentrancyGuardReentrantCall"):
        world.merchant.send(withdraw)

    assert credit(world, token, world.merchant.address) == 40 * UNIT
    world.admin.send(token.functions.setHook(ZERO_ADDRESS, b""))
    merchant_before = world.balance(world.merchant.address, token)
    world.merchant.send(withdraw)
    assert world.balance(world.merchant.address, token) == merchant_before + 40 * UNIT
    assert world.state(terms) == (60 * UNIT, 40 * UNIT, 2)
    assert_solvent(world)
