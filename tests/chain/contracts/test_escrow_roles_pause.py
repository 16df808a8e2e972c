"""Who may call what: OPERATOR_ROLE for every operator operation (revoking it stops the operator
at once), the terms' own operator for everything done to a payment, the payer alone to reclaim,
PAUSER_ROLE to pause. A pause stops new holds and merchant-funded refunds: settling, refunds the
operator funds and the payer's exit go on."""

from __future__ import annotations

import pytest

from engine.chain.contracts.escrow import Method, terms_tuple
from engine.tools.localnet import UNIT, LocalDeployment
from tests.fixtures.solvency import Balances, emitted, reverts_with

DEFAULT_ADMIN_ROLE = bytes(32)


pytestmark = pytest.mark.usefixtures("escrow_stays_solvent")


def role(world: LocalDeployment, name: str) -> bytes:
    return bytes(world.escrow.functions[name]().call())


def pause(world: LocalDeployment) -> None:
    world.pauser.send(world.escrow.functions.pause())


# ─────────────────────────────── roles ───────────────────────────────


def test_authorize_without_OPERATOR_ROLE_reverts_with_AccessControlUnauthorizedAccount(
    world: LocalDeployment,
) -> None:
    terms = world.terms(operator=world.other.address)
    call = world.escrow.functions.authorize(
        terms_tuple(terms), UNIT, Method.ALLOWANCE, world.payer_signature(terms)
    )
    with reverts_with(
        world,
        "AccessControlUnauthorizedAccount",
        account=world.other.address,
        neededRole=role(world, "OPERATOR_ROLE"),
    ):
        world.other.send(call)


def test_charge_without_OPERATOR_ROLE_reverts_with_AccessControlUnauthorizedAccount(
    world: LocalDeployment,
) -> None:
    terms = world.terms(operator=world.other.address)
    call = world.escrow.functions.charge(
        terms_tuple(terms), UNIT, Method.ALLOWANCE, world.payer_signature(terms), 0, []
    )
    with reverts_with(
        world,
        "AccessControlUnauthorizedAccount",
        account=world.other.address,
        neededRole=role(world, "OPERATOR_ROLE"),
    ):
        world.other.send(call)


def test_operator_role_holder_who_is_not_the_terms_operator_reverts_with_NotOperator(
    world: LocalDeployment,
) -> None:
    world.admin.send(
        world.escrow.functions.grantRole(role(world, "OPERATOR_ROLE"), world.other.address)
    )
    terms = world.terms()
    call = world.escrow.functions.authorize(
        terms_tuple(terms), UNIT, Method.ALLOWANCE, world.payer_signature(terms)
    )
    with reverts_with(
        world, "NotOperator", caller=world.other.address, operator=world.operator.address
    ):
        world.other.send(call)


@pytest.mark.parametrize("operation", ["capture", "void", "refund"])
def test_capture_void_or_refund_without_OPERATOR_ROLE_reverts_with_AccessControlUnauthorizedAccount(
    world: LocalDeployment, operation: str
) -> None:
    escrow = world.escrow.functions
    terms = world.terms(100 * UNIT, operator=world.other.address)
    calls = {
        "capture": escrow.capture(terms_tuple(terms), 1, UNIT, 0, []),
        "void": escrow.void(terms_tuple(terms), 1, UNIT),
        "refund": escrow.refund(terms_tuple(terms), 1, UNIT, False),
    }
    with reverts_with(
        world,
        "AccessControlUnauthorizedAccount",
        account=world.other.address,
        neededRole=role(world, "OPERATOR_ROLE"),
    ):
        world.other.send(calls[operation])


def test_only_the_terms_operator_may_capture_void_or_refund_else_NotOperator(
    world: LocalDeployment,
) -> None:
    escrow = world.escrow.functions
    terms = world.terms(100 * UNIT)
    world.authorize(terms)
    world.operator.send(escrow.capture(terms_tuple(terms), 1, 50 * UNIT, 0, []))
    world.admin.send(escrow.grantRole(role(world, "OPERATOR_ROLE"), world.other.address))
    not_operator = {"caller": world.other.address, "operator": world.operator.address}

    with reverts_with(world, "NotOperator", **not_operator):
        world.other.send(escrow.capture(terms_tuple(terms), 2, UNIT, 0, []))
    with reverts_with(world, "NotOperator", **not_operator):
        world.other.send(escrow.void(terms_tuple(terms), 2, UNIT))
    with reverts_with(world, "NotOperator", **not_operator):
        world.other.send(escrow.refund(terms_tuple(terms), 2, UNIT, False))


@pytest.mark.parametrize("caller", ["operator", "merchant", "other"])
def test_only_the_payer_may_reclaim_else_NotPayer(world: LocalDeployment, caller: str) -> None:
    terms = world.terms()
    world.authorize(terms)
    world.backend.increase_time(terms.authorization_expiry - world.backend.now())
    sender = getattr(world, caller)
    with reverts_with(world, "NotPayer", caller=sender.address, payer=world.payer.address):
        sender.send(world.escrow.functions.reclaim(terms_tuple(terms)))


def test_revoking_OPERATOR_ROLE_stops_the_operator_until_granted_again(
    world: LocalDeployment,
) -> None:
    escrow = world.escrow.functions
    held = world.terms(100 * UNIT)
    world.authorize(held)
    operator_role = role(world, "OPERATOR_ROLE")
    world.admin.send(escrow.revokeRole(operator_role, world.operator.address))

    with reverts_with(world, "AccessControlUnauthorizedAccount", account=world.operator.address):
        world.authorize(world.terms())
    with reverts_with(world, "AccessControlUnauthorizedAccount", account=world.operator.address):
        world.operator.send(escrow.capture(terms_tuple(held), 1, 100 * UNIT, 0, []))
    world.admin.send(escrow.grantRole(operator_role, world.operator.address))
    balances = Balances(world)
    world.operator.send(escrow.capture(terms_tuple(held), 1, 100 * UNIT, 0, []))
    assert balances.moved() == {"escrow": -100 * UNIT, "merchant": 100 * UNIT}


def test_operator_cannot_pull_funds_from_an_account_that_never_agreed_to_fund_it(
    world: LocalDeployment,
) -> None:
    """An operator paying itself needs no payer signature and may name any merchant; naming an
    account that approved the escrow (here a payer) must not let it refund from that account."""
    escrow = world.escrow.functions
    victim = world.payer
    terms = world.terms(
        100 * UNIT,
        payer=world.operator.address,
        merchant=victim.address,
        max_fee_bps=10_000,
        fee_receiver=world.operator.address,
    )
    world.operator.send(escrow.authorize(terms_tuple(terms), 100 * UNIT, Method.ALLOWANCE, b""))
    world.operator.send(escrow.capture(terms_tuple(terms), 1, 100 * UNIT, 10_000, []))
    with reverts_with(
        world,
        "FundingAllowanceExceeded",
        merchant=victim.address,
        spender=world.operator.address,
        amount=100 * UNIT,
        allowance=0,
    ):
        world.operator.send(escrow.refund(terms_tuple(terms), 2, 100 * UNIT, True))


def test_merchant_grants_and_withdraws_funding_approval(world: LocalDeployment) -> None:
    escrow = world.escrow.functions
    assert escrow.fundingAllowance(world.merchant.address, world.other.address).call() == 0
    receipt = world.merchant.send(escrow.approveFunding(world.other.address, 50 * UNIT))
    assert emitted(world, receipt, "FundingApproved") == [
        {"merchant": world.merchant.address, "spender": world.other.address, "cap": 50 * UNIT}
    ]
    assert escrow.fundingAllowance(world.merchant.address, world.other.address).call() == 50 * UNIT
    world.merchant.send(escrow.approveFunding(world.other.address, 0))
    assert escrow.fundingAllowance(world.merchant.address, world.other.address).call() == 0


def test_granting_a_role_needs_DEFAULT_ADMIN_ROLE(world: LocalDeployment) -> None:
    call = world.escrow.functions.grantRole(role(world, "ARBITER_ROLE"), world.operator.address)
    with reverts_with(
        world,
        "AccessControlUnauthorizedAccount",
        account=world.operator.address,
        neededRole=DEFAULT_ADMIN_ROLE,
    ):
        world.operator.send(call)


# ─────────────────────────────── pause ───────────────────────────────


@pytest.mark.parametrize("caller", ["admin", "operator"])
def test_pause_and_unpause_without_PAUSER_ROLE_revert_with_AccessControlUnauthorizedAccount(
    world: LocalDeployment, caller: str
) -> None:
    sender = getattr(world, caller)
    unauthorized = {"account": sender.address, "neededRole": role(world, "PAUSER_ROLE")}
    with reverts_with(world, "AccessControlUnauthorizedAccount", **unauthorized):
        sender.send(world.escrow.functions.pause())
    pause(world)
    with reverts_with(world, "AccessControlUnauthorizedAccount", **unauthorized):
        sender.send(world.escrow.functions.unpause())
    assert world.escrow.functions.paused().call()


def test_paused_escrow_rejects_authorize_and_charge_with_EnforcedPause(
    world: LocalDeployment,
) -> None:
    pause(world)
    terms = world.terms()
    with reverts_with(world, "EnforcedPause"):
        world.authorize(terms)
    charge = world.escrow.functions.charge(
        terms_tuple(terms), UNIT, Method.ALLOWANCE, world.payer_signature(terms), 0, []
    )
    with reverts_with(world, "EnforcedPause"):
        world.operator.send(charge)


def test_paused_escrow_still_captures_voids_and_refunds_existing_payments(
    world: LocalDeployment,
) -> None:
    escrow = world.escrow.functions
    terms = world.terms(100 * UNIT)
    world.authorize(terms)
    pause(world)
    balances = Balances(world)

    world.operator.send(escrow.capture(terms_tuple(terms), 1, 60 * UNIT, 100, []))
    assert balances.moved() == {
        "escrow": -60 * UNIT,
        "merchant": 60 * UNIT - 600_000,
        "fee_receiver": 600_000,
    }
    world.operator.send(escrow.void(terms_tuple(terms), 2, 40 * UNIT))
    assert balances.moved() == {"escrow": -40 * UNIT, "payer": 40 * UNIT}
    world.operator.send(escrow.refund(terms_tuple(terms), 3, 10 * UNIT, False))
    assert balances.moved() == {"operator": -10 * UNIT, "payer": 10 * UNIT}
    assert world.state(terms) == (0, 50 * UNIT, 4)


def test_paused_escrow_still_lets_the_payer_reclaim(world: LocalDeployment) -> None:
    terms = world.terms(100 * UNIT)
    world.authorize(terms)
    pause(world)
    world.backend.increase_time(terms.authorization_expiry - world.backend.now())
    balances = Balances(world)
    world.payer.send(world.escrow.functions.reclaim(terms_tuple(terms)))
    assert balances.moved() == {"escrow": -100 * UNIT, "payer": 100 * UNIT}


def test_unpause_lets_new_holds_resume(world: LocalDeployment) -> None:
    receipt = world.pauser.send(world.escrow.functions.pause())
    assert emitted(world, receipt, "Paused") == [{"account": world.pauser.address}]
    receipt = world.pauser.send(world.escrow.functions.unpause())
    assert emitted(world, receipt, "Unpaused") == [{"account": world.pauser.address}]
    assert not world.escrow.functions.paused().call()

    terms = world.terms(10 * UNIT)
    balances = Balances(world)
    world.authorize(terms)
    assert balances.moved() == {"payer": -10 * UNIT, "escrow": 10 * UNIT}


def test_pausing_a_paused_escrow_reverts_with_EnforcedPause(world: LocalDeployment) -> None:
    pause(world)
    with reverts_with(world, "EnforcedPause"):
        pause(world)


def test_unpausing_a_running_escrow_reverts_with_ExpectedPause(world: LocalDeployment) -> None:
    with reverts_with(world, "ExpectedPause"):
        world.pauser.send(world.escrow.functions.unpause())
