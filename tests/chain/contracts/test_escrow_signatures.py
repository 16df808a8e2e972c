"""How a hold pulls the payer's funds, and what the payer's signatures bind: by allowance with a
signature over the payment id (none when the payer is the operator), by EIP-2612 permit, or by
ERC-3009 receiveWithAuthorization whose nonce is the payment id. The payer's allowance is
reset to zero wherever a test must prove the pull did not ride on a standing approval."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi import decode
from eth_account import Account
from web3.types import TxReceipt

from engine.chain.contracts.escrow import Method, erc3009_auth, permit_auth, terms_tuple
from engine.domain.ids import TERMS_SOLIDITY_FIELDS, PaymentTerms
from engine.tools.localnet import UNIT, LocalDeployment
from tests.fixtures.solvency import Balances, emitted, reverts_with

VALIDITY_S = 3600


pytestmark = pytest.mark.usefixtures("escrow_stays_solvent")


def revoke_allowance(world: LocalDeployment) -> None:
    world.payer.send(world.token.functions.approve(world.escrow.address, 0))


def allowance(world: LocalDeployment) -> int:
    return int(world.token.functions.allowance(world.payer.address, world.escrow.address).call())


def permit(world: LocalDeployment, terms: PaymentTerms, signed_terms: PaymentTerms) -> bytes:
    """`auth` for Method.PERMIT: a permit for terms.max_amount plus a signature over
    `signed_terms` (the same terms, unless a test wants a mismatch)."""
    return permit_auth(
        world.payer.account,
        world.token,
        world.escrow.address,
        terms.max_amount,
        world.backend.now() + VALIDITY_S,
        world.payment_hash(signed_terms),
    )


def erc3009(world: LocalDeployment, amount: int, nonce_terms: PaymentTerms) -> bytes:
    """`auth` for Method.ERC3009: `amount` to the escrow, with the id of `nonce_terms` as nonce."""
    return erc3009_auth(
        world.payer.account,
        world.token,
        world.escrow.address,
        amount,
        0,
        world.backend.now() + VALIDITY_S,
        world.payment_hash(nonce_terms),
    )


def authorize(
    world: LocalDeployment, terms: PaymentTerms, amount: int, method: Method, auth: bytes
) -> TxReceipt:
    call = world.escrow.functions.authorize(terms_tuple(terms), amount, method, auth)
    return world.operator.send(call)


def assert_authorized_event(
    world: LocalDeployment, receipt: TxReceipt, terms: PaymentTerms, amount: int, method: Method
) -> None:
    """The event carries every field of the terms, so the indexer needs nothing else."""
    [event] = emitted(world, receipt, "Authorized")
    solidity_names = [name for name, _ in TERMS_SOLIDITY_FIELDS]
    assert event == {
        "paymentId": world.payment_hash(terms),
        "terms": dict(zip(solidity_names, terms_tuple(terms), strict=True)),
        "amount": amount,
        "method": method,
    }


def test_payment_id_is_the_eip712_hash_the_payer_signs(world: LocalDeployment) -> None:
    terms = world.terms()
    _, name, version, chain_id, verifying, _, _ = world.escrow.functions.eip712Domain().call()
    assert (name, version, chain_id, verifying) == (
        "SettlementEscrow",
        "1",
        world.backend.chain_id,
        world.escrow.address,
    )
    payment_id = world.escrow.functions.paymentId(terms_tuple(terms)).call()
    assert payment_id == world.payment_hash(terms)


# ───────────────────────────── allowance ─────────────────────────────


def test_authorize_by_allowance_with_the_payer_signature_holds_the_amount(
    world: LocalDeployment,
) -> None:
    terms = world.terms(100 * UNIT)
    balances = Balances(world)
    receipt = authorize(world, terms, 60 * UNIT, Method.ALLOWANCE, world.payer_signature(terms))
    assert_authorized_event(world, receipt, terms, 60 * UNIT, Method.ALLOWANCE)
    assert balances.moved() == {"payer": -60 * UNIT, "escrow": 60 * UNIT}
    assert world.state(terms) == (60 * UNIT, 0, 1)


def test_operator_paying_itself_authorizes_by_allowance_without_a_signature(
    world: LocalDeployment,
) -> None:
    terms = world.terms(100 * UNIT, payer=world.operator.address)
    balances = Balances(world)
    receipt = authorize(world, terms, 100 * UNIT, Method.ALLOWANCE, b"")
    assert_authorized_event(world, receipt, terms, 100 * UNIT, Method.ALLOWANCE)
    assert balances.moved() == {"operator": -100 * UNIT, "escrow": 100 * UNIT}


@pytest.mark.parametrize("signature", ["by_another_account", "over_other_terms", "empty"])
def test_authorize_without_a_valid_payer_signature_reverts_with_InvalidPayerSignature(
    world: LocalDeployment, signature: str
) -> None:
    terms = world.terms()
    auth = {
        "by_another_account": world.payer_signature(terms, world.other.account),
        "over_other_terms": world.payer_signature(world.terms()),
        "empty": b"",
    }[signature]
    with reverts_with(
        world,
        "InvalidPayerSignature",
        paymentId=world.payment_hash(terms),
        payer=world.payer.address,
    ):
        authorize(world, terms, UNIT, Method.ALLOWANCE, auth)


# ────────────────────────────── permit ───────────────────────────────


def test_authorize_by_permit_approves_max_amount_and_holds_without_a_prior_allowance(
    world: LocalDeployment,
) -> None:
    revoke_allowance(world)
    terms = world.terms(100 * UNIT)
    nonce = world.token.functions.nonces(world.payer.address).call()
    balances = Balances(world)

    receipt = authorize(world, terms, 70 * UNIT, Method.PERMIT, permit(world, terms, terms))

    assert_authorized_event(world, receipt, terms, 70 * UNIT, Method.PERMIT)
    assert balances.moved() == {"payer": -70 * UNIT, "escrow": 70 * UNIT}
    assert world.token.functions.nonces(world.payer.address).call() == nonce + 1
    assert allowance(world) == 30 * UNIT


def test_authorize_by_permit_still_holds_when_someone_submitted_the_permit_first(
    world: LocalDeployment,
) -> None:
    revoke_allowance(world)
    terms = world.terms(100 * UNIT)
    auth = permit(world, terms, terms)
    deadline, v, r, s, _ = decode(["uint256", "uint8", "bytes32", "bytes32", "bytes"], auth)
    world.other.send(
        world.token.functions.permit(
            world.payer.address, world.escrow.address, terms.max_amount, deadline, v, r, s
        )
    )
    assert allowance(world) == 100 * UNIT
    balances = Balances(world)

    authorize(world, terms, 100 * UNIT, Method.PERMIT, auth)

    assert balances.moved() == {"payer": -100 * UNIT, "escrow": 100 * UNIT}
    assert allowance(world) == 0


def test_permit_with_a_signature_over_other_terms_reverts_with_InvalidPayerSignature(
    world: LocalDeployment,
) -> None:
    revoke_allowance(world)
    terms = world.terms()
    auth = permit(world, terms, signed_terms=world.terms())
    with reverts_with(world, "InvalidPayerSignature", paymentId=world.payment_hash(terms)):
        authorize(world, terms, UNIT, Method.PERMIT, auth)
    assert allowance(world) == 0


def test_failed_permit_without_allowance_reverts_with_ERC20InsufficientAllowance(
    world: LocalDeployment,
) -> None:
    revoke_allowance(world)
    terms = world.terms(100 * UNIT)
    expired = permit_auth(
        world.payer.account,
        world.token,
        world.escrow.address,
        terms.max_amount,
        world.backend.now() - 1,
        world.payment_hash(terms),
    )
    with reverts_with(
        world, "ERC20InsufficientAllowance", spender=world.escrow.address, allowance=0
    ):
        authorize(world, terms, UNIT, Method.PERMIT, expired)


def test_charge_by_permit_holds_and_captures_in_one_transaction(world: LocalDeployment) -> None:
    revoke_allowance(world)
    terms = world.terms(100 * UNIT)
    call = world.escrow.functions.charge(
        terms_tuple(terms), 100 * UNIT, Method.PERMIT, permit(world, terms, terms), 100, []
    )
    balances = Balances(world)
    world.operator.send(call)
    assert balances.moved() == {"payer": -100 * UNIT, "merchant": 99 * UNIT, "fee_receiver": UNIT}
    assert world.state(terms) == (0, 100 * UNIT, 2)


# ────────────────────────────── ERC-3009 ─────────────────────────────


def test_authorize_by_erc3009_uses_the_payment_id_as_nonce_and_needs_no_allowance(
    world: LocalDeployment,
) -> None:
    revoke_allowance(world)
    terms = world.terms(100 * UNIT)
    payment_id = world.payment_hash(terms)
    balances = Balances(world)

    receipt = authorize(world, terms, 80 * UNIT, Method.ERC3009, erc3009(world, 80 * UNIT, terms))

    assert_authorized_event(world, receipt, terms, 80 * UNIT, Method.ERC3009)
    assert balances.moved() == {"payer": -80 * UNIT, "escrow": 80 * UNIT}
    assert world.token.functions.authorizationState(world.payer.address, payment_id).call()
    assert world.state(terms) == (80 * UNIT, 0, 1)


def test_reused_erc3009_authorization_reverts_with_PaymentExists(world: LocalDeployment) -> None:
    terms = world.terms(100 * UNIT)
    auth = erc3009(world, 50 * UNIT, terms)
    authorize(world, terms, 50 * UNIT, Method.ERC3009, auth)
    with reverts_with(world, "PaymentExists", paymentId=world.payment_hash(terms)):
        authorize(world, terms, 50 * UNIT, Method.ERC3009, auth)


@pytest.mark.parametrize("mismatch", ["other_terms", "other_amount"])
def test_erc3009_authorization_not_matching_the_hold_reverts_with_AuthorizationInvalidSigner(
    world: LocalDeployment, mismatch: str
) -> None:
    terms = world.terms(100 * UNIT)
    if mismatch == "other_terms":
        auth = erc3009(world, 50 * UNIT, nonce_terms=world.terms(100 * UNIT))
    else:
        auth = erc3009(world, 40 * UNIT, nonce_terms=terms)
    with reverts_with(world, "AuthorizationInvalidSigner", expected=world.payer.address):
        authorize(world, terms, 50 * UNIT, Method.ERC3009, auth)


def test_canceled_erc3009_authorization_reverts_with_AuthorizationAlreadyUsed(
    world: LocalDeployment,
) -> None:
    terms = world.terms(100 * UNIT)
    auth = erc3009(world, 50 * UNIT, terms)
    payment_id = world.payment_hash(terms)
    v, r, s = cancel_signature(world, payment_id)
    world.other.send(
        world.token.functions.cancelAuthorization(world.payer.address, payment_id, v, r, s)
    )
    with reverts_with(
        world, "AuthorizationAlreadyUsed", authorizer=world.payer.address, nonce=payment_id
    ):
        authorize(world, terms, 50 * UNIT, Method.ERC3009, auth)


def cancel_signature(world: LocalDeployment, nonce: bytes) -> tuple[int, bytes, bytes]:
    """The payer's ERC-3009 CancelAuthorization of `nonce`, as (v, r, s)."""
    _, name, version, chain_id, verifying, _, _ = world.token.functions.eip712Domain().call()
    message: dict[str, Any] = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "CancelAuthorization": [
                {"name": "authorizer", "type": "address"},
                {"name": "nonce", "type": "bytes32"},
            ],
        },
        "primaryType": "CancelAuthorization",
        "domain": {
            "name": name,
            "version": version,
            "chainId": chain_id,
            "verifyingContract": verifying,
        },
        "message": {"authorizer": world.payer.address, "nonce": nonce},
    }
    signed = Account.sign_typed_data(world.payer.account.key, full_message=message)
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")
