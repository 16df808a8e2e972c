"""What a deployment would send and cost, found without sending anything.

Every check that can refuse (chain id, sources matching the artifacts, proxy usable, code at
the address that is not ours, a simulated revert) runs here, so that it runs before the first
transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from eth_typing import ChecksumAddress
from eth_utils import to_checksum_address
from web3 import Web3

from engine.chain.contracts.compiler import load_artifact
from engine.chain.contracts.escrow import ESCROW_NAME
from engine.chain.networks import Network
from engine.chain.rpc import hex_data
from engine.deploy.create2 import (
    PROXY_ADDRESS,
    PROXY_DEPLOYMENT_COST_WEI,
    ProxyState,
    create2_address,
    proxy_calldata,
    proxy_state,
    usable_proxy_state,
)
from engine.deploy.deployed_code import WORD_BYTES, verify_deployed
from engine.deploy.escrow_create2 import ESCROW_SALT, escrow_initcode
from engine.deploy.roles import grant_calldata, role_holders, role_id
from engine.deploy.rpc_connection import check_chain
from engine.deploy.sender import Fees, current_fees, estimate_gas, gas_limit
from engine.deploy.source_verification import checked_standard_input

TRANSFER_GAS: Final = 21_000
# A dry run cannot simulate grantRole before the escrow exists. A first grant uses 51,383 gas
# (anvil); the bound covers that with the safety factor, so the funds check stays an upper bound.
ROLE_GRANT_GAS_BOUND: Final = 80_000
# Without the proxy, a dry run simulates a plain creation instead; CREATE2 also hashes the
# initcode (6 gas a word), and the proxy call costs about as much as a creation's intrinsic gas.
CREATE2_HASH_GAS_PER_WORD: Final = 6


@dataclass(frozen=True)
class PlannedTx:
    what: str
    gas_estimate: int
    # True when no simulation was possible yet (the escrow does not exist) and the figure is
    # an upper bound used as the gas limit as is.
    is_bound: bool = False
    value_wei: int = 0

    @property
    def gas_limit(self) -> int:
        return self.gas_estimate if self.is_bound else gas_limit(self.gas_estimate)


@dataclass(frozen=True)
class Grant:
    role: str
    account: ChecksumAddress


@dataclass(frozen=True)
class DeploymentPlan:
    """Everything a deployment would do and cost, found without sending anything."""

    network: Network
    deployer: ChecksumAddress
    escrow: ChecksumAddress
    proxy: ProxyState
    escrow_deployed: bool
    # Every configured role holder; `grants` are those that do not hold their role yet.
    roles: Mapping[str, tuple[ChecksumAddress, ...]]
    grants: tuple[Grant, ...]
    txs: tuple[PlannedTx, ...]
    fees: Fees
    balance_wei: int
    initcode: bytes = field(repr=False)
    standard_input: Mapping[str, Any] = field(repr=False)

    @property
    def chain_id(self) -> int:
        return self.network.chain_id

    @property
    def nothing_to_send(self) -> bool:
        return not self.txs

    @property
    def gas_total(self) -> int:
        return sum(tx.gas_estimate for tx in self.txs)

    @property
    def expected_cost_wei(self) -> int:
        per_gas = self.fees.expected_wei_per_gas
        return sum(tx.gas_estimate * per_gas + tx.value_wei for tx in self.txs)

    @property
    def max_cost_wei(self) -> int:
        per_gas = self.fees.max_fee_wei
        return sum(tx.gas_limit * per_gas + tx.value_wei for tx in self.txs)

    @property
    def has_funds(self) -> bool:
        return self.balance_wei >= self.max_cost_wei

    def to_dict(self) -> dict[str, Any]:
        return {
            "network": self.network.name,
            "chain_id": self.chain_id,
            "deployer": self.deployer,
            "balance_wei": self.balance_wei,
            "create2_proxy": {"address": PROXY_ADDRESS, "state": self.proxy.value},
            "escrow": {
                "address": self.escrow,
                "salt": hex_data(ESCROW_SALT),
                "already_deployed": self.escrow_deployed,
            },
            "grants": [{"role": g.role, "account": g.account} for g in self.grants],
            "transactions": [
                {
                    "what": tx.what,
                    "gas": tx.gas_estimate,
                    "gas_is_bound": tx.is_bound,
                    "value_wei": tx.value_wei,
                }
                for tx in self.txs
            ],
            "fees": {
                "base_fee_wei": self.fees.base_fee_wei,
                "priority_fee_wei": self.fees.priority_fee_wei,
                "max_fee_wei": self.fees.max_fee_wei,
            },
            "gas_total": self.gas_total,
            "expected_cost_wei": self.expected_cost_wei,
            "max_cost_wei": self.max_cost_wei,
            "has_funds": self.has_funds,
        }


def plan_deployment(
    w3: Web3,
    network: Network,
    deployer: str,
    roles: Mapping[str, Sequence[str]] | None = None,
) -> DeploymentPlan:
    """What deploying from `deployer` would send and cost. Raises on whatever would make the
    deployment fail before it sends anything (wrong chain, stale artifacts, unusable proxy,
    code at the address that is not ours, a simulated revert). `roles` maps role names to
    holders; a role not given goes to the deployer."""
    check_chain(w3, network)
    deployer = to_checksum_address(deployer)
    standard_input = checked_standard_input()
    holders = role_holders(roles or {}, deployer)
    initcode = escrow_initcode(deployer)
    escrow = create2_address(ESCROW_SALT, initcode)
    deployed = bool(w3.eth.get_code(escrow))
    if deployed:
        verify_deployed(w3, escrow, network.chain_id)
    # Once the escrow is there, the proxy's state no longer matters.
    proxy = proxy_state(w3) if deployed else usable_proxy_state(w3)
    txs: list[PlannedTx] = []
    if proxy is ProxyState.MISSING and not deployed:
        # Its gas is paid by the one-time deployer, out of what we send it.
        what = "fund the CREATE2 proxy's one-time deployer"
        txs.append(PlannedTx(what, TRANSFER_GAS, value_wei=PROXY_DEPLOYMENT_COST_WEI))
    if not deployed:
        what = f"deploy {ESCROW_NAME}"
        if proxy is ProxyState.INSTALLED:
            calldata = proxy_calldata(ESCROW_SALT, initcode)
            gas = estimate_gas(w3, deployer, PROXY_ADDRESS, calldata, what)
        else:
            words = -(-len(initcode) // WORD_BYTES)
            gas = estimate_gas(w3, deployer, None, initcode, what)
            gas += CREATE2_HASH_GAS_PER_WORD * words
        txs.append(PlannedTx(what, gas))
    contract = w3.eth.contract(address=escrow, abi=load_artifact(ESCROW_NAME).abi)
    grants = []
    for role, accounts in holders.items():
        for account in accounts:
            if deployed and contract.functions.hasRole(role_id(role), account).call():
                continue
            grants.append(Grant(role, account))
            what = f"grant {role} to {account}"
            if deployed:
                data = grant_calldata(contract, role, account)
                txs.append(PlannedTx(what, estimate_gas(w3, deployer, escrow, data, what)))
            else:
                txs.append(PlannedTx(what, ROLE_GRANT_GAS_BOUND, is_bound=True))
    return DeploymentPlan(
        network=network,
        deployer=deployer,
        escrow=escrow,
        proxy=proxy,
        escrow_deployed=deployed,
        roles=holders,
        grants=tuple(grants),
        txs=tuple(txs),
        fees=current_fees(w3),
        balance_wei=int(w3.eth.get_balance(deployer)),
        initcode=initcode,
        standard_input=standard_input,
    )
