"""The relay sends batches under ``batch_gas_limit`` instead of an estimate: on both EVMs the
bound covers every operation at its most expensive, and a batch that does run short of gas
reverts as a whole (``BatchOutOfGas``) rather than logging its operations as refused."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from eth_account import Account

from engine.chain.contracts.escrow import (
    RECORD_HEADER_BYTES,
    BatchOp,
    Leg,
    Method,
    batch_gas_limit,
    encode_batch,
    encode_record,
)
from engine.chain.contracts.reverts import ContractReverted, decode_revert, revert_data
from engine.domain.money import EXTRA_LEGS_MAX
from engine.tools.localnet import UNIT, LocalDeployment
from tests.fixtures.solvency import emitted

AMOUNT = 100 * UNIT


def _fresh() -> str:
    """An address that has never held the token: paying it creates its balance, the dearest
    write a payout makes."""
    return str(Account.create().address)


def _within_bound(world: LocalDeployment, ops: Sequence[BatchOp]) -> int:
    # The bound counts calldata from the record layout without encoding it.
    assert [len(encode_record(op)) for op in ops] == [
        RECORD_HEADER_BYTES + len(op.data) for op in ops
    ]
    receipt = world.operator.send(world.escrow.functions.settleBatch(encode_batch(ops), False))
    failed = emitted(world, receipt, "OperationFailed")
    assert failed == [], [decode_revert(item["reason"]) for item in failed]
    used = int(receipt["gasUsed"])
    assert used <= batch_gas_limit(ops), (ops[0].kind.name, used, batch_gas_limit(ops))
    return used


def test_the_bound_covers_each_operation_at_its_most_expensive(world: LocalDeployment) -> None:
    # New merchant and fee receiver, and the escrow's first hold: every balance is created.
    terms = world.terms(AMOUNT, merchant=_fresh(), fee_receiver=_fresh())
    signature = world.payer_signature(terms)
    _within_bound(world, [BatchOp.authorize(terms, AMOUNT, Method.ALLOWANCE, signature)])
    legs = [Leg(_fresh(), 1) for _ in range(EXTRA_LEGS_MAX)]
    _within_bound(world, [BatchOp.capture(terms, 1, AMOUNT // 2, 50, legs)])
    _within_bound(world, [BatchOp.refund(terms, 2, AMOUNT // 4)])
    _within_bound(world, [BatchOp.void(terms, 3, AMOUNT - AMOUNT // 2)])
    charged = world.terms(AMOUNT, merchant=_fresh(), fee_receiver=_fresh())
    _within_bound(
        world,
        [
            BatchOp.charge(
                charged,
                AMOUNT,
                Method.ALLOWANCE,
                world.payer_signature(charged),
                50,
                [Leg(_fresh(), 1) for _ in range(EXTRA_LEGS_MAX)],
            )
        ],
    )


def test_a_batch_short_of_gas_reverts_whole_instead_of_refusing_operations(
    world: LocalDeployment,
) -> None:
    terms = world.terms(AMOUNT)
    op = BatchOp.authorize(terms, AMOUNT, Method.ALLOWANCE, world.payer_signature(terms))
    call = world.escrow.functions.settleBatch(encode_batch([op]), False)
    needed = call.estimate_gas({"from": world.operator.address})
    with pytest.raises(Exception) as caught:
        call.call({"from": world.operator.address, "gas": needed * 2 // 3})
    reverted = caught.value
    if not isinstance(reverted, ContractReverted):
        reverted = decode_revert(revert_data(reverted))
    assert reverted.error == "BatchOutOfGas", reverted
    assert reverted.args_by_name == {"index": 0}
    assert world.state(terms) == (0, 0, 0)  # nothing was held
