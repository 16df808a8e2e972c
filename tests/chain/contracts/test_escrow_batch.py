"""settleBatch on both EVMs: all-or-nothing and one-by-one batches, netting of payouts,
replay protection, and the packed format's limits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import pytest

from engine.chain.contracts.escrow import (
    BatchOp,
    Leg,
    Method,
    Signer,
    encode_batch,
    encode_record,
)
from engine.chain.contracts.reverts import decode_revert
from engine.domain.ids import PaymentTerms
from engine.tools.localnet import UNIT, LocalDeployment
from tests.chain.contracts.batch_support import deploy_funded_token, fee, held, payouts, settle
from tests.fixtures.solvency import captured, emitted, reverts_with


def balances(world: LocalDeployment) -> dict[str, int]:
    """Token balances of everyone a batch moves money between."""
    accounts = (
        world.escrow,
        world.payer,
        world.merchant,
        world.fee_receiver,
        world.operator,
        world.other,
    )
    return {account.address: world.balance(account.address) for account in accounts}


@dataclass(frozen=True)
class Mixed:
    """Five payments, one per operation kind, and the batch that moves each of them."""

    new_hold: PaymentTerms
    new_sale: PaymentTerms
    to_capture: PaymentTerms
    to_void: PaymentTerms
    to_refund: PaymentTerms

    @classmethod
    def prepare(cls, world: LocalDeployment) -> Mixed:
        return cls(world.terms(), world.terms(), held(world), held(world), captured(world))

    def all_terms(self) -> tuple[PaymentTerms, ...]:
        return (self.new_hold, self.new_sale, self.to_capture, self.to_void, self.to_refund)

    def ops(self, world: LocalDeployment) -> list[BatchOp]:
        return [
            BatchOp.authorize(
                self.new_hold, 60 * UNIT, Method.ALLOWANCE, world.payer_signature(self.new_hold)
            ),
            BatchOp.charge(
                self.new_sale,
                50 * UNIT,
                Method.ALLOWANCE,
                world.payer_signature(self.new_sale),
                60,
                [Leg(world.other.address, UNIT // 5)],
            ),
            BatchOp.capture(self.to_capture, 1, 40 * UNIT, 100),
            BatchOp.void(self.to_void, 1, 100 * UNIT),
            BatchOp.refund(self.to_refund, 2, 30 * UNIT),
        ]

    def bad_op(self, world: LocalDeployment, kind: str) -> tuple[BatchOp, str, dict[str, Any]]:
        """A failing variant of the `kind` operation and the error it must revert with."""
        if kind == "authorize":
            signature = world.payer_signature(self.new_hold)
            op = BatchOp.authorize(self.new_hold, 101 * UNIT, Method.ALLOWANCE, signature)
            return op, "AmountExceedsMax", {"amount": 101 * UNIT, "maxAmount": 100 * UNIT}
        if kind == "charge":
            signature = world.payer_signature(self.new_sale)
            op = BatchOp.charge(self.new_sale, 50 * UNIT, Method.ALLOWANCE, signature, 101)
            return op, "FeeOutOfBounds", {"feeBps": 101, "minFeeBps": 0, "maxFeeBps": 100}
        if kind == "capture":
            op = BatchOp.capture(self.to_capture, 2, 40 * UNIT, 100)
            return op, "StaleSequence", {"current": 1, "given": 2}
        if kind == "void":
            op = BatchOp.void(self.to_void, 1, 100 * UNIT + 1)
            return op, "AmountExceedsCapturable", {"amount": 100 * UNIT + 1}
        op = BatchOp.refund(self.to_refund, 2, 100 * UNIT + 1)
        return op, "AmountExceedsRefundable", {"amount": 100 * UNIT + 1, "refundable": 100 * UNIT}


KINDS: Final = ("authorize", "charge", "capture", "void", "refund")


def states(world: LocalDeployment, terms: Sequence[PaymentTerms]) -> list[tuple[int, int, int]]:
    return [world.state(t) for t in terms]


# ─────────────────────────────── atomic ───────────────────────────────


def test_atomic_batch_applies_authorize_charge_capture_void_and_refund_together(
    world: LocalDeployment,
) -> None:
    mixed = Mixed.prepare(world)
    before = balances(world)

    receipt = settle(world, mixed.ops(world), atomic=True)

    assert states(world, mixed.all_terms()) == [
        (60 * UNIT, 0, 1),
        (0, 50 * UNIT, 2),
        (60 * UNIT, 40 * UNIT, 2),
        (0, 0, 2),
        (0, 70 * UNIT, 3),
    ]
    sale_fee, capture_fee = fee(50 * UNIT, 60), fee(40 * UNIT, 100)
    after = balances(world)
    assert after[world.escrow.address] == 60 * UNIT + 60 * UNIT  # the two open holds
    assert after[world.payer.address] - before[world.payer.address] == (
        -60 * UNIT - 50 * UNIT + 100 * UNIT + 30 * UNIT
    )
    assert after[world.operator.address] - before[world.operator.address] == -30 * UNIT
    assert after[world.merchant.address] - before[world.merchant.address] == (
        50 * UNIT - sale_fee - UNIT // 5 + 40 * UNIT - capture_fee
    )
    assert after[world.fee_receiver.address] - before[world.fee_receiver.address] == (
        sale_fee + capture_fee
    )
    assert after[world.other.address] - before[world.other.address] == UNIT // 5
    assert len(emitted(world, receipt, "Authorized")) == 2
    assert [e["amount"] for e in emitted(world, receipt, "Captured")] == [
        50 * UNIT,
        40 * UNIT,
    ]


@pytest.mark.parametrize("bad", KINDS)
def test_atomic_batch_with_one_bad_operation_reverts_with_its_error_and_changes_nothing(
    world: LocalDeployment, bad: str
) -> None:
    mixed = Mixed.prepare(world)
    good = mixed.ops(world)
    failing, error, args = mixed.bad_op(world, bad)
    # The bad operation goes last, so every other one has already run when it fails.
    ops = [op for kind, op in zip(KINDS, good, strict=True) if kind != bad] + [failing]
    before_states, before_balances = states(world, mixed.all_terms()), balances(world)

    with reverts_with(world, error, **args):
        settle(world, ops, atomic=True)

    assert states(world, mixed.all_terms()) == before_states
    assert balances(world) == before_balances


# ───────────────────────────── non-atomic ─────────────────────────────


def test_non_atomic_batch_applies_good_operations_and_reports_each_bad_one(
    world: LocalDeployment,
) -> None:
    mixed = Mixed.prepare(world)
    good = mixed.ops(world)
    bad_void, _, _ = mixed.bad_op(world, "void")
    bad_charge, _, _ = mixed.bad_op(world, "charge")
    ops = [good[2], bad_void, good[4], bad_charge, good[0]]
    payer_before = world.balance(world.payer.address)

    receipt = settle(world, ops, atomic=False)

    failed = emitted(world, receipt, "OperationFailed")
    assert [(f["paymentId"], f["index"]) for f in failed] == [
        (world.payment_hash(mixed.to_void), 1),
        (world.payment_hash(mixed.new_sale), 3),
    ]
    reasons = [decode_revert(f["reason"]) for f in failed]
    assert [r.error for r in reasons] == ["AmountExceedsCapturable", "FeeOutOfBounds"]
    assert reasons[0].args_by_name == {"amount": 100 * UNIT + 1, "capturable": 100 * UNIT}
    assert states(world, mixed.all_terms()) == [
        (60 * UNIT, 0, 1),
        (0, 0, 0),
        (60 * UNIT, 40 * UNIT, 2),
        (100 * UNIT, 0, 1),
        (0, 70 * UNIT, 3),
    ]
    # The payer paid the new hold and got the refund; the failed charge pulled nothing.
    assert world.balance(world.payer.address) == payer_before - 60 * UNIT + 30 * UNIT


def test_non_atomic_failed_charge_leaves_no_hold_no_pull_and_no_netted_payout(
    world: LocalDeployment,
) -> None:
    """A charge authorizes (pulls) before it captures, so its failing capture must take the
    pull, the hold, its events and its share of the netted payouts down with it."""
    to_capture = held(world)
    sale = world.terms()
    ops = [
        BatchOp.capture(to_capture, 1, 40 * UNIT, 100),
        BatchOp.charge(
            sale,
            50 * UNIT,
            Method.ALLOWANCE,
            world.payer_signature(sale),
            60,
            [Leg(world.other.address, UNIT)],  # over the 0.5 unit fee budget
        ),
    ]
    payer_before = world.balance(world.payer.address)

    receipt = settle(world, ops, atomic=False)

    (failed,) = emitted(world, receipt, "OperationFailed")
    assert (failed["paymentId"], failed["index"]) == (world.payment_hash(sale), 1)
    assert decode_revert(failed["reason"]).error == "FeeBudgetExceeded"
    assert world.state(sale) == (0, 0, 0)
    assert world.balance(world.payer.address) == payer_before
    assert emitted(world, receipt, "Authorized") == []
    assert sorted(payouts(world, receipt)) == sorted(
        [
            (world.merchant.address, 40 * UNIT - fee(40 * UNIT, 100)),
            (world.fee_receiver.address, fee(40 * UNIT, 100)),
        ]
    )


def test_non_atomic_merchant_funded_refund_names_the_batch_sender_as_the_funding_spender(
    world: LocalDeployment,
) -> None:
    """Inside a non-atomic batch each operation runs in a call from the escrow to itself; the
    merchant's approval must still be checked for the operator who sent the batch."""
    terms = captured(world)
    refund = [BatchOp.refund(terms, 2, 10 * UNIT, merchant_funds=True)]
    approve = world.escrow.functions.approveFunding
    world.merchant.send(approve(world.operator.address, 0))

    (failed,) = emitted(world, settle(world, refund, atomic=False), "OperationFailed")
    reason = decode_revert(failed["reason"])
    assert (reason.error, reason.args_by_name) == (
        "FundingAllowanceExceeded",
        {
            "merchant": world.merchant.address,
            "spender": world.operator.address,
            "amount": 10 * UNIT,
            "allowance": 0,
        },
    )

    world.merchant.send(approve(world.operator.address, 10 * UNIT))
    before = balances(world)
    settle(world, refund, atomic=False)
    after = balances(world)
    assert after[world.merchant.address] == before[world.merchant.address] - 10 * UNIT
    assert after[world.payer.address] == before[world.payer.address] + 10 * UNIT
    assert world.state(terms) == (0, 90 * UNIT, 3)


def test_batch_records_carry_extreme_field_values_intact(world: LocalDeployment) -> None:
    """Every packed field at its widest: a misread bit would change the payment id (so the
    operation would miss its payment) or show in the errors' echoed arguments."""
    terms = world.terms(
        2**120 - 1,
        authorization_expiry=2**48 - 2,
        refund_expiry=2**48 - 1,
        max_fee_bps=10_000,
        salt=2**256 - 1,
    )
    signature = world.payer_signature(terms)
    fee_before = world.balance(world.fee_receiver.address)

    settle(
        world,
        [
            BatchOp.authorize(terms, 5 * UNIT, Method.ALLOWANCE, signature),
            BatchOp.capture(terms, 1, 2 * UNIT, 10_000),
        ],
        atomic=True,
    )
    receipt = settle(
        world,
        [BatchOp.void(terms, 2, 2**120 - 1), BatchOp.refund(terms, 0xFFFF, 1)],
        atomic=False,
    )

    assert world.state(terms) == (3 * UNIT, 2 * UNIT, 2)
    assert world.balance(world.fee_receiver.address) == fee_before + 2 * UNIT
    reasons = [decode_revert(f["reason"]) for f in emitted(world, receipt, "OperationFailed")]
    assert [(r.error, r.args_by_name) for r in reasons] == [
        ("AmountExceedsCapturable", {"amount": 2**120 - 1, "capturable": 3 * UNIT}),
        (
            "StaleSequence",
            {"paymentId": world.payment_hash(terms), "current": 2, "given": 0xFFFF},
        ),
    ]


# ─────────────────────────────── netting ───────────────────────────────


def test_captures_to_one_merchant_are_paid_in_one_transfer_per_recipient(
    world: LocalDeployment,
) -> None:
    payments = [held(world) for _ in range(3)]
    amounts = [10 * UNIT, 25 * UNIT + 3, 100 * UNIT]
    ops = [BatchOp.capture(t, 1, amount, 100) for t, amount in zip(payments, amounts, strict=True)]

    receipt = settle(world, ops, atomic=True)

    fees = sum(fee(amount, 100) for amount in amounts)
    assert sorted(payouts(world, receipt)) == sorted(
        [
            (world.merchant.address, sum(amounts) - fees),
            (world.fee_receiver.address, fees),
        ]
    )


def test_captures_to_two_merchants_are_paid_in_one_transfer_each(world: LocalDeployment) -> None:
    to_merchant = [held(world), held(world)]
    to_other = world.terms(merchant=world.other.address)
    world.authorize(to_other)
    ops = [BatchOp.capture(t, 1, 20 * UNIT, 50) for t in [*to_merchant, to_other]]

    receipt = settle(world, ops, atomic=False)

    each_fee = fee(20 * UNIT, 50)
    assert sorted(payouts(world, receipt)) == sorted(
        [
            (world.merchant.address, 2 * (20 * UNIT - each_fee)),
            (world.other.address, 20 * UNIT - each_fee),
            (world.fee_receiver.address, 3 * each_fee),
        ]
    )


def test_captures_in_two_tokens_to_one_merchant_are_paid_in_one_transfer_per_token(
    world: LocalDeployment,
) -> None:
    second = deploy_funded_token(world, "TestStablecoin")
    in_first = [held(world), held(world)]
    in_second = [world.terms(token=second.address) for _ in range(2)]
    for terms in in_second:
        world.authorize(terms)
    ops = [BatchOp.capture(t, 1, 10 * UNIT, 0) for t in [*in_first, *in_second]]

    receipt = settle(world, ops, atomic=True)

    assert payouts(world, receipt) == [(world.merchant.address, 20 * UNIT)]
    assert payouts(world, receipt, second) == [(world.merchant.address, 20 * UNIT)]


def test_voids_and_refunds_to_one_payer_are_paid_in_one_transfer(world: LocalDeployment) -> None:
    to_void, to_refund = held(world), captured(world)
    ops = [BatchOp.void(to_void, 1, 30 * UNIT), BatchOp.refund(to_refund, 2, 45 * UNIT)]

    receipt = settle(world, ops, atomic=True)

    assert payouts(world, receipt) == [(world.payer.address, 75 * UNIT)]


# ─────────────────────────────── replay ───────────────────────────────


def test_replayed_atomic_batch_reverts_with_StaleSequence_and_applies_nothing_twice(
    world: LocalDeployment,
) -> None:
    to_capture, to_void = held(world), held(world)
    ops = [BatchOp.capture(to_capture, 1, 40 * UNIT, 100), BatchOp.void(to_void, 1, 10 * UNIT)]
    settle(world, ops, atomic=True)
    after_first = states(world, [to_capture, to_void]), balances(world)

    with reverts_with(
        world, "StaleSequence", paymentId=world.payment_hash(to_capture), current=2, given=1
    ):
        settle(world, ops, atomic=True)

    assert (states(world, [to_capture, to_void]), balances(world)) == after_first


def test_replayed_non_atomic_batch_fails_every_operation_and_moves_nothing(
    world: LocalDeployment,
) -> None:
    new_hold, to_capture, to_void = world.terms(), held(world), held(world)
    ops = [
        BatchOp.authorize(new_hold, 5 * UNIT, Method.ALLOWANCE, world.payer_signature(new_hold)),
        BatchOp.capture(to_capture, 1, 40 * UNIT, 100),
        BatchOp.void(to_void, 1, 10 * UNIT),
    ]
    settle(world, ops, atomic=False)
    after_first = states(world, [new_hold, to_capture, to_void]), balances(world)

    receipt = settle(world, ops, atomic=False)

    failed = emitted(world, receipt, "OperationFailed")
    assert [f["index"] for f in failed] == [0, 1, 2]
    assert [decode_revert(f["reason"]).error for f in failed] == [
        "PaymentExists",
        "StaleSequence",
        "StaleSequence",
    ]
    assert payouts(world, receipt) == []
    assert (states(world, [new_hold, to_capture, to_void]), balances(world)) == after_first


# ────────────────────────── format and limits ──────────────────────────


def test_empty_batch_reverts_with_EmptyBatch(world: LocalDeployment) -> None:
    with reverts_with(world, "EmptyBatch"):
        settle(world, b"", atomic=True)


def _malformed(world: LocalDeployment, good: bytes, case: str) -> tuple[bytes, int]:
    """A batch of `good` followed by the broken part, and the offset the contract must blame."""
    with_legs = encode_record(
        BatchOp.capture(world.terms(), 1, UNIT, 0, [Leg(world.other.address, 1)])
    )
    if case == "head cut short":
        return good + with_legs[:100], len(good)
    if case == "data cut short":
        return good + with_legs[:-1], len(good)
    if case == "trailing garbage":
        return good + b"\x01" * 7, len(good)
    return good + bytes([5]) + with_legs[1:], len(good)  # kind 5: past Refund


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "non-atomic"])
@pytest.mark.parametrize(
    "case", ["head cut short", "data cut short", "trailing garbage", "kind out of range"]
)
def test_malformed_batch_reverts_with_MalformedBatch_at_the_broken_record(
    world: LocalDeployment, case: str, atomic: bool
) -> None:
    terms = held(world)
    good = encode_record(BatchOp.capture(terms, 1, 40 * UNIT, 100))
    ops, offset = _malformed(world, good, case)

    with reverts_with(world, "MalformedBatch", offset=offset):
        settle(world, ops, atomic=atomic)

    assert world.state(terms) == (100 * UNIT, 0, 1)  # the good record before it is undone


def test_batch_of_257_records_reverts_with_BatchTooLarge(world: LocalDeployment) -> None:
    record = encode_record(BatchOp.void(world.terms(), 1, 1))  # an unknown payment: fails alone

    with reverts_with(world, "BatchTooLarge", size=257, max=256):
        settle(world, record * 257, atomic=False)


@pytest.mark.parametrize("caller", ["other", "operator"])
def test_applyIsolated_called_from_outside_reverts_with_OnlySelf(
    world: LocalDeployment, caller: str
) -> None:
    terms = held(world)
    record = encode_record(BatchOp.capture(terms, 1, 40 * UNIT, 100))
    signer: Signer = getattr(world, caller)

    with reverts_with(world, "OnlySelf"):
        signer.send(world.escrow.functions.applyIsolated(record, signer.address))

    assert world.state(terms) == (100 * UNIT, 0, 1)


def test_batch_from_an_account_without_OPERATOR_ROLE_reverts(world: LocalDeployment) -> None:
    terms = held(world)
    ops = encode_batch([BatchOp.capture(terms, 1, 40 * UNIT, 100)])

    with reverts_with(world, "AccessControlUnauthorizedAccount", account=world.other.address):
        world.other.send(world.escrow.functions.settleBatch(ops, True))
