"""`settle deploy`: plan a deployment of SettlementEscrow on a named network and, unless it is
a dry run, carry it out. Returns what happened as a typed outcome; the CLI shows it.

A local anvil is a development chain whatever chain id it was started with (`settle chain up
--chain-id N`), so `--network anvil` takes the id the node serves instead of refusing it; every
other network must serve its preset's id, checked before anything is signed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from eth_account.signers.local import LocalAccount
from web3 import Web3

from engine.chain.backends.anvil import anvil_accounts
from engine.chain.keys import KEY_ENV_VAR, load_signer
from engine.chain.networks import Network, get_network
from engine.deploy.deployer import DeploymentResult, deploy
from engine.deploy.errors import NetworkNotDeployable
from engine.deploy.plan import DeploymentPlan, plan_deployment
from engine.deploy.record import DEFAULT_DEPLOYMENTS_DIR
from engine.deploy.roles import roles_from_env
from engine.deploy.rpc_connection import check_chain, connect, rpc_errors
from engine.pipeline.composition import rpc_url_for


@dataclass(frozen=True)
class DeployOutcome:
    """The plan, and what carrying it out did (None for a dry run). `dev_account` is set when
    no key was given and anvil's public dev account deployed."""

    network: Network
    url: str
    plan: DeploymentPlan
    result: DeploymentResult | None
    dev_account: str | None


def deploy_to(
    network: str,
    rpc_url: str | None,
    keystore: Path | None,
    *,
    dry_run: bool,
    progress: Callable[[str], None] = lambda _: None,
) -> DeployOutcome:
    """Plans (and unless `dry_run`, carries out) the deployment on `network`. User errors
    raise ChainError / ChainBackendError subclasses."""
    preset = get_network(network)
    if preset.name == "embedded":
        raise NetworkNotDeployable(
            "the embedded EVM lives inside the engine's process, which deploys there itself; "
            "to deploy by hand start anvil (`settle chain up`) and use --network anvil"
        )
    url = rpc_url or rpc_url_for(preset)
    with rpc_errors(url):
        w3 = connect(url)
        preset = _served(w3, preset)
        check_chain(w3, preset)
        account, dev_account = _deployer(preset, keystore)
        plan = plan_deployment(w3, preset, account.address, roles_from_env())
        if dry_run:
            return DeployOutcome(preset, url, plan, None, dev_account)
        result = deploy(w3, plan, account, DEFAULT_DEPLOYMENTS_DIR, progress=progress)
    return DeployOutcome(preset, url, plan, result, dev_account)


def _served(w3: Web3, network: Network) -> Network:
    """anvil's preset with the chain id the node serves (see the module's docstring)."""
    if network.name != "anvil":
        return network
    return replace(network, chain_id=w3.eth.chain_id)


def _deployer(network: Network, keystore: Path | None) -> tuple[LocalAccount, str | None]:
    if keystore is None and KEY_ENV_VAR not in os.environ and network.name == "anvil":
        account = anvil_accounts(1)[0]
        return account, account.address
    return load_signer(keystore), None
