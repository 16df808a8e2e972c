"""The six findings of the escrow review (issue 12), each as the behaviour the contract now
guarantees: disputes resolve at the sequence cap and cannot be kept stale by the operator,
merchant funding is bounded per payment and per spender, a gas-starved nested call reverts the
batch instead of refusing the operation, fee and legs are bounded on the payment's running
totals, the admin can stop a compromised operator at once, and a credit goes only to the account
it is owed to."""

from __future__ import annotations

from typing import Final

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3.contract import Contract

from engine.chain.contracts.escrow import (
    BatchOp,
    Leg,
    Method,
    batch_gas_limit,
    encode_batch,
    terms_tuple,
)
from engine.chain.contracts.reverts import ContractReverted, decode_revert, revert_data
from engine.domain.ids import PaymentTerms
from engine.tools.localnet import UNIT, LocalDeployment
from tests.chain.contracts.batch_support import deploy_funded_token, payouts, settle
from tests.chain.contracts.test_escrow_sequence_cap import SEQ_MAX, payment_slot
from tests.fixtures.solvency import Balances, captured, emitted, reverts_with

pytestmark = pytest.mark.usefixtures("escrow_stays_solvent")

BPS: Final = 10_000
# What a Solidity P-256 passkey check costs, about: above what the engine's gas bound for a
# one-record authorize batch leaves the payer's wallet.
PASSKEY_CHECK_GAS: Final = 170_000


def set_seq(world: LocalDeployment, terms: PaymentTerms, seq: int) -> None:
    """Moves the payment's sequence (the slot's top 16 bits) as 65k operations would."""
    if world.backend.name != "anvil":
        pytest.skip("writing storage directly needs anvil_setStorageAt")
    slot = payment_slot(world, world.payment_hash(terms))
    word = int.from_bytes(world.backend.w3.eth.get_storage_at(world.escrow.address, slot), "big")
    word = (word & ((1 << 240) - 1)) | (seq << 240)
    world.backend.w3.provider.make_request(
        "anvil_setStorageAt",
        [world.escrow.address, hex(slot), "0x" + word.to_bytes(32, "big").hex()],
    )


def open_dispute(
    world: LocalDeployment, terms: PaymentTerms, seq: int, amount: int, *, merchant_funds: bool
) -> None:
    call = world.escrow.functions.openDispute(terms_tuple(terms), seq, amount, merchant_funds)
    world.arbiter.send(call)


def resolve(world: LocalDeployment, terms: PaymentTerms, seq: int, *, payer_wins: bool) -> None:
    world.arbiter.send(world.escrow.functions.resolveDispute(terms_tuple(terms), seq, payer_wins))


# ─────────────── 1. the sequence cap; the operator cannot starve a dispute ───────────────


@pytest.mark.parametrize("payer_wins", [True, False])
def test_dispute_opened_just_below_the_sequence_cap_still_resolves(
    world: LocalDeployment, payer_wins: bool
) -> None:
    terms = captured(world)
    set_seq(world, terms, SEQ_MAX - 1)
    open_dispute(world, terms, SEQ_MAX - 1, 30 * UNIT, merchant_funds=False)
    balances = Balances(world)

    resolve(world, terms, SEQ_MAX, payer_wins=payer_wins)

    winner = "payer" if payer_wins else "arbiter"
    assert balances.moved() == {winner: 30 * UNIT, "escrow": -30 * UNIT}
    refundable = 70 * UNIT if payer_wins else 100 * UNIT
    assert world.state(terms) == (0, refundable, SEQ_MAX)


def test_operator_operation_at_the_sequence_cap_reverts_with_SequenceExhausted(
    world: LocalDeployment,
) -> None:
    terms = captured(world)
    set_seq(world, terms, SEQ_MAX)
    payment_id = world.payment_hash(terms)
    with reverts_with(world, "SequenceExhausted", paymentId=payment_id):
        world.operator.send(world.escrow.functions.refund(terms_tuple(terms), SEQ_MAX, 1, False))
    with reverts_with(world, "SequenceExhausted", paymentId=payment_id):
        open_dispute(world, terms, SEQ_MAX, 1, merchant_funds=False)


def test_operator_operations_during_a_dispute_do_not_make_its_resolution_stale(
    world: LocalDeployment,
) -> None:
    terms = captured(world)
    open_dispute(world, terms, 2, 30 * UNIT, merchant_funds=False)
    # The operator front-runs the arbiter with 1-unit refunds, each moving the sequence.
    for seq in (3, 4, 5):
        world.operator.send(world.escrow.functions.refund(terms_tuple(terms), seq, 1, False))

    resolve(world, terms, 3, payer_wins=True)  # the sequence the arbiter saw after opening

    assert world.state(terms) == (0, 70 * UNIT - 3, 7)


def test_resolve_replayed_or_older_than_the_open_dispute_is_refused(
    world: LocalDeployment,
) -> None:
    terms = captured(world)
    payment_id = world.payment_hash(terms)
    open_dispute(world, terms, 2, 30 * UNIT, merchant_funds=False)
    resolve(world, terms, 3, payer_wins=False)
    with reverts_with(world, "NoOpenDispute", paymentId=payment_id):
        resolve(world, terms, 3, payer_wins=False)  # a relay's replay
    open_dispute(world, terms, 4, 30 * UNIT, merchant_funds=False)
    with reverts_with(world, "StaleSequence", paymentId=payment_id, current=5, given=3):
        resolve(world, terms, 3, payer_wins=False)  # the first dispute's call, sent late
    with reverts_with(world, "StaleSequence", paymentId=payment_id, current=5, given=6):
        resolve(world, terms, 6, payer_wins=False)  # a sequence not reached yet


# ─────────────────────── 2. merchant funding, bounded and scoped ───────────────────────


def test_operator_cannot_pull_merchant_funds_through_terms_it_wrote_itself(
    world: LocalDeployment,
) -> None:
    # The operator pays itself as payer and fee receiver, at a 100 % fee: the merchant is
    # paid nothing, yet a merchant-funded refund would pull the whole amount from it.
    amount = 1_000 * UNIT
    terms = world.terms(
        amount,
        payer=world.operator.address,
        fee_receiver=world.operator.address,
        min_fee_bps=BPS,
        max_fee_bps=BPS,
    )
    call = world.escrow.functions.charge(terms_tuple(terms), amount, Method.ALLOWANCE, b"", BPS, [])
    world.operator.send(call)
    refund = world.escrow.functions.refund(terms_tuple(terms), 2, amount, True)
    with reverts_with(
        world,
        "MerchantFundingExceeded",
        paymentId=world.payment_hash(terms),
        funded=amount,
        bound=0,
    ):
        world.operator.send(refund)


def test_merchant_funds_at_most_its_net_of_a_capture(world: LocalDeployment) -> None:
    terms = world.terms(100 * UNIT)  # the payer allows a 1 % fee at most
    world.authorize(terms)
    world.operator.send(world.escrow.functions.capture(terms_tuple(terms), 1, 100 * UNIT, 100, []))
    net = 99 * UNIT
    refund = world.escrow.functions.refund(terms_tuple(terms), 2, 100 * UNIT, True)
    with reverts_with(world, "MerchantFundingExceeded", funded=100 * UNIT, bound=net):
        world.operator.send(refund)
    balances = Balances(world)

    world.operator.send(world.escrow.functions.refund(terms_tuple(terms), 2, net, True))
    world.operator.send(world.escrow.functions.refund(terms_tuple(terms), 3, UNIT, False))

    assert balances.moved() == {"merchant": -net, "operator": -UNIT, "payer": 100 * UNIT}
    assert world.escrow.functions.merchantFunded(world.payment_hash(terms)).call() == net


def test_merchant_funding_is_capped_per_spender_by_the_merchant(world: LocalDeployment) -> None:
    world.merchant.send(world.escrow.functions.approveFunding(world.operator.address, 10 * UNIT))
    terms = captured(world)
    refund = world.escrow.functions.refund(terms_tuple(terms), 2, 11 * UNIT, True)
    with reverts_with(
        world,
        "FundingAllowanceExceeded",
        merchant=world.merchant.address,
        spender=world.operator.address,
        amount=11 * UNIT,
        allowance=10 * UNIT,
    ):
        world.operator.send(refund)

    world.operator.send(world.escrow.functions.refund(terms_tuple(terms), 2, 10 * UNIT, True))

    allowance = world.escrow.functions.fundingAllowance(
        world.merchant.address, world.operator.address
    )
    assert allowance.call() == 0
    # The arbiter's allowance is its own.
    open_dispute(world, terms, 3, 5 * UNIT, merchant_funds=True)


def test_merchant_repaid_by_a_dispute_it_won_may_fund_again(world: LocalDeployment) -> None:
    terms = captured(world)  # the payer allows a 1 % fee: the merchant's share is 99 %
    payment_id = world.payment_hash(terms)
    open_dispute(world, terms, 2, 99 * UNIT, merchant_funds=True)
    assert world.escrow.functions.merchantFunded(payment_id).call() == 99 * UNIT
    resolve(world, terms, 3, payer_wins=False)
    assert world.escrow.functions.merchantFunded(payment_id).call() == 0
    world.operator.send(world.escrow.functions.refund(terms_tuple(terms), 4, 99 * UNIT, True))


# ─────────────── 3. a gas-starved nested call reverts the batch, not the record ───────────────


def deploy_wallet_payer(world: LocalDeployment) -> tuple[Contract, LocalAccount]:
    """A smart-wallet payer holding tokens and approving the escrow, and its owner key."""
    owner = Account.create()
    wallet = world.admin.deploy("GasHungryWallet", owner.address, PASSKEY_CHECK_GAS)
    world.admin.send(world.token.functions.mint(wallet.address, 1_000 * UNIT))
    world.admin.send(
        wallet.functions.approve(world.token.address, world.escrow.address, 2**256 - 1)
    )
    return wallet, owner


def test_payer_wallet_check_starved_of_gas_reverts_the_batch_with_BatchOutOfGas(
    world: LocalDeployment,
) -> None:
    wallet, owner = deploy_wallet_payer(world)
    terms = world.terms(100 * UNIT, payer=wallet.address)
    signature = world.payer_signature(terms, owner)
    ops = [BatchOp.authorize(terms, 100 * UNIT, Method.ALLOWANCE, signature)]
    call = world.escrow.functions.settleBatch(encode_batch(ops), False)
    sender = {"from": world.operator.address}

    with pytest.raises(Exception) as caught:  # each backend raises its own type
        call.call({**sender, "gas": batch_gas_limit(ops)})

    starved = caught.value
    if not isinstance(starved, ContractReverted):
        starved = decode_revert(revert_data(starved))
    assert starved.error == "BatchOutOfGas", starved
    assert starved.args_by_name == {"index": 0}
    # Sent again under an estimate, the same record applies.
    receipt = world.operator.send(call)
    assert emitted(world, receipt, "OperationFailed") == []
    assert world.state(terms) == (100 * UNIT, 0, 1)


def test_payer_wallet_refusing_the_signature_is_still_logged_as_a_refusal(
    world: LocalDeployment,
) -> None:
    wallet, _ = deploy_wallet_payer(world)
    terms = world.terms(100 * UNIT, payer=wallet.address)
    signature = world.payer_signature(terms)  # not the wallet owner's
    ops = [BatchOp.authorize(terms, 100 * UNIT, Method.ALLOWANCE, signature)]
    receipt = world.operator.send(world.escrow.functions.settleBatch(encode_batch(ops), False))
    [failed] = emitted(world, receipt, "OperationFailed")
    assert decode_revert(failed["reason"]).error == "InvalidPayerSignature"


def test_payout_starved_of_gas_reverts_with_PayoutOutOfGas_instead_of_becoming_a_credit(
    world: LocalDeployment,
) -> None:
    # A token whose transfer runs a costly hook (as an ERC-777 recipient or a token with
    # transfer checks may): given too little gas, the payout fails for want of it.
    token = deploy_funded_token(world, "ReentrantToken")
    terms = world.terms(100 * UNIT, token=token.address)
    world.authorize(terms)
    wallet = world.admin.deploy("GasHungryWallet", world.other.address, PASSKEY_CHECK_GAS)
    hook = wallet.encode_abi("isValidSignature", [bytes(32), b""])
    world.admin.send(token.functions.setHook(wallet.address, hook))
    call = world.escrow.functions.capture(terms_tuple(terms), 1, 100 * UNIT, 0, [])

    with pytest.raises(Exception) as caught:  # each backend raises its own type
        call.call({"from": world.operator.address, "gas": 150_000})

    starved = caught.value
    if not isinstance(starved, ContractReverted):
        starved = decode_revert(revert_data(starved))
    assert (starved.error, starved.args_by_name) == (
        "PayoutOutOfGas",
        {"token": token.address, "to": world.merchant.address},
    )
    receipt = world.operator.send(call)  # under an estimate: paid, not credited
    assert payouts(world, receipt, token) == [(world.merchant.address, 100 * UNIT)]
    assert world.escrow.functions.credits(token.address, world.merchant.address).call() == 0


# ─────────────────── 4. fee and legs bounded on the payment's running totals ───────────────────


def test_many_one_unit_captures_cannot_take_more_than_the_signed_fee(
    world: LocalDeployment,
) -> None:
    # A signed 0.01 %; before, each 1-unit capture rounded its budget up to the whole unit.
    captures = 100
    terms = world.terms(captures, max_fee_bps=1)
    world.authorize(terms)
    balances = Balances(world)

    receipt = settle(
        world, [BatchOp.capture(terms, seq, 1, 1) for seq in range(1, captures + 1)], atomic=False
    )

    assert emitted(world, receipt, "OperationFailed") == []
    fees = sum(event["fee"] for event in emitted(world, receipt, "Captured"))
    assert fees == 1  # ceil(100 * 1 / 10⁴)
    assert balances.moved() == {"merchant": captures - 1, "fee_receiver": 1, "escrow": -captures}


def test_legs_cannot_take_more_than_the_signed_fee_over_many_captures(
    world: LocalDeployment,
) -> None:
    ledger = str(Account.create().address)
    terms = world.terms(100, max_fee_bps=1)
    world.authorize(terms)
    capture = [BatchOp.capture(terms, 1, 1, 0, [Leg(ledger, 1)])]
    settle(world, capture, atomic=True)  # ceil(1 * 1 / 10⁴): one unit of budget
    second = world.escrow.functions.settleBatch(
        encode_batch([BatchOp.capture(terms, 2, 1, 0, [Leg(ledger, 1)])]), True
    )
    with reverts_with(world, "FeeBudgetExceeded", total=1, budget=0):
        world.operator.send(second)


@pytest.mark.parametrize(
    ("fee_bps", "splits"), [(100, (50, 50)), (100, (33, 33, 34)), (50, (67,) * 3)]
)
def test_splitting_a_capture_never_rounds_the_fee_away(
    world: LocalDeployment, fee_bps: int, splits: tuple[int, ...]
) -> None:
    total = sum(splits)
    terms = world.terms(total)
    world.authorize(terms)
    receipt = settle(
        world,
        [BatchOp.capture(terms, seq, part, fee_bps) for seq, part in enumerate(splits, start=1)],
        atomic=True,
    )
    fees = sum(event["fee"] for event in emitted(world, receipt, "Captured"))
    whole = -(-total * fee_bps // BPS)
    assert whole <= fees <= -(-total * terms.max_fee_bps // BPS)


# ───────────────────── 5. a lever against a compromised operator key ─────────────────────


def revoke_operator(world: LocalDeployment) -> None:
    role = world.escrow.functions.OPERATOR_ROLE().call()
    world.admin.send(world.escrow.functions.revokeRole(role, world.operator.address))


def test_revoked_operator_can_no_longer_move_money_but_the_payer_reclaims(
    world: LocalDeployment,
) -> None:
    terms = world.terms(100 * UNIT)
    world.authorize(terms)
    revoke_operator(world)
    escrow = world.escrow.functions
    for call in (
        escrow.capture(terms_tuple(terms), 1, UNIT, 100, []),
        escrow.void(terms_tuple(terms), 1, UNIT),
        escrow.refund(terms_tuple(terms), 1, UNIT, True),
    ):
        with reverts_with(
            world, "AccessControlUnauthorizedAccount", account=world.operator.address
        ):
            world.operator.send(call)

    world.backend.set_next_block_timestamp(terms.authorization_expiry)
    world.backend.mine()
    world.payer.send(escrow.reclaim(terms_tuple(terms)))
    assert world.state(terms) == (0, 0, 2)


def test_pause_stops_new_holds_and_merchant_funded_refunds_not_the_payers_exits(
    world: LocalDeployment,
) -> None:
    held = world.terms(100 * UNIT)
    world.authorize(held)
    terms = captured(world)
    world.pauser.send(world.escrow.functions.pause())
    escrow = world.escrow.functions
    with reverts_with(world, "EnforcedPause"):
        world.authorize(world.terms(100 * UNIT))
    with reverts_with(world, "EnforcedPause"):
        world.operator.send(escrow.refund(terms_tuple(terms), 2, UNIT, True))
    receipt = settle(world, [BatchOp.refund(terms, 2, UNIT, merchant_funds=True)], atomic=False)
    [failed] = emitted(world, receipt, "OperationFailed")
    assert decode_revert(failed["reason"]).error == "EnforcedPause"

    # What returns money to the payer goes on, and so do captures of holds already placed
    # (revoking the operator's role is what stops those).
    world.operator.send(escrow.refund(terms_tuple(terms), 2, UNIT, False))
    world.operator.send(escrow.void(terms_tuple(held), 1, UNIT))
    world.operator.send(escrow.capture(terms_tuple(held), 2, UNIT, 100, []))
    assert world.state(held) == (98 * UNIT, UNIT, 3)


# ─────────────────── 6. a credit goes only to the account it is owed to ───────────────────


def test_blocked_merchant_cannot_move_its_credit_to_a_fresh_address(
    world: LocalDeployment,
) -> None:
    token = deploy_funded_token(world, "BlocklistToken")
    terms = world.terms(100 * UNIT, token=token.address)
    world.authorize(terms)
    world.admin.send(token.functions.setBlocked(world.merchant.address, True))
    world.operator.send(world.escrow.functions.capture(terms_tuple(terms), 1, 100 * UNIT, 0, []))
    assert (
        world.escrow.functions.credits(token.address, world.merchant.address).call() == 100 * UNIT
    )

    with reverts_with(world, "AccountBlocked", account=world.merchant.address):
        world.merchant.send(world.escrow.functions.withdraw(token.address))

    world.admin.send(token.functions.setBlocked(world.merchant.address, False))
    receipt = world.merchant.send(world.escrow.functions.withdraw(token.address))
    assert payouts(world, receipt, token) == [(world.merchant.address, 100 * UNIT)]
