"""The lifecycle of a payment in the escrow, on both EVMs: hold → capture (partial, repeated,
split into fee and legs) → refund; or void / reclaim. Every money movement is checked against
the balance of every party, and the escrow is solvent after every test."""

from __future__ import annotations

import pytest
from eth_utils import to_checksum_address

from engine.chain.contracts.escrow import ContractReverted, Leg, Method, legs_tuple, terms_tuple
from engine.domain.money import ZERO_ADDRESS
from engine.tools.localnet import UNIT, LocalDeployment
from tests.fixtures.solvency import Balances, emitted

LEDGER = to_checksum_address("0x" + "1e" * 20)
RESERVE = to_checksum_address("0x" + "2e" * 20)


pytestmark = pytest.mark.usefixtures("escrow_stays_solvent")


def test_partial_captures_split_fee_and_merchant_share_and_advance_the_sequence(
    world: LocalDeployment,
) -> None:
    escrow = world.escrow.functions
    terms = world.terms(100 * UNIT)
    balances = Balances(world)
    world.authorize(terms)
    assert balances.moved() == {"payer": -100 * UNIT, "escrow": 100 * UNIT}

    receipt = world.operator.send(escrow.capture(terms_tuple(terms), 1, 30 * UNIT, 100, []))
    assert emitted(world, receipt, "Captured") == [
        {"paymentId": world.payment_hash(terms), "seq": 1, "amount": 30 * UNIT, "fee": 300_000}
    ]
    assert balances.moved() == {
        "escrow": -30 * UNIT,
        "merchant": 30 * UNIT - 300_000,
        "fee_receiver": 300_000,
    }
    assert world.state(terms) == (70 * UNIT, 30 * UNIT, 2)

    receipt = world.operator.send(escrow.capture(terms_tuple(terms), 2, 50 * UNIT, 50, []))
    assert emitted(world, receipt, "Captured")[0]["seq"] == 2
    assert balances.moved() == {
        "escrow": -50 * UNIT,
        "merchant": 50 * UNIT - 250_000,
        "fee_receiver": 250_000,
    }
    assert world.state(terms) == (20 * UNIT, 80 * UNIT, 3)


@pytest.mark.parametrize(
    ("amount", "fee_bps", "fee"),
    [
        (1, 1, 1),  # the smallest capture at the smallest fee still pays one unit
        (10_001, 1, 2),
        (12_345, 100, 124),
    ],
)
def test_capture_fee_is_rounded_up_to_the_next_unit(
    world: LocalDeployment, amount: int, fee_bps: int, fee: int
) -> None:
    terms = world.terms(amount)
    world.authorize(terms)
    balances = Balances(world)
    receipt = world.operator.send(
        world.escrow.functions.capture(terms_tuple(terms), 1, amount, fee_bps, [])
    )
    assert emitted(world, receipt, "Captured")[0]["fee"] == fee
    expected = {"escrow": -amount, "merchant": amount - fee, "fee_receiver": fee}
    assert balances.moved() == {party: delta for party, delta in expected.items() if delta}


def test_capture_pays_up_to_LEGS_MAX_extra_legs_out_of_the_fee_budget(
    world: LocalDeployment,
) -> None:
    assert world.escrow.functions.LEGS_MAX().call() == 4
    terms = world.terms(100 * UNIT)  # max fee 100 bps: a budget of 1 UNIT on 100 UNIT
    world.authorize(terms)
    balances = Balances(world, ledger=LEDGER, reserve=RESERVE)
    legs = [
        Leg(LEDGER, 200_000),
        Leg(RESERVE, 100_000),
        Leg(LEDGER, 100_000),
        Leg(RESERVE, 100_000),
    ]

    receipt = world.operator.send(
        world.escrow.functions.capture(terms_tuple(terms), 1, 100 * UNIT, 50, legs_tuple(legs))
    )

    payment_id = world.payment_hash(terms)
    assert emitted(world, receipt, "LegPaid") == [
        {"paymentId": payment_id, "recipient": leg.recipient, "amount": leg.amount} for leg in legs
    ]
    assert emitted(world, receipt, "Captured")[0]["fee"] == 500_000
    assert balances.moved() == {
        "escrow": -100 * UNIT,
        "merchant": 99 * UNIT,
        "fee_receiver": 500_000,
        "ledger": 300_000,
        "reserve": 200_000,
    }
    assert world.state(terms) == (0, 100 * UNIT, 2)


def test_capture_leg_to_the_escrow_itself_reverts_with_InvalidLeg(world: LocalDeployment) -> None:
    """Tokens paid to the escrow would be owed to no one and break the solvency equality."""
    terms = world.terms(100 * UNIT)
    world.authorize(terms)
    leg_to_escrow = legs_tuple([Leg(world.escrow.address, UNIT)])
    with pytest.raises(ContractReverted) as revert:
        world.operator.send(
            world.escrow.functions.capture(terms_tuple(terms), 1, 100 * UNIT, 0, leg_to_escrow)
        )
    assert (revert.value.error, revert.value.args_by_name) == ("InvalidLeg", {"index": 0})
    assert world.state(terms) == (100 * UNIT, 0, 1)


@pytest.mark.parametrize("role", ["merchant", "fee_receiver"])
def test_escrow_as_merchant_or_fee_receiver_reverts_with_InvalidRecipient(
    world: LocalDeployment, role: str
) -> None:
    terms = world.terms(100 * UNIT, **{role: world.escrow.address})
    with pytest.raises(ContractReverted) as revert:
        world.authorize(terms)
    assert revert.value.error == "InvalidRecipient"
    assert revert.value.args_by_name == {"recipient": world.escrow.address}


def test_terms_without_fee_receiver_capture_everything_to_the_merchant(
    world: LocalDeployment,
) -> None:
    terms = world.terms(10 * UNIT, fee_receiver=ZERO_ADDRESS, max_fee_bps=0)
    world.authorize(terms)
    balances = Balances(world)
    world.operator.send(world.escrow.functions.capture(terms_tuple(terms), 1, 10 * UNIT, 0, []))
    assert balances.moved() == {"escrow": -10 * UNIT, "merchant": 10 * UNIT}


def test_charge_authorizes_and_captures_in_one_transaction(world: LocalDeployment) -> None:
    terms = world.terms(100 * UNIT)
    balances = Balances(world, ledger=LEDGER)
    receipt = world.operator.send(
        world.escrow.functions.charge(
            terms_tuple(terms),
            40 * UNIT,
            Method.ALLOWANCE,
            world.payer_signature(terms),
            60,
            legs_tuple([Leg(LEDGER, 160_000)]),
        )
    )

    payment_id = world.payment_hash(terms)
    assert [event["amount"] for event in emitted(world, receipt, "Authorized")] == [40 * UNIT]
    assert emitted(world, receipt, "Captured") == [
        {"paymentId": payment_id, "seq": 1, "amount": 40 * UNIT, "fee": 240_000}
    ]
    assert balances.moved() == {
        "payer": -40 * UNIT,
        "merchant": 40 * UNIT - 400_000,
        "fee_receiver": 240_000,
        "ledger": 160_000,
    }
    assert world.state(terms) == (0, 40 * UNIT, 2)


def test_full_void_returns_the_whole_hold_to_the_payer(world: LocalDeployment) -> None:
    terms = world.terms(100 * UNIT)
    world.authorize(terms)
    balances = Balances(world)
    receipt = world.operator.send(world.escrow.functions.void(terms_tuple(terms), 1, 100 * UNIT))
    assert emitted(world, receipt, "Voided") == [
        {"paymentId": world.payment_hash(terms), "seq": 1, "amount": 100 * UNIT}
    ]
    assert balances.moved() == {"escrow": -100 * UNIT, "payer": 100 * UNIT}
    assert world.state(terms) == (0, 0, 2)


def test_partial_void_leaves_the_rest_of_the_hold_capturable(world: LocalDeployment) -> None:
    escrow = world.escrow.functions
    terms = world.terms(100 * UNIT)
    world.authorize(terms)
    balances = Balances(world)
    world.operator.send(escrow.void(terms_tuple(terms), 1, 40 * UNIT))
    assert balances.moved() == {"escrow": -40 * UNIT, "payer": 40 * UNIT}
    assert world.state(terms) == (60 * UNIT, 0, 2)

    world.operator.send(escrow.capture(terms_tuple(terms), 2, 60 * UNIT, 0, []))
    assert balances.moved() == {"escrow": -60 * UNIT, "merchant": 60 * UNIT}
    assert world.state(terms) == (0, 60 * UNIT, 3)


def test_void_after_authorization_expiry_still_releases_the_hold(world: LocalDeployment) -> None:
    terms = world.terms(100 * UNIT)
    world.authorize(terms)
    world.backend.increase_time(terms.authorization_expiry - world.backend.now())
    balances = Balances(world)
    world.operator.send(world.escrow.functions.void(terms_tuple(terms), 1, 100 * UNIT))
    assert balances.moved() == {"escrow": -100 * UNIT, "payer": 100 * UNIT}


def test_payer_reclaims_the_remaining_hold_at_authorization_expiry_and_refunds_go_on(
    world: LocalDeployment,
) -> None:
    escrow = world.escrow.functions
    terms = world.terms(100 * UNIT)
    world.authorize(terms)
    world.operator.send(escrow.capture(terms_tuple(terms), 1, 30 * UNIT, 0, []))
    world.backend.increase_time(terms.authorization_expiry - world.backend.now())
    balances = Balances(world)

    receipt = world.payer.send(escrow.reclaim(terms_tuple(terms)))
    assert emitted(world, receipt, "Reclaimed") == [
        {"paymentId": world.payment_hash(terms), "seq": 2, "amount": 70 * UNIT}
    ]
    assert balances.moved() == {"escrow": -70 * UNIT, "payer": 70 * UNIT}
    assert world.state(terms) == (0, 30 * UNIT, 3)

    world.operator.send(escrow.refund(terms_tuple(terms), 3, 10 * UNIT, False))
    assert balances.moved() == {"operator": -10 * UNIT, "payer": 10 * UNIT}
    assert world.state(terms) == (0, 20 * UNIT, 4)


def test_refunds_partial_and_repeated_up_to_the_captured_amount_are_funded_by_the_operator(
    world: LocalDeployment,
) -> None:
    escrow = world.escrow.functions
    terms = world.terms(100 * UNIT)
    world.authorize(terms)
    world.operator.send(escrow.capture(terms_tuple(terms), 1, 60 * UNIT, 100, []))
    balances = Balances(world)

    receipt = world.operator.send(escrow.refund(terms_tuple(terms), 2, 20 * UNIT, False))
    assert emitted(world, receipt, "Refunded") == [
        {
            "paymentId": world.payment_hash(terms),
            "seq": 2,
            "amount": 20 * UNIT,
            "funder": world.operator.address,
        }
    ]
    assert balances.moved() == {"operator": -20 * UNIT, "payer": 20 * UNIT}
    assert world.state(terms) == (40 * UNIT, 40 * UNIT, 3)

    world.operator.send(escrow.refund(terms_tuple(terms), 3, 40 * UNIT, False))
    assert balances.moved() == {"operator": -40 * UNIT, "payer": 40 * UNIT}
    assert world.state(terms) == (40 * UNIT, 0, 4)


def test_refund_with_merchant_funds_pulls_from_the_merchant(world: LocalDeployment) -> None:
    escrow = world.escrow.functions
    terms = world.terms(100 * UNIT)
    world.authorize(terms)
    world.operator.send(escrow.capture(terms_tuple(terms), 1, 100 * UNIT, 0, []))
    balances = Balances(world)

    receipt = world.operator.send(escrow.refund(terms_tuple(terms), 2, 25 * UNIT, True))
    assert emitted(world, receipt, "Refunded")[0]["funder"] == world.merchant.address
    assert balances.moved() == {"merchant": -25 * UNIT, "payer": 25 * UNIT}
    assert world.state(terms) == (0, 75 * UNIT, 3)
