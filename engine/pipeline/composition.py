"""The composition root: a settlement engine built from configuration, never by deploying.

An engine needs a database, a node of the network it settles on, the escrow deployed there and
the keys of the escrow's operator and arbiter. Each comes from configuration (``EngineConfig``):
the database URL; the network's preset (engine.chain.networks) and an RPC URL, given or from
the preset's environment variable; the deployment record ``deployments/<chain-id>.json`` that
``settle deploy`` wrote (engine.chain.deployment); and keys from keystores or the environment
(engine.chain.keys). Everything is checked before the engine starts, so a wrong setting is one
typed error naming the fix rather than transactions that revert later.

Tests and demos on a local chain deploy and mine with engine.tools.localnet and hand the engine
what it makes; the product runs against what the record names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from engine.chain.backends import RpcBackend, anvil
from engine.chain.deployment import DEFAULT_DEPLOYMENTS_DIR, Deployment, load_deployment
from engine.chain.errors import RpcUrlMissing
from engine.chain.keys import Prompt, load_signer
from engine.chain.networks import Network, get_network
from engine.chain.rpc import HttpRpc
from engine.pipeline.engine import (
    ALL_ROLES,
    Role,
    SagaFactory,
    SettlementEngine,
    SignedDeployment,
    Signers,
)
from engine.pipeline.errors import EscrowNotDeployed, SignerNotRoleHolder

OPERATOR_KEY_ENV_VAR: Final = "SETTLE_OPERATOR_KEY"
# Unset (and no arbiter keystore): the operator's key sends the dispute calls too, as on a
# deployment that granted every role to its deployer.
ARBITER_KEY_ENV_VAR: Final = "SETTLE_ARBITER_KEY"


@dataclass(frozen=True)
class EngineConfig:
    """Where an engine's parts come from. ``rpc_url`` None: the network preset's environment
    variable (a local network: the node `settle chain up` started). ``confirmations`` None: the
    preset's depth. A keystore None: the key in its environment variable."""

    db_url: str
    network: str
    rpc_url: str | None = None
    deployments_dir: Path = DEFAULT_DEPLOYMENTS_DIR
    operator_keystore: Path | None = None
    arbiter_keystore: Path | None = None
    confirmations: int | None = None
    roles: frozenset[Role] = ALL_ROLES


def rpc_url_for(
    network: Network, rpc_url: str | None = None, environ: Mapping[str, str] = os.environ
) -> str:
    """The URL of ``network``'s node: ``rpc_url`` if given; on a local network the node
    `settle chain up` started, else anvil's default port; on a testnet the URL in its
    environment variable."""
    if rpc_url:
        return rpc_url
    if network.rpc_env_var is None:
        running = anvil.running_chain()
        return running.url if running is not None else anvil.DEFAULT_URL
    url = environ.get(network.rpc_env_var)
    if not url:
        raise RpcUrlMissing(
            f"no RPC URL for {network.name}: pass --rpc-url or set {network.rpc_env_var}"
        )
    return url


def connect_backend(
    network: Network, rpc_url: str | None = None, environ: Mapping[str, str] = os.environ
) -> RpcBackend:
    """A backend on ``network``'s node, checked to serve the network's chain id. The node is
    asked once through the engine's own client first, so that one that does not answer is a
    typed RpcUnavailable (its URL shown without what may be an API key)."""
    url = rpc_url_for(network, rpc_url, environ)
    probe = HttpRpc(url)
    try:
        probe.call("eth_chainId", [])
    finally:
        probe.close()
    return RpcBackend(url, network)


def load_signers(
    deployment: Deployment,
    operator_keystore: Path | None = None,
    arbiter_keystore: Path | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
    prompt: Prompt | None = None,
) -> Signers:
    """The operator's and the arbiter's keys, each from its keystore or environment variable,
    checked against the role holders ``deployment`` records."""
    operator = load_signer(
        operator_keystore, environ=environ, prompt=prompt, key_env_var=OPERATOR_KEY_ENV_VAR
    )
    arbiter = operator
    if arbiter_keystore is not None or ARBITER_KEY_ENV_VAR in environ:
        arbiter = load_signer(
            arbiter_keystore, environ=environ, prompt=prompt, key_env_var=ARBITER_KEY_ENV_VAR
        )
    for role, account, holders in (
        ("OPERATOR_ROLE", operator, deployment.operators),
        ("ARBITER_ROLE", arbiter, deployment.arbiters),
    ):
        if account.address not in holders:
            raise SignerNotRoleHolder(
                f"{account.address} does not hold {role} on the escrow {deployment.escrow} "
                f"(holders: {', '.join(holders) or 'none'}); configure a holder's key, or "
                f"grant it the role and run `settle deploy --network {deployment.network}` "
                "again to record the grant"
            )
    return Signers(operator, arbiter)


def build_engine(
    config: EngineConfig,
    *,
    sagas: SagaFactory | None = None,
    environ: Mapping[str, str] = os.environ,
    prompt: Prompt | None = None,
) -> SettlementEngine[SignedDeployment]:
    """The engine ``config`` describes, settling through the recorded escrow. ``sagas``: the
    loop's orchestration (engine.saga.orchestrator.Orchestrator), if this engine drives it."""
    network = get_network(config.network)
    deployment = load_deployment(network.chain_id, config.deployments_dir)
    signers = load_signers(
        deployment,
        config.operator_keystore,
        config.arbiter_keystore,
        environ=environ,
        prompt=prompt,
    )
    backend = connect_backend(network, config.rpc_url, environ)
    if not backend.w3.eth.get_code(deployment.escrow):
        raise EscrowNotDeployed(
            f"no contract at {deployment.escrow}, the escrow {config.deployments_dir} records "
            f"for {network.name}: the node was reset since; run `settle deploy --network "
            f"{network.name}` again"
        )
    confirmations = config.confirmations
    return SettlementEngine(
        config.db_url,
        backend,
        SignedDeployment(deployment, signers),
        confirmations=network.confirmations_default if confirmations is None else confirmations,
        roles=config.roles,
        sagas=sagas,
    )
