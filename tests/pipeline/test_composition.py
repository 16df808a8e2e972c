"""The composition root: an engine built from configuration alone (a database URL, a network and
its RPC URL, the deployment record `settle deploy` wrote, keys from the environment) settles
payments through the recorded escrow, and a missing record or a key that holds no role is one
typed error naming the fix, before anything is sent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from eth_account.signers.local import LocalAccount
from sqlalchemy import select
from web3 import HTTPProvider, Web3

from engine.chain.backends.anvil import AnvilProcess, anvil_accounts
from engine.chain.contracts.compiler import load_artifact
from engine.chain.contracts.escrow import ESCROW_NAME, Signer, sign_payment
from engine.chain.deployment import load_deployment
from engine.chain.errors import DeploymentMissing
from engine.chain.networks import ANVIL_CHAIN_ID, get_network
from engine.deploy.deployer import deploy
from engine.deploy.plan import plan_deployment
from engine.domain.ids import PaymentTerms
from engine.pipeline.composition import (
    ARBITER_KEY_ENV_VAR,
    OPERATOR_KEY_ENV_VAR,
    EngineConfig,
    build_engine,
)
from engine.pipeline.errors import SignerNotRoleHolder
from engine.store.projections import load
from engine.store.schema import txs
from engine.tools.localnet import (
    AUTHORIZATION_WINDOW_S,
    MINT_PER_ACCOUNT,
    REFUND_WINDOW_S,
    STABLECOIN_NAME,
    UINT256_MAX,
    UNIT,
)

AMOUNT = 100 * UNIT
FEE_BPS = 50


class Deployed(NamedTuple):
    """An escrow `settle deploy`'s code put on a fresh anvil, its record, and who is who."""

    node_url: str
    deployments_dir: Path
    escrow: str
    token: str
    deployer: LocalAccount
    operator: LocalAccount
    arbiter: LocalAccount
    payer: LocalAccount
    merchant: LocalAccount


@pytest.fixture
def deployed(anvil_binary: Path, tmp_path: Path) -> Iterator[Deployed]:
    """A node of its own: the escrow's CREATE2 address is the same on every anvil, so one
    deployed on the session's node would be there for the other tests too."""
    deployer, operator, arbiter, payer, merchant = anvil_accounts(5)
    with AnvilProcess(binary=anvil_binary) as node:
        w3 = Web3(HTTPProvider(node.url))
        roles = {"OPERATOR_ROLE": [operator.address], "ARBITER_ROLE": [arbiter.address]}
        plan = plan_deployment(w3, get_network("anvil"), deployer.address, roles)
        deployments_dir = tmp_path / "deployments"
        deploy(w3, plan, deployer, deployments_dir)
        minter = Signer(w3, deployer)
        token = minter.deploy(STABLECOIN_NAME)
        minter.send(token.functions.mint(payer.address, MINT_PER_ACCOUNT))
        Signer(w3, payer).send(token.functions.approve(plan.escrow, UINT256_MAX))
        yield Deployed(
            node.url,
            deployments_dir,
            plan.escrow,
            token.address,
            deployer,
            operator,
            arbiter,
            payer,
            merchant,
        )


def keys(*, operator: LocalAccount, arbiter: LocalAccount) -> dict[str, str]:
    return {OPERATOR_KEY_ENV_VAR: operator.key.hex(), ARBITER_KEY_ENV_VAR: arbiter.key.hex()}


@pytest.mark.anvil
def test_an_engine_built_from_the_deployment_record_settles_a_payment(
    deployed: Deployed, db_url: str
) -> None:
    config = EngineConfig(
        db_url, "anvil", rpc_url=deployed.node_url, deployments_dir=deployed.deployments_dir
    )
    engine = build_engine(
        config, environ=keys(operator=deployed.operator, arbiter=deployed.arbiter)
    )
    try:
        assert engine.deployment.record == load_deployment(ANVIL_CHAIN_ID, deployed.deployments_dir)
        now = int(time.time())
        terms = PaymentTerms(
            payer=deployed.payer.address,
            merchant=deployed.merchant.address,
            token=deployed.token,
            max_amount=AMOUNT,
            authorization_expiry=now + AUTHORIZATION_WINDOW_S,
            refund_expiry=now + REFUND_WINDOW_S,
            min_fee_bps=0,
            max_fee_bps=FEE_BPS,
            fee_receiver=deployed.operator.address,
            operator=deployed.operator.address,
            salt=1,
        )
        payment_hash = terms.payment_hash(ANVIL_CHAIN_ID, deployed.escrow)
        signature = sign_payment(deployed.payer, payment_hash)
        payment_id = engine.service.create("create", terms, AMOUNT, signature).payment_id
        engine.run_until_quiescent()
        engine.service.capture("capture", payment_id, AMOUNT, FEE_BPS)
        engine.run_until_quiescent()

        with engine.db.snapshot() as conn:
            current = load(conn, payment_id)
            senders = set(conn.execute(select(txs.c.sender).distinct()).scalars())
        assert current is not None
        assert (current.payment.status, current.payment.captured) == ("succeeded", AMOUNT)
        assert senders == {deployed.operator.address}
        escrow = engine.backend.w3.eth.contract(
            address=deployed.escrow, abi=load_artifact(ESCROW_NAME).abi
        )
        capturable, refundable, _ = escrow.functions.payments(payment_hash).call()
        assert (capturable, refundable) == (0, AMOUNT)
    finally:
        engine.close()


def test_a_missing_deployment_record_is_refused_naming_the_file_and_the_fix(
    tmp_path: Path,
) -> None:
    config = EngineConfig(
        f"sqlite:///{tmp_path / 'settle.db'}", "sepolia", deployments_dir=tmp_path
    )

    with pytest.raises(DeploymentMissing) as refused:
        build_engine(config, environ={})

    assert refused.value.code == "deployment_missing"
    assert str(tmp_path / "11155111.json") in refused.value.message
    assert "settle deploy --network" in refused.value.message
    assert not (tmp_path / "settle.db").exists()  # refused before anything was opened


@pytest.mark.anvil
def test_a_key_that_holds_no_role_on_the_escrow_is_refused_before_anything_is_sent(
    deployed: Deployed, tmp_path: Path
) -> None:
    config = EngineConfig(
        f"sqlite:///{tmp_path / 'settle.db'}",
        "anvil",
        rpc_url=deployed.node_url,
        deployments_dir=deployed.deployments_dir,
    )

    with pytest.raises(SignerNotRoleHolder, match="ARBITER_ROLE") as refused:
        build_engine(config, environ=keys(operator=deployed.operator, arbiter=deployed.payer))

    assert refused.value.code == "signer_not_role_holder"
    assert deployed.payer.address in refused.value.message
    assert not (tmp_path / "settle.db").exists()
